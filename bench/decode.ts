/**
 * `npm run bench:decode`: load time, prefill tokens/s for a 512-token prompt,
 * decode tokens/s at batch 1, 4 and 8, and peak backend bytes, with the
 * `270m` preset. Then structured outputs: decode tokens/s at batch 1 and 8
 * with every row under a JSON Schema (the grammar's mask per row and step,
 * applied before top-K), beside the same without, and what the grammar costs
 * to set up (the vocabulary's tables, a schema's compile, cold and cached).
 * Only the steps are timed: a row whose grammar completes is restarted
 * between steps. Prints one JSON object.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Engine } from '../src/engine/engine.js';
import type { GrammarSpec } from '../src/engine/grammar/grammars.js';
import { Sampler, type Sequence, type SequenceInit } from '../src/engine/sampler.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { benchEngineOptions, benchModelDir, promptIds } from './model-dir.js';

const STEPS = Number(process.env.BENCH_STEPS ?? 32);
const greedy = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1 << 20 };
/** A typical response schema: strings, a bounded integer, an enum array, a nested object. */
const SCHEMA: GrammarSpec = {
  kind: 'json_schema',
  param: 'bench',
  schema: {
    type: 'object',
    properties: {
      name: { type: 'string', maxLength: 24 },
      age: { type: 'integer', minimum: 0, maximum: 150 },
      tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, maxItems: 5 },
      address: { type: 'object', properties: { city: { type: 'string' }, zip: { type: 'string', pattern: '^[0-9]{5}$' } }, required: ['city', 'zip'] },
    },
    required: ['name', 'age', 'tags', 'address'],
    additionalProperties: false,
  },
};

/** Decode tokens/s of B rows for STEPS timed steps; a finished row is restarted (untimed) from `init(b)`. */
async function timedSteps(engine: Engine, sampler: Sampler, B: number, init: (b: number) => SequenceInit): Promise<number> {
  const start = async (b: number) => {
    await engine.resetSlot(b);
    const seq = await sampler.add(init(b));
    await sampler.prefill(seq);
    return seq;
  };
  const seqs: Sequence[] = [];
  for (let b = 0; b < B; b++) seqs.push(await start(b));
  let ms = 0;
  for (let i = 0; i <= STEPS; i++) {
    for (let b = 0; b < B; b++) if (seqs[b]!.finished || seqs[b]!.pending === undefined) seqs[b] = await start(b);
    const t0 = performance.now();
    await sampler.step(seqs);
    // The first step is a warm-up at this batch size.
    if (i > 0) ms += performance.now() - t0;
  }
  for (const s of seqs) s.release();
  return (B * STEPS * 1000) / ms;
}

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

  // Structured outputs: the grammar's set-up, then the same steps with and without a schema.
  let t1 = performance.now();
  const grammars = await engine.grammars();
  const vocabMs = performance.now() - t1;
  t1 = performance.now();
  const compiled = await grammars.compile(SCHEMA);
  const compileMs = performance.now() - t1;
  t1 = performance.now();
  await grammars.compile(SCHEMA);
  const cachedMs = performance.now() - t1;
  const structured: Record<string, { plain: number; schema: number }> = {};
  for (const B of [1, 8]) {
    const init = (grammar: boolean) => (b: number): SequenceInit => ({ slot: b, promptIds: promptIds(64, b + 2), params: greedy, ...(grammar ? { grammar: compiled } : {}) });
    structured[`b${B}`] = { plain: await timedSteps(engine, sampler, B, init(false)), schema: await timedSteps(engine, sampler, B, init(true)) };
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
      json_schema: {
        vocabulary_tables_ms: Math.round(vocabMs),
        compile_ms: Math.round(compileMs),
        compile_cached_ms: round(cachedMs),
        decode_tps: Object.fromEntries(Object.entries(structured).map(([b, r]) => [b, { plain: round(r.plain), schema: round(r.schema), ratio: round(r.schema / r.plain) }])),
        target: 'schema at least 0.8x of plain at b8',
      },
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
