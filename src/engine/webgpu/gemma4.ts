/**
 * Gemma 4 on the fused webgpu path: the layer of graph/gemma4.ts as WGSL
 * programs (gemma4-attention.ts, gemma4-kernels.ts, gemma4-moe.ts), recorded
 * into one compute pass per call like WebGPUPath's Gemma 2/3 layer, with
 * kernels.ts's embedding, matmul, final norm and unembedding. Per layer: q
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
import { callFrame, ForwardBase, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import { callPositions, ropeTables } from '../rope.js';
import type { RowTable } from '../row-table.js';
import type { TopK } from '../types.js';
import type { Weights } from '../weights.js';
import { attentionKernel4, combineKernel4, headNormKernel, kvWriteKernel4, type Gemma4AttentionShape } from './gemma4-attention.js';
import { LayerVec, pleCombineKernel, pleGateKernel, residualKernel4, rowNormKernel } from './gemma4-kernels.js';
import { expertDownKernel, expertGateUpKernel, routeKernel } from './gemma4-moe.js';
import { disposePacks, disposeScratch, makeScratch, packLayers, type LayerPack, type Scratch4 } from './gemma4-pack.js';
import { GpuRuntime, type Binding, type GPUBufferLike } from './gpu.js';
import { ATTENTION_BLOCK, embedKernel, matmulKernel, normKernel, StepLayout, type Epilogue } from './kernels.js';
import { reduceFused } from './reduce.js';

/** Longest head the programs take (Gemma 4 E2B's global layers). */
const MAX_HEAD_DIM = 512;

