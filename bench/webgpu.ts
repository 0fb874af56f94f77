/**
 * The engine on a GPU through WebGPU, in one process per command:
 *
 *   node dist/bench/webgpu.js probe              adapter, limits, a [1,640]x[640,262144] matmul
 *   node dist/bench/webgpu.js parity             the HF fixture checks of test/engine-parity.test.ts (same tolerance)
 *   node dist/bench/webgpu.js decode MODEL_DIR   prefill 512 and decode at batch 1, 8 and 32
 *   node dist/bench/webgpu.js breakdown MODEL_DIR  a decode step's time: recording, forward pass, top-k
 *   node dist/bench/webgpu.js matmul             the linear-layer programs alone, beside the card's copy bandwidth (webgpu-matmul.ts)
 *
 * Each prints one JSON object. BACKEND picks the backend (default webgpu),
 * DEVICE_NAME is copied into the result (the device script passes
 * nvidia-smi's name), BENCH_STEPS sets the timed decode steps per batch size,
 * WEBGPU_KERNELS picks the fused WGSL programs (default) or the tfjs op graph,
 * WEBGPU_WEIGHTS=float32 keeps a bf16 checkpoint's weights in f32 on the
 * fused programs (default: bf16 where the checkpoint holds bf16).
 * tap is a dev dependency, so the parity checks are repeated here rather
 * than run through the test file on machines that get production modules.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadConfig } from '../config/index.js';
import { initBackend } from '../src/engine/backend.js';
import { Engine, engineOptions, engineParts, type EngineOptions } from '../src/engine/engine.js';
import { Sampler, type Sequence } from '../src/engine/sampler.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { webgpuLimits } from '../src/engine/webgpu/adapter.js';
import { WebGPUPath } from '../src/engine/webgpu/forward.js';
import { FusedPath } from '../src/engine/webgpu/fused-path.js';
import { promptIds } from './model-dir.js';
import { matmulBench } from './webgpu-matmul.js';

/** The service's configuration from the environment, but BACKEND defaults to webgpu here. */
const CONFIG = loadConfig({ ...process.env, BACKEND: process.env.BACKEND || 'webgpu' });
const BACKEND = CONFIG.model.backend;
/** Options for an engine on the model in `dir` (on wasm, the tfjs graph on one thread). */
const options = (dir: string, o: Partial<EngineOptions>): EngineOptions => engineOptions(CONFIG, { dir, graphThreads: 1, ...o });
const KERNELS = process.env.WEBGPU_KERNELS === 'graph' ? 'graph' : 'fused';
/** Dispatches per command buffer to try at batch 1 besides one per call (WEBGPU_SUBMIT_SWEEP, e.g. "32 64"). */
const SUBMIT_SWEEP = (process.env.WEBGPU_SUBMIT_SWEEP ?? '').split(/\s+/).filter(Boolean).map(Number);
const WEIGHTS = process.env.WEBGPU_WEIGHTS === 'float32' ? 'float32' : 'auto';
const STEPS = Number(process.env.BENCH_STEPS ?? 16);
const TOL = 1e-3;
const greedy = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1 << 20 };
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const note = (msg: string) => process.stderr.write(`[webgpu bench ${Math.round(performance.now())} ms] ${msg}\n`);
const stamp = () => ({ device: process.env.DEVICE_NAME ?? 'unknown', date: new Date().toISOString() });

async function probe(): Promise<object> {
  const backend = await initBackend(BACKEND);
  note(`started ${JSON.stringify(backend)}`);
  const times: number[] = [];
  // Two rounds with a garbage collection between them (node --expose-gc): the device must survive it.
  for (let round = 0; round < 2; round++) {
    const x = tf.randomNormal([1, 640]);
    const w = tf.randomNormal([640, 262144]);
    for (let i = 0; i < 12; i++) {
      const t0 = performance.now();
      const y = tf.matMul(x, w);
      await y.data();
      times.push(performance.now() - t0);
      y.dispose();
    }
    tf.dispose([x, w]);
    (globalThis as { gc?: () => void }).gc?.();
    note(`round ${round} done`);
  }
  times.sort((a, b) => a - b);
  return { ...stamp(), backend, limits: webgpuLimits(), matmul_1x640x262144_ms_with_readback: round(times[12], 3), memory: tf.memory() };
}

