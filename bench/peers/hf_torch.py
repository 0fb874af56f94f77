#!/usr/bin/env python3
"""Hugging Face transformers with PyTorch on the same GPU and model directory as bench/webgpu.ts.

usage: python3 bench/peers/hf_torch.py MODEL_DIR [--steps 16] > result.json

Prefill tokens/s for one 512-token prompt (logits for the last position only,
as generate() does), and greedy decode tokens/s at batch 1, 8 and 32 after a
64-token prompt per row (the same prompts as bench/model-dir.ts's promptIds),
with transformers' default dynamic cache; float32 with sdpa attention and
bfloat16 with eager attention; peak GPU memory per configuration.
"""
import argparse
import datetime
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def prompt_ids(n, seed=1):
    s = seed
    out = [2]
    for _ in range(n - 1):
        s = (s * 1103515245 + 12345) % 2**31
        out.append(s % 200000 + 1000)
    return out


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, r


@torch.inference_mode()
def run(model_dir, dtype, attn, steps):
    torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation=attn).cuda().eval()
    dev = "cuda"
    p512 = torch.tensor([prompt_ids(512)], device=dev)
    prefill = []
    for _ in range(4):
        dt, _ = timed(lambda: model(input_ids=p512, use_cache=True, logits_to_keep=1))
        prefill.append(dt)
    decode = []
    for B in (1, 8, 32):
        ids = torch.tensor([prompt_ids(64, b + 2) for b in range(B)], device=dev)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for i in range(steps + 3):
            dt, out = timed(lambda: model(input_ids=nxt, past_key_values=past, use_cache=True))
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            nxt.cpu()
            if i >= 3:
                times.append(dt)
        decode.append({"batch": B, "steps": steps, "tokens_per_s": round(B * steps / sum(times), 2),
                       "step_ms_median": round(statistics.median(times) * 1000, 3)})
        del past, out
    peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    return {"dtype": str(dtype).replace("torch.", ""), "attn_implementation": attn,
            "prefill_512_tps": round(512 / min(prefill[1:])), "decode": decode, "peak_gpu_bytes": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--steps", type=int, default=16)
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(0), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "backend": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
           "model": a.model_dir, "runs": []}
    for dtype, attn in ((torch.float32, "sdpa"), (torch.bfloat16, "eager")):
        try:
            res["runs"].append(run(a.model_dir, dtype, attn, a.steps))
        except Exception as e:  # one configuration failing should not hide the other
            res["runs"].append({"dtype": str(dtype), "attn_implementation": attn, "error": repr(e)})
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
