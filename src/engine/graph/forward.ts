/**
 * The Gemma 2 / Gemma 3 forward pass as a tfjs op graph (any tfjs backend:
 * wasm or cpu without the native kernels, tensorflow, webgpu when asked for
 * the graph). The KV cache is KVPool's per-slot layout, written in place on
 * wasm and cpu and by scatter elsewhere; on wasm with two threads the linear
 * layers are split by columns with a worker thread (column-split.ts).
 * Gemma 4 extends it in gemma4.ts (its own layer, the same frame, masks and
 * pool).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, ForwardBase, lastRows, type CallFrame, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool, type WritePlan } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import { applyRope, callPositions, ropeTables, rotateHalfMatrix } from '../rope.js';
import type { TopK } from '../types.js';
import { tensorOf, type LayerWeights, type Weights } from '../weights.js';
import { attendRow, softcap } from './attention.js';
import type { ColumnSplit, RemoteColumns } from './column-split.js';

const MASKED = -1e9;

/** Per layer type: what every layer of that type shares within one call. */
export interface TypeContext {
  cos: tf.Tensor;
  sin: tf.Tensor;
  /** Per row: additive mask [1, 1, 1, T, cached + T]. */
  masks: tf.Tensor[];
  /** Per row: whether the slot's cache takes part (an empty slot's does not). */
  useCache: boolean[];
  /** Per row: cache entries that can hold a token (until a ring wraps, the rest are empty and skipped). */
  filled: number[];
  write?: WritePlan;
}

/** How the graph path is set up at load: its reduction (fused WGSL on webgpu) and how its pool writes. */
export interface GraphSetup {
  reduce: (logits: tf.Tensor2D, rows: RowLogitsInput[]) => Promise<TopK[]>;
  /** Write new keys into the slot tensors' memory (wasm, cpu) instead of rebuilding them. */
  inPlaceCache: boolean;
  /** The worker thread holding the remote columns of every linear weight (wasm, two threads); the path disposes it. */
  split?: ColumnSplit;
}

