/**
 * What the two native paths (forward.ts: Gemma 2 and 3; gemma4.ts) share:
 * the decode step's reduction, the per-slot KV pool their layer calls write
 * in place, the memory report, the call's set-up (cache room, rope tables,
 * views of the slot tensors) and the logits tail (final norm, tied
 * unembedding, soft-cap) with its reused host buffer.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, ForwardBase, lastRows, type CallFrame, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool, typeHeadDim } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import { callPositions, ropeTables } from '../rope.js';
import { memoryOf } from '../tensor-memory.js';
import type { TopK } from '../types.js';
import type { Weights } from '../weights.js';
import { runLater, runNow, type KernelSteps, type NativeKernels, type NativeMatrix, type RowCache } from './kernels.js';
import { reduceNative } from './reduce.js';

/** A call as the layers see it: its frame, and per layer type the cos/sin tables of its positions ([B*T, that type's head size]). */
export interface NativeCall extends CallFrame {
  rope: Record<LayerType, { cos: Float32Array; sin: Float32Array }>;
}

export abstract class NativePathBase extends ForwardBase implements ForwardPath {
  readonly name = 'native' as const;
  /** The logits' host buffer, reused on wasm (its tensors copy their values into the module's heap). */
  private logitsBuffer = new Float32Array(0);

  /**
   * @param reuseLogits keep one host buffer for decode-sized logits (wasm copies a tensor's values into its heap anyway).
   */
  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    protected readonly kernels: NativeKernels,
    private readonly reuseLogits: boolean,
  ) {
    super();
  }

  /** The pass as a sequence of kernel calls (forward.ts, gemma4.ts), run on this thread or on a worker thread. */
  protected abstract steps(ids: number[][], opts: PrefillOptions): KernelSteps<tf.Tensor2D | undefined>;

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    return runNow(this.steps(ids, opts));
  }

  protected override runAsync(ids: number[][], opts: PrefillOptions): Promise<tf.Tensor2D | undefined> {
    return runLater(this.steps(ids, opts));
  }

  reduce(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
    return reduceNative(logits, rows, this.kernels);
  }

  /** The per-slot layout, written in place by the layer calls. */
  createPool(slots: number, capacity: number): KVPool {
    return new KVPool(this.config, slots, capacity, true);
  }

  memory(): PathMemory {
    return { backendWeightBytes: this.weights.bytes, hostWeightBytes: this.weights.packedBytes, hostScratchBytes: this.logitsBuffer.byteLength };
  }

  dispose(): void {}

  /** Checks the call and that the pool has room for it (CacheOverflowError before anything is written); the rope tables per layer type. */
  protected begin(ids: number[][], opts: PrefillOptions): NativeCall {
    const frame = callFrame(ids, opts);
    const { pool, slots } = opts;
    if (pool && slots) for (const type of ['global', 'sliding'] as const) pool.planWrite(slots, frame.T, type);
    const positions = callPositions(frame.starts, frame.T);
    const c = this.config;
    const rope = {} as NativeCall['rope'];
    for (const type of ['global', 'sliding'] as const) rope[type] = ropeTables(positions, typeHeadDim(c, type), c.rope[type]);
    return { ...frame, rope };
  }

  /** Views of layer `l`'s slot tensors, one per row (null without a pool), taken right before a native call (no tfjs allocation happens in between). */
  protected caches(call: NativeCall, opts: PrefillOptions, l: number, type: LayerType): Array<RowCache | null> {
    const { pool, slots } = opts;
    return call.starts.map((start, b) => (pool && slots ? [memoryOf(pool.k[l][slots[b]]), memoryOf(pool.vT[l][slots[b]]), pool.positions(slots[b], type), pool.entries[type], start] : null));
  }

  /** Final norm, the tied unembedding and soft-capping of each row's last position (every position with allPositions). */
  protected *logits(x: Float32Array, call: CallFrame, opts: PrefillOptions, finalNorm: Float32Array, embed: NativeMatrix): KernelSteps<tf.Tensor2D> {
    const c = this.config;
    const { B, T } = call;
    const H = c.hiddenSize;
    let rows = x;
    let M = B * T;
    if (!opts.allPositions && T > 1) {
      M = B;
      rows = new Float32Array(B * H);
      lastRows(call).forEach((r, b) => rows.set(x.subarray(r * H, (r + 1) * H), b * H));
    }
    // A fresh 8 MB array per decode step is garbage the collector keeps busy with; wasm copies it anyway.
    // All-position logits (score) are rare and can be huge: those get their own array.
    const size = M * c.vocabSize;
    let out: Float32Array | undefined;
    if (this.reuseLogits && !opts.allPositions) {
      if (this.logitsBuffer.length < size) this.logitsBuffer = new Float32Array(size);
      out = this.logitsBuffer.subarray(0, size);
    }
    const logits = (yield this.kernels.logits(rows, M, finalNorm, c.rmsNormEps, embed, c.finalLogitSoftcap ?? 0, out)) as Float32Array;
    return tf.tensor2d(logits, [M, c.vocabSize]);
  }
}
