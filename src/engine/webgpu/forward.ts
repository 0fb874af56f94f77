/**
 * The forward pass on webgpu as fused WGSL programs (kernels.ts): per layer
 * a q/k/v matmul, q/k norm + rope, attention in two passes (with the cache write), the
 * output projection, a residual + norm, the gate/up matmul with gelu, the
 * down projection and another residual + norm. Same contract as GemmaModel
 * (model.ts): B rows of T tokens against the pool's caches, logits of the
 * last positions (or every position) as a tfjs tensor the caller owns.
 *
 * The cache is KVPool's pooled layout (per layer K [slots, kv, E, hd] and
 * V^T [slots, kv, hd, E]), so one dispatch serves every row of a batch;
 * bookkeeping and compaction stay KVPool's.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, callRope, ForwardBase, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import type { TopK } from '../types.js';
import { tensorOf, type Weights } from '../weights.js';
import { reduceFused } from './reduce.js';
import { GpuRuntime, type Binding, type GPUBufferLike } from './gpu.js';
import { ATTENTION_BLOCK, StepLayout, attentionCombineKernel, attentionKernel, embedKernel, matmulKernel, normKernel, qkRopeKernel, kvWriteKernel, residualKernel, type AttentionShape, type Epilogue } from './kernels.js';

/** Activations of one call, sized for the largest call so far (tfjs tensors, so tf.memory() counts them). */
interface Scratch {
  tokens: number;
  outRows: number;
  /** Attention blocks per (token, head). */
  blocks: number;
  x: tf.Tensor;
  xn: tf.Tensor;
  qkv: tf.Tensor;
  attn: tf.Tensor;
  y: tf.Tensor;
  act: tf.Tensor;
  /** Attention partials: per (token, head, block) headDim outputs, max and sum. */
  partials: tf.Tensor;
  final: tf.Tensor;
}


