/**
 * Gemma 4 on the fused webgpu path: the layer of graph/gemma4.ts as WGSL
 * programs (gemma4-attention.ts, gemma4-kernels.ts, gemma4-moe.ts), recorded
 * into one compute pass per call by FusedPath, like WebGPUPath's Gemma 2/3
 * layer, with kernels.ts's embedding, matmul, norms and unembedding and
 * attention.ts's attention on the 'split' layout. Per layer: q
 * and (own layers) K/V matmuls, one per-head norm + rope program, attention
 * in two passes, the output projection, a residual that also norms for the
 * MLP, the gate/up (GeGLU) and down matmuls, the experts beside them, a
 * residual that ends the layer (times its scalar) or, with per-layer
 * embeddings, the gated per-layer residual after it; each residual norms the
 * next layer's input. No value comes back to the CPU within a call.
 *
 * KV-shared layers hold no cache of their own: they attend over their source
 * layer's cache and its K/V of this call, kept in a buffer of the source's
 * own. So that they read the cache as it was before a prompt chunk, source
 * layers write a chunk's K/V into the pool after every layer ran (a decode
 * step writes inside attention, into the one entry no query of the step sees).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import type { KVPool } from '../kv-pool.js';
import { callPositions, ropeTables } from '../rope.js';
import type { RowTable } from '../row-table.js';
import type { Weights } from '../weights.js';
import { ATTENTION_BLOCK, attentionCombineKernel, attentionKernel, kvWriteKernel } from './attention.js';
import { headNormKernel, type Gemma4AttentionShape } from './gemma4-attention.js';
import { LayerVec, pleCombineKernel, pleGateKernel, residualKernel4 } from './gemma4-kernels.js';
import { expertDownKernel, expertGateUpKernel, routeKernel } from './gemma4-moe.js';
import { allocScratch4, disposePacks, disposeScratch4, packLayers, type LayerPack, type Scratch4 } from './gemma4-pack.js';
import { FusedPath, rowsPerThread, type FusedCall, type ScratchSize } from './fused-path.js';
import type { Binding, GPUBufferLike } from './gpu.js';
import { normKernel } from './kernels.js';

/** Longest head the programs take (Gemma 4 E2B's global layers). */
const MAX_HEAD_DIM = 512;

function checkHeadDims(config: ModelConfig): ModelConfig {
  for (const s of config.gemma4!.layers) {
    if (s.headDim > MAX_HEAD_DIM || s.headDim % 8 !== 0) throw new Error(`the fused webgpu programs take head sizes up to ${MAX_HEAD_DIM}, multiples of 8, not ${s.headDim}`);
  }
  return config;
}

export class Gemma4WebGPUPath extends FusedPath<Scratch4> {
  private readonly packs: LayerPack[];
  /** Layers whose K/V later (KV-shared) layers attend over. */
  private readonly sources: Set<number>;
  /** The per-layer embedding table [vocabPerLayer, L * P], in host memory: a call uploads its own rows. */
  private readonly pleTable?: RowTable;

  constructor(config: ModelConfig, weights: Weights) {
    super(checkHeadDims(config), weights, 4096);
    const g = config.gemma4!;
    this.sources = new Set(g.layers.flatMap((s, l) => (s.kvSource !== l ? [s.kvSource] : [])));
    this.pleTable = weights.gemma4!.perLayer?.table;
    this.packs = packLayers(config, weights.gemma4!);
  }

  protected override hostWeightBytes(): number {
    return this.weights.packedBytes;
  }

  protected override upload(s: Scratch4, ids: number[][]): void {
    if (this.pleTable && s.pleOwn) this.gpu.write(this.gpu.bufferOf(s.pleOwn), this.pleTable.gather(ids.flat()));
  }

