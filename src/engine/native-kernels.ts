/**
 * The CPU matmul kernels of `native/matmul.cc` (AVX + FMA on OpenMP threads),
 * for the linear layers and the unembedding on the wasm and cpu backends.
 * tfjs's wasm matmuls run 4-wide SIMD on one thread; these run 8-wide with
 * fused multiply-add on every core, and hold a weight whose values are all
 * bfloat16 (a bf16 checkpoint) in 16 bits, so a decode step streams half the
 * bytes for the same float32 arithmetic. `scripts/build-native.sh` builds
 * them at `npm ci`; without them the engine keeps tfjs's matmuls.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';

/** The addon's functions (see native/matmul.cc). */
interface Addon {
  supported(): boolean;
  setThreads(n: number): void;
  pack(w: Float32Array, K: number, N: number, transposed: boolean, allowBf16: boolean): object;
  describe(handle: object): { bytes: number; bf16: boolean };
  multiply(handle: object, x: Float32Array, M: number, y: Float32Array): void;
  geglu(y: Float32Array, M: number, I: number, act: Float32Array): void;
  gather(handle: object, ids: Int32Array, scale: number, out: Float32Array): void;
}

/** A weight W [K, N] packed for the kernels. */
export interface NativeMatrix {
  readonly handle: object;
  readonly K: number;
  readonly N: number;
  /** Held as bfloat16 (every value was one), else float32. */
  readonly bf16: boolean;
  readonly bytes: number;
}

/** Finds build/gemma_matmul.node above this file (the sources and dist/ alike). */
function addonPath(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) {
      const file = join(dir, 'build', 'gemma_matmul.node');
      return existsSync(file) ? file : undefined;
    }
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

let loaded: { addon?: Addon; reason: string } | undefined;

/** The addon, or why it is not available. */
export function nativeAddon(): { addon?: Addon; reason: string } {
  if (loaded) return loaded;
  const file = addonPath();
  if (!file) return (loaded = { reason: 'build/gemma_matmul.node is not built (scripts/build-native.sh needs g++)' });
  try {
    const addon = createRequire(import.meta.url)(file) as Addon;
    loaded = addon.supported() ? { addon, reason: 'AVX and FMA kernels' } : { reason: 'this CPU lacks AVX or FMA' };
  } catch (err) {
    loaded = { reason: `build/gemma_matmul.node failed to load: ${(err as Error).message}` };
  }
  return loaded;
}

export class NativeKernels {
  constructor(
    private readonly addon: Addon,
    threads: number,
  ) {
    addon.setThreads(threads);
  }

  /**
   * Packs W [K, N]. `transposed`: `w` holds W^T, [N, K] row-major (PyTorch's
   * [out, in]). `allowBf16: false` keeps float32 even where bf16 would be exact.
   */
  pack(w: Float32Array, K: number, N: number, transposed: boolean, allowBf16 = true): NativeMatrix {
    const handle = this.addon.pack(w, K, N, transposed, allowBf16);
    return { handle, K, N, ...this.addon.describe(handle) };
  }

  /** x [M, K] @ W: [M, N]. */
  matMul(x: tf.Tensor2D, w: NativeMatrix): tf.Tensor2D {
    const M = x.shape[0];
    const y = new Float32Array(M * w.N);
    this.addon.multiply(w.handle, this.input(x, w), M, y);
    return tf.tensor2d(y, [M, w.N]);
  }

  /** Gemma's MLP activation on a fused [gate | up] weight: gelu_tanh(x @ Wg) * (x @ Wu), [M, N / 2]. */
  matMulGeglu(x: tf.Tensor2D, w: NativeMatrix): tf.Tensor2D {
    const M = x.shape[0];
    const I = w.N / 2;
    const y = new Float32Array(M * w.N);
    this.addon.multiply(w.handle, this.input(x, w), M, y);
    const act = new Float32Array(M * I);
    this.addon.geglu(y, M, I, act);
    return tf.tensor2d(act, [M, I]);
  }

  /** Columns `ids` of W as rows [ids, K], times `scale` (the lookup in a tied embedding held as [hidden, vocab]). */
  columns(w: NativeMatrix, ids: number[], scale: number): tf.Tensor2D {
    const out = new Float32Array(ids.length * w.K);
    this.addon.gather(w.handle, Int32Array.from(ids), scale, out);
    return tf.tensor2d(out, [ids.length, w.K]);
  }

  private input(x: tf.Tensor2D, w: NativeMatrix): Float32Array {
    if (x.shape[1] !== w.K) throw new Error(`matMul: x has ${x.shape[1]} columns, the weight ${w.K} rows`);
    return x.dataSync() as Float32Array;
  }
}
