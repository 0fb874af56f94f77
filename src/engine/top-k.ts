/**
 * The device side of a decode step: logits [B, V] -> logit bias and
 * penalties -> top-K and log-normalizers, all on the backend. Only [B, K]
 * values and ids (and two numbers per row) are read back; the [B, V] tensor
 * never leaves the step.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SamplingParams, TopK } from './types.js';
import { FUSED_TOP_K_MAX, fusedTopK } from './webgpu/top-k.js';
import type { NativeKernels } from './native-kernels.js';
import { memoryOf } from './tensor-memory.js';

/** What the reduction needs to know about one row. */
export interface RowLogitsInput {
  params: SamplingParams;
  /** How often each token was generated so far in this row (penalties use it). */
  counts: ReadonlyMap<number, number>;
  /** Candidates this row needs. */
  k: number;
}

function hasPenalties(p: SamplingParams): boolean {
  return p.presencePenalty !== 0 || p.frequencyPenalty !== 0 || p.repetitionPenalty !== 1;
}

/**
 * Sparse edits for bias and penalties: one entry per (row, token) touched,
 * applied as new = rep(old) - presence - frequency * count + bias.
 */
function edits(rows: RowLogitsInput[]) {
  const idx: number[] = [];
  const rep: number[] = [];
  const sub: number[] = [];
  const add: number[] = [];
  rows.forEach((r, b) => {
    const p = r.params;
    const touched = new Set<number>(Object.keys(p.logitBias).map(Number));
    if (hasPenalties(p)) for (const id of r.counts.keys()) touched.add(id);
    for (const id of touched) {
      const count = hasPenalties(p) ? r.counts.get(id) ?? 0 : 0;
      idx.push(b, id);
      rep.push(count > 0 ? p.repetitionPenalty : 1);
      sub.push((count > 0 ? p.presencePenalty : 0) + p.frequencyPenalty * count);
      add.push(p.logitBias[id] ?? 0);
    }
  });
  return { idx, rep, sub, add };
}

/** Applies bias and penalties in place of the [B, V] logits (a new tensor; the input is not kept). */
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

/**
 * Reduces logits [B, V] to each row's top-K. Disposes `logits`. K is the
 * largest any row needs; every row gets its own `k` candidates back. With
 * the native CPU kernels the reduction runs there.
 */
export async function reduceLogits(logits: tf.Tensor2D, rows: RowLogitsInput[], native?: NativeKernels): Promise<TopK[]> {
  const K = Math.max(1, ...rows.map((r) => r.k));
  if (tf.getBackend() === 'webgpu' && K <= FUSED_TOP_K_MAX) return reduceFused(logits, rows, K);
  if (native && K <= logits.shape[1]) return reduceNative(logits, rows, K, native);
  const scaled = rows.some((r) => r.params.temperature !== 0 && r.params.temperature !== 1);
  const out = tf.tidy(() => {
    const edited = applyEdits(logits, rows);
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
    logsumexp: lse[b],
    scaledLogsumexp: lseScaled[b],
  }));
}

/** The same reduction as WGSL programs (webgpu): no [B, V] tensor op of tfjs runs. */
async function reduceFused(logits: tf.Tensor2D, rows: RowLogitsInput[], K: number): Promise<TopK[]> {
  const e = edits(rows);
  const list = e.rep.map((rep, i) => ({ row: e.idx[2 * i], id: e.idx[2 * i + 1], rep, sub: e.sub[i], add: e.add[i] }));
  const scales = rows.map((r) => (r.params.temperature > 0 ? 1 / r.params.temperature : 1));
  const tops = await fusedTopK().reduce(logits, K, scales, list);
  return tops.map((t, b) => ({ ...t, ids: t.ids.slice(0, rows[b].k), logits: t.logits.slice(0, rows[b].k) }));
}

/** The same reduction on the native CPU kernels: the edits in JS (a handful of entries), the rest in one call. */
function reduceNative(logits: tf.Tensor2D, rows: RowLogitsInput[], K: number, native: NativeKernels): TopK[] {
  const [B, V] = logits.shape;
  // The tensor's own memory, edited in place (it is disposed right after); no tfjs allocation may happen in between.
  const x = memoryOf(logits);
  const e = edits(rows);
  e.rep.forEach((rep, i) => {
    const at = e.idx[2 * i] * V + e.idx[2 * i + 1];
    const old = x[at];
    x[at] = (old > 0 ? old / rep : old * rep) - e.sub[i] + e.add[i];
  });
  const scales = rows.map((r) => (r.params.temperature > 0 ? 1 / r.params.temperature : 1));
  const out = native.reduce(x, B, V, K, scales);
  logits.dispose();
  return rows.map((r, b) => ({
    ids: out.ids.slice(b * K, b * K + r.k),
    logits: out.values.slice(b * K, b * K + r.k),
    logsumexp: out.lse[b],
    scaledLogsumexp: out.scaledLse[b],
  }));
}
