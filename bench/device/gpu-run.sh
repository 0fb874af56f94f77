#!/usr/bin/env bash
# One call on the GPU machine: our engine beside llama.cpp (Vulkan) on the same
# model files (bench/device/README.md). Needs .device from pack.sh + pack-peer.sh.
# Stages (STAGES picks and orders them; default all):
#   env      nvidia-smi's name, driver and memory, the date            -> env.json
#   matmul   node dist/bench/webgpu.js matmul                         -> matmul.json
#   parity   the HF fixture checks, bf16 and f32 weights (webgpu.js parity) -> parity.json
# then for each preset in MODELS (default "270m 1b"): make-model (bf16) into
# /tmp/m<preset> and its GGUF F16 /tmp/m<preset>.f16.gguf unless there, and
#   ours     node dist/bench/webgpu.js decode (BENCH_STEPS, default 16) -> ours-<p>.json
#   vulkan   llama.cpp, bench/peers/llamacpp-gpu.ts --gpu vulkan (LLAMA_STEPS, default 128) -> llamacpp-vulkan-<p>.json
#   smoke    the service answering a streamed chat completion           -> smoke-<p>.json
#   soak     dist/bench/soak.js, SOAK_SECONDS (default 180)              -> soak-<p>.json
# smoke and soak run on the first preset only unless SMOKE_MODELS / SOAK_MODELS say otherwise.
# Each stage runs under `timeout` with the time left before DEADLINE (default
# 570 s) and at most STAGE_MAX (default 240 s; soak gets SOAK_SECONDS + 120);
# its exit status goes to log.txt. At most 8 files come back from a call, so
# when there are more the JSON files are gathered into all.json at the end.
set -uo pipefail
R=${OUT:-/tmp/gemma-serve-device}
STAGES=${STAGES:-env matmul ours vulkan smoke soak}
MODELS=${MODELS:-270m 1b}
SMOKE_MODELS=${SMOKE_MODELS:-${MODELS%% *}}
SOAK_MODELS=${SOAK_MODELS:-${MODELS%% *}}
SOAK_SECONDS=${SOAK_SECONDS:-180}
mkdir -p "$R"
exec 2>>"$R/log.txt"
. .device/on-device.sh >>"$R/log.txt"
left() { echo $(( ${DEADLINE:-570} - SECONDS )); }
want() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo "== $1 at ${SECONDS}s" | tee -a "$R/log.txt"; }
# run NAME OUT MAX CMD...: CMD under timeout (the time left, at most MAX s), stdout to $R/OUT
run() {
  local name=$1 out=$2 max=$3 t; shift 3
  t=$(left); (( t > max )) && t=$max
  if (( t < 10 )); then echo "skip $name: ${t}s left" | tee -a "$R/log.txt"; return; fi
  stage "$name"
  timeout "$t" "$@" >"$R/$out"
  echo "$name rc=$? after ${SECONDS}s" >>"$R/log.txt"
}
# model P: the bf16 checkpoint and its GGUF F16, written unless there
model() {
  [ -f "/tmp/m$1/config.json" ] || run "make-$1" "make-$1.txt" 300 node dist/src/cli.js make-model --out "/tmp/m$1" --preset "$1"
  [ -s "/tmp/m$1.f16.gguf" ] || run "gguf-$1" "gguf-$1.txt" 300 node dist/bench/peers/convert.js "/tmp/m$1" "/tmp/m$1.f16.gguf" f16
  cat "$R/make-$1.txt" "$R/gguf-$1.txt" >>"$R/log.txt" 2>/dev/null; rm -f "$R/make-$1.txt" "$R/gguf-$1.txt"
  [ -f "/tmp/m$1/config.json" ]
}
in_list() { [[ " $2 " == *" $1 "* ]]; }
STAGE_MAX=${STAGE_MAX:-240}

for s in $STAGES; do
  case $s in
    env)
      stage env
      nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader,nounits | head -1 \
        | node -e "const [name, driver, total, used] = require('fs').readFileSync(0, 'utf8').trim().split(/, */);
          console.log(JSON.stringify({ date: new Date().toISOString(), gpu: name, driver, memory_total_mib: +total, memory_used_mib: +used,
            node: process.version, nlc_dir: process.env.NLC_DIR ?? null, stages: process.env.STAGES ?? null }))" >"$R/env.json" ;;
    matmul) run matmul matmul.json "$STAGE_MAX" node dist/bench/webgpu.js matmul ;;
    parity) run parity parity.json "$STAGE_MAX" node dist/bench/webgpu.js parity ;;
  esac
done
for p in $MODELS; do
  for s in $STAGES; do
    case $s in env|matmul|parity) continue ;; esac
    model "$p" || { echo "no model $p" | tee -a "$R/log.txt"; break; }
    case $s in
      ours)   BENCH_STEPS=${BENCH_STEPS:-16} run "ours-$p" "ours-$p.json" "$STAGE_MAX" node dist/bench/webgpu.js decode "/tmp/m$p" ;;
      vulkan) run "vulkan-$p" "llamacpp-vulkan-$p.json" "$STAGE_MAX" node dist/bench/peers/llamacpp-gpu.js "/tmp/m$p.f16.gguf" --gpu vulkan --steps "${LLAMA_STEPS:-128}" ;;
      smoke)  in_list "$p" "$SMOKE_MODELS" && MODEL_DIR=/tmp/m$p run "smoke-$p" "smoke-$p.json" "$STAGE_MAX" node dist/bench/webgpu-smoke.js ;;
      soak)   in_list "$p" "$SOAK_MODELS" && MODEL_DIR=/tmp/m$p BACKEND=webgpu SOAK_SECONDS=$SOAK_SECONDS \
                run "soak-$p" "soak-$p.json" $((SOAK_SECONDS + 120)) node dist/bench/soak.js ;;
      *) echo "unknown stage $s" | tee -a "$R/log.txt" ;;
    esac
  done
done
stage done
# at most 8 files come back: gather the JSON results into one when there are more
if (( $(ls "$R" | wc -l) > 8 )); then
  (cd "$R" && node -e "
    const fs = require('fs'), all = {};
    for (const f of fs.readdirSync('.').filter((f) => f.endsWith('.json') && f !== 'all.json').sort()) {
      const text = fs.readFileSync(f, 'utf8').trim();
      const lines = text.split('\n');
      try { all[f] = JSON.parse(text); } catch { try { all[f] = JSON.parse(lines.at(-1)); } catch { all[f] = text; } }
    }
    fs.writeFileSync('all.json', JSON.stringify(all, null, 1));
    for (const f of Object.keys(all)) fs.rmSync(f);" && echo "gathered into all.json" >>"$R/log.txt")
fi
