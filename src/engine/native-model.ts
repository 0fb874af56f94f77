/**
 * The forward pass on the CPU kernels of `native/` (wasm and cpu backends,
 * where they are built): the same contract as the tfjs graph (GemmaModel),
 * with every decoder layer as one native call. The hidden state stays a
 * Float32Array between layers; the KV cache stays in KVPool's slot tensors,
 * which the layer reads and writes in place (memoryOf). Only the logits come
 * back as a tensor.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../model/hf-config.js';
import { forwardShape, type ForwardOptions, type ForwardPass, type PrefillOptions } from './model.js';
import type { LayerShape, NativeKernels, NativeLayer, NativeMatrix, RowCache } from './native-kernels.js';
import { callPositions, ropeTables } from './rope.js';
import { memoryOf } from './tensor-memory.js';
import { isNative, type Linear, type Weights } from './weights.js';

export class NativeModel implements ForwardPass {
  private readonly kernels: NativeKernels;
  private readonly embed: NativeMatrix;
  private readonly layers: NativeLayer[];
  private readonly finalNorm: Float32Array;
  private readonly shapes: Record<LayerType, LayerShape>;
  /** The logits' host buffer, reused on wasm (its tensors copy their values into the module's heap). */
  private logitsBuffer = new Float32Array(0);

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
  ) {
    if (!weights.native) throw new Error('NativeModel needs weights loaded for the native kernels');
    this.kernels = weights.native;
    const native = (w: Linear): NativeMatrix => {
      if (!isNative(w)) throw new Error('NativeModel needs every linear weight packed for the native kernels');
      return w;
    };
    const vector = (t: tf.Tensor | undefined): Float32Array => {
      if (!t) throw new Error('NativeModel needs the input and pre-feedforward norms unfolded');
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

  forward(ids: number[][], opts: ForwardOptions = {}): tf.Tensor2D {
    return this.run(ids, opts) as tf.Tensor2D;
  }

  prefill(ids: number[], opts: PrefillOptions): tf.Tensor2D | undefined {
    return this.run([ids], opts);
  }

  private run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const { B, T, starts } = forwardShape(ids, opts);
    const { pool, slots } = opts;
    // Fails with CacheOverflowError before anything is written.
    if (pool && slots) for (const type of ['global', 'sliding'] as const) pool.planWrite(slots, T, type);

    const positions = callPositions(starts, T);
    const rope = {
      global: ropeTables(positions, c.headDim, c.rope.global),
      sliding: ropeTables(positions, c.headDim, c.rope.sliding),
    };
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
      for (let b = 0; b < B; b++) rows.set(x.subarray((b * T + T - 1) * H, (b * T + T) * H), b * H);
    }
    // A fresh 8 MB array per decode step is garbage the collector keeps busy with; wasm copies it anyway.
    // All-position logits (score) are rare and can be huge: those get their own array.
    const size = M * c.vocabSize;
    let out: Float32Array | undefined;
    if (tf.getBackend() === 'wasm' && !opts.allPositions) {
      if (this.logitsBuffer.length < size) this.logitsBuffer = new Float32Array(size);
      out = this.logitsBuffer.subarray(0, size);
    }
    const logits = this.kernels.logits(rows, M, this.finalNorm, c.rmsNormEps, this.embed, c.finalLogitSoftcap ?? 0, out);
    return tf.tensor2d(logits, [M, c.vocabSize]);
  }

  dispose(): void {}
}
