#!/usr/bin/env bash
# Adds llama.cpp for the GPU to .device/ (run after pack.sh, from the project
# root; bench/device/README.md): node-llama-cpp and its prebuilt Vulkan binaries
# (@node-llama-cpp/linux-x64-vulkan), installed into a scratch folder, never into
# the project, without what linux-x64 with Vulkan does not need: other
# platforms' and CUDA's prebuilt packages (never installed: --omit=optional),
# the bundled llama.cpp source (llama/gitRelease.bundle, only for building),
# node-llama-cpp's project templates, docs, type declarations, source maps, and
# the CPU variants but x64 and haswell (every layer is offloaded; ggml picks the
# best variant present). on-device.sh unpacks it to $NLC_DIR (/opt/nlc).
#
# ~12 MiB more would take the travelling tree past 64 MiB, so unless
# MAKE_ROOM=0 it also repacks what pack.sh wrote, leaner: node stripped of its
# symbol table (--strip-unneeded keeps the dynamic symbols addons link
# against) and xz'd with the x86 filter at -9e; production node_modules
# without source maps, type declarations, markdown, test/example/doc folders
# and tfjs's browser bundles and per-module files (Node loads dist/*.node.js,
# and the wasm backend its .wasm files), with core-js, which only the browser
# bundles' polyfilled entry loads.
set -euo pipefail
NLC_VERSION=${NLC_VERSION:-3.21.1}
root=$(git rev-parse --show-toplevel)
cd "$root"
[ -f .device/node.xz ] || { echo "run bench/device/pack.sh first" >&2; exit 1; }
scratch=${NLC_PACK_DIR:-/tmp/gemma-serve-nlc-pack}
pkg=$scratch/node_modules/node-llama-cpp/package.json
if ! { [ -f "$pkg" ] && grep -q "\"version\": \"$NLC_VERSION\"" "$pkg" && [ -d "$scratch/node_modules/@node-llama-cpp/linux-x64-vulkan" ]; }; then
  rm -rf "$scratch" && mkdir -p "$scratch" && echo '{"private":true}' > "$scratch/package.json"
  # --ignore-scripts: node-llama-cpp's postinstall would look for a binary or build one
  npm install --prefix "$scratch" --no-save --ignore-scripts --omit=optional --no-audit --no-fund \
    "node-llama-cpp@$NLC_VERSION" "@node-llama-cpp/linux-x64-vulkan@$NLC_VERSION" >&2
fi
vk=node_modules/@node-llama-cpp/linux-x64-vulkan/bins/linux-x64-vulkan
(cd "$scratch" && find node_modules -type f | awk -v vk="$vk/" '
  index($0, vk "libggml-cpu-") == 1 && $0 !~ /libggml-cpu-(x64|haswell)\.so$/ { next }
  /\.(map|md|d\.ts)$/ || /^node_modules\/\.package-lock\.json$/ { next }
  /^node_modules\/node-llama-cpp\/(llama\/gitRelease\.bundle|templates\/)/ { next }
  { print }' | sort) > /tmp/device-nlc-paths
XZ_OPT=${XZ_OPT:--9 -T2} tar -C "$scratch" -cJf .device/nlc.tar.xz -T /tmp/device-nlc-paths
du -h .device/nlc.tar.xz

if [ "${MAKE_ROOM:-1}" != 0 ]; then
  strip --strip-unneeded -o /tmp/device-node "$(readlink -f "$(command -v node)")"
  xz -T2 -c --x86 --lzma2=preset=9e /tmp/device-node > .device/node.xz && rm -f /tmp/device-node
  npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$root/||" | grep '^node_modules/' | sort -u \
    | xargs -d '\n' -I{} find {} -type f | sort -u | awk '
    { p = "/" $0 }
    p ~ /\.(map|md|markdown|d\.ts|d\.mts|d\.cts)$/ { next }
    p ~ /\/webgpu\/dist\/(darwin-|win32-|linux-arm64)/ { next }
    p ~ /\/@lenml\/tokenizer-gemma3\/dist\// { next }
    p ~ /\/node_modules\/(@[^\/]+\/)?[^\/]+\/(test|tests|__tests__|example|examples|docs|benchmark|benchmarks)\// { next }
    p ~ /\/node_modules\/core-js\// { next }
    p ~ /\/@tensorflow\/tfjs(-[^\/]+)?\/dist\// && p !~ /\/dist\/[^\/]+(\.node\.js|\.wasm|worker[^\/]*\.js)$/ { next }
    { print }' > /tmp/device-prod-files
  XZ_OPT=${XZ_OPT:--9 -T2} tar -cJf .device/node_modules.tar.xz -T /tmp/device-prod-files
fi
cp "$(dirname "$0")/on-device.sh" .device/on-device.sh
ls -l .device
# what travels: tracked and untracked-not-ignored files, plus the carried .device and dist
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
carried=$(find .device dist -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s}')
awk -v t="$tree" -v c="$carried" 'BEGIN { printf "travelling tree: %.1f MiB (working tree %.1f, .device + dist %.1f); the limit is 64\n", (t + c) / 2^20, t / 2^20, c / 2^20 }'