interface ReferenceCase {
  name: string;
  input_ids: number[];
  top_k: number;
  top_ids: number[][];
  top_logits: number[][];
  logsumexp: number[];
  greedy_new_ids: number[];
  greedy_top5_logits: number[][];
}

function idsMatchUpToTies(ours: number[], ref: number[], refLogits: number[]): boolean {
  return ours.every((id, j) => {
    if (id === ref[j]) return true;
    const prev = j > 0 ? Math.abs(refLogits[j - 1] - refLogits[j]) : Infinity;
    const next = j + 1 < refLogits.length ? Math.abs(refLogits[j + 1] - refLogits[j]) : Infinity;
    return Math.min(prev, next) < TOL;
  });
}

async function parity(): Promise<object> {
  const root = join(process.cwd(), 'test', 'fixtures', 'hf-reference');
  const results = [];
  let allPass = true;
  const storage: Array<{ model: string; bf16_vs_f32_worst_abs: number; pass: boolean }> = [];
  for (const name of ['gemma3-tiny', 'gemma3-tiny-scaled', 'gemma2-tiny']) {
    // Each model with bf16 weights (the checkpoint's) and with f32 weights; every logit of the two must agree to 1e-5.
    const raw: Float32Array[][] = [];
    for (const webgpuWeights of ['auto', 'float32'] as const) {
      const dir = join(root, name);
      const cases = (JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: ReferenceCase[] }).cases;
      const engine = await Engine.load(options(dir, { slots: 2, capacity: 128, webgpuWeights }));
      note(`${name} loaded on ${engine.backend.name} (${webgpuWeights} weights)`);
      const logitsSeen: Float32Array[] = [];
      raw.push(logitsSeen);
      const baseline = tf.memory().numTensors;
      for (const c of cases) {
        // Full forward pass (score): top-k logits, ids up to ties, logsumexp at every position.
        const positions = await engine.score(c.input_ids, c.top_k);
        let scoreWorst = 0;
        let lseWorst = 0;
        let idsOk = true;
        positions.forEach((p, i) => {
          scoreWorst = Math.max(scoreWorst, ...p.top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j])));
          lseWorst = Math.max(lseWorst, Math.abs(p.logsumexp - c.logsumexp[i]));
          idsOk &&= idsMatchUpToTies(p.top_ids, c.top_ids[i], c.top_logits[i]);
        });
        // Greedy continuation through the cached decode path, teacher-forced.
        const { path, pool } = engineParts(engine);
        pool.reset(0);
        let logits = path.prefill(c.input_ids, { pool, slots: [0] }) as tf.Tensor2D;
        let decodeWorst = 0;
        let greedyOk = true;
        for (let s = 0; s < c.greedy_new_ids.length; s++) {
          logitsSeen.push((await logits.data()) as Float32Array);
          const top = tf.topk(logits, 5);
          const ids = Array.from(await top.indices.data());
          const vals = Array.from(await top.values.data());
          tf.dispose([top.values, top.indices, logits]);
          const ref = c.greedy_top5_logits[s];
          decodeWorst = Math.max(decodeWorst, ...vals.map((v, j) => Math.abs(v - ref[j])));
          if (ref[0] - ref[1] > 1e-2 && ids[0] !== c.greedy_new_ids[s]) greedyOk = false;
          logits = path.forward([[c.greedy_new_ids[s]]], { pool, slots: [0] });
        }
        logits.dispose();
        pool.reset(0);
        const leaked = tf.memory().numTensors - baseline;
        const pass = scoreWorst < TOL && lseWorst < TOL && decodeWorst < TOL && idsOk && greedyOk && leaked === 0;
        allPass &&= pass;
        results.push({
          model: name, weights: webgpuWeights, case: c.name, pass,
          score_worst_abs: scoreWorst, logsumexp_worst_abs: lseWorst, decode_top5_worst_abs: decodeWorst,
          ids_match: idsOk, greedy_ids_match: greedyOk, leaked_tensors: leaked,
        });
      }
      engine.dispose();
    }
    let worst = 0;
    raw[0].forEach((a, i) => a.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - raw[1][i][j])))));
    storage.push({ model: name, bf16_vs_f32_worst_abs: worst, pass: worst <= 1e-5 });
    allPass &&= worst <= 1e-5;
  }
  return { ...stamp(), backend: BACKEND, tolerance: TOL, all_pass: allPass, bf16_storage: storage, cases: results };
}

