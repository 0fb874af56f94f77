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
import type { PrefillOptions } from '../forward.js';
import { isNative, type Linear, type Weights } from '../weights.js';
import type { KernelSteps, LayerShape, NativeKernels, NativeLayer, NativeMatrix } from './kernels.js';
import { NativePathBase } from './path-base.js';

export class NativePath extends NativePathBase {
  private readonly embed: NativeMatrix;
  private readonly layers: NativeLayer[];
  private readonly finalNorm: Float32Array;
  private readonly shapes: Record<LayerType, LayerShape>;

  constructor(config: ModelConfig, weights: Weights, kernels: NativeKernels, reuseLogits: boolean) {
    super(config, weights, kernels, reuseLogits);
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

  protected *steps(ids: number[][], opts: PrefillOptions): KernelSteps<tf.Tensor2D | undefined> {
    const c = this.config;
    const call = this.begin(ids, opts);
    const { B, T, rope } = call;
    const x = this.kernels.columns(this.embed, ids.flat(), Math.fround(Math.sqrt(c.hiddenSize)));
    yield this.kernels.sequence(
      this.layers.map((w, l) => {
        const type = c.layerTypes[l];
        return this.kernels.layer(this.shapes[type], w, x, B, T, rope[type].cos, rope[type].sin, this.caches(call, opts, l, type));
      }),
    );
    if (opts.pool && opts.slots) opts.pool.commitWrite(opts.slots, T);
    if (opts.noLogits) return undefined;
    return yield* this.logits(x, call, opts, this.finalNorm, this.embed);
  }
}
