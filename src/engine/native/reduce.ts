/** The decode step's reduction on the native CPU kernels: the edits in JS (a handful of entries), the rest in one call. */
import type * as tf from '@tensorflow/tfjs-core';
import { reduceOnGraph } from '../graph/reduce.js';
import { edits, rowMasks, stepK, temperatureScales, type RowLogitsInput } from '../reduce.js';
import { memoryOf } from '../tensor-memory.js';
import type { TopK } from '../types.js';
import type { NativeKernels } from './kernels.js';

/** Reduces logits [B, V] to each row's top-K; disposes `logits`. */
export async function reduceNative(logits: tf.Tensor2D, rows: RowLogitsInput[], native: NativeKernels): Promise<TopK[]> {
  const K = stepK(rows);
  const [B, V] = logits.shape;
  if (K > V) return reduceOnGraph(logits, rows);
  // The tensor's own memory, edited in place (it is disposed right after); no tfjs allocation may happen in between.
  const x = memoryOf(logits);
  const e = edits(rows);
  e.rep.forEach((rep, i) => {
    const at = e.idx[2 * i]! * V + e.idx[2 * i + 1]!;
    const old = x[at]!;
    x[at] = (old > 0 ? old / rep : old * rep) - e.sub[i]! + e.add[i]!;
  });
  const out = await native.reduce(x, B, V, K, temperatureScales(rows), rowMasks(rows, V)).later();
  logits.dispose();
  return rows.map((r, b) => ({
    ids: out.ids.slice(b * K, b * K + r.k),
    logits: out.values.slice(b * K, b * K + r.k),
    logsumexp: out.lse[b]!,
    scaledLogsumexp: out.scaledLse[b]!,
  }));
}
