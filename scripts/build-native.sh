#!/usr/bin/env bash
# Builds the CPU kernels (native/*.cc) into build/gemma_cpu.node.
# Needs g++ and Node-API's headers: Node's own (<prefix>/include/node), or any
# Node's, since Node-API is ABI-stable across versions (Debian's libnode-dev).
# Without them the engine runs the tfjs graph, and says so at start.
set -u
cd "$(dirname "$0")/.."
own="$(node -p "require('node:path').resolve(process.execPath, '../../include/node')")"
headers=""
for dir in "$own" /usr/local/include/node /usr/include/node; do
  if [ -f "$dir/node_api.h" ]; then headers="$dir"; break; fi
done
if ! command -v g++ >/dev/null || [ -z "$headers" ]; then
  echo "gemma-serve: native kernels not built (need g++ and node_api.h, looked in $own, /usr/local/include/node, /usr/include/node); the engine runs the tfjs graph" >&2
  exit 0
fi
mkdir -p build
if ! g++ -std=c++17 -O3 -fPIC -shared -fopenmp -Wall -I"$headers" native/*.cc -o build/gemma_cpu.node.tmp; then
  echo "gemma-serve: native kernels failed to build; the engine runs the tfjs graph" >&2
  rm -f build/gemma_cpu.node.tmp
  exit 0
fi
mv build/gemma_cpu.node.tmp build/gemma_cpu.node
