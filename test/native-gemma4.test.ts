// Gemma 4 on the native CPU kernels, beyond the parity test: a decode step streams only the chosen experts, a prompt chunk
// longer than a sliding ring (KV-shared layers read the source layer's K/V of the call), batched rows at different lengths
// and cache-less batches against the graph, the per-layer table held in 16 bits, and the start-up check's host figure.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { checkMemory } from '../src/engine/memory-check.js';
import { Gemma4NativePath } from '../src/engine/native/gemma4.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { parseModelConfig } from '../src/model/hf-config.js';
import { modelDir, reference } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;
const load = (name: string, kernels: 'native' | 'tfjs', capacity = 128) =>
  Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'cpu', cpuKernels: kernels, cpuThreads: 2, slots: 2, capacity }));

async function top5(logits: tf.Tensor2D, row = 0): Promise<number[]> {
  const one = tf.slice(logits, [row, 0], [1, logits.shape[1]]);
  const top = tf.topk(one, 5);
  const vals = Array.from(await top.values.data());
  tf.dispose([one, top.values, top.indices]);
  return vals;
}
const worstOf = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (v, j) => Math.abs(v - b[j])));

if (typeof nativeAddon().addon?.gemma4Layer !== 'function') {
  t.comment('native kernels with the Gemma 4 layer are not built; skipping');
} else {
  t.test('MoE: a decode step multiplies only the chosen experts', async (t) => {
    const engine = await load('gemma4-tiny-moe', 'native');
    t.teardown(() => engine.dispose());
    const { path, pool } = engineParts(engine);
    t.ok(path instanceof Gemma4NativePath, 'the native Gemma 4 path');
    const native = path as Gemma4NativePath;
    const c = engine.config;
    const { numExperts: E, topK } = c.gemma4!.moe!;
    const baseline = tf.memory().numTensors;
    const ids = reference('gemma4-tiny-moe').cases[1].input_ids;
    pool.reset(0);
    pool.reset(1);
    path.prefill(ids, { pool, slots: [0] })?.dispose();
    path.prefill(ids.slice(0, 9), { pool, slots: [1] })?.dispose();
    let before = native.expertsRun;
    path.forward([[ids[0]]], { pool, slots: [0] }).dispose();
    t.equal(native.expertsRun - before, c.numLayers * topK, `one row: ${topK} of ${E} experts per layer`);
    before = native.expertsRun;
    path.forward([[ids[1]], [ids[2]]], { pool, slots: [0, 1] }).dispose();
    const run = native.expertsRun - before;
    t.ok(run >= c.numLayers * topK && run <= c.numLayers * Math.min(E, 2 * topK), `two rows: ${run} expert products over ${c.numLayers} layers`);
    pool.reset(0);
    pool.reset(1);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });

  for (const name of ['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const) {
    t.test(`${name}: a chunk longer than the sliding ring, then batched rows at different lengths`, async (t) => {
      const engine = await load(name, 'native');
      t.teardown(() => engine.dispose());
      const { path, pool } = engineParts(engine);
      const baseline = tf.memory().numTensors;
      const [short, , long] = reference(name).cases;
      const ring = pool.entries.sliding;
      t.ok(long.input_ids.length - 10 > ring, `a chunk of ${long.input_ids.length - 10} tokens wraps the sliding ring of ${ring}`);
      pool.reset(0);
      pool.reset(1);
      path.prefill(long.input_ids.slice(0, -10), { pool, slots: [0], noLogits: true });
      let logits = path.prefill(long.input_ids.slice(-10), { pool, slots: [0] })!;
      let worst = worstOf(await top5(logits), long.greedy_top5_logits[0]);
      logits.dispose();
      t.ok(worst < TOL, `after the chunks: last logits within ${TOL} (worst ${worst.toExponential(2)})`);
      logits = path.prefill(short.input_ids, { pool, slots: [1] })!;
      logits.dispose();
      logits = path.forward([[long.greedy_new_ids[0]], [short.greedy_new_ids[0]]], { pool, slots: [0, 1] });
      for (const [row, c] of [[0, long], [1, short]] as const) {
        worst = worstOf(await top5(logits, row), c.greedy_top5_logits[1]);
        t.ok(worst < TOL, `${c.name} (length ${c.input_ids.length}), batch row ${row}: decode step within ${TOL} (worst ${worst.toExponential(2)})`);
      }
      logits.dispose();
      pool.reset(0);
      pool.reset(1);
      t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
    });

    t.test(`${name}: cache-less batches of two rows match the graph`, async (t) => {
      const [native, graph] = [await load(name, 'native'), await load(name, 'tfjs')];
      t.teardown(() => {
        native.dispose();
        graph.dispose();
      });
      const ids = reference(name).cases[1].input_ids;
      const rows = [ids.slice(0, 6), ids.slice(10, 16)];
      const [a, b] = [engineParts(native).path.forward(rows), engineParts(graph).path.forward(rows)];
      const worst = worstOf(await a.data(), await b.data());
      tf.dispose([a, b]);
      t.ok(worst < TOL, `every logit within ${TOL} of the graph's (worst ${worst.toExponential(2)})`);
    });
  }

  t.test('the per-layer table stays in 16 bits and counts in memory()', async (t) => {
    const engine = await load('gemma4-tiny-ple', 'native');
    t.teardown(() => engine.dispose());
    const { path } = engineParts(engine);
    const table = path.weights.gemma4Native!.perLayer!.table;
    const g = engine.config.gemma4!;
    t.same([table.rows, table.cols], [g.perLayerVocabSize, engine.config.numLayers * g.perLayerInputSize]);
    t.equal(table.byteLength, 2 * table.rows * table.cols, 'bf16 bits: 2 bytes a value');
    const m = path.memory();
    t.ok(m.hostWeightBytes > table.byteLength, `host weight bytes ${m.hostWeightBytes} include the table's ${table.byteLength}`);
    t.ok(m.backendWeightBytes < 1024, 'only the final norm is a tfjs tensor');
  });
}

t.test('the start-up check counts the per-layer table in 16 bits on the native path', async (t) => {
  const raw = JSON.parse(await readFile(join(modelDir('gemma4-tiny-ple'), 'config.json'), 'utf8')) as Record<string, unknown>;
  const { totalmem } = await import('node:os');
  // A table of 0.3 x the machine's memory in bf16: fits in 16 bits, would not at 4 bytes a value.
  const LP = 8 * 8;
  const c = parseModelConfig({ ...raw, vocab_size_per_layer_input: Math.ceil((0.3 * totalmem()) / 2 / LP) });
  t.doesNotThrow(() => checkMemory(c, 'cpu', 1, 32, 1, 32, false, true), 'fits on the native path');
  const tooBig = parseModelConfig({ ...raw, vocab_size_per_layer_input: Math.ceil((1.2 * totalmem()) / 2 / LP) });
  t.throws(() => checkMemory(tooBig, 'cpu', 1, 32, 1, 32, false, true), /host memory for the native CPU kernels/, 'a table over the memory is refused');
});
