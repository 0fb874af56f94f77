/**
 * `npm run bench:decode`: load time, prefill tokens/s for a 512-token prompt,
 * decode tokens/s at batch 1, 4 and 8, and peak backend bytes, with the
 * `270m` preset. Prints one JSON object.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Engine } from '../src/engine/engine.js';
import { Sampler, type Sequence } from '../src/engine/sampler.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { benchEngineOptions, benchModelDir, promptIds } from './model-dir.js';

const STEPS = Number(process.env.BENCH_STEPS ?? 32);
const greedy = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1 << 20 };

async function main(): Promise<void> {
  const dir = await benchModelDir();
  const engine = await Engine.load(benchEngineOptions(dir, { slots: 8, capacity: 1024, maxBatchSize: 8, prefillChunk: 512 }));
  const sampler = new Sampler(engine);

  // Prefill: one 512-token prompt in one chunk, timed after a warm-up run.
  const prompt = promptIds(512);
  let prefillMs = Infinity;
  let prefillPeak = 0;
  for (let i = 0; i < 2; i++) {
    await engine.resetSlot(0);
    const seq = await sampler.add({ slot: 0, promptIds: prompt, params: greedy });
    const t0 = performance.now();
    const prof = await tf.profile(async () => {
      await sampler.prefill(seq, 512);
    });
    prefillMs = Math.min(prefillMs, performance.now() - t0);
    prefillPeak = Math.max(prefillPeak, prof.peakBytes);
  }

  const decode: Record<string, number> = {};
  let decodePeak = 0;
  for (const B of [1, 4, 8]) {
    const seqs: Sequence[] = [];
    for (let b = 0; b < B; b++) {
      await engine.resetSlot(b);
      seqs.push(await sampler.add({ slot: b, promptIds: promptIds(64, b + 2), params: greedy }));
    }
    for (const s of seqs) await sampler.prefill(s);
    await sampler.step(seqs); // warm-up at this batch size
    const prof = await tf.profile(async () => {
      await sampler.step(seqs);
    });
    decodePeak = Math.max(decodePeak, prof.peakBytes);
    const t0 = performance.now();
    for (let i = 0; i < STEPS; i++) await sampler.step(seqs);
    decode[`b${B}`] = (B * STEPS * 1000) / (performance.now() - t0);
  }

  const mem = engine.memory();
  console.log(
    JSON.stringify({
      model: '270m preset (Gemma 3 270M shape, random weights, float32 compute)',
      backend: engine.backend.name,
      load_ms: Math.round(engine.loadMs),
      prefill_512_tps: Math.round((512 * 1000) / prefillMs),
      decode_tps: { b1: round(decode.b1), b4: round(decode.b4), b8_aggregate: round(decode.b8) },
      peak_backend_bytes: Math.max(prefillPeak, decodePeak),
      // The native kernels' weights and scratch live outside the backend: the process's resident set shows them.
      linear: engine.linearKernels,
      rss_bytes: process.memoryUsage().rss,
      weights_bytes: mem.weightsBytes,
      kv_cache_bytes: mem.kvCacheBytes,
      steps: STEPS,
    }),
  );
  engine.dispose();
}

const round = (x: number) => Math.round(x * 100) / 100;

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