async function decode(dir: string): Promise<object> {
  const maxB = 32;
  const engine = await Engine.load(options(dir, { slots: maxB, capacity: 1024, maxBatchSize: maxB, prefillChunk: 512, webgpuKernels: KERNELS, webgpuWeights: WEIGHTS }));
  const sampler = new Sampler(engine);
  note(`loaded ${dir} on ${engine.backend.name} in ${Math.round(engine.loadMs)} ms`);

  const prompt = promptIds(512);
  let prefillMs = Infinity;
  for (let i = 0; i < 3; i++) {
    await engine.resetSlot(0);
    const seq = await sampler.add({ slot: 0, promptIds: prompt, params: greedy });
    const t0 = performance.now();
    await sampler.prefill(seq, 512);
    prefillMs = Math.min(prefillMs, performance.now() - t0);
  }

  note(`prefill 512: ${round(prefillMs)} ms`);
  const decodeRuns: Array<{ batch: number; tokens_per_s: number; step_ms_median: number; steps: number; context_after: number }> = [];
  let kernelsPerStepB1: number | undefined;
  const path = engineParts(engine).path;
  const fusedPath = path instanceof FusedPath ? path : undefined;
  const submitSweep: Array<{ submit_every: number; step_ms_median: number }> = [];
  for (const B of [1, 8, 32]) {
    const seqs: Sequence[] = [];
    for (let b = 0; b < B; b++) {
      await engine.resetSlot(b);
      seqs.push(await sampler.add({ slot: b, promptIds: promptIds(64, b + 2), params: greedy }));
    }
    for (const s of seqs) await sampler.prefill(s);
    for (let i = 0; i < 2; i++) await sampler.step(seqs);
    const times: number[] = [];
    for (let i = 0; i < STEPS; i++) {
      const t0 = performance.now();
      await sampler.step(seqs);
      times.push(performance.now() - t0);
    }
    const total = times.reduce((a, b) => a + b, 0);
    times.sort((a, b) => a - b);
    note(`decode batch ${B}: median step ${round(times[times.length >> 1])} ms`);
    decodeRuns.push({
      batch: B, steps: STEPS, context_after: seqs[0].promptTokens + seqs[0].generated.length,
      tokens_per_s: round((B * STEPS * 1000) / total), step_ms_median: round(times[times.length >> 1]),
    });
    if (B === 1 && fusedPath) {
      // The same steps with the call's dispatches split over several command buffers (the host records while the device runs).
      for (const every of SUBMIT_SWEEP) {
        fusedPath.submitEvery = every;
        for (let i = 0; i < 2; i++) await sampler.step(seqs);
        const t: number[] = [];
        for (let i = 0; i < STEPS; i++) {
          const t0 = performance.now();
          await sampler.step(seqs);
          t.push(performance.now() - t0);
        }
        t.sort((a, b) => a - b);
        submitSweep.push({ submit_every: every, step_ms_median: round(t[t.length >> 1]) });
        note(`decode batch 1, submit every ${every}: median step ${round(t[t.length >> 1])} ms`);
      }
      fusedPath.submitEvery = 0;
    }
    if (B === 1) {
      // tfjs kernels (the graph, or the top-k after the fused pass) plus the fused pass's own dispatches.
      const path = engineParts(engine).path;
      const fused = path instanceof WebGPUPath ? path : undefined;
      const before = fused?.dispatches ?? 0;
      const prof = await tf.profile(async () => {
        await sampler.step(seqs);
      });
      kernelsPerStepB1 = prof.kernels.length + (fused ? fused.dispatches - before : 0);
    }
  }
  const mem = engine.memory();
  const out = {
    ...stamp(),
    backend: engine.backend.name,
    backend_reason: engine.backend.reason,
    kernels: engine.backend.name === 'webgpu' ? KERNELS : 'graph',
    model: dir,
    config: { layers: engine.config.numLayers, hidden: engine.config.hiddenSize, vocab: engine.config.vocabSize },
    cache_capacity: 1024,
    load_ms: Math.round(engine.loadMs),
    prefill_512_tps: Math.round((512 * 1000) / prefillMs),
    prefill_512_ms: round(prefillMs),
    decode: decodeRuns,
    decode_b1_tps: decodeRuns[0].tokens_per_s,
    decode_b8_aggregate_tps: decodeRuns[1].tokens_per_s,
    decode_b32_aggregate_tps: decodeRuns[2].tokens_per_s,
    weights: WEIGHTS === 'float32' ? 'float32' : 'bf16 where the checkpoint holds bf16',
    // A batch-1 step reads every weight once (the tied embedding as the unembedding); the cache reads are left out.
    b1_weight_gbps: round(mem.weightsBytes / (decodeRuns[0].step_ms_median * 1e6)),
    kernels_per_decode_step_b1: kernelsPerStepB1,
    decode_b1_submit_sweep: submitSweep,
    memory: mem,
  };
  engine.dispose();
  return out;
}

