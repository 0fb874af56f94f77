#!/usr/bin/env bash
# One call on the GPU machine (see bench/device/README.md). Stages, in order
# (STAGES picks a subset; default all but breakdown):
#   env      device name, driver, Vulkan loader, torch; the `auto` backend choice; the CLI exits after webgpu
#   probe    webgpu limits and a [1,640]x[640,262144] matmul (with a GC in between)
#   parity   the HF fixture checks on webgpu
#   decode   270m preset: prefill 512, decode at batch 1/8/32 on webgpu, then PyTorch on the same GPU
#   oneb     the same for the 1b preset (if less than ONE_B_BEFORE seconds have passed)
#   smoke    the service on webgpu answering one streamed chat completion
#   breakdown  a decode step's time at batch 1/8/32: recording, forward pass, top-k
# Results go to $OUT (at most 8 files come back).
set -uo pipefail
R=${OUT:-/tmp/gemma-serve-device}
STAGES=${STAGES:-env probe parity decode oneb smoke}
mkdir -p "$R"
exec 2>>"$R/log.txt"
. .device/on-device.sh >>"$R/log.txt"
export DEVICE_NAME="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
export PYTHONUNBUFFERED=1
left() { echo $(( ${DEADLINE:-580} - SECONDS )); }
stage() { echo "== $1 at ${SECONDS}s" | tee -a "$R/log.txt"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
m270() { [ -f /tmp/m270/config.json ] || timeout 120 node dist/src/cli.js make-model --out /tmp/m270 --preset 270m; }

if want env; then
  {
    echo "device: $DEVICE_NAME"
    ls /dev/nvidia* /dev/dri 2>&1 | tr '\n' ' '; echo
    ldconfig -p | grep -i vulkan
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -1
    stage auto-choice
    timeout 60 node --input-type=module -e "
      const t0 = performance.now();
      const m = await import('./dist/src/engine/backend.js');
      const c = await m.initBackend('auto');
      console.log(JSON.stringify({ ...c, ms: Math.round(performance.now() - t0) }));
      process.exit(0);"
    stage cli-score-exits
    timeout 60 node dist/src/cli.js score --model test/fixtures/hf-reference/gemma3-tiny --ids 2,105,1645 --top-k 3 --backend webgpu | head -c 300; echo " rc=${PIPESTATUS[0]}"
  } >"$R/env.txt" 2>&1
fi
if want probe; then stage probe; timeout 120 node --expose-gc dist/bench/webgpu.js probe >"$R/probe.json"; fi
if want parity; then stage parity; timeout 240 node dist/bench/webgpu.js parity >"$R/parity.json"; fi
if want decode; then
  stage make-270m; m270
  stage decode-270m; timeout "$(left)" node dist/bench/webgpu.js decode /tmp/m270 >"$R/decode-270m.json"
  stage torch-270m;  timeout "$(left)" python3 bench/peers/hf_torch.py /tmp/m270 >"$R/torch-270m.json"
fi
if want oneb && [ "$SECONDS" -lt "${ONE_B_BEFORE:-300}" ]; then
  stage make-1b; timeout "$(left)" node dist/src/cli.js make-model --out /tmp/m1b --preset 1b
  stage torch-1b; timeout "$(left)" python3 bench/peers/hf_torch.py /tmp/m1b --steps 8 >"$R/torch-1b.json"
  stage decode-1b; BENCH_STEPS=8 timeout "$(left)" node dist/bench/webgpu.js decode /tmp/m1b >"$R/decode-1b.json"
fi
if want smoke; then
  stage smoke; m270
  MODEL_DIR=/tmp/m270 timeout "$(left)" node dist/bench/webgpu-smoke.js >"$R/smoke.json"
fi
if want breakdown; then
  stage breakdown; m270
  timeout "$(left)" node dist/bench/webgpu.js breakdown /tmp/m270 >"$R/breakdown.json"
fi
stage done
