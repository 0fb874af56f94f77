/**
 * What the fused webgpu paths (forward.ts for Gemma 2/3, gemma4.ts for
 * Gemma 4) share: the GPU runtime, the call's header and rope tables in
 * buffers that grow, activations sized for the largest call so far, the
 * pooled cache, the device-side reduction, and the programs at both ends of
 * the model (embedding; final norm and unembedding). A subclass records its
 * layers (`encode`) and says how its rope tables and activations look.
 *
 * A call writes the header, the rope tables (and a subclass's own uploads),
 * then records every program into one compute pass: no value comes back to
 * the CPU within a call.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callFrame, ForwardBase, type ForwardPath, type PathMemory, type PrefillOptions } from '../forward.js';
import { KVPool } from '../kv-pool.js';
import type { RowLogitsInput } from '../reduce.js';
import type { TopK } from '../types.js';
import type { Linear, Weights } from '../weights.js';
import { ATTENTION_BLOCK } from './attention.js';
import { GpuRuntime, type Binding, type GPUBufferLike } from './gpu.js';
import { webgpuSubgroups } from './adapter.js';
import { embedKernel, embedRowsKernel, matmulKernel, normKernel, StepLayout, type Epilogue } from './kernels.js';
import { GEMV_ROWS, gemmGrid, gemmKernel, gemmTile, gemvGrid, gemvKernel, gemvRows, type MatmulShape, type Subgroups } from './matmul.js';
import { gpuMatrix } from './weights.js';
import { reduceFused } from './reduce.js';

/** Sizes an activation set was made for: tokens, logit rows, attention blocks per (token, head). */
export interface ScratchSize {
  tokens: number;
  outRows: number;
  blocks: number;
}

/** One call as the programs see it. */
export interface FusedCall {
  starts: number[];
  T: number;
  /** Tokens of the call (B * T). */
  N: number;
  outRows: number;
  pool?: KVPool;
  /** The logits [outRows, V], unless the call wants none. */
  out?: tf.Tensor2D;
}

/** Rows a matmul thread keeps in registers, by rows in the call (one program per class). */
export const rowsPerThread = (n: number): number => (n <= 1 ? 1 : n <= 4 ? 4 : 8);

export abstract class FusedPath<S extends ScratchSize> extends ForwardBase implements ForwardPath {
  readonly name = 'webgpu' as const;
  protected readonly gpu = new GpuRuntime();
  protected stepBuffer: GPUBufferLike;
  protected ropeBuffer: GPUBufferLike;
  /** Stand-ins bound as the cache of a pass without a pool (two: writable bindings must not alias). */
  protected readonly noCache: GPUBufferLike[];
  private scratch: S | undefined;
  /** Subgroup adds in the GEMV programs where the device has them, with sizes up to 32 (a team of 32 threads per column). */
  protected readonly subgroups: Subgroups;

  constructor(
    readonly config: ModelConfig,
    readonly weights: Weights,
    ropeBytes: number,
  ) {
    super();
    this.stepBuffer = this.gpu.createBuffer(4096);
    this.ropeBuffer = this.gpu.createBuffer(ropeBytes);
    this.noCache = [this.gpu.createBuffer(16), this.gpu.createBuffer(16)];
    const sg = webgpuSubgroups();
    this.subgroups = sg && sg.max <= 32 && 32 % sg.min === 0 ? { min: sg.min } : undefined;
  }

  /** Records the layers of a call (the scratch fits it; header and rope tables are written). */
  protected abstract encode(s: S, call: FusedCall): void;
  /** The rope tables of a call, as the subclass's programs read them. */
  protected abstract ropeData(starts: number[], T: number): Float32Array;
  protected abstract makeScratch(size: ScratchSize): S;
  protected abstract disposeScratch(s: S): void;
  /** Uploads of a call beyond header and rope tables. */
  protected upload(_s: S, _ids: number[][]): void {}
  /** Weight bytes the path keeps in host memory. */
  protected hostWeightBytes(): number {
    return 0;
  }

  reduce(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
    return reduceFused(logits, rows);
  }

  /** KVPool's pooled layout; a compacted slot is written back by a copy on the device. */
  createPool(slots: number, capacity: number): KVPool {
    return new KVPool(this.config, slots, capacity, false, (dst, offsetBytes, src) => this.gpu.copyInto(dst, offsetBytes, src));
  }

  memory(): PathMemory {
    return { backendWeightBytes: this.weights.bytes, hostWeightBytes: this.hostWeightBytes(), hostScratchBytes: 0 };
  }

  /** Dispatches per command buffer within a call (GpuRuntime.submitEvery; 0: one per call). */
  set submitEvery(n: number) {
    this.gpu.submitEvery = n;
  }

  /** Dispatches recorded so far (for the decode benchmark's kernels-per-token figure). */
  get dispatches(): number {
    return this.gpu.dispatches;
  }

