#!/usr/bin/env bash
# Builds the CPU kernels (native/*.cc) into build/gemma_cpu.node; `npm ci` runs
# it (package.json "install"), and so does `npm run build:native`.
#
# Needs g++ and Node-API's headers. The headers come from the npm package
# node-api-headers (a dependency, so `npm ci` brings it); failing that, from
# this Node's own install (<prefix>/include/node) or any Node's, since Node-API
# is ABI-stable across versions (/usr/local/include/node, Debian's libnode-dev
# in /usr/include/node).
#
# GEMMA_SERVE_NATIVE says what happens when the kernels are not built:
#   auto (default)  without g++: a message, exit 0 (the engine runs the tfjs
#                   graph, about 10x slower, and says so at start). With g++: the
#                   build must succeed and the addon must load, else exit 1,
#                   and `npm ci` fails.
#   required        exit 1 whenever build/gemma_cpu.node is not built, g++ or not.
#   optional        never exit non-zero: a message, and the tfjs graph.
set -u
cd "$(dirname "$0")/.."
mode="${GEMMA_SERVE_NATIVE:-auto}"
case "$mode" in
  auto | required | optional) ;;
  *) echo "gemma-serve: GEMMA_SERVE_NATIVE=$mode: expected auto, required or optional" >&2; exit 1 ;;
esac

# Not built: the message, then exit 0 or 1 as $mode says. $1: g++ is there (1) or not (0).
not_built() {
  if [ "$mode" = optional ] || { [ "$mode" = auto ] && [ "$1" = 0 ]; }; then
    echo "gemma-serve: native kernels not built: $2; the engine runs the tfjs graph (about 10x slower)" >&2
    exit 0
  fi
  echo "gemma-serve: ERROR: native kernels not built: $2" >&2
  echo "gemma-serve: without them the engine runs the tfjs graph, about 10x slower; fix the above, or set GEMMA_SERVE_NATIVE=optional to install without them (scripts/build-native.sh)" >&2
  exit 1
}

package="$(node -p "require('node-api-headers').include_dir" 2>/dev/null)"
own="$(node -p "require('node:path').resolve(process.execPath, '../../include/node')")"
headers=""
for dir in "$package" "$own" /usr/local/include/node /usr/include/node; do
  if [ -f "$dir/node_api.h" ]; then headers="$dir"; break; fi
done
if ! command -v g++ >/dev/null; then
  not_built 0 "no g++"
fi
if [ -z "$headers" ]; then
  not_built 1 "no node_api.h (looked in node-api-headers, the npm package; $own; /usr/local/include/node; /usr/include/node)"
fi

mkdir -p build
rm -f build/gemma_cpu.node.tmp
if ! g++ -std=c++17 -O3 -fPIC -shared -fopenmp -Wall -I"$headers" native/*.cc -o build/gemma_cpu.node.tmp; then
  rm -f build/gemma_cpu.node.tmp
  not_built 1 "g++ failed (headers from $headers; the errors are above)"
fi
# Load it as the engine will, and check that it exports the functions the engine calls.
if ! node -e '
  const m = { exports: {} };
  process.dlopen(m, require("node:path").resolve(process.argv[1]));
  const missing = ["supported", "setThreads", "pack", "describe", "multiply", "gather", "layer", "logits", "reduce", "layerAsync", "logitsAsync", "reduceAsync", "sequence", "sequenceAsync"]
    .filter((f) => typeof m.exports[f] !== "function");
  if (missing.length) throw new Error(`it does not export ${missing.join(", ")}`);
' build/gemma_cpu.node.tmp; then
  rm -f build/gemma_cpu.node.tmp
  not_built 1 "the built addon does not load (the error is above)"
fi
mv build/gemma_cpu.node.tmp build/gemma_cpu.node
echo "gemma-serve: native kernels built into build/gemma_cpu.node (Node-API headers from $headers)"
