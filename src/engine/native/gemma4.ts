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
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, ForwardBase, lastRows, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool, typeHeadDim } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import { callPositions, ropeTables } from '../rope.js';
import { memoryOf } from '../tensor-memory.js';
import type { TopK } from '../types.js';
import type { Weights } from '../weights.js';
import type { NativeGemma4Weights } from './gemma4-weights.js';
import type { Gemma4LayerShape, NativeKernels, NativeMatrix, RowCache } from './kernels.js';
import { reduceNative } from './reduce.js';

export class Gemma4NativePath extends ForwardBase implements ForwardPath {
  readonly name = 'native' as const;
  /** Expert products run since load, over every layer and call (one per chosen expert with routed rows). */
  expertsRun = 0;
  private readonly w: NativeGemma4Weights;
  private readonly embed: NativeMatrix;
  /** Per layer: its shapes (the K/V flags are set per layer at load). */
  private readonly shapes: Gemma4LayerShape[];
  /** Layers whose K/V of a call later (KV-shared) layers attend over. */
  private readonly sources: Set<number>;
  /** The logits' host buffer, reused on wasm (its tensors copy their values into the module's heap). */
  private logitsBuffer = new Float32Array(0);

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    private readonly kernels: NativeKernels,
    private readonly reuseLogits: boolean,
  ) {
    super();
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
    const N = B * T;
    const { pool, slots } = opts;
    // Fails with CacheOverflowError before anything is written.
    if (pool && slots) for (const type of ['global', 'sliding'] as const) pool.planWrite(slots, T, type);

    const positions = callPositions(starts, T);
    const rope = {} as Record<LayerType, { cos: Float32Array; sin: Float32Array }>;
    for (const type of ['global', 'sliding'] as const) rope[type] = ropeTables(positions, typeHeadDim(c, type), c.rope[type]);
    const flat = ids.flat();
    const x = this.kernels.columns(this.embed, flat, Math.fround(Math.sqrt(c.hiddenSize)));
    const perLayer = this.perLayerInputs(x, flat);
    const P = c.gemma4!.perLayerInputSize;

    // Views of layer `source`'s slot tensors, taken right before a native call (no tfjs allocation happens in between).
    const caches = (source: number, type: LayerType): Array<RowCache | null> =>
      starts.map((start, b) => (pool && slots ? [memoryOf(pool.k[source][slots[b]]), memoryOf(pool.vT[source][slots[b]]), pool.positions(slots[b], type), pool.entries[type], start] : null));
    const callKv = new Map<number, Float32Array>();
    this.w.layers.forEach((w, l) => {
      const s = this.shapes[l];
      const source = c.gemma4!.layers[l].kvSource;
      const type = c.layerTypes[l];
      let kv: Float32Array | null = null;
      if (!s.ownKv) kv = callKv.get(source) ?? null;
      else if (this.sources.has(l)) callKv.set(l, (kv = new Float32Array(N * 2 * s.kvHeads * s.headDim)));
      if (!s.ownKv && !kv) throw new Error(`layer ${l}: the K/V of layer ${source} are missing`);
      const pli = perLayer ? perLayer.subarray(l * N * P, (l + 1) * N * P) : null;
      this.expertsRun += this.kernels.gemma4Layer(s, w, x, B, T, rope[type].cos, rope[type].sin, kv, pli, caches(source, type));
    });
    // The source layers' K/V go in once the layers sharing them have read the cache as it was.
    for (const [l, kv] of callKv) this.kernels.writeKv(this.shapes[l].kvHeads, this.shapes[l].headDim, kv, B, T, caches(l, c.layerTypes[l]));
    if (pool && slots) pool.commitWrite(slots, T);
    if (opts.noLogits) return undefined;
    return this.logits(x, frame, opts);
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

  /** Final norm, the tied unembedding and soft-capping of each row's last position (every position with allPositions). */
  private logits(x: Float32Array, frame: ReturnType<typeof callFrame>, opts: PrefillOptions): tf.Tensor2D {
    const c = this.config;
    const { B, T } = frame;
    const H = c.hiddenSize;
    let rows = x;
    let M = B * T;
    if (!opts.allPositions && T > 1) {
      M = B;
      rows = new Float32Array(B * H);
      lastRows(frame).forEach((r, b) => rows.set(x.subarray(r * H, (r + 1) * H), b * H));
    }
    const size = M * c.vocabSize;
    let out: Float32Array | undefined;
    if (this.reuseLogits && !opts.allPositions) {
      if (this.logitsBuffer.length < size) this.logitsBuffer = new Float32Array(size);
      out = this.logitsBuffer.subarray(0, size);
    }
    const logits = this.kernels.logits(rows, M, this.w.finalNorm, c.rmsNormEps, this.embed, c.finalLogitSoftcap ?? 0, out);
    return tf.tensor2d(logits, [M, c.vocabSize]);
  }

  dispose(): void {}
}
