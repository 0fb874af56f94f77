/**
 * Gemma 4 on the native CPU kernels: one native call per decoder layer
 * (native/gemma4.cc), the hidden state a Float32Array between layers, the
 * KV cache in KVPool's slot tensors read and written in place, as the Gemma
 * 2/3 native path (forward.ts). What Gemma 4 adds:
 *
 * - KV-shared layers hold no cache and attend over their source layer's
 *   cache plus that layer's K/V of this call. A source layer leaves its new
 *   K/V in a buffer and its cache untouched; the buffers go into the cache
 *   after every layer ran, so no sharing layer sees an entry that the call
 *   itself overwrote (a chunk longer than a sliding ring wraps it).
 * - Per-layer inputs: each token's rows of the per-layer table (16-bit bf16
 *   bits, only the call's rows read) plus the normed model projection of its
 *   embedding, computed once per call and handed to each layer as [N, P].
 * - MoE: the layer routes each row and multiplies each chosen expert only
 *   for its rows; `expertsRun` counts those products (a decode step streams
 *   top-k experts per row, not all of them).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/hf-config.js';
import type { PrefillOptions } from '../forward.js';
import type { Weights } from '../weights.js';
import type { Gemma4LayerShape, KernelCall, KernelSteps, NativeGemma4Weights, NativeKernels, NativeMatrix } from './kernels.js';
import { NativePathBase } from './path-base.js';

export class Gemma4NativePath extends NativePathBase {
  /** Expert products run since load, over every layer and call (one per chosen expert with routed rows). */
  expertsRun = 0;
  private readonly w: NativeGemma4Weights;
  private readonly embed: NativeMatrix;
  /** Per layer: its shapes (the K/V flags are set per layer at load). */
  private readonly shapes: Gemma4LayerShape[];
  /** Layers whose K/V of a call later (KV-shared) layers attend over. */
  private readonly sources: Set<number>;

  constructor(config: ModelConfig, weights: Weights, kernels: NativeKernels, reuseLogits: boolean) {
    super(config, weights, kernels, reuseLogits);
    if (!weights.gemma4Native || !weights.embedT || weights.embedT instanceof tf.Tensor) throw new Error('the native Gemma 4 path needs weights loaded for the native kernels');
    this.w = weights.gemma4Native;
    this.embed = weights.embedT as NativeMatrix;
    const c = config;
    const g = c.gemma4!;
    this.sources = new Set(g.layers.flatMap((s, l) => (s.kvSource !== l ? [s.kvSource] : [])));
    this.shapes = g.layers.map((s, l) => ({
      hidden: c.hiddenSize,
      heads: c.numHeads,
      kvHeads: s.numKvHeads,
      headDim: s.headDim,
      intermediate: s.intermediateSize,
      eps: c.rmsNormEps,
      // A global layer's window is wider than any cache.
      window: c.layerTypes[l] === 'sliding' ? c.slidingWindow : Number.MAX_SAFE_INTEGER,
      experts: g.moe?.numExperts ?? 0,
      topK: g.moe?.topK ?? 0,
      expertIntermediate: g.moe?.intermediateSize ?? 0,
      perLayer: g.perLayerInputSize,
      layerScalar: this.w.layers[l].layerScalar,
      ownKv: s.kvSource === l,
      kEqV: s.kEqV,
      // A source layer's cache is written after its sharing layers ran.
      writeCache: s.kvSource === l && !this.sources.has(l),
    }));
  }

  protected *steps(ids: number[][], opts: PrefillOptions): KernelSteps<tf.Tensor2D | undefined> {
    const c = this.config;
    const call = this.begin(ids, opts);
    const { B, T, rope } = call;
    const N = B * T;
    const flat = ids.flat();
    const x = this.kernels.columns(this.embed, flat, Math.fround(Math.sqrt(c.hiddenSize)));
    const perLayer = this.perLayerInputs(x, flat);
    const P = c.gemma4!.perLayerInputSize;

    const callKv = new Map<number, Float32Array>();
    const calls: Array<KernelCall<unknown>> = [];
    for (const [l, w] of this.w.layers.entries()) {
      const s = this.shapes[l];
      const source = c.gemma4!.layers[l].kvSource;
      const type = c.layerTypes[l];
      let kv: Float32Array | null = null;
      if (!s.ownKv) kv = callKv.get(source) ?? null;
      else if (this.sources.has(l)) callKv.set(l, (kv = new Float32Array(N * 2 * s.kvHeads * s.headDim)));
      if (!s.ownKv && !kv) throw new Error(`layer ${l}: the K/V of layer ${source} are missing`);
      const pli = perLayer ? perLayer.subarray(l * N * P, (l + 1) * N * P) : null;
      calls.push(this.kernels.gemma4Layer(s, w, x, B, T, rope[type].cos, rope[type].sin, kv, pli, this.caches(call, opts, source, type)));
    }
    // The source layers' K/V go in once the layers sharing them have read the cache as it was.
    for (const [l, kv] of callKv) calls.push(this.kernels.writeKv(this.shapes[l].kvHeads, this.shapes[l].headDim, kv, B, T, this.caches(call, opts, l, c.layerTypes[l])));
    this.expertsRun += (yield this.kernels.sequence(calls)) as number;
    if (opts.pool && opts.slots) opts.pool.commitWrite(opts.slots, T);
    if (opts.noLogits) return undefined;
    return yield* this.logits(x, call, opts, this.w.finalNorm, this.embed);
  }

  /**
   * Per-layer inputs as [layers, N, P] (each layer's rows contiguous): the
   * token's table row x sqrt(P), plus the projection of its embedding
   * (x H^-0.5) normed per layer, times 2^-0.5. None without the table.
   */
  private perLayerInputs(x: Float32Array, ids: number[]): Float32Array | undefined {
    const pl = this.w.perLayer;
    if (!pl) return undefined;
    const c = this.config;
    const L = c.numLayers;
    const P = c.gemma4!.perLayerInputSize;
    const V = c.gemma4!.perLayerVocabSize;
    const N = ids.length;
    const LP = L * P;
    const projected = this.kernels.multiply(pl.proj, x, N);
    const out = new Float32Array(L * N * P);
    const row = new Float32Array(LP);
    const scaleOwn = Math.fround(Math.sqrt(P));
    const scaleProj = Math.fround(c.hiddenSize ** -0.5);
    const half = Math.fround(2 ** -0.5);
    const eps = c.rmsNormEps;
    ids.forEach((id, n) => {
      if (id < 0 || id >= V) throw new RangeError(`token ${id} is outside the per-layer embedding's ${V} rows`);
      pl.table.row(id, row);
      for (let l = 0; l < L; l++) {
        const p0 = n * LP + l * P;
        let sum = 0;
        for (let i = 0; i < P; i++) {
          const v = Math.fround(projected[p0 + i] * scaleProj);
          projected[p0 + i] = v;
          sum += v * v;
        }
        const inv = 1 / Math.sqrt(sum / P + eps);
        const o = (l * N + n) * P;
        for (let i = 0; i < P; i++) out[o + i] = (projected[p0 + i] * inv * pl.norm[i] + row[l * P + i] * scaleOwn) * half;
      }
    });
    return out;
  }
}