export class Gemma4WebGPUPath extends ForwardBase implements ForwardPath {
  readonly name = 'webgpu' as const;
  private readonly gpu = new GpuRuntime();
  private readonly packs: LayerPack[];
  /** Layers whose K/V later (KV-shared) layers attend over. */
  private readonly sources: Set<number>;
  /** The per-layer embedding table [vocabPerLayer, L * P], in host memory: a call uploads its own rows. */
  private readonly pleTable?: RowTable;
  private scratch: Scratch4 | undefined;
  private stepBuffer: GPUBufferLike;
  private ropeBuffer: GPUBufferLike;
  /** Stand-ins bound as the cache of a pass without a pool (two: writable bindings must not alias). */
  private readonly noCache: GPUBufferLike[];

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
  ) {
    super();
    const g = config.gemma4!;
    for (const s of g.layers) {
      if (s.headDim > MAX_HEAD_DIM || s.headDim % 8 !== 0) throw new Error(`the fused webgpu programs take head sizes up to ${MAX_HEAD_DIM}, multiples of 8, not ${s.headDim}`);
    }
    this.sources = new Set(g.layers.flatMap((s, l) => (s.kvSource !== l ? [s.kvSource] : [])));
    this.pleTable = weights.gemma4!.perLayer?.table;
    this.packs = packLayers(config, weights.gemma4!);
    this.stepBuffer = this.gpu.createBuffer(4096);
    this.ropeBuffer = this.gpu.createBuffer(4096);
    this.noCache = [this.gpu.createBuffer(16), this.gpu.createBuffer(16)];
  }

  reduce(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
    return reduceFused(logits, rows);
  }

  /** KVPool's pooled layout; a compacted slot is written back by a copy on the device. */
  createPool(slots: number, capacity: number): KVPool {
    return new KVPool(this.config, slots, capacity, false, (dst, offsetBytes, src) => this.gpu.copyInto(dst, offsetBytes, src));
  }

  memory(): PathMemory {
    return { backendWeightBytes: this.weights.bytes, hostWeightBytes: this.weights.packedBytes, hostScratchBytes: 0 };
  }

  get dispatches(): number {
    return this.gpu.dispatches;
  }

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const frame = callFrame(ids, opts);
    const { B, T, starts } = frame;
    const { pool, slots } = opts;
    if (pool && slots) pool.planWrite(slots, T, 'global');
    const N = B * T;
    const logits = !opts.noLogits;
    const outRows = opts.allPositions ? T : B;
    const cacheEntries = pool ? Math.max(pool.entries.global, pool.entries.sliding) : 0;
    const s = this.ensureScratch(N, outRows, Math.ceil((cacheEntries + T) / ATTENTION_BLOCK));

    const idsAt = StepLayout.ROWS + StepLayout.ROW_FIELDS * B;
    const step = new Uint32Array(idsAt + N);
    step[StepLayout.N] = N;
    step[StepLayout.B] = B;
    step[StepLayout.T] = T;
    step[StepLayout.OUT_ROWS] = logits ? outRows : 0;
    step[StepLayout.OUT_STRIDE] = opts.allPositions ? 1 : T;
    step[StepLayout.OUT_OFFSET] = opts.allPositions ? 0 : T - 1;
    step[StepLayout.IDS_AT] = idsAt;
    step[StepLayout.BLOCKS] = s.blocks;
    starts.forEach((start, b) => {
      const at = StepLayout.ROWS + StepLayout.ROW_FIELDS * b;
      step.set([start, pool && start > 0 ? 1 : 0, pool ? 1 : 0, slots?.[b] ?? 0], at);
    });
    step.set(ids.flat(), idsAt);
    this.stepBuffer = this.fit(this.stepBuffer, step.byteLength);
    const rope = this.ropeData(starts, T);
    this.ropeBuffer = this.fit(this.ropeBuffer, rope.byteLength);

    this.gpu.flushTfjs();
    this.gpu.write(this.stepBuffer, step);
    this.gpu.write(this.ropeBuffer, rope);
    if (this.pleTable && s.pleOwn) this.gpu.write(this.gpu.bufferOf(s.pleOwn), this.pleTable.gather(ids.flat()));
    const out = logits ? (this.gpu.emptyTensor([outRows, c.vocabSize]) as tf.Tensor2D) : undefined;
    this.gpu.begin();
    try {
      this.encode(s, starts, T, outRows, pool, slots, out);
    } finally {
      this.gpu.submit();
    }
    if (pool && slots) pool.commitWrite(slots, T);
    return out;
  }

  private encode(s: Scratch4, starts: number[], T: number, outRows: number, pool: KVPool | undefined, slots: number[] | undefined, out: tf.Tensor2D | undefined): void {
    const c = this.config;
    const g4 = c.gemma4!;
    const gw = this.weights.gemma4!;
    const g = this.gpu;
    const N = starts.length * T;
    const H = c.hiddenSize;
    const eps = c.rmsNormEps;
    const L = c.numLayers;
    const P = g4.perLayerInputSize;
    const buf = (t: tf.TensorInfo) => g.bufferOf(t);
    const step = this.stepBuffer;
    const rows = (n: number) => (n <= 1 ? 1 : n <= 4 ? 4 : 8);
    const R = rows(N);
    // Bind groups are cached per program and layer (`at`), so a layer's buffers stay bound across calls.
    let at = 'call';
    const run = (key: string, code: () => string, bindings: Binding[], x: number, y = 1, z = 1) => {
      const p = g.pipeline(key, code);
      g.dispatch(p, g.bindGroup(`${key}@${at}`, p, bindings), x, y, z);
    };
    // y [N, ld] (ld: the output's row stride, by default its width; a GeGLU product is M/2 wide).
    const matmul = (name: string, K: number, M: number, epilogue: Epilogue, x: tf.Tensor, wt: tf.Tensor, y: tf.Tensor, stride?: number) => {
      const width = epilogue.kind === 'geglu' ? M / 2 : M;
      const ld = stride ?? width;
      const key = `mm:${K}:${M}:${ld}:${epilogue.kind}:${R}`;
      const p = g.pipeline(key, () => matmulKernel({ K, M, ld, col0: 0, R, rowsAt: StepLayout.N, epilogue }));
      g.dispatch(p, g.bindGroup(`${key}:${name}`, p, [step, buf(x), buf(wt), buf(y)]), Math.ceil(width / 32), Math.ceil(N / R));
    };

    // Embedding, per-layer inputs, the first layer's input norm.
    for (const part of this.weights.embedParts) {
      const vc = part.table.shape[1];
      run(`embed:${part.from}`, () => embedKernel({ H, vc, v0: part.from, scale: Math.sqrt(H) }), [step, buf(part.table), buf(s.x)], N);
    }
    if (gw.perLayer && s.ple && s.pleOwn) {
      matmul('ple', H, L * P, { kind: 'plain' }, s.x, gw.perLayer.proj, s.ple);
      run('ple:combine', () => pleCombineKernel({ L, P, H, eps }), [step, buf(s.pleOwn), buf(gw.perLayer.norm), buf(s.ple)], N, L);
    }
    run('norm:input', () => rowNormKernel({ H, eps }), [step, buf(s.x), buf(gw.layers[0].inputNorm), buf(s.xn)], N);

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
      matmul(`q:${l}`, H, c.numHeads * hd, { kind: 'plain' }, s.xn, w.q, s.q);
      if (own) matmul(`kv:${l}`, H, (kEqV ? 1 : 2) * nkv * hd, { kind: 'plain' }, s.xn, w.kv!, kvBuf, 2 * nkv * hd);
      const heads = c.numHeads + (own ? (kEqV ? 1 : 2) * nkv : 0);
      run(`heads:${tag}`, () => headNormKernel(shape), [step, this.ropeBuffer, buf(s.q), buf(w.qNorm), ...(own ? [buf(kvBuf), buf(w.kNorm!)] : [])], N, heads);
      const cache = pool?.pooled ? [buf(pool.pooled.k[src]), buf(pool.pooled.vT[src])] : this.noCache;
      const keys = Math.max(...starts.map((start) => (pool && start > 0 ? Math.min(shape.entries, start) : 0))) + T;
      run(`attn:${tag}`, () => attentionKernel4(shape), [step, buf(s.q), buf(kvBuf), ...cache, buf(s.partials)], Math.ceil(keys / ATTENTION_BLOCK), N, nkv);
      if (pool && T > 1 && own && !this.sources.has(l)) this.writeKv(shape, tag, l, kvBuf, cache, N);
      run(`comb:${tag}`, () => combineKernel4(shape), [step, buf(s.partials), buf(s.attn)], N, c.numHeads);
      matmul(`o:${l}`, c.numHeads * hd, H, { kind: 'plain' }, s.attn, w.o, s.y);
      const moe = w.moe && g4.moe;
      const secondNorm = moe ? LayerVec.PRE_FFW_2 : undefined;
      run(`res:attn:${!!moe}`, () => residualKernel4({ H, eps, post: LayerVec.POST_ATTN, scale: false, next: LayerVec.PRE_FFW, second: secondNorm }), [step, buf(s.y), vec, buf(s.x), buf(s.xn), ...(moe ? [buf(s.xm)] : [])], N);

      // Dense MLP, and beside it the experts (routed on the residual h, here x).
      matmul(`gateUp:${l}`, H, 2 * I, { kind: 'geglu' }, s.xn, w.gateUp, s.act);
      matmul(`down:${l}`, I, H, { kind: 'plain' }, s.act, w.down, s.y);
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
        matmul(`pleGate:${l}`, H, P, { kind: 'plain' }, s.x, w.perLayer!.gate, s.pleGate);
        run(`ple:gate:${l}`, () => pleGateKernel({ L, P, layer: l }), [step, buf(s.ple), buf(s.pleGate)], N);
        matmul(`pleProj:${l}`, P, H, { kind: 'plain' }, s.pleGate, w.perLayer!.proj, s.y2);
        const pn = last ? undefined : LayerVec.NEXT_INPUT;
        run(`res:ple:${last}`, () => residualKernel4({ H, eps, post: LayerVec.PLE_POST, scale: true, next: pn }), [step, buf(s.y2), vec, buf(s.x), ...(pn !== undefined ? [buf(s.xn)] : [])], N);
      }
    });
    // A prompt chunk's K/V of the source layers, now that the layers sharing them have read the cache as it was.
    if (pool?.pooled && T > 1) {
      for (const l of this.sources) this.writeKv(this.shape(l, pool), `src:${l}`, l, s.kvSrc.get(l)!, [buf(pool.pooled.k[l]), buf(pool.pooled.vT[l])], N);
    }

    if (!out) return;
    at = 'call';
    run('norm:final', () => normKernel({ H, eps, final: true }), [step, buf(s.x), buf(s.final), buf(this.weights.finalNorm)], outRows);
    const Ro = rows(outRows);
    const V = c.vocabSize;
    const epilogue: Epilogue = c.finalLogitSoftcap ? { kind: 'softcap', cap: c.finalLogitSoftcap } : { kind: 'plain' };
    for (const part of this.weights.embedParts) {
      const vc = part.table.shape[1];
      const key = `unembed:${Ro}:${part.from}`;
      run(key, () => matmulKernel({ K: H, M: vc, ld: V, col0: part.from, R: Ro, rowsAt: StepLayout.OUT_ROWS, epilogue }), [step, buf(s.final), buf(part.table), buf(out)], Math.ceil(vc / 32), Math.ceil(outRows / Ro));
    }
  }

  private writeKv(shape: Gemma4AttentionShape, tag: string, l: number, kvBuf: tf.Tensor, cache: GPUBufferLike[], N: number): void {
    const key = `kvw:${shape.headDim}:${shape.numKvHeads}:${shape.entries}`;
    const p = this.gpu.pipeline(key, () => kvWriteKernel4(shape));
    this.gpu.dispatch(p, this.gpu.bindGroup(`${key}:${tag}:${l}`, p, [this.stepBuffer, this.gpu.bufferOf(kvBuf), ...cache]), N, shape.numKvHeads);
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
      entries: pool ? pool.entries[type] : 1,
      window: type === 'sliding' ? c.slidingWindow : 0,
      eps: c.rmsNormEps,
      ropeAt: type === 'global' ? '0u' : `2u * N * ${c.gemma4!.typeHeadDim.global}u`,
      own,
      kEqV: s.kEqV,
      writes: own,
    };
  }

  /** cos and sin per token, each layer type at its own head size: [global cos, sin][sliding cos, sin], [N][headDim] each. */
  private ropeData(starts: number[], T: number): Float32Array {
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

  private fit(buffer: GPUBufferLike, bytes: number): GPUBufferLike {
    if (bytes <= buffer.size) return buffer;
    buffer.destroy();
    return this.gpu.createBuffer(bytes * 2);
  }

  private ensureScratch(tokens: number, outRows: number, blocks: number): Scratch4 {
    const s = this.scratch;
    if (s && s.tokens >= tokens && s.outRows >= outRows && s.blocks >= blocks) return s;
    if (s) disposeScratch(s);
    this.scratch = makeScratch(this.config, this.gpu, this.sources, Math.max(tokens, s?.tokens ?? 0), Math.max(outRows, s?.outRows ?? 0), Math.max(blocks, s?.blocks ?? 0));
    return this.scratch;
  }

  dispose(): void {
    if (this.scratch) disposeScratch(this.scratch);
    this.scratch = undefined;
    disposePacks(this.packs);
    for (const b of [this.stepBuffer, this.ropeBuffer, ...this.noCache]) b.destroy();
  }
}