export class GraphPath extends ForwardBase implements ForwardPath {
  readonly name = 'graph' as const;
  private readonly rotate: tf.Tensor2D;
  private readonly sqrtHidden: tf.Scalar;

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    protected readonly setup: GraphSetup,
  ) {
    super();
    if (weights.embedParts.length > 1) throw new Error('the tfjs graph needs the embedding in one tensor; it is split only for the fused webgpu programs');
    this.rotate = rotateHalfMatrix(config.headDim);
    this.sqrtHidden = tf.scalar(Math.sqrt(config.hiddenSize));
  }

  reduce(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
    return this.setup.reduce(logits, rows);
  }

  createPool(slots: number, capacity: number): KVPool {
    return new KVPool(this.config, slots, capacity, this.setup.inPlaceCache);
  }

  memory(): PathMemory {
    const split = this.setup.split;
    // Host weights: Gemma 4's per-layer table (the graph's other weights are all backend tensors).
    return { backendWeightBytes: this.weights.bytes, hostWeightBytes: this.weights.packedBytes, hostScratchBytes: 0, ...(split ? { workerBytes: split.workerBytes } : {}) };
  }

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const frame = callFrame(ids, opts);
    const { B, T } = frame;
    const { pool, slots } = opts;
    const { ctx, writeFirst } = this.contexts(frame, pool, slots, () => c.headDim);
    // Each layer runs in its own tidy so only one layer's activations are alive at a time.
    let x = tf.tidy(() => this.embed(ids.flat()));
    try {
      this.weights.layers.forEach((w, l) => {
        const next = tf.tidy(() => this.layer(x, w, l, B, T, ctx[c.layerTypes[l]], writeFirst, pool, slots));
        x.dispose();
        x = next;
      });
    } finally {
      for (const t of Object.values(ctx)) disposeContext(t);
    }
    if (pool && slots && !writeFirst) pool.commitWrite(slots, T);
    return this.unembed(x, frame, opts);
  }

  /**
   * The logits of a call from its last hidden state (disposed here): the last
   * position of each row only (or every position with allPositions), final
   * norm, the tied embedding, soft-capping. None for a chunk with noLogits.
   */
  protected unembed(hidden: tf.Tensor2D, frame: CallFrame, opts: PrefillOptions): tf.Tensor2D | undefined {
    if (opts.noLogits) {
      hidden.dispose();
      return undefined;
    }
    const cap = this.config.finalLogitSoftcap;
    const result = tf.tidy(() => {
      let last = hidden;
      if (!opts.allPositions && frame.T > 1) last = tf.gather(hidden, tf.tensor1d(lastRows(frame), 'int32'));
      const logits = this.linear(this.rmsNorm(last, this.weights.finalNorm), tensorOf(this.weights.embedT), this.weights.embedRemote);
      return (cap ? softcap(logits, cap) : logits) as tf.Tensor2D;
    });
    hidden.dispose();
    return result;
  }

  /**
   * What every layer of a type shares within one call: rope tables (for that
   * type's head size), the cache-write plan and masks. A decode step writes its
   * token into the cache before attending, so it attends over the slot tensors
   * as they are (its positions are committed here); a prompt chunk attends over
   * the cache plus its own keys and is written after its layers ran.
   */
  protected contexts(frame: CallFrame, pool: KVPool | undefined, slots: number[] | undefined, headDim: (type: LayerType) => number) {
    const { B, T, starts } = frame;
    const c = this.config;
    const writeFirst = T === 1 && pool !== undefined;
    const useCache = starts.map((s) => pool !== undefined && (writeFirst || s > 0));
    const positions = callPositions(starts, T);
    const ctx = {} as Record<LayerType, TypeContext>;
    for (const type of ['global', 'sliding'] as const) {
      const entries = pool ? pool.entries[type] : 0;
      const filled = starts.map((s) => Math.min(entries, s + (writeFirst ? T : 0)));
      const D = headDim(type);
      const { cos, sin } = ropeTables(positions, D, c.rope[type]);
      const write = pool && slots ? pool.planWrite(slots, T, type) : undefined;
      ctx[type] = { cos: tf.tensor(cos, [B * T, 1, D]), sin: tf.tensor(sin, [B * T, 1, D]), write, masks: [], useCache, filled };
    }
    if (writeFirst && pool && slots) pool.commitWrite(slots, T);
    for (const type of ['global', 'sliding'] as const) ctx[type].masks = this.masks(type, starts, T, writeFirst, ctx[type], pool, slots);
    return { ctx, writeFirst };
  }

  /**
   * Additive masks, one per row, [1, 1, 1, T, keys]: the keys are the slot's
   * entries (plus the call's own T tokens unless they were written first).
   * A query at position q sees positions p <= q, and on sliding layers only
   * p > q - window.
   */
  protected masks(type: LayerType, starts: number[], T: number, writeFirst: boolean, c: TypeContext, pool?: KVPool, slots?: number[]): tf.Tensor[] {
    const window = type === 'sliding' ? this.config.slidingWindow : Infinity;
    return starts.map((start, b) => {
      const E = pool && c.useCache[b] ? c.filled[b] : 0;
      const K = writeFirst ? E : E + T;
      const mask = new Float32Array(T * K).fill(MASKED);
      const cached = pool && slots && c.useCache[b] ? pool.positions(slots[b], type) : undefined;
      for (let t = 0; t < T; t++) {
        const q = start + t;
        const row = t * K;
        if (cached) {
          for (let e = 0; e < E; e++) {
            const p = cached[e];
            if (p >= 0 && p <= q && p > q - window) mask[row + e] = 0;
          }
        }
        if (!writeFirst) for (let u = 0; u <= t; u++) if (start + u > q - window) mask[row + E + u] = 0;
      }
      return tf.tensor(mask, [1, 1, 1, T, K]);
    });
  }

  /** Embedding rows of `ids` times sqrt(hidden): a gather, or (split weights) a copy of the rows in JS. */
  protected embed(ids: number[]): tf.Tensor2D {
    const rows = this.weights.embedRows;
    if (!rows) return tf.mul(tf.transpose(tf.gather(tensorOf(this.weights.embedT), tf.tensor1d(ids, 'int32'), 1)), this.sqrtHidden) as tf.Tensor2D;
    const H = this.config.hiddenSize;
    const scale = Math.fround(Math.sqrt(H));
    const x = new Float32Array(ids.length * H);
    ids.forEach((id, n) => {
      for (let i = 0; i < H; i++) x[n * H + i] = rows[id * H + i] * scale;
    });
    return tf.tensor2d(x, [ids.length, H]);
  }

  /** x @ W, with W's remote columns multiplied on the worker thread at the same time when the weights are split. */
  private linear(x: tf.Tensor2D, w: tf.Tensor2D, remote?: RemoteColumns): tf.Tensor2D {
    const split = this.setup.split;
    return split && remote ? split.matMul(x, w, remote) : tf.matMul(x, w);
  }

  /** The gate and up projections; a split at the middle column already gives them apart. */
  private gateUp(x: tf.Tensor2D, w: LayerWeights): { gate: tf.Tensor2D; up: tf.Tensor2D } {
    const I = this.config.intermediateSize;
    const split = this.setup.split;
    const gateUp = tensorOf(w.gateUp);
    if (split && w.remote && gateUp.shape[1] === I) {
      const [gate, up] = split.matMulParts(x, gateUp, w.remote.gateUp);
      return { gate, up };
    }
    const gu = this.linear(x, gateUp, w.remote?.gateUp);
    const n = x.shape[0];
    return { gate: tf.slice(gu, [0, 0], [n, I]), up: tf.slice(gu, [0, I], [n, I]) };
  }

  /** RMSNorm; without `w` its weight has been folded into the next projection. */
  protected rmsNorm<T extends tf.Tensor>(x: T, w?: tf.Tensor): T {
    const normed: T = tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), this.config.rmsNormEps)));
    return w ? tf.mul(normed, w) : normed;
  }

  private layer(
    x: tf.Tensor2D,
    w: LayerWeights,
    l: number,
    B: number,
    T: number,
    ctx: TypeContext,
    writeFirst: boolean,
    pool?: KVPool,
    slots?: number[],
  ): tf.Tensor2D {
    const c = this.config;
    const hd = c.headDim;
    const nq = c.numHeads;
    const nkv = c.numKvHeads;

    // Attention: one fused q/k/v matmul; q and k are normed and rotated together.
    const qkv = tf.reshape(this.linear(this.rmsNorm(x), tensorOf(w.qkv), w.remote?.qkv), [B * T, nq + 2 * nkv, hd]);
    let qk = tf.slice(qkv, [0, 0, 0], [B * T, nq + nkv, hd]);
    const v = tf.slice(qkv, [0, nq + nkv, 0], [B * T, nkv, hd]);
    if (w.qkNorm) {
      qk = this.rmsNorm(qk, w.qkNorm);
    }
    qk = applyRope(qk, ctx.cos, ctx.sin, this.rotate);
    // [B*T, n, hd] -> [B, n, T, hd]; with one token per row that is only a reshape.
    const heads = (t: tf.Tensor, from: number, n: number): tf.Tensor4D => {
      const part = tf.slice(t, [0, from, 0], [B * T, n, hd]);
      return T === 1 ? tf.reshape(part, [B, n, 1, hd]) : tf.transpose(tf.reshape(part, [B, T, n, hd]), [0, 2, 1, 3]);
    };
    const q = heads(qk, 0, nq);
    const k = heads(qk, nq, nkv);
    const vh = heads(v, 0, nkv);

    // Attention runs row by row (see attention.ts for the operand order).
    if (pool && slots && writeFirst) pool.write(l, k, vh, ctx.write as WritePlan);
    const attn = this.attendRows(q, nkv, writeFirst ? undefined : { k, v: vh }, l, ctx, B, T, c.attnLogitSoftcap, pool, slots);
    if (pool && slots && !writeFirst) pool.write(l, k, vh, ctx.write as WritePlan);
    const h = tf.add(x, this.rmsNorm(this.linear(attn, tensorOf(w.o), w.remote?.o), w.postAttnNorm)) as tf.Tensor2D;

    // MLP: one fused gate/up matmul; gelu(tanh) written as x * sigmoid(2u) (identical, fewer kernels).
    const { gate, up } = this.gateUp(this.rmsNorm(h), w);
    const a = 2 * Math.sqrt(2 / Math.PI);
    const inner = tf.mul(gate, tf.add(tf.mul(tf.square(gate), a * 0.044715), a));
    const act = tf.mul(tf.mul(gate, tf.sigmoid(inner)), up);
    return tf.add(h, this.rmsNorm(this.linear(act as tf.Tensor2D, tensorOf(w.down), w.remote?.down), w.postFfwNorm)) as tf.Tensor2D;
  }

  /**
   * Attention row by row (see attention.ts for the operand order): q [B, nq,
   * T, hd] over `nkv` KV heads, the cached K/V of layer `cacheLayer` and the
   * call's own K/V (`own`, absent when they were written to the cache
   * first); the heads merged back to [B * T, nq * hd].
   */
  protected attendRows(
    q: tf.Tensor4D,
    nkv: number,
    own: { k: tf.Tensor4D; v: tf.Tensor4D } | undefined,
    cacheLayer: number,
    ctx: TypeContext,
    B: number,
    T: number,
    scoreCap: number | null,
    pool?: KVPool,
    slots?: number[],
  ): tf.Tensor2D {
    const [, nq, , hd] = q.shape;
    const g = nq / nkv;
    const rowOf = (t: tf.Tensor4D, b: number): tf.Tensor4D => (B === 1 ? t : tf.slice(t, [b, 0, 0, 0], [1, t.shape[1], T, hd]));
    const outs: tf.Tensor[] = [];
    for (let b = 0; b < B; b++) {
      const slot = slots?.[b];
      const cache = pool && slot !== undefined && ctx.useCache[b] ? this.filledCache(pool.k[cacheLayer][slot], pool.vT[cacheLayer][slot], ctx.filled[b]) : undefined;
      outs.push(
        attendRow({
          q: tf.reshape(rowOf(q, b), [1, nkv, g * T, hd]),
          k: own ? rowOf(own.k, b) : undefined,
          v: own ? rowOf(own.v, b) : undefined,
          cache,
          mask: ctx.masks[b],
          g,
          T,
          softcap: scoreCap,
        }),
      );
    }
    const out = B === 1 ? outs[0] : tf.concat(outs, 0);
    return (T === 1 ? tf.reshape(out, [B, nq * hd]) : tf.reshape(tf.transpose(tf.reshape(out, [B, nq, T, hd]), [0, 2, 1, 3]), [B * T, nq * hd])) as tf.Tensor2D;
  }

  /** The first `n` entries of a slot's cache (all of them once its ring has wrapped). */
  protected filledCache(k: tf.Tensor4D, vT: tf.Tensor4D, n: number): { k: tf.Tensor4D; vT: tf.Tensor4D } {
    const [, nkv, E, hd] = k.shape;
    if (n >= E) return { k, vT };
    return { k: tf.slice(k, [0, 0, 0, 0], [1, nkv, n, hd]), vT: tf.slice(vT, [0, 0, 0, 0], [1, nkv, hd, n]) };
  }

  dispose(): void {
    this.rotate.dispose();
    this.sqrtHidden.dispose();
    this.setup.split?.dispose();
  }
}

export function disposeContext(c: TypeContext): void {
  tf.dispose([c.cos, c.sin, ...c.masks]);
}
