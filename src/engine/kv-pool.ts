/**
 * The KV tensors of every slot: per layer and slot one K and one V tensor
 * shaped [1, kvHeads, entries, headDim] (separate tensors, because gathering
 * a slot out of a pooled tensor costs a slow strided copy on wasm). Global layers hold `capacity` entries;
 * sliding layers hold only their window (plus a little slack so that a short
 * rollback of the newest tokens stays exact) and are used as ring buffers.
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

/** Where one forward call writes its new keys: built once per call, shared by the layers of a type. */
export interface WritePlan {
  /** Per row: [M, 3] (0, kvHead, entry) for tensorScatterUpdate into the row's slot tensor. */
  indices: tf.Tensor2D[];
  /** Per row: [M] rows of the flattened new keys [B * kvHeads * T, headDim] to write. */
  source: tf.Tensor1D[];
}

export class KVPool {
  readonly entries: Record<LayerType, number>;
  /** k[layer][slot], v[layer][slot]. */
  readonly k: tf.Tensor4D[][] = [];
  readonly v: tf.Tensor4D[][] = [];
  private readonly state: SlotState[];
  private readonly rotate: tf.Tensor2D;

  constructor(
    readonly config: ModelConfig,
    readonly slots: number,
    readonly capacity: number,
  ) {
    this.entries = { global: capacity, sliding: Math.min(capacity, config.slidingWindow + SLIDING_SLACK) };
    for (const type of config.layerTypes) {
      const shape: [number, number, number, number] = [1, config.numKvHeads, this.entries[type], config.headDim];
      this.k.push(Array.from({ length: slots }, () => tf.zeros(shape)));
      this.v.push(Array.from({ length: slots }, () => tf.zeros(shape)));
    }
    this.state = Array.from({ length: slots }, () => this.emptyState());
    this.rotate = rotateHalfMatrix(config.headDim);
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
   * Plans the writes of a forward call whose row b appends `count` tokens to
   * `slots[b]` from its current length. Only the last `entries` tokens of a
   * row land in a ring (older ones would be overwritten in the same call).
   */
  planWrite(slots: number[], count: number, type: LayerType): WritePlan {
    const E = this.entries[type];
    const H = this.config.numKvHeads;
    const plan: WritePlan = { indices: [], source: [] };
    slots.forEach((slot, b) => {
      const start = this.state[slot].length;
      if (start + count > this.capacity) throw new CacheOverflowError(slot, start + count, this.capacity);
      const idx: number[] = [];
      const src: number[] = [];
      for (let t = Math.max(0, count - E); t < count; t++) {
        for (let h = 0; h < H; h++) {
          idx.push(0, h, (start + t) % E);
          src.push((b * H + h) * count + t);
        }
      }
      plan.indices.push(tf.tensor2d(idx, [src.length, 3], 'int32'));
      plan.source.push(tf.tensor1d(src, 'int32'));
    });
    return plan;
  }

  /** Records what planWrite wrote, once every layer has written. */
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

  /** The cached K and V of `layer` for these slots, stacked as [B, kvHeads, entries, headDim]. */
  rows(layer: number, slots: number[]): { k: tf.Tensor4D; v: tf.Tensor4D } {
    if (slots.length === 1) return { k: this.k[layer][slots[0]], v: this.v[layer][slots[0]] };
    return { k: tf.concat(slots.map((s) => this.k[layer][s])), v: tf.concat(slots.map((s) => this.v[layer][s])) };
  }

  /**
   * Writes new keys/values [B, kvHeads, T, headDim] of layer `layer` into the
   * rows' slots. The old slot tensors are disposed (on the cpu backend the
   * scatter writes into its input, which is safe only because nothing else
   * holds it).
   */
  write(layer: number, slots: number[], k: tf.Tensor4D, v: tf.Tensor4D, plan: WritePlan): void {
    const hd = this.config.headDim;
    const flatK = tf.reshape(k, [-1, hd]);
    const flatV = tf.reshape(v, [-1, hd]);
    slots.forEach((slot, b) => {
      const put = (old: tf.Tensor4D, flat: tf.Tensor): tf.Tensor4D =>
        tf.keep(tf.tensorScatterUpdate(old, plan.indices[b], tf.gather(flat, plan.source[b])) as tf.Tensor4D);
      const nk = put(this.k[layer][slot], flatK);
      const nv = put(this.v[layer][slot], flatV);
      this.k[layer][slot].dispose();
      this.v[layer][slot].dispose();
      this.k[layer][slot] = nk;
      this.v[layer][slot] = nv;
    });
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
    const positions: Record<LayerType, Int32Array> = { global: s.positions.global, sliding: s.positions.sliding };
    const maps = {} as Record<LayerType, { from: Int32Array; delta: Float32Array; pos: Int32Array }>;
    for (const type of ['global', 'sliding'] as const) {
      const E = this.entries[type];
      const from = new Int32Array(E);
      const delta = new Float32Array(E);
      const pos = new Int32Array(E).fill(-1);
      const old = positions[type];
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
        const { cos, sin } = ropeTables(m.delta, this.config.headDim, this.config.rope[type]);
        const shape = [1, 1, this.entries[type], this.config.headDim];
        tables[type] = { cos: tf.tensor(cos, shape), sin: tf.tensor(sin, shape), from: tf.tensor1d(m.from, 'int32') };
      }
      this.config.layerTypes.forEach((type, l) => {
        const t = tables[type];
        const nk = tf.keep(applyRope(tf.gather(this.k[l][slot], t.from, 2), t.cos, t.sin, this.rotate) as tf.Tensor4D);
        const nv = tf.keep(tf.gather(this.v[l][slot], t.from, 2));
        this.k[l][slot].dispose();
        this.v[l][slot].dispose();
        this.k[l][slot] = nk;
        this.v[l][slot] = nv;
      });
    });
    s.positions = { global: maps.global.pos, sliding: maps.sliding.pos };
    s.length = next;
  }

  dispose(): void {
    for (const t of [...this.k.flat(), ...this.v.flat(), this.rotate]) t.dispose();
  }
}
