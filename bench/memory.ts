/**
 * `npm run bench:memory`: peak backend bytes while generating 64 vs 2048
 * tokens at batch 1 vs 8, and while prefilling 1024 tokens, with the `270m`
 * preset (or `-- --arch gemma4 --preset e2b`); beside each, what a kept
 * [B, T, V] float32 logits buffer would have cost, and the KV bytes a cached
 * token costs per layer type, with and without layers that share another
 * layer's K/V. Prints one JSON object.
 *
 * Peak bytes: the backend's byte count after every step, and the within-step
 * peak (tf.profile) of every 64th step and of the last one; steps have the
 * same structure, so the sampled steps bound the others. To that comes what
 * the forward path holds in host memory outside the backend (the native
 * kernels' packed weights and reused buffers), as the path itself reports it,
 * so the figures mean the same on every path.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { Sampler, type Sequence } from '../src/engine/sampler.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import type { ModelConfig } from '../src/model/hf-config.js';
import { layerKv } from '../src/engine/kv-pool.js';
import { benchEngineOptions, benchModelArgs, benchModelDir, promptIds } from './model-dir.js';

const PROMPT = 32;
const LONG = Number(process.env.BENCH_LONG_TOKENS ?? 2048);

let engineUnderTest: Engine | undefined;

/** Backend bytes at their peak plus the path's host bytes after the run. */
async function peakOf(run: () => Promise<void>, sample: boolean): Promise<number> {
  let backend: number;
  if (!sample) {
    await run();
    backend = tf.memory().numBytes;
  } else {
    const prof = await tf.profile(run);
    backend = Math.max(prof.peakBytes, tf.memory().numBytes);
  }
  return backend + (engineUnderTest?.memory().hostBytes ?? 0);
}

async function generatePeak(engine: Engine, batch: number, tokens: number): Promise<number> {
  const sampler = new Sampler(engine);
  // End-of-sequence tokens are forbidden so every row generates exactly `tokens`.
  const params = { ...DEFAULT_SAMPLING, temperature: 0.8, seed: 1, maxTokens: tokens, logitBias: { 1: -100, 106: -100 } };
  const seqs: Sequence[] = [];
  for (let b = 0; b < batch; b++) {
    await engine.resetSlot(b);
    seqs.push(await sampler.add({ slot: b, promptIds: promptIds(PROMPT, b + 1), params }));
  }
  let peak = tf.memory().numBytes + engine.memory().hostBytes;
  for (const s of seqs) peak = Math.max(peak, await peakOf(() => sampler.prefill(s).then(() => undefined), true));
  for (let step = 1; seqs.some((s) => !s.finished); step++) {
    const live = seqs.filter((s) => !s.finished);
    const last = live.some((s) => s.generated.length === tokens - 1);
    peak = Math.max(peak, await peakOf(() => sampler.step(live).then(() => undefined), step % 64 === 0 || last));
  }
  return peak;
}

/**
 * KV bytes (float32 K and V) one cached token costs, per layer type, as the
 * pool holds them (layers that read another layer's K/V hold none), and as
 * they would be if every layer held its own.
 */
function kvPerToken(c: ModelConfig) {
  const per = (shared: boolean) => {
    const out = { global: 0, sliding: 0 };
    c.layerTypes.forEach((type, l) => {
      const { heads, headDim, source } = layerKv(c, l);
      if (shared && source !== l) return;
      out[type] += 2 * heads * headDim * 4;
    });
    return out;
  };
  const layers = c.layerTypes.map((_, l) => layerKv(c, l));
  return {
    layers_holding_kv: layers.filter((k, l) => k.source === l).length,
    layers: c.numLayers,
    bytes_per_token: per(true),
    bytes_per_token_without_sharing: per(false),
  };
}

async function main(): Promise<void> {
  const model = benchModelArgs();
  const dir = await benchModelDir(model.preset, 'BF16', model.arch);
  // The service's BACKEND, CPU_KERNELS and CPU_THREADS; the tfjs graph on wasm stays on one thread.
  const engine = await Engine.load(benchEngineOptions(dir, { slots: 8, capacity: Math.max(1024, PROMPT + LONG + 64), maxBatchSize: 8, prefillChunk: 1024, graphThreads: 1 }));
  engineUnderTest = engine;
  const V = engine.config.vocabSize;
  const peak: Record<string, number> = {};
  const retained: Record<string, number> = {};
  const times: Record<string, number> = {};
  for (const [B, T] of [[1, 64], [8, 64], [1, LONG], [8, LONG]] as const) {
    const key = `b${B}_t${T}`;
    const t0 = performance.now();
    peak[key] = await generatePeak(engine, B, T);
    times[key] = Math.round(performance.now() - t0);
    retained[key] = B * T * V * 4;
  }
  await engine.resetSlot(0);
  const prompt = promptIds(1024);
  peak.prefill_1024 = await peakOf(async () => {
    const { path, pool } = engineParts(engine);
    const logits = path.prefill(prompt, { pool, slots: [0] });
    await logits?.data();
    logits?.dispose();
  }, true);
  retained.prefill_1024 = 1024 * V * 4;
  const mem = engine.memory();
  console.log(
    JSON.stringify({
      model: model.label,
      backend: engine.backend.name,
      path: engine.pathName,
      peak_bytes: peak,
      weights_bytes: mem.weightsBytes,
      kv_cache_bytes: mem.kvCacheBytes,
      kv: { ...kvPerToken(engine.config), entries: engineParts(engine).pool.entries, slots: 8 },
      host_bytes: mem.hostBytes,
      // Above weights and KV: activations, logits, scratch; never negative now that host weights count on both sides.
      transient_peak_bytes: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, v - mem.weightsBytes - mem.kvCacheBytes])),
      retained_logits_bytes: retained,
      ratios: {
        [`b1_t${LONG}_over_t64`]: round(peak[`b1_t${LONG}`] / peak.b1_t64),
        [`b8_t${LONG}_over_t64`]: round(peak[`b8_t${LONG}`] / peak.b8_t64),
      },
      wall_ms: times,
    }),
  );
  engine.dispose();
}

const round = (x: number) => Math.round(x * 10000) / 10000;


main().catch((err) => {
  console.error(err);
  process.exit(1);
});
