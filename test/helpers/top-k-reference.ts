// The decode step's reduction in plain JS and float64: what the webgpu and native reductions are checked against.
import * as tf from '@tensorflow/tfjs-core';
import type { RowLogitsInput } from '../../src/engine/reduce.js';
import { createRng } from '../../src/engine/rng.js';
import { DEFAULT_SAMPLING, type TopK } from '../../src/engine/types.js';

/** What every row should get: edits applied, then top-k (ties to the lower id) and both log-sum-exps, in float64. */
export function expectedTopK(values: Float32Array, V: number, rows: RowLogitsInput[]) {
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


/** Three rows: greedy; bias, presence and frequency penalties at 0.7; a repetition penalty at 1.3 (on the last id too). */
export function testRows(V: number): RowLogitsInput[] {
  return [
    { params: { ...DEFAULT_SAMPLING, temperature: 0 }, counts: new Map(), k: 5 },
    { params: { ...DEFAULT_SAMPLING, temperature: 0.7, logitBias: { 3: 100, 4: -100 }, presencePenalty: 0.5, frequencyPenalty: 0.25 }, counts: new Map([[10, 2], [11, 1]]), k: 64 },
    { params: { ...DEFAULT_SAMPLING, temperature: 1.3, repetitionPenalty: 1.5 }, counts: new Map([[V - 1, 3], [12, 1]]), k: 20 },
  ];
}

/** The assertions of a tap test that this module needs. */
interface Asserts {
  equal(a: unknown, b: unknown, msg: string): void;
  same(a: unknown, b: unknown, msg: string): void;
  ok(v: boolean, msg: string): void;
}

/**
 * Runs `reduce` on random logits (V = 262144 and 5000, a tie in row 0) for
 * testRows, and checks it against expectedTopK: ids in order, their logits,
 * both log-sum-exps within `lseTol`, and no tensor left behind.
 */
export async function checkReduction(t: Asserts, reduce: (logits: tf.Tensor2D, rows: RowLogitsInput[]) => Promise<TopK[]>, lseTol: number): Promise<void> {
  const rng = createRng(11);
  for (const V of [262144, 5000]) {
    const B = 3;
    const values = new Float32Array(B * V).map(() => (rng.next() - 0.5) * 20);
    values[7] = values[9] = 50; // a tie in row 0: the lower id comes first
    const rows = testRows(V);
    const baseline = tf.memory().numTensors;
    const got = await reduce(tf.tensor2d(values, [B, V]), rows);
    const want = expectedTopK(values, V, rows);
    t.equal(tf.memory().numTensors, baseline, `V=${V}: the logits were disposed and nothing leaked`);
    got.forEach((g, b) => {
      t.same(Array.from(g.ids), want[b].ids, `V=${V} row ${b}: top-${rows[b].k} ids in order`);
      t.ok(Array.from(g.logits).every((v, i) => Math.abs(v - want[b].logits[i]) < 1e-4), `V=${V} row ${b}: their logits`);
      t.ok(Math.abs(g.logsumexp - want[b].lse) < lseTol, `V=${V} row ${b}: log-sum-exp ${g.logsumexp} vs ${want[b].lse}`);
      t.ok(Math.abs(g.scaledLogsumexp - want[b].scaled) < lseTol, `V=${V} row ${b}: scaled log-sum-exp ${g.scaledLogsumexp} vs ${want[b].scaled}`);
    });
  }
}