/**
 * Where a step's time goes, for decode at batch 1, 8 and 32 (64-token
 * contexts): recording the forward pass (JS), the forward pass until its
 * logits can be read, and the device-side top-k reduction of those logits.
 * Medians of BENCH_STEPS runs.
 */
async function breakdown(dir: string): Promise<object> {
  const engine = await Engine.load(options(dir, { slots: 32, capacity: 1024, maxBatchSize: 32, prefillChunk: 512, webgpuKernels: KERNELS, webgpuWeights: WEIGHTS }));
  const { path, pool } = engineParts(engine);
  const rows: Record<string, unknown>[] = [];
  const median = (xs: number[]) => round([...xs].sort((x, y) => x - y)[xs.length >> 1]);
  const firstValue = async (t: tf.Tensor2D) => {
    const one = tf.slice(t, [0, 0], [1, 1]);
    await one.data();
    one.dispose();
  };
  for (const B of [1, 8, 32]) {
    const slots = Array.from({ length: B }, (_, b) => b);
    for (const s of slots) {
      pool.reset(s);
      path.prefill(promptIds(64, s + 2), { pool, slots: [s], noLogits: true });
    }
    const record: number[] = [];
    const forward: number[] = [];
    const reduce: number[] = [];
    for (let i = 0; i < STEPS + 2; i++) {
      const t0 = performance.now();
      const logits = path.forward(slots.map(() => [1000 + i]), { pool, slots });
      const t1 = performance.now();
      await firstValue(logits);
      const t2 = performance.now();
      await path.reduce(logits, slots.map(() => ({ params: greedy, counts: new Map(), k: engine.topKCap })));
      const t3 = performance.now();
      if (i < 2) continue;
      record.push(t1 - t0);
      forward.push(t2 - t0);
      reduce.push(t3 - t2);
    }
    rows.push({ batch: B, record_ms: median(record), forward_ms: median(forward), reduce_top_k_ms: median(reduce), top_k: engine.topKCap });
    note(`batch ${B}: ${JSON.stringify(rows.at(-1))}`);
  }
  const out = { ...stamp(), backend: engine.backend.name, kernels: KERNELS, model: dir, rows };
  engine.dispose();
  return out;
}

async function main(): Promise<void> {
  const [cmd, arg] = process.argv.slice(2);
  let result: object;
  if (cmd === 'probe') result = await probe();
  else if (cmd === 'parity') result = await parity();
  else if (cmd === 'decode' && arg) result = await decode(arg);
  else if (cmd === 'breakdown' && arg) result = await breakdown(arg);
  else if (cmd === 'matmul') {
    await initBackend(BACKEND);
    result = { ...stamp(), ...(await matmulBench(note)) };
  } else throw new Error('usage: webgpu.js probe | parity | decode MODEL_DIR | breakdown MODEL_DIR | matmul');
  console.log(JSON.stringify(result));
}

main().then(
  // Dawn keeps the process alive while the device exists.
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
