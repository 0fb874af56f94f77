/**
 * The forward pass on the project's CPU kernels (the C++ of the repository's
 * `native/` folder, loaded by kernels.ts; wasm and cpu backends, where they
 * are built), with every decoder layer as one native call. The hidden state
 * stays a Float32Array between layers; the KV cache stays in KVPool's slot
 * tensors, which the layer reads and writes in place (memoryOf). Only the
 * logits come back as a tensor.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, callRope, ForwardBase, lastRows, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import { memoryOf } from '../tensor-memory.js';
import type { TopK } from '../types.js';
import { isNative, type Linear, type Weights } from '../weights.js';
import type { LayerShape, NativeKernels, NativeLayer, NativeMatrix, RowCache } from './kernels.js';
import { reduceNative } from './reduce.js';

export class NativePath extends ForwardBase implements ForwardPath {
  readonly name = 'native' as const;
  private readonly kernels: NativeKernels;
  private readonly embed: NativeMatrix;
  private readonly layers: NativeLayer[];
  private readonly finalNorm: Float32Array;
  private readonly shapes: Record<LayerType, LayerShape>;
  /** The logits' host buffer, reused on wasm (its tensors copy their values into the module's heap). */
  private logitsBuffer = new Float32Array(0);

  /**
   * @param reuseLogits keep one host buffer for decode-sized logits (wasm copies a tensor's values into its heap anyway).
   */
  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    kernels: NativeKernels,
    private readonly reuseLogits: boolean,
  ) {
    super();
    this.kernels = kernels;
    const native = (w: Linear): NativeMatrix => {
      if (!isNative(w)) throw new Error('the native path needs every linear weight packed for the native kernels');
      return w as NativeMatrix;
    };
    const vector = (t: tf.Tensor | undefined): Float32Array => {
      if (!t) throw new Error('the native path needs the input and pre-feedforward norms unfolded');
      return t.dataSync() as Float32Array;
    };
    this.embed = native(weights.embedT);
    this.finalNorm = vector(weights.finalNorm);
    this.layers = weights.layers.map((l) => ({
      qkv: native(l.qkv),
      o: native(l.o),
      gateUp: native(l.gateUp),
      down: native(l.down),
      norms: [vector(l.inputNorm), vector(l.postAttnNorm), vector(l.preFfwNorm), vector(l.postFfwNorm), l.qkNorm ? vector(l.qkNorm) : null],
    }));
    const c = config;
    const shape = (window: number): LayerShape => ({
      hidden: c.hiddenSize,
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      intermediate: c.intermediateSize,
      eps: c.rmsNormEps,
      attnSoftcap: c.attnLogitSoftcap ?? 0,
      window,
    });
    // A global layer's window is wider than any cache.
    this.shapes = { global: shape(Number.MAX_SAFE_INTEGER), sliding: shape(c.slidingWindow) };
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

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const frame = callFrame(ids, opts);
    const { B, T, starts } = frame;
    const { pool, slots } = opts;
    // Fails with CacheOverflowError before anything is written.
    if (pool && slots) for (const type of ['global', 'sliding'] as const) pool.planWrite(slots, T, type);

    const rope = callRope(c, frame);
    const x = this.kernels.columns(this.embed, ids.flat(), Math.fround(Math.sqrt(c.hiddenSize)));
    this.layers.forEach((w, l) => {
      const type = c.layerTypes[l];
      // Views of the slot tensors, taken right before the call (no tfjs allocation happens in between).
      const caches = starts.map((start, b): RowCache | null => {
        if (!pool || !slots) return null;
        const slot = slots[b];
        return [memoryOf(pool.k[l][slot]), memoryOf(pool.vT[l][slot]), pool.positions(slot, type), pool.entries[type], start];
      });
      this.kernels.layer(this.shapes[type], w, x, B, T, rope[type].cos, rope[type].sin, caches);
    });
    if (pool && slots) pool.commitWrite(slots, T);
    if (opts.noLogits) return undefined;

    const H = c.hiddenSize;
    let rows = x;
    let M = B * T;
    if (!opts.allPositions && T > 1) {
      M = B;
      rows = new Float32Array(B * H);
      lastRows(frame).forEach((r, b) => rows.set(x.subarray(r * H, (r + 1) * H), b * H));
    }
    // A fresh 8 MB array per decode step is garbage the collector keeps busy with; wasm copies it anyway.
    // All-position logits (score) are rare and can be huge: those get their own array.
    const size = M * c.vocabSize;
    let out: Float32Array | undefined;
    if (this.reuseLogits && !opts.allPositions) {
      if (this.logitsBuffer.length < size) this.logitsBuffer = new Float32Array(size);
      out = this.logitsBuffer.subarray(0, size);
    }
    const logits = this.kernels.logits(rows, M, this.finalNorm, c.rmsNormEps, this.embed, c.finalLogitSoftcap ?? 0, out);
    return tf.tensor2d(logits, [M, c.vocabSize]);
  }

  dispose(): void {}
}