  protected encode(s: Scratch4, call: FusedCall): void {
    const { N, T, pool } = call;
    const c = this.config;
    const g4 = c.gemma4!;
    const gw = this.weights.gemma4!;
    const H = c.hiddenSize;
    const eps = c.rmsNormEps;
    const L = c.numLayers;
    const P = g4.perLayerInputSize;
    const buf = (t: tf.TensorInfo) => this.gpu.bufferOf(t);
    const step = this.stepBuffer;
    const R = rowsPerThread(N);
    // Bind groups are cached per program and layer (`at`).
    let at = 'call';
    const run = (key: string, code: () => string, bindings: Binding[], x: number, y = 1, z = 1) => this.program(key, code, `${key}@${at}`, bindings, x, y, z);
    const matmul = (name: string, K: number, M: number, x: tf.Tensor, wt: tf.Tensor, y: tf.Tensor, stride?: number) => this.matmul(name, K, M, { kind: 'plain' }, x, wt, y, N, stride);

    // Embedding, per-layer inputs, the first layer's input norm.
    this.embed(s.x, N);
    if (gw.perLayer && s.ple && s.pleOwn) {
      matmul('ple', H, L * P, s.x, gw.perLayer.proj, s.ple);
      run('ple:combine', () => pleCombineKernel({ L, P, H, eps }), [step, buf(s.pleOwn), buf(gw.perLayer.norm), buf(s.ple)], N, L);
    }
    run('norm:input', () => normKernel({ H, eps, rows: 'all', weight: true, threads: 64 }), [step, buf(s.x), buf(s.xn), buf(gw.layers[0].inputNorm)], N);

    gw.layers.forEach((w, l) => {
      at = `${l}`;
      const shape = this.shape(l, pool);
      const { headDim: hd, numKvHeads: nkv, kvSource: src, kEqV, intermediateSize: I } = g4.layers[l];
      const own = src === l;
      const kvBuf = s.kvSrc.get(src) ?? s.kv;
      const vec = buf(this.packs[l].vec);
      const tag = `${c.layerTypes[l]}:${hd}:${nkv}:${shape.entries}:${own}:${kEqV}`;
      const last = l === L - 1;

      // Attention.
      matmul(`q:${l}`, H, c.numHeads * hd, s.xn, w.q, s.q);
      if (own) matmul(`kv:${l}`, H, (kEqV ? 1 : 2) * nkv * hd, s.xn, w.kv!, kvBuf, 2 * nkv * hd);
      const heads = c.numHeads + (own ? (kEqV ? 1 : 2) * nkv : 0);
      run(`heads:${tag}`, () => headNormKernel(shape), [step, this.ropeBuffer, buf(s.q), buf(w.qNorm), ...(own ? [buf(kvBuf), buf(w.kNorm!)] : [])], N, heads);
      const cache = pool?.pooled ? [buf(pool.pooled.k[src]), buf(pool.pooled.vT[src])] : this.noCache;
      run(`attn:${tag}`, () => attentionKernel(shape), [step, buf(s.q), buf(kvBuf), ...cache, buf(s.partials)], Math.ceil(this.keys(call, shape.entries) / ATTENTION_BLOCK), N, nkv);
      if (pool && T > 1 && own && !this.sources.has(l)) this.writeKv(shape, tag, l, kvBuf, cache, N);
      run(`comb:${tag}`, () => attentionCombineKernel(shape), [step, buf(s.partials), buf(s.attn)], N, c.numHeads);
      matmul(`o:${l}`, c.numHeads * hd, H, s.attn, w.o, s.y);
      const moe = w.moe && g4.moe;
      const secondNorm = moe ? LayerVec.PRE_FFW_2 : undefined;
      run(`res:attn:${!!moe}`, () => residualKernel4({ H, eps, post: LayerVec.POST_ATTN, scale: false, next: LayerVec.PRE_FFW, second: secondNorm }), [step, buf(s.y), vec, buf(s.x), buf(s.xn), ...(moe ? [buf(s.xm)] : [])], N);

      // Dense MLP, and beside it the experts (routed on the residual h, here x).
      this.matmul(`gateUp:${l}`, H, 2 * I, { kind: 'geglu' }, s.xn, w.gateUp, s.act, N);
      matmul(`down:${l}`, I, H, s.act, w.down, s.y);
      if (moe && s.route && s.actE) {
        const { numExperts: E, topK, intermediateSize: Im } = moe;
        const experts = this.packs[l].experts!;
        run('moe:route', () => routeKernel({ H, E, topK, eps }), [step, buf(s.x), buf(w.moe!.router), vec, buf(s.route)], N);
        run(`moe:gateUp:${R}`, () => expertGateUpKernel({ H, Im, E, R }), [step, buf(s.xm), buf(experts.gateUp), buf(s.route), buf(s.actE)], Math.ceil(Im / 32), Math.ceil(N / R), E);
        run(`moe:down:${R}`, () => expertDownKernel({ H, Im, E, R }), [step, buf(s.actE), buf(experts.down), buf(s.route), buf(s.y2)], Math.ceil(H / 32), Math.ceil(N / R));
      }
      const mix = moe ? { a: LayerVec.POST_FFW_1, b: LayerVec.POST_FFW_2, c: LayerVec.POST_FFW } : undefined;
      const ple = w.perLayer && s.ple && s.pleGate;
      const next = ple || last ? undefined : LayerVec.NEXT_INPUT;
      run(`res:ffw:${!!mix}:${!!ple}:${last}`, () => residualKernel4({ H, eps, mix, post: LayerVec.POST_FFW, scale: !ple, next }), [step, buf(s.y), vec, buf(s.x), ...(next !== undefined ? [buf(s.xn)] : []), ...(mix ? [buf(s.y2)] : [])], N);

      // Per-layer input: gelu(x @ gate) * its per-layer embedding, projected back, normed, added; then the layer scalar.
      if (ple && s.ple && s.pleGate) {
        matmul(`pleGate:${l}`, H, P, s.x, w.perLayer!.gate, s.pleGate);
        run(`ple:gate:${l}`, () => pleGateKernel({ L, P, layer: l }), [step, buf(s.ple), buf(s.pleGate)], N);
        matmul(`pleProj:${l}`, P, H, s.pleGate, w.perLayer!.proj, s.y2);
        const pn = last ? undefined : LayerVec.NEXT_INPUT;
        run(`res:ple:${last}`, () => residualKernel4({ H, eps, post: LayerVec.PLE_POST, scale: true, next: pn }), [step, buf(s.y2), vec, buf(s.x), ...(pn !== undefined ? [buf(s.xn)] : [])], N);
      }
    });
    // A prompt chunk's K/V of the source layers, now that the layers sharing them have read the cache as it was.
    if (pool?.pooled && T > 1) {
      for (const l of this.sources) this.writeKv(this.shape(l, pool), `src:${l}`, l, s.kvSrc.get(l)!, [buf(pool.pooled.k[l]), buf(pool.pooled.vT[l])], N);
    }

    if (call.out) this.logits(s.x, s.final, call.outRows, call.out);
  }

