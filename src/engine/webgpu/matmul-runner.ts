/**
 * One linear layer's programs (matmul.ts) run on their own, outside a
 * forward pass: what the kernel tests check against a product computed in
 * JS, and what the matmul microbenchmark times (many products back to back
 * in one pass, as a forward pass records them).
 */
import * as tf from '@tensorflow/tfjs-core';
import { GpuRuntime, type GPUBufferLike } from './gpu.js';
import { StepLayout, type Epilogue } from './kernels.js';
import { GEMV_ROWS, gemmGrid, gemmKernel, gemmTile, gemvGrid, gemvKernel, gemvRows, outputWidth, type GemmTile, type MatmulShape, type Subgroups } from './matmul.js';
import { packBf16 } from './weights.js';

export type MatmulProgram = 'gemv' | 'gemm64' | 'gemm128';

export interface MatmulCase {
  K: number;
  /** Weight rows (outputs; gate then up rows with geglu). */
  M: number;
  rows: number;
  epilogue: Epilogue;
  storage: MatmulShape['storage'];
  /** The program: as the forward pass picks it by rows (GEMV up to GEMV_ROWS, else the GEMM and its tile), or the one named. */
  program?: MatmulProgram;
  subgroups: Subgroups;
}

/** A product's buffers on the device: x [rows, K], W [M, K] (bf16 bits when storage is bf16), y [rows, width]. */
export class MatmulRunner {
  private readonly gpu = new GpuRuntime();
  private readonly step: GPUBufferLike;
  private readonly x: tf.Tensor;
  private readonly w: tf.Tensor;
  private readonly y: tf.Tensor;
  readonly shape: MatmulShape;

  /**
   * `w` holds values the storage can represent (bf16 values for bf16
   * storage); 'pattern' fills W with one small block of such values over and
   * over (timings only: a layer-sized random matrix costs seconds to make).
   */
  constructor(
    readonly c: MatmulCase,
    x: Float32Array,
    w: Float32Array | 'pattern',
  ) {
    this.shape = { K: c.K, M: c.M, ld: outputWidth({ ...c, ld: 0, col0: 0, rowsAt: 0 }), col0: 0, rowsAt: StepLayout.N, epilogue: c.epilogue, storage: c.storage };
    this.step = this.gpu.createBuffer(64);
    this.gpu.write(this.step, new Uint32Array([c.rows, 1, c.rows, 0, 0, 0, 0, 0]));
    this.x = tf.tensor2d(x, [c.rows, c.K]);
    const values = w === 'pattern' ? repeat(bf16Block(), c.M * c.K) : w;
    this.w = c.storage === 'bf16' ? tf.tensor2d(packBf16(values), [c.M, c.K / 2], 'int32') : tf.tensor2d(values, [c.M, c.K]);
    this.y = this.gpu.emptyTensor([c.rows * this.shape.ld]);
  }

  /** Bytes a product must move at least: W once, x once, y once. */
  get bytes(): number {
    return (this.w.size + this.x.size + this.y.size) * 4;
  }

  /** Multiply-adds of one product, as flops. */
  get flops(): number {
    return 2 * this.c.rows * this.c.M * this.c.K;
  }

  /** Milliseconds per product over `times` products in one pass (the pass's wall time from submit to done, over times). */
  async time(times: number): Promise<number> {
    await this.gpu.done();
    const t0 = performance.now();
    this.record(times);
    await this.gpu.done();
    return (performance.now() - t0) / times;
  }

  get program(): MatmulProgram {
    return this.c.program ?? (this.c.rows <= GEMV_ROWS ? 'gemv' : `gemm${gemmTile(this.shape, this.c.rows)}`);
  }

  /** Records `times` products into one pass and submits it. */
  record(times = 1): void {
    const s = this.shape;
    const gemv = this.program === 'gemv';
    const R = gemvRows(Math.min(this.c.rows, GEMV_ROWS));
    const key = `${this.program}:${R}:${s.K}:${s.M}:${s.epilogue.kind}:${s.storage}:${this.c.subgroups?.min ?? 0}`;
    const tile: GemmTile = this.program === 'gemm128' ? 128 : 64;
    const p = this.gpu.pipeline(key, () => (gemv ? gemvKernel(s, R, this.c.subgroups) : gemmKernel(s, tile)));
    const group = this.gpu.bindGroup(key, p, [this.step, this.gpu.bufferOf(this.x), this.gpu.bufferOf(this.w), this.gpu.bufferOf(this.y)]);
    // The GEMV's grid for `rows` rows in blocks of R (a microbenchmark may run 32 rows as 4 blocks of 8).
    const [gx, gy] = gemv ? [gemvGrid(s, R)[0], Math.ceil(this.c.rows / R)] : gemmGrid(s, this.c.rows, tile);
    this.gpu.begin();
    for (let i = 0; i < times; i++) this.gpu.dispatch(p, group, gx, gy);
    this.gpu.submit();
  }

  /** The product's output [rows, width]. */
  async output(): Promise<Float32Array> {
    return (await this.y.data()) as Float32Array;
  }

  dispose(): void {
    tf.dispose([this.x, this.w, this.y]);
    this.step.destroy();
  }
}

/** 65,536 bf16 values in [-1/64, 1/64). */
function bf16Block(): Float32Array {
  const out = new Float32Array(1 << 16);
  const bits = new Uint32Array(out.buffer);
  let s = 12345;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) / 32;
    bits[i] &= 0xffff0000;
  }
  return out;
}

function repeat(block: Float32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let at = 0; at < n; at += block.length) out.set(block.subarray(0, Math.min(block.length, n - at)), at);
  return out;
}

/**
 * What the device streams without our programs: a buffer-to-buffer copy and
 * a WGSL read of `bytes` (each thread sums 16-byte loads over a grid stride),
 * in GB/s (a copy counts its read and its write).
 */
export async function bandwidthProbe(bytes: number, times: number): Promise<{ copy_gbps: number; read_gbps: number }> {
  const gpu = new GpuRuntime();
  const a = gpu.createBuffer(bytes);
  const b = gpu.createBuffer(bytes);
  const sums = gpu.createBuffer(4 * 65536 * 4);
  const threads = 65536 * 4;
  const code = `@group(0) @binding(0) var<storage, read> src: array<vec4u>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  var acc = vec4u(0u);
  for (var i = gid.x; i < ${bytes / 16}u; i += ${threads}u) { acc ^= src[i]; }
  dst[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}`;
  const p = gpu.pipeline(`read:${bytes}`, () => code);
  const group = gpu.bindGroup(`read:${bytes}`, p, [a, sums]);
  const run = async (record: () => void): Promise<number> => {
    record();
    await gpu.done();
    const t0 = performance.now();
    record();
    await gpu.done();
    return (performance.now() - t0) / 1000;
  };
  const copy = await run(() => {
    for (let i = 0; i < times; i++) gpu.copyBuffers(a, b, bytes);
  });
  const read = await run(() => {
    gpu.begin();
    for (let i = 0; i < times; i++) gpu.dispatch(p, group, threads / 256);
    gpu.submit();
  });
  for (const buf of [a, b, sums]) buf.destroy();
  return { copy_gbps: (2 * bytes * times) / copy / 1e9, read_gbps: (bytes * times) / read / 1e9 };
}
