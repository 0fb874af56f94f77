/**
 * Gathers one device call's results (bench/device/gpu-run.sh: all.json, or
 * its folder of JSON files) into the record kept under bench/results/: per
 * model ours and llama.cpp (Vulkan, same call) side by side, and the ratios
 * ours / llama.cpp for prefill 512, decode at batch 1 and aggregate decode
 * at batch 32. `ratio` is against llama.cpp CUDA where the call measured it,
 * else against the CUDA figures given with --cuda (a JSON file of
 * { "<model>": { prefill_512_tps, decode_b1_tps, decode_b32_aggregate_tps } }
 * measured on the same card model, named in its "source" field).
 *
 *   node dist/bench/gpu-summary.js OUT_DIR_OR_ALL_JSON [--cuda FILE] > bench/results/gpu-<card>-<date>.json
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

type Json = Record<string, unknown>;
const KEYS = ['prefill_512_tps', 'decode_b1_tps', 'decode_b8_aggregate_tps', 'decode_b32_aggregate_tps'] as const;

function load(path: string): Record<string, Json> {
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'all.json'))) return load(join(path, 'all.json'));
    const out: Record<string, Json> = {};
    for (const f of readdirSync(path).filter((f) => f.endsWith('.json'))) {
      const text = readFileSync(join(path, f), 'utf8').trim();
      try {
        out[f] = JSON.parse(text.split('\n').at(-1)!) as Json;
      } catch {
        // A stage that printed nothing usable: left out.
      }
    }
    return out;
  }
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, Json>;
}

const pick = (r: Json | undefined) => (r ? Object.fromEntries(KEYS.map((k) => [k, typeof r[k] === 'number' ? (r[k] as number) : null])) : null);

function ratio(ours: Json | null, peer: Json | null): Json | null {
  if (!ours || !peer) return null;
  return Object.fromEntries(
    KEYS.filter((k) => k !== 'decode_b8_aggregate_tps').map((k) => {
      const a = ours[k] as number | null;
      const b = peer[k] as number | null;
      return [k, a && b ? Math.round((a / b) * 1000) / 1000 : null];
    }),
  );
}

function main(): void {
  const [src, flag, cudaFile] = process.argv.slice(2);
  if (!src) throw new Error('usage: gpu-summary.js OUT_DIR_OR_ALL_JSON [--cuda FILE]');
  const files = load(src);
  const cudaGiven = flag === '--cuda' && cudaFile ? (JSON.parse(readFileSync(cudaFile, 'utf8')) as Record<string, Json>) : {};
  const env = files['env.json'] ?? {};
  const models: Record<string, Json> = {};
  for (const name of Object.keys(files)) {
    const m = /^ours-(.+)\.json$/.exec(name);
    if (!m) continue;
    const p = m[1];
    const oursRaw = files[name];
    const ours = pick(oursRaw);
    const vulkan = pick(files[`llamacpp-vulkan-${p}.json`]);
    const cudaSameCall = pick(files[`llamacpp-cuda-${p}.json`]);
    const cuda = cudaSameCall ?? pick(cudaGiven[p]);
    models[p] = {
      ours: { ...ours, b1_weight_gbps: oursRaw.b1_weight_gbps, weights: oursRaw.weights, memory: oursRaw.memory, kernels_per_decode_step_b1: oursRaw.kernels_per_decode_step_b1, decode_b1_submit_sweep: oursRaw.decode_b1_submit_sweep },
      llamacpp_vulkan: vulkan ? { ...vulkan, type: files[`llamacpp-vulkan-${p}.json`].type, vram: files[`llamacpp-vulkan-${p}.json`].vram } : null,
      llamacpp_cuda: cuda,
      llamacpp_cuda_source: cudaSameCall ? 'same device call' : cudaGiven[p] ? cudaGiven.source ?? cudaFile : null,
      ratio: ratio(ours, cuda),
      ratio_vulkan: ratio(ours, vulkan),
    };
  }
  const matmul = files['matmul.json'];
  const parity = files['parity.json'];
  console.log(
    JSON.stringify(
      {
        device: env.gpu ?? null,
        driver: env.driver ?? null,
        date: env.date ?? null,
        bandwidth: matmul?.bandwidth ?? null,
        models,
        parity: parity ? { all_pass: parity.all_pass, bf16_storage: parity.bf16_storage } : null,
        matmul: matmul?.results ?? null,
        smoke: Object.fromEntries(Object.entries(files).filter(([f]) => f.startsWith('smoke-'))),
        soak: Object.fromEntries(Object.entries(files).filter(([f]) => f.startsWith('soak-'))),
      },
      null,
      1,
    ),
  );
}

main();