  private writeKv(shape: Gemma4AttentionShape, tag: string, l: number, kvBuf: tf.Tensor, cache: GPUBufferLike[], N: number): void {
    const key = `kvw:${shape.headDim}:${shape.numKvHeads}:${shape.entries}`;
    this.program(key, () => kvWriteKernel(shape), `${key}:${tag}:${l}`, [this.stepBuffer, this.gpu.bufferOf(kvBuf), ...cache], N, shape.numKvHeads);
  }

  private shape(l: number, pool: KVPool | undefined): Gemma4AttentionShape {
    const c = this.config;
    const s = c.gemma4!.layers[l];
    const type = c.layerTypes[l];
    const own = s.kvSource === l;
    return {
      headDim: s.headDim,
      numHeads: c.numHeads,
      numKvHeads: s.numKvHeads,
      ...this.span(type, pool),
      softcap: null,
      layout: 'split',
      writes: own,
      threads: 64,
      stageQ: false,
      eps: c.rmsNormEps,
      ropeAt: type === 'global' ? '0u' : `2u * N * ${c.gemma4!.typeHeadDim.global}u`,
      own,
      kEqV: s.kEqV,
    };
  }

  /** cos and sin per token, each layer type at its own head size: [global cos, sin][sliding cos, sin], [N][headDim] each. */
  protected ropeData(starts: number[], T: number): Float32Array {
    const c = this.config;
    const positions = callPositions(starts, T);
    const N = positions.length;
    const dims = c.gemma4!.typeHeadDim;
    const data = new Float32Array(2 * N * (dims.global + dims.sliding));
    let at = 0;
    for (const type of ['global', 'sliding'] as LayerType[]) {
      const { cos, sin } = ropeTables(positions, dims[type], c.rope[type]);
      data.set(cos, at);
      data.set(sin, at + cos.length);
      at += 2 * cos.length;
    }
    return data;
  }

  protected makeScratch(size: ScratchSize): Scratch4 {
    return allocScratch4(this.config, this.gpu, this.sources, size);
  }

  protected disposeScratch(s: Scratch4): void {
    disposeScratch4(s);
  }

  override dispose(): void {
    super.dispose();
    disposePacks(this.packs);
  }
}
