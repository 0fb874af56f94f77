// The webgpu decode step's reduction (WGSL programs) against the same reduction computed in plain JS.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, releaseBackend } from '../src/engine/backend.js';
import { reduceLogits, type RowLogitsInput } from '../src/engine/top-k.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { createRng } from '../src/engine/rng.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';

/** What every row should get: edits applied, then top-k (ties to the lower id) and both log-sum-exps, in float64. */
function expected(values: Float32Array, V: number, rows: RowLogitsInput[]) {
  return rows.map((r, b) => {
    const x = Array.from(values.subarray(b * V, (b + 1) * V));
    const p = r.params;
    const touched = new Set([...Object.keys(p.logitBias).map(Number), ...r.counts.keys()]);
    for (const id of touched) {
      const n = r.counts.get(id) ?? 0;
      const rep = n > 0 ? p.repetitionPenalty : 1;
      const old = x[id];
      x[id] = (old > 0 ? old / rep : old * rep) - ((n > 0 ? p.presencePenalty : 0) + p.frequencyPenalty * n) + (p.logitBias[id] ?? 0);
    }
    const order = x.map((v, i) => i).sort((i, j) => x[j] - x[i] || i - j);
    const lse = (s: number) => {
      const m = x.reduce((a, v) => Math.max(a, v * s), -Infinity);
      return m + Math.log(x.reduce((a, v) => a + Math.exp(v * s - m), 0));
    };
    const temp = p.temperature > 0 ? p.temperature : 1;
    return { ids: order.slice(0, r.k), logits: order.slice(0, r.k).map((i) => Math.fround(x[i])), lse: lse(1), scaled: lse(1 / temp) };
  });
}

t.test('fused top-k on webgpu equals the reduction in JS', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  await initBackend('webgpu');
  t.teardown(() => releaseBackend());
  const rng = createRng(11);
  for (const V of [262144, 5000]) {
    const B = 3;
    const values = new Float32Array(B * V).map(() => (rng.next() - 0.5) * 20);
    values[7] = values[9] = 50; // a tie in row 0: the lower id comes first
    const rows: RowLogitsInput[] = [
      { params: { ...DEFAULT_SAMPLING, temperature: 0 }, counts: new Map(), k: 5 },
      { params: { ...DEFAULT_SAMPLING, temperature: 0.7, logitBias: { 3: 100, 4: -100 }, presencePenalty: 0.5, frequencyPenalty: 0.25 }, counts: new Map([[10, 2], [11, 1]]), k: 64 },
      { params: { ...DEFAULT_SAMPLING, temperature: 1.3, repetitionPenalty: 1.5 }, counts: new Map([[V - 1, 3], [12, 1]]), k: 20 },
    ];
    const baseline = tf.memory().numTensors;
    const got = await reduceLogits(tf.tensor2d(values, [B, V]), rows);
    const want = expected(values, V, rows);
    t.equal(tf.memory().numTensors, baseline, `V=${V}: the logits were disposed and nothing leaked`);
    got.forEach((g, b) => {
      t.same(Array.from(g.ids), want[b].ids, `V=${V} row ${b}: top-${rows[b].k} ids in order`);
      t.ok(Array.from(g.logits).every((v, i) => Math.abs(v - want[b].logits[i]) < 1e-4), `V=${V} row ${b}: their logits`);
      t.ok(Math.abs(g.logsumexp - want[b].lse) < 1e-3, `V=${V} row ${b}: log-sum-exp ${g.logsumexp} vs ${want[b].lse}`);
      t.ok(Math.abs(g.scaledLogsumexp - want[b].scaled) < 1e-3, `V=${V} row ${b}: scaled log-sum-exp ${g.scaledLogsumexp} vs ${want[b].scaled}`);
    });
  }
});
