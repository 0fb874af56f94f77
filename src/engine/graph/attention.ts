/**
 * Attention for one row (one sequence) of a forward call, in whichever
 * operand order is cheapest on wasm. Batched matmuls take a slow generic path
 * there and XNNPACK packs the right operand of a 2-D product (copying it), so:
 *
 * - few queries (decode, short chunks): the cache is the left operand,
 *   scores^T = K q^T and out^T = V^T p^T; only small tensors are transposed,
 *   and the cache may be written in place (XNNPACK never holds a packed copy);
 * - many queries (prompt chunks): scores = q K^T and out = p V with the keys
 *   and values as right operands, which transposes the cache once instead of
 *   the much larger score matrix twice.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface RowAttentionInput {
  /** Queries grouped per KV head: [1, kvHeads, g * T, headDim] (g query heads share a KV head). */
  q: tf.Tensor4D;
  /** The call's own keys and values for this row, [1, kvHeads, T, headDim]; absent when already in the cache. */
  k?: tf.Tensor4D;
  v?: tf.Tensor4D;
  /** The slot's cache: K [1, kvHeads, E, headDim] and V^T [1, kvHeads, headDim, E]. */
  cache?: { k: tf.Tensor4D; vT: tf.Tensor4D };
  /** Additive mask [1, 1, 1, T, keys], keys = cached entries then the call's own. */
  mask: tf.Tensor;
  /** Query heads per KV head, and tokens per row. */
  g: number;
  T: number;
  softcap: number | null;
}

/** Gemma 2's soft-capping, tanh(x / cap) * cap (scores and final logits). */
export function softcap<T extends tf.Tensor>(x: T, cap: number): T {
  return tf.mul(tf.tanh(tf.div(x, cap)), cap) as T;
}

/** Returns [1, kvHeads, g * T, headDim]. */
export function attendRow(a: RowAttentionInput): tf.Tensor4D {
  const [, nkv, gT, hd] = a.q.shape;
  const scoresOf = (s: tf.Tensor): tf.Tensor => {
    const capped = a.softcap ? softcap(s, a.softcap) : s;
    const K = s.shape[3] as number;
    return tf.reshape(tf.softmax(tf.add(tf.reshape(capped, [1, nkv, a.g, a.T, K]), a.mask)), [1, nkv, gT, K]);
  };
  if (gT < hd) {
    let keys = a.k;
    let valuesT = a.v ? tf.transpose(a.v, [0, 1, 3, 2]) : undefined;
    if (a.cache) {
      keys = keys ? tf.concat([a.cache.k, keys], 2) : a.cache.k;
      valuesT = valuesT ? tf.concat([a.cache.vT, valuesT], 3) : a.cache.vT;
    }
    const probs = scoresOf(tf.transpose(tf.matMul(keys as tf.Tensor4D, tf.transpose(a.q, [0, 1, 3, 2])), [0, 1, 3, 2]));
    return tf.transpose(tf.matMul(valuesT as tf.Tensor4D, tf.transpose(probs, [0, 1, 3, 2])), [0, 1, 3, 2]) as tf.Tensor4D;
  }
  let keys = a.k as tf.Tensor4D;
  let values = a.v as tf.Tensor4D;
  if (a.cache) {
    keys = tf.concat([a.cache.k, keys], 2);
    values = tf.concat([tf.transpose(a.cache.vT, [0, 1, 3, 2]), values], 2);
  }
  const probs = scoresOf(tf.matMul(a.q, tf.transpose(keys, [0, 1, 3, 2])));
  return tf.matMul(probs, values) as tf.Tensor4D;
}