  protected run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const { B, T, starts } = callFrame(ids, opts);
    const { pool, slots } = opts;
    // Fails on overflow before anything is recorded.
    if (pool && slots) pool.planWrite(slots, T, 'global');
    const N = B * T;
    const logits = !opts.noLogits;
    const outRows = opts.allPositions ? T : B;
    const cacheEntries = pool ? Math.max(pool.entries.global, pool.entries.sliding) : 0;
    const s = this.ensureScratch({ tokens: N, outRows, blocks: Math.ceil((cacheEntries + T) / ATTENTION_BLOCK) });

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
      step.set([start, pool && start > 0 ? 1 : 0, pool ? 1 : 0, slots?.[b] ?? 0], StepLayout.ROWS + StepLayout.ROW_FIELDS * b);
    });
    step.set(ids.flat(), idsAt);
    this.stepBuffer = this.fit(this.stepBuffer, step.byteLength);
    const rope = this.ropeData(starts, T);
    this.ropeBuffer = this.fit(this.ropeBuffer, rope.byteLength);

    this.gpu.flushTfjs();
    this.gpu.write(this.stepBuffer, step);
    this.gpu.write(this.ropeBuffer, rope);
    this.upload(s, ids);
    const out = logits ? (this.gpu.emptyTensor([outRows, this.config.vocabSize]) as tf.Tensor2D) : undefined;
    this.gpu.begin();
    try {
      this.encode(s, { starts, T, N, outRows, pool, out });
    } finally {
      this.gpu.submit();
    }
    if (pool && slots) pool.commitWrite(slots, T);
    return out;
  }

  /** Records one program; bind groups are cached under `bindKey`, so a layer's buffers stay bound across calls. */
  protected program(key: string, code: () => string, bindKey: string, bindings: Binding[], x: number, y = 1, z = 1): void {
    const p = this.gpu.pipeline(key, code);
    this.gpu.dispatch(p, this.gpu.bindGroup(bindKey, p, bindings), x, y, z);
  }

  /** y [N, ld] = x [N, K] @ wt [K, M] (ld: the output's row stride, by default its width; a GeGLU product is M/2 wide). */
  protected matmul(name: string, K: number, M: number, epilogue: Epilogue, x: tf.Tensor, wt: tf.Tensor, y: tf.Tensor, N: number, stride?: number): void {
    const R = rowsPerThread(N);
    const width = epilogue.kind === 'geglu' ? M / 2 : M;
    const ld = stride ?? width;
    const key = `mm:${K}:${M}:${ld}:${epilogue.kind}:${R}`;
    const buf = (t: tf.TensorInfo) => this.gpu.bufferOf(t);
    this.program(key, () => matmulKernel({ K, M, ld, col0: 0, R, rowsAt: StepLayout.N, epilogue }), `${key}:${name}`, [this.stepBuffer, buf(x), buf(wt), buf(y)], Math.ceil(width / 32), Math.ceil(N / R));
  }

  /**
   * y = x @ W^T for a weight in the checkpoint's [out, in] layout (matmul.ts),
   * over the `rows` rows the header field `rowsAt` counts: the GEMV up to
   * GEMV_ROWS rows, else the tiled GEMM.
   */
  protected linear(name: string, w: Linear, epilogue: Epilogue, x: Binding, y: Binding, rows: number, o: { ld?: number; col0?: number; rowsAt?: number } = {}): void {
    const m = gpuMatrix(w);
    const width = epilogue.kind === 'geglu' ? m.rows / 2 : m.rows;
    const shape: MatmulShape = { K: m.K, M: m.rows, ld: o.ld ?? width, col0: o.col0 ?? 0, rowsAt: o.rowsAt ?? StepLayout.N, epilogue, storage: m.storage };
    const id = `${shape.K}:${shape.M}:${shape.ld}:${shape.col0}:${shape.rowsAt}:${epilogue.kind}:${shape.storage}`;
    const bindings = [this.stepBuffer, x, this.gpu.bufferOf(m.tensor), y];
    if (rows <= GEMV_ROWS) {
      const R = gemvRows(rows);
      const key = `gemv:${R}:${id}`;
      this.program(key, () => gemvKernel(shape, R, this.subgroups), `${key}:${name}`, bindings, ...gemvGrid(shape, rows));
    } else {
      const tile = gemmTile(shape, rows);
      const key = `gemm:${tile}:${id}`;
      this.program(key, () => gemmKernel(shape, tile), `${key}:${name}`, bindings, ...gemmGrid(shape, rows, tile));
    }
  }

  /** x [N, H] = the tokens' embeddings from [count, H] row parts (weights.ts here); each part writes the tokens in its id range. */
  protected embedRows(x: tf.Tensor, N: number): void {
    const H = this.config.hiddenSize;
    for (const part of this.weights.embedParts) {
      const m = gpuMatrix(part.table);
      const key = `embedRows:${m.storage}:${part.from}`;
      this.program(key, () => embedRowsKernel({ H, count: m.rows, v0: part.from, scale: Math.sqrt(H), bf16: m.storage === 'bf16' }), key, [this.stepBuffer, this.gpu.bufferOf(m.tensor), this.gpu.bufferOf(x)], N);
    }
  }

  /** The logits of the header's rows from [count, H] row parts: final norm, then each part's columns (soft-capped where the model caps). */
  protected logitsRows(x: tf.Tensor, final: tf.Tensor, outRows: number, out: tf.Tensor2D): void {
    const c = this.config;
    const buf = (t: tf.TensorInfo) => this.gpu.bufferOf(t);
    const norm = () => normKernel({ H: c.hiddenSize, eps: c.rmsNormEps, rows: 'logits', weight: true, threads: 256 });
    this.program('norm:final', norm, 'norm:final', [this.stepBuffer, buf(x), buf(final), buf(this.weights.finalNorm)], outRows);
    const epilogue: Epilogue = c.finalLogitSoftcap ? { kind: 'softcap', cap: c.finalLogitSoftcap } : { kind: 'plain' };
    for (const part of this.weights.embedParts) {
      this.linear(`unembed:${part.from}`, part.table, epilogue, buf(final), buf(out), outRows, { ld: c.vocabSize, col0: part.from, rowsAt: StepLayout.OUT_ROWS });
    }
  }

  /** x [N, H] = the tokens' embeddings (the [H, V] tables serve both ends); each part writes the tokens in its id range. */
  protected embed(x: tf.Tensor, N: number): void {
    const H = this.config.hiddenSize;
    for (const part of this.weights.embedParts) {
      const vc = part.table.shape[1];
      this.program(`embed:${part.from}`, () => embedKernel({ H, vc, v0: part.from, scale: Math.sqrt(H) }), `embed:${part.from}`, [this.stepBuffer, this.gpu.bufferOf(part.table), this.gpu.bufferOf(x)], N);
    }
  }

  /** The logits of the rows the header names: final norm of x into `final`, then the unembedding (soft-capped where the model caps). */
  protected logits(x: tf.Tensor, final: tf.Tensor, outRows: number, out: tf.Tensor2D): void {
    const c = this.config;
    const H = c.hiddenSize;
    const buf = (t: tf.TensorInfo) => this.gpu.bufferOf(t);
    const norm = () => normKernel({ H, eps: c.rmsNormEps, rows: 'logits', weight: true, threads: 256 });
    this.program('norm:final', norm, 'norm:final', [this.stepBuffer, buf(x), buf(final), buf(this.weights.finalNorm)], outRows);
    const Ro = rowsPerThread(outRows);
    const epilogue: Epilogue = c.finalLogitSoftcap ? { kind: 'softcap', cap: c.finalLogitSoftcap } : { kind: 'plain' };
    for (const part of this.weights.embedParts) {
      const vc = part.table.shape[1];
      const key = `unembed:${Ro}:${part.from}`;
      const code = () => matmulKernel({ K: H, M: vc, ld: c.vocabSize, col0: part.from, R: Ro, rowsAt: StepLayout.OUT_ROWS, epilogue });
      this.program(key, code, key, [this.stepBuffer, buf(final), buf(part.table), buf(out)], Math.ceil(vc / 32), Math.ceil(outRows / Ro));
    }
  }

  /** The cache a layer type attends over: its entries (1, a stand-in, without a pool) and window (0 = global). */
  protected span(type: LayerType, pool: KVPool | undefined): { entries: number; window: number } {
    return { entries: pool ? pool.entries[type] : 1, window: type === 'sliding' ? this.config.slidingWindow : 0 };
  }

  /** Keys the longest row of a call attends over on a layer of `entries` cache entries. */
  protected keys(call: FusedCall, entries: number): number {
    return Math.max(...call.starts.map((start) => (call.pool && start > 0 ? Math.min(entries, start) : 0))) + call.T;
  }

  private fit(buffer: GPUBufferLike, bytes: number): GPUBufferLike {
    if (bytes <= buffer.size) return buffer;
    buffer.destroy();
    return this.gpu.createBuffer(bytes * 2);
  }

  private ensureScratch(need: ScratchSize): S {
    const s = this.scratch;
    if (s && s.tokens >= need.tokens && s.outRows >= need.outRows && s.blocks >= need.blocks) return s;
    if (s) this.disposeScratch(s);
    this.scratch = this.makeScratch({
      tokens: Math.max(need.tokens, s?.tokens ?? 0),
      outRows: Math.max(need.outRows, s?.outRows ?? 0),
      blocks: Math.max(need.blocks, s?.blocks ?? 0),
    });
    return this.scratch;
  }

  dispose(): void {
    if (this.scratch) this.disposeScratch(this.scratch);
    this.scratch = undefined;
    for (const b of [this.stepBuffer, this.ropeBuffer, ...this.noCache]) b.destroy();
  }
}
