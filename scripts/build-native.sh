#!/usr/bin/env bash
# Builds the CPU matmul kernels (native/*.cc) into build/gemma_cpu.node.
# Needs g++ and Node's headers (they ship with Node: <prefix>/include/node).
# Without them the engine keeps tfjs's own matmuls, and says so at start.
set -u
cd "$(dirname "$0")/.."
headers="$(node -p "require('node:path').resolve(process.execPath, '../../include/node')")"
if ! command -v g++ >/dev/null || [ ! -f "$headers/node_api.h" ]; then
  echo "gemma-serve: native kernels not built (need g++ and $headers/node_api.h); the engine uses tfjs matmuls" >&2
  exit 0
fi
mkdir -p build
if ! g++ -std=c++17 -O3 -fPIC -shared -fopenmp -Wall -I"$headers" native/*.cc -o build/gemma_cpu.node.tmp; then
  echo "gemma-serve: native kernels failed to build; the engine uses tfjs matmuls" >&2
  rm -f build/gemma_cpu.node.tmp
  exit 0
fi
mv build/gemma_cpu.node.tmp build/gemma_cpu.node
