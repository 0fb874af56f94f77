/**
 * The KV tensors of every slot: per layer and slot, K as [1, kvHeads,
 * entries, headDim] and V transposed as [1, kvHeads, headDim, entries], so
 * that both are the left operand of attention's matmuls (scores^T = K q^T,
 * out^T = V^T p^T): the fast XNNPACK path on wasm, and one that sees
 * in-place writes. Separate tensors per slot, because gathering a slot out of
 * a pooled tensor is a slow strided copy on wasm.
 *
 * Global layers hold `capacity` entries; sliding layers hold only their
 * window (plus a little slack so that a short rollback of the newest tokens
 * stays exact) and are used as ring buffers.
 *
 * Invariant: entry e of a layer type holds the token at position p iff
 * `positions[type][e] === p`, and then `e === p % entries`. Attention masks
 * are built from those positions, so ring order never matters. The slot
 * manager in src/cache decides what to keep; this class only moves tensors.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GemmaServeError } from '../errors.js';
import type { LayerType, ModelConfig } from '../model/hf-config.js';
import { applyRope, ropeTables, rotateHalfMatrix } from './rope.js';
import { memoryOf } from './tensor-memory.js';

/**
 * Layer l's K/V shape and whose cache it reads: its own, or (Gemma 4's
 * KV-shared layers) an earlier layer's, in which case it holds none.
 */
export function layerKv(c: ModelConfig, l: number): { heads: number; headDim: number; source: number } {
  const g = c.gemma4?.layers[l];
  return g ? { heads: g.numKvHeads, headDim: g.headDim, source: g.kvSource } : { heads: c.numKvHeads, headDim: c.headDim, source: l };
}

/** Head size of a layer type's keys (Gemma 4's global layers are wider). */
export function typeHeadDim(c: ModelConfig, type: LayerType): number {
  return c.gemma4?.typeHeadDim[type] ?? c.headDim;
}

/** Entries beyond the window that sliding layers keep, so rolling back this many tokens needs no recompute. */
export const SLIDING_SLACK = 64;

export class CacheOverflowError extends GemmaServeError {
  constructor(slot: number, needed: number, capacity: number) {
    super(`KV slot ${slot} would need ${needed} positions but holds ${capacity}; evict before writing`, { status: 500, code: 'cache_overflow' });
  }
}

interface SlotState {
  length: number;
  positions: Record<LayerType, Int32Array>;
}

/** Where one forward call writes: per row, which new tokens go to which entries. */
export interface WritePlan {
  rows: Array<{ slot: number; row: number; tokens: Array<{ t: number; entry: number }> }>;
  /** Tokens per row in the call. */
  count: number;
}

/** Copies `src` into `dst` at a byte offset, on the device (how a pooled layout writes one slot back). */
export type SlotWriter = (dst: tf.Tensor, offsetBytes: number, src: tf.Tensor) => void;

export class KVPool {
  readonly entries: Record<LayerType, number>;
  /** k[layer][slot]: [1, kvHeads, entries, headDim] (empty in the pooled layout, and for layers that read another layer's K/V). */
  readonly k: tf.Tensor4D[][] = [];
  /** vT[layer][slot]: [1, kvHeads, headDim, entries] (empty as k is). */
  readonly vT: tf.Tensor4D[][] = [];
  /**
   * The pooled layout (the fused webgpu programs): per layer one K [slots, kvHeads, entries, headDim] and
   * one V^T [slots, kvHeads, headDim, entries], so that one dispatch serves every row of a batch (with no entries for a layer that reads another layer's K/V).
   */
  readonly pooled?: { k: tf.Tensor4D[]; vT: tf.Tensor4D[] };
  private readonly state: SlotState[];
  private readonly rotate: Record<LayerType, tf.Tensor2D>;

  /**
   * @param inPlace write new keys into the slot tensors' memory (wasm, cpu) instead of rebuilding them.
   * @param writer with it, the pooled layout: the forward pass writes new keys itself, compaction writes through it.
   */
  constructor(
    readonly config: ModelConfig,
    readonly slots: number,
    readonly capacity: number,
    readonly inPlace: boolean,
    private readonly writer?: SlotWriter,
  ) {
    this.entries = { global: capacity, sliding: Math.min(capacity, config.slidingWindow + SLIDING_SLACK) };
    if (writer) {
      this.pooled = { k: [], vT: [] };
      config.layerTypes.forEach((type, l) => {
        const { heads: H, headDim: D, source } = layerKv(config, l);
        // A layer that reads another layer's K/V holds none: an empty tensor keeps the per-layer indexing.
        const E = source === l ? this.entries[type] : 0;
        this.pooled!.k.push(tf.zeros([slots, H, E, D]));
        this.pooled!.vT.push(tf.zeros([slots, H, D, E]));
      });
    }
    (writer ? [] : config.layerTypes).forEach((type, l) => {
      const { heads: H, headDim: D, source } = layerKv(config, l);
      const E = this.entries[type];
      const own = source === l;
      this.k.push(own ? Array.from({ length: slots }, () => tf.zeros([1, H, E, D])) : []);
      this.vT.push(own ? Array.from({ length: slots }, () => tf.zeros([1, H, D, E])) : []);
    });
    this.state = Array.from({ length: slots }, () => this.emptyState());
    const sliding = rotateHalfMatrix(typeHeadDim(config, 'sliding'));
    this.rotate = { sliding, global: typeHeadDim(config, 'global') === typeHeadDim(config, 'sliding') ? sliding : rotateHalfMatrix(typeHeadDim(config, 'global')) };
  }