export class WebGPUPath extends ForwardBase implements ForwardPath {
  readonly name = 'webgpu' as const;
  private readonly gpu = new GpuRuntime();
  private readonly qkvWidth: number;
  private scratch: Scratch | undefined;
  private stepBuffer: GPUBufferLike;
  private ropeBuffer: GPUBufferLike;
  /** Stand-ins bound as the cache of a pass without a pool (two: writable bindings must not alias). */
  private readonly noCache: GPUBufferLike[];

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
  ) {
    super();
    const hd = config.headDim;
    if (hd > 256 || (hd & (hd - 1)) !== 0) throw new Error(`the webgpu kernels need a power-of-two head size up to 256, not ${hd}`);
    this.qkvWidth = (config.numHeads + 2 * config.numKvHeads) * hd;
    this.stepBuffer = this.gpu.createBuffer(4096);
    this.ropeBuffer = this.gpu.createBuffer(4 * hd * 4);
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
    return { backendWeightBytes: this.weights.bytes, hostWeightBytes: 0, hostScratchBytes: 0 };
  }

  /** Dispatches recorded so far (for the decode benchmark's kernels-per-token figure). */
  get dispatches(): number {
    return this.gpu.dispatches;
  }

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const frame = callFrame(ids, opts);
    const { B, T, starts } = frame;
    const { pool, slots } = opts;
    // Fails on overflow before anything is recorded.
    if (pool && slots) pool.planWrite(slots, T, 'global');
    const N = B * T;
    const logits = !opts.noLogits;
    const outRows = opts.allPositions ? T : B;
    const cacheEntries = pool ? Math.max(pool.entries.global, pool.entries.sliding) : 0;
    const s = this.ensureScratch(N, outRows, Math.ceil((cacheEntries + T) / ATTENTION_BLOCK));

    // Header, rows and ids.
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
      step[StepLayout.ROWS + StepLayout.ROW_FIELDS * b] = start;
      step[StepLayout.ROWS + StepLayout.ROW_FIELDS * b + 1] = pool && start > 0 ? 1 : 0;
      step[StepLayout.ROWS + StepLayout.ROW_FIELDS * b + 2] = pool ? 1 : 0;
      step[StepLayout.ROWS + StepLayout.ROW_FIELDS * b + 3] = slots?.[b] ?? 0;
    });
    step.set(ids.flat(), idsAt);
    if (step.byteLength > this.stepBuffer.size) {
      this.stepBuffer.destroy();
      this.stepBuffer = this.gpu.createBuffer(step.byteLength * 2);
    }
    const rope = this.ropeData(starts, T);
    if (rope.byteLength > this.ropeBuffer.size) {
      this.ropeBuffer.destroy();
      this.ropeBuffer = this.gpu.createBuffer(rope.byteLength * 2);
    }

    this.gpu.flushTfjs();
    this.gpu.write(this.stepBuffer, step);
    this.gpu.write(this.ropeBuffer, rope);
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

  private encode(s: Scratch, starts: number[], T: number, outRows: number, pool: KVPool | undefined, slots: number[] | undefined, out: tf.Tensor2D | undefined): void {
    const B = starts.length;
    const c = this.config;
    const g = this.gpu;
    const w = this.weights;
    const N = B * T;
    const H = c.hiddenSize;
    const buf = (t: tf.TensorInfo) => g.bufferOf(t);
    const step = this.stepBuffer;

    // Embedding lookup (the [H, V] tables serve both ends); each part writes the tokens in its id range.
    for (const part of w.embedParts) {
      const vc = part.table.shape[1];
      const embed = g.pipeline(`embed:${part.from}`, () => embedKernel({ H, vc, v0: part.from, scale: Math.sqrt(H) }));
      g.dispatch(embed, g.bindGroup(`embed:${part.from}`, embed, [step, buf(part.table), buf(s.x)]), N);
    }
    const norm = g.pipeline('norm', () => normKernel({ H, eps: c.rmsNormEps, final: false }));
    g.dispatch(norm, g.bindGroup('norm', norm, [step, buf(s.x), buf(s.xn)]), N);

    const residual = g.pipeline('residual', () => residualKernel({ H, eps: c.rmsNormEps }));
    const rows = (n: number) => (n <= 1 ? 1 : n <= 4 ? 4 : 8);
    const R = rows(N);
    const matmul = (name: string, K: number, M: number, epilogue: Epilogue, x: tf.Tensor, wt: tf.Tensor, y: tf.Tensor, layer: number) => {
      const width = epilogue.kind === 'geglu' ? M / 2 : M;
      const p = g.pipeline(`mm:${name}:${R}`, () => matmulKernel({ K, M, ld: width, col0: 0, R, rowsAt: StepLayout.N, epilogue }));
      g.dispatch(p, g.bindGroup(`mm:${name}:${R}:${layer}`, p, [step, buf(x), buf(wt), buf(y)]), Math.ceil(width / 32), Math.ceil(N / R));
    };
    const qDim = c.numHeads * c.headDim;
    const I = c.intermediateSize;

    w.layers.forEach((lw, l) => {
      const type = c.layerTypes[l];
      const shape = this.attentionShape(type, pool);
      matmul('qkv', H, this.qkvWidth, { kind: 'plain' }, s.xn, tensorOf(lw.qkv), s.qkv, l);
      const rope = g.pipeline(`rope:${type}`, () => qkRopeKernel(shape));
      const ropeBindings: Binding[] = [step, this.ropeBuffer, buf(s.qkv)];
      if (lw.qkNorm) ropeBindings.push(buf(lw.qkNorm));
      g.dispatch(rope, g.bindGroup(`rope:${l}`, rope, ropeBindings), N, c.numHeads + c.numKvHeads);

      const attend = g.pipeline(`attn:${type}:${shape.entries}`, () => attentionKernel(shape));
      const cache = pool?.pooled ? [buf(pool.pooled.k[l]), buf(pool.pooled.vT[l])] : this.noCache;
      const keys = Math.max(...starts.map((start) => (pool && start > 0 ? Math.min(shape.entries, start) : 0))) + T;
      g.dispatch(attend, g.bindGroup(`attn:${l}`, attend, [step, buf(s.qkv), ...cache, buf(s.partials)]), Math.ceil(keys / ATTENTION_BLOCK), N, c.numKvHeads);
      if (pool && T > 1) {
        const write = g.pipeline(`kvw:${type}:${shape.entries}`, () => kvWriteKernel(shape));
        g.dispatch(write, g.bindGroup(`kvw:${l}`, write, [step, buf(s.qkv), ...cache]), N, c.numKvHeads);
      }
      const combine = g.pipeline(`comb:${type}:${shape.entries}`, () => attentionCombineKernel(shape));
      g.dispatch(combine, g.bindGroup(`comb:${l}`, combine, [step, buf(s.partials), buf(s.attn)]), N, c.numHeads);

      matmul('o', qDim, H, { kind: 'plain' }, s.attn, tensorOf(lw.o), s.y, l);
      g.dispatch(residual, g.bindGroup(`res:attn:${l}`, residual, [step, buf(s.y), buf(lw.postAttnNorm), buf(s.x), buf(s.xn)]), N);
      matmul('gateUp', H, 2 * I, { kind: 'geglu' }, s.xn, tensorOf(lw.gateUp), s.act, l);
      matmul('down', I, H, { kind: 'plain' }, s.act, tensorOf(lw.down), s.y, l);
      g.dispatch(residual, g.bindGroup(`res:ffw:${l}`, residual, [step, buf(s.y), buf(lw.postFfwNorm), buf(s.x), buf(s.xn)]), N);
    });

    if (!out) return;
    const finalNorm = g.pipeline('norm:final', () => normKernel({ H, eps: c.rmsNormEps, final: true }));
    g.dispatch(finalNorm, g.bindGroup('norm:final', finalNorm, [step, buf(s.x), buf(s.final), buf(w.finalNorm)]), outRows);
    const Ro = rows(outRows);
    const V = c.vocabSize;
    const epilogue: Epilogue = c.finalLogitSoftcap ? { kind: 'softcap', cap: c.finalLogitSoftcap } : { kind: 'plain' };
    for (const part of w.embedParts) {
      const vc = part.table.shape[1];
      const unembed = g.pipeline(`unembed:${Ro}:${part.from}`, () => matmulKernel({ K: H, M: vc, ld: V, col0: part.from, R: Ro, rowsAt: StepLayout.OUT_ROWS, epilogue }));
      g.dispatch(unembed, g.bindGroup(`unembed:${Ro}:${part.from}`, unembed, [step, buf(s.final), buf(part.table), buf(out)]), Math.ceil(vc / 32), Math.ceil(outRows / Ro));
    }
  }

  private attentionShape(type: LayerType, pool: KVPool | undefined): AttentionShape {
    const c = this.config;
    return {
      headDim: c.headDim,
      numHeads: c.numHeads,
      numKvHeads: c.numKvHeads,
      entries: pool ? pool.entries[type] : 1,
      window: type === 'sliding' ? c.slidingWindow : 0,
      softcap: c.attnLogitSoftcap,
      eps: c.rmsNormEps,
      qkNorm: c.qkNorm,
      ropeTable: type === 'global' ? 0 : 1,
    };
  }

  /** cos and sin per token for both layer types: [type][cos, sin][N][headDim]. */
  private ropeData(starts: number[], T: number): Float32Array {
    const hd = this.config.headDim;
    const N = starts.length * T;
    const tables = callRope(this.config, { B: starts.length, T, starts });
    const data = new Float32Array(4 * N * hd);
    (['global', 'sliding'] as const).forEach((type, i) => {
      const { cos, sin } = tables[type];
      data.set(cos, 2 * i * N * hd);
      data.set(sin, (2 * i + 1) * N * hd);
    });
    return data;
  }

  private ensureScratch(tokens: number, outRows: number, blocks: number): Scratch {
    const s = this.scratch;
    if (s && s.tokens >= tokens && s.outRows >= outRows && s.blocks >= blocks) return s;
    const c = this.config;
    const n = Math.max(tokens, s?.tokens ?? 0);
    const o = Math.max(outRows, s?.outRows ?? 0);
    const ls = Math.max(blocks, s?.blocks ?? 0);
    if (s) this.disposeScratch(s);
    // Kept: a forward pass may run inside a caller's tf.tidy, which must not take the scratch with it.
    const t = (size: number) => tf.keep(this.gpu.emptyTensor([size]));
    this.scratch = {
      tokens: n,
      outRows: o,
      blocks: ls,
      x: t(n * c.hiddenSize),
      xn: t(n * c.hiddenSize),
      qkv: t(n * this.qkvWidth),
      attn: t(n * c.numHeads * c.headDim),
      y: t(n * c.hiddenSize),
      act: t(n * c.intermediateSize),
      partials: t(n * c.numHeads * ls * (c.headDim + 2)),
      final: t(o * c.hiddenSize),
    };
    return this.scratch;
  }

  private disposeScratch(s: Scratch): void {
    tf.dispose([s.x, s.xn, s.qkv, s.attn, s.y, s.act, s.partials, s.final]);
  }

  dispose(): void {
    if (this.scratch) this.disposeScratch(this.scratch);
    this.scratch = undefined;
    for (const b of [this.stepBuffer, this.ropeBuffer, ...this.noCache]) b.destroy();
  }
}
