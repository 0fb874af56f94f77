/**
 * The decode step's reduction as tfjs ops (the graph path, and the other
 * paths' fallback for a K beyond their own programs): bias and penalties as a
 * sparse scatter, then topk and the log-sum-exps over the full vocabulary.
 */
import * as tf from '@tensorflow/tfjs-core';
import { edits, rowMasks, stepK, type RowLogitsInput } from '../reduce.js';
import type { TopK } from '../types.js';

/** Applies bias and penalties to the [B, V] logits (a new tensor; the input is not kept). */
function applyEdits(logits: tf.Tensor2D, rows: RowLogitsInput[]): tf.Tensor2D {
  const e = edits(rows);
  if (e.rep.length === 0) return logits;
  const n = e.rep.length;
  const indices = tf.tensor2d(e.idx, [n, 2], 'int32');
  const old = tf.gatherND(logits, indices) as tf.Tensor1D;
  const rep = tf.tensor1d(e.rep);
  // HF repetition penalty: positive logits are divided, negative ones multiplied.
  const repeated = tf.where(tf.greater(old, 0), tf.div(old, rep), tf.mul(old, rep));
  const updated = tf.add(tf.sub(repeated, tf.tensor1d(e.sub)), tf.tensor1d(e.add));
  return tf.tensorScatterUpdate(logits, indices, updated) as tf.Tensor2D;
}

/** Sets the tokens the rows' masks leave out to -inf (a new tensor; the input is not kept). */
function applyMasks(logits: tf.Tensor2D, rows: RowLogitsInput[]): tf.Tensor2D {
  const [B, V] = logits.shape;
  const masks = rowMasks(rows, V);
  if (!masks) return logits;
  const W = Math.ceil(V / 32);
  const add = new Float32Array(B * V);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < V; i++) if (!((masks[b * W + (i >> 5)]! >>> (i & 31)) & 1)) add[b * V + i] = -Infinity;
  return tf.add(logits, tf.tensor2d(add, [B, V]));
}

/** Reduces logits [B, V] to each row's top-K; disposes `logits`. */
export async function reduceOnGraph(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
  const K = stepK(rows);
  const scaled = rows.some((r) => r.params.temperature !== 0 && r.params.temperature !== 1);
  const out = tf.tidy(() => {
    const edited = applyMasks(applyEdits(logits, rows), rows);
    const top = tf.topk(edited, K);
    const lse = tf.logSumExp(edited, -1);
    let lseScaled = lse;
    if (scaled) {
      const temps = tf.tensor2d(rows.map((r) => (r.params.temperature > 0 ? r.params.temperature : 1)), [rows.length, 1]);
      lseScaled = tf.logSumExp(tf.div(edited, temps), -1);
    }
    return [top.values, top.indices, lse, lseScaled];
  });
  logits.dispose();
  const [values, ids, lse, lseScaled] = await Promise.all(out.map((t) => t.data()));
  tf.dispose(out);
  return rows.map((r, b) => ({
    ids: Int32Array.from((ids as Int32Array).subarray(b * K, b * K + r.k)),
    logits: Float32Array.from((values as Float32Array).subarray(b * K, b * K + r.k)),
    logsumexp: lse[b]!,
    scaledLogsumexp: lseScaled[b]!,
  }));
}