  private emptyState(): SlotState {
    return {
      length: 0,
      positions: { global: new Int32Array(this.entries.global).fill(-1), sliding: new Int32Array(this.entries.sliding).fill(-1) },
    };
  }

  /** Tokens in the slot's cache; the next token gets this position. */
  length(slot: number): number {
    return this.state[slot].length;
  }

  /** Positions held by each entry of a layer type (-1 = empty). */
  positions(slot: number, type: LayerType): Int32Array {
    return this.state[slot].positions[type];
  }

  bytes(): number {
    if (this.pooled) return this.pooled.k.reduce((s, t) => s + t.size * 8, 0);
    return this.k.reduce((sum, row) => sum + row.reduce((s, t) => s + t.size * 8, 0), 0);
  }

  reset(slot: number): void {
    this.state[slot] = this.emptyState();
  }

  /** Whether the cache can be cut back to `n` tokens without recomputing (sliding rings keep only their window). */
  canTruncate(slot: number, n: number): boolean {
    const s = this.state[slot];
    if (n >= s.length) return n === s.length;
    if (n === 0) return true;
    const need = Math.min(n, this.config.slidingWindow);
    const ring = s.positions.sliding;
    for (let p = n - need; p < n; p++) if (ring[p % ring.length] !== p) return false;
    return true;
  }

  /** Drops every token at position >= n. */
  truncate(slot: number, n: number): void {
    if (!this.canTruncate(slot, n)) throw new Error(`slot ${slot} cannot be truncated to ${n} without recomputing`);
    const s = this.state[slot];
    for (const pos of Object.values(s.positions)) for (let e = 0; e < pos.length; e++) if (pos[e] >= n) pos[e] = -1;
    s.length = n;
  }

  /**
   * Plans a call in which row b appends `count` tokens to `slots[b]` from its
   * current length. Only the last `entries` tokens of a row land in a ring
   * (older ones would be overwritten in the same call).
   */
  planWrite(slots: number[], count: number, type: LayerType): WritePlan {
    const E = this.entries[type];
    return {
      count,
      rows: slots.map((slot, row) => {
        const start = this.state[slot].length;
        if (start + count > this.capacity) throw new CacheOverflowError(slot, start + count, this.capacity);
        const tokens: Array<{ t: number; entry: number }> = [];
        for (let t = Math.max(0, count - E); t < count; t++) tokens.push({ t, entry: (start + t) % E });
        return { slot, row, tokens };
      }),
    };
  }

  /** Records the positions a call writes (before or after its layers run; masks read them). */
  commitWrite(slots: number[], count: number): void {
    for (const slot of slots) {
      const s = this.state[slot];
      for (const type of ['global', 'sliding'] as const) {
        const pos = s.positions[type];
        for (let t = Math.max(0, count - pos.length); t < count; t++) pos[(s.length + t) % pos.length] = s.length + t;
      }
      s.length += count;
    }
  }

  /** Writes new keys and values [B, kvHeads, T, headDim] of `layer` into the rows' slots (not in the pooled layout). */
  write(layer: number, k: tf.Tensor4D, v: tf.Tensor4D, plan: WritePlan): void {
    if (this.pooled) throw new Error('the pooled KV layout is written by the fused forward pass');
    if (this.inPlace) this.writeInPlace(layer, k, v, plan);
    else this.writeByScatter(layer, k, v, plan);
  }

  private writeInPlace(layer: number, k: tf.Tensor4D, v: tf.Tensor4D, plan: WritePlan): void {
    const { heads: H, headDim: D } = layerKv(this.config, layer);
    const T = plan.count;
    for (const { slot, row, tokens } of plan.rows) {
      const dk = this.k[layer][slot];
      const E = dk.shape[2];
      // Views are taken together, with no allocation in between (the wasm heap can move).
      const [srcK, srcV, dstK, dstV] = [k, v, dk, this.vT[layer][slot]].map(memoryOf);
      for (const { t, entry } of tokens) {
        for (let h = 0; h < H; h++) {
          const src = ((row * H + h) * T + t) * D;
          dstK.set(srcK.subarray(src, src + D), (h * E + entry) * D);
          const base = h * D * E + entry;
          for (let d = 0; d < D; d++) dstV[base + d * E] = srcV[src + d];
        }
      }
    }
  }

