// The decode step's reduction in plain JS and float64: what the webgpu and native reductions are checked against.
import type { RowLogitsInput } from '../../src/engine/top-k.js';
import { DEFAULT_SAMPLING } from '../../src/engine/types.js';

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
