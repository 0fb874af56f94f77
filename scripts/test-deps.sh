#!/usr/bin/env bash
# What the tests need besides npm packages: Redis answering on 127.0.0.1:6379, and a Vulkan driver so that
# the webgpu backend's WGSL programs run (Mesa's lavapipe, a software Vulkan device, where no GPU driver is
# installed). Debian 12 only for the installs; elsewhere it says what is missing.
set -euo pipefail

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Dawn needs Vulkan features that Debian 12's Mesa 22 lavapipe lacks; bookworm-backports has Mesa 25.
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  if grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >/etc/apt/sources.list.d/bookworm-backports.sources
    # Without it the webgpu tests are skipped (with the reason), the rest still run.
    if ! { apt-get update -qq && apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null; }; then
      echo "could not install mesa-vulkan-drivers from bookworm-backports: the webgpu engine tests will not run" >&2
    fi
  else
    echo "no Vulkan driver: the webgpu engine tests will not run (install Mesa's mesa-vulkan-drivers, 24 or newer)" >&2
  fi
fi