  private writeByScatter(layer: number, k: tf.Tensor4D, v: tf.Tensor4D, plan: WritePlan): void {
    const { heads: H, headDim: D } = layerKv(this.config, layer);
    const T = plan.count;
    tf.tidy(() => {
      const flatK = tf.reshape(k, [-1, D]);
      const flatV = tf.reshape(v, [-1]);
      for (const { slot, row, tokens } of plan.rows) {
        const kIdx: number[] = [];
        const kSrc: number[] = [];
        const vIdx: number[] = [];
        const vSrc: number[] = [];
        for (const { t, entry } of tokens) {
          for (let h = 0; h < H; h++) {
            const src = (row * H + h) * T + t;
            kIdx.push(0, h, entry);
            kSrc.push(src);
            for (let d = 0; d < D; d++) {
              vIdx.push(0, h, d, entry);
              vSrc.push(src * D + d);
            }
          }
        }
        const nk = tf.tensorScatterUpdate(this.k[layer][slot], tf.tensor2d(kIdx, [kSrc.length, 3], 'int32'), tf.gather(flatK, kSrc));
        const nv = tf.tensorScatterUpdate(this.vT[layer][slot], tf.tensor2d(vIdx, [vSrc.length, 4], 'int32'), tf.gather(flatV, vSrc));
        this.replace(layer, slot, tf.keep(nk as tf.Tensor4D), tf.keep(nv as tf.Tensor4D));
      }
    });
  }

  private replace(layer: number, slot: number, k: tf.Tensor4D, vT: tf.Tensor4D): void {
    this.k[layer][slot].dispose();
    this.vT[layer][slot].dispose();
    this.k[layer][slot] = k;
    this.vT[layer][slot] = vT;
  }

  /**
   * Keeps only the tokens in `keep` (ascending [start, end) ranges of
   * positions), renumbers them contiguously from 0 and re-rotates their keys
   * by the shift, so later tokens see them at their new positions (the
   * StreamingLLM rule: position in the cache, not in the text).
   */
  compact(slot: number, keep: Array<[number, number]>): void {
    const s = this.state[slot];
    const newPos = new Map<number, number>();
    let next = 0;
    for (const [a, b] of keep) for (let p = a; p < Math.min(b, s.length); p++) newPos.set(p, next++);
    const maps = {} as Record<LayerType, { from: Int32Array; delta: Float32Array; pos: Int32Array }>;
    for (const type of ['global', 'sliding'] as const) {
      const E = this.entries[type];
      const from = new Int32Array(E);
      const delta = new Float32Array(E);
      const pos = new Int32Array(E).fill(-1);
      const old = s.positions[type];
      for (let e = 0; e < E; e++) {
        const p = old[e];
        const q = p >= 0 ? newPos.get(p) : undefined;
        if (q === undefined) continue;
        const target = q % E;
        from[target] = e;
        delta[target] = q - p;
        pos[target] = q;
      }
      maps[type] = { from, delta, pos };
    }
    tf.tidy(() => {
      const tables = {} as Record<LayerType, { cos: tf.Tensor; sin: tf.Tensor; from: tf.Tensor1D }>;
      for (const type of ['global', 'sliding'] as const) {
        const m = maps[type];
        const D = typeHeadDim(this.config, type);
        const { cos, sin } = ropeTables(m.delta, D, this.config.rope[type]);
        const shape = [1, 1, this.entries[type], D];
        tables[type] = { cos: tf.tensor(cos, shape), sin: tf.tensor(sin, shape), from: tf.tensor1d(m.from, 'int32') };
      }
      this.config.layerTypes.forEach((type, l) => {
        if (layerKv(this.config, l).source !== l) return;
        const t = tables[type];
        const [k, vT] = this.slotTensors(l, slot);
        const nk = applyRope(tf.gather(k, t.from, 2), t.cos, t.sin, this.rotate[type]) as tf.Tensor4D;
        const nv = tf.gather(vT, t.from, 3);
        if (this.pooled && this.writer) {
          this.writer(this.pooled.k[l], slot * nk.size * 4, nk);
          this.writer(this.pooled.vT[l], slot * nv.size * 4, nv);
        } else {
          this.replace(l, slot, tf.keep(nk), tf.keep(nv));
        }
      });
    });
    s.positions = { global: maps.global.pos, sliding: maps.sliding.pos };
    s.length = next;
  }

  /** One slot's K [1, kv, E, hd] and V^T [1, kv, hd, E] (a copy in the pooled layout). */
  private slotTensors(layer: number, slot: number): [tf.Tensor4D, tf.Tensor4D] {
    if (!this.pooled) return [this.k[layer][slot], this.vT[layer][slot]];
    const k = this.pooled.k[layer];
    const vT = this.pooled.vT[layer];
    return [tf.slice(k, [slot, 0, 0, 0], [1, ...k.shape.slice(1)] as [number, number, number, number]), tf.slice(vT, [slot, 0, 0, 0], [1, ...vT.shape.slice(1)] as [number, number, number, number])];
  }

  dispose(): void {
    for (const t of [...this.k.flat(), ...this.vT.flat(), ...(this.pooled?.k ?? []), ...(this.pooled?.vT ?? []), ...new Set(Object.values(this.rotate))]) t.dispose();
  }
}
