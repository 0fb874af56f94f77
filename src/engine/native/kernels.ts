/**
 * The CPU kernels of `native/` (AVX + FMA on OpenMP threads): packed
 * matmuls, and a whole decoder layer per call (see native/layer.cc).
 * tfjs's wasm matmuls run 4-wide SIMD on one thread; these run 8-wide with
 * fused multiply-add on every core, and hold a weight whose values are all
 * bfloat16 (a bf16 checkpoint) in 16 bits, so a decode step streams half the
 * bytes for the same float32 arithmetic. `scripts/build-native.sh` builds
 * them at `npm ci`; without them the engine keeps the tfjs graph.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Gemma4LayerOf, Gemma4PerLayerTableOf } from '../gemma4-types.js';

/** The addon's functions (see native/matmul.cc). */
interface Addon {
  supported(): boolean;
  setThreads(n: number): void;
  pack(w: Float32Array, K: number, N: number, transposed: boolean, allowBf16: boolean): object;
  describe(handle: object): { bytes: number; bf16: boolean };
  multiply(handle: object, x: Float32Array, M: number, y: Float32Array): void;
  gather(handle: object, ids: Int32Array, scale: number, out: Float32Array): void;
  layer(shape: Float64Array, matrices: object[], norms: Array<Float32Array | null>, ...rest: [...LayerRows, caches: Array<RowCache | null>]): void;
  logits(x: Float32Array, M: number, norm: Float32Array, eps: number, embed: object, softcap: number, out: Float32Array): void;
  /** Gemma 4's layer and K/V write (native/gemma4.cc); absent from an addon built before them. */
  gemma4Layer?(
    shape: Float64Array,
    matrices: Array<object | null>,
    experts: object[],
    norms: Array<Float32Array | null>,
    ...rest: [...LayerRows, kv: Float32Array | null, pli: Float32Array | null, caches: Array<RowCache | null>]
  ): number;
  writeKv?(kvHeads: number, headDim: number, kv: Float32Array, B: number, T: number, caches: Array<RowCache | null>): void;
  reduce(
    logits: Float32Array,
    B: number,
    V: number,
    K: number,
    scales: Float32Array,
    values: Float32Array,
    ids: Int32Array,
    lse: Float64Array,
    scaledLse: Float64Array,
    masks: Int32Array | null,
  ): void;
  /** The same calls on a libuv worker thread (native/napi-glue.h, finish); absent from an addon built before them. */
  layerAsync?(...args: Parameters<Addon['layer']>): Promise<void>;
  logitsAsync?(...args: Parameters<Addon['logits']>): Promise<void>;
  reduceAsync?(...args: Parameters<Addon['reduce']>): Promise<void>;
  gemma4LayerAsync?(...args: Parameters<NonNullable<Addon['gemma4Layer']>>): Promise<number>;
  writeKvAsync?(...args: Parameters<NonNullable<Addon['writeKv']>>): Promise<void>;
  /** Calls one after another, every one checked before any runs; the sum of their numeric results. */
  sequence?(calls: Array<[name: string, args: unknown[]]>): number;
  sequenceAsync?(calls: Array<[name: string, args: unknown[]]>): Promise<number>;
}

/**
 * One kernel call, its arguments bound: `now()` runs it on this thread,
 * `later()` on a worker thread (the event loop keeps serving meanwhile; the
 * caller must not touch the call's arrays, or allocate tensors that could
 * move them, until it settles). A forward pass is written once as a generator
 * of these (runNow, runLater).
 */
export interface KernelCall<R> {
  now(): R;
  later(): Promise<R>;
  /** The addon's name and arguments of the call, for sequence. */
  readonly spec: [name: string, args: unknown[]];
}

/** A forward pass as a sequence of kernel calls; each call's result is sent back into the generator. */
export type KernelSteps<R> = Generator<KernelCall<unknown>, R, unknown>;

/** Runs every call on this thread. */
export function runNow<R>(steps: KernelSteps<R>): R {
  let next = steps.next();
  while (!next.done) next = steps.next(next.value.now());
  return next.value;
}

/** Runs every call on a worker thread, one after another. */
export async function runLater<R>(steps: KernelSteps<R>): Promise<R> {
  let next = steps.next();
  while (!next.done) next = steps.next(await next.value.later());
  return next.value;
}

/** The addon's call `name`; `later` falls back to `now` where the addon has no async twin. */
function bound<A extends unknown[], R>(addon: Addon, name: 'layer' | 'logits' | 'reduce' | 'gemma4Layer' | 'writeKv', args: A): KernelCall<R> {
  const table = addon as unknown as Record<string, ((...a: A) => R) | undefined>;
  const sync = table[name]!.bind(addon);
  const onWorker = (table[`${name}Async`] as ((...a: A) => Promise<R>) | undefined)?.bind(addon);
  return { now: () => sync(...args), later: () => (onWorker ? onWorker(...args) : Promise.resolve().then(() => sync(...args))), spec: [name, args] };
}

/** A call whose result is `out` once `call` ran (the kernels write into it). */
function into<T>(call: KernelCall<unknown>, out: T): KernelCall<T> {
  return { now: () => (call.now(), out), later: () => call.later().then(() => out), spec: call.spec };
}

/** A layer call's rows: x [B * T, hidden] (updated in place), B, T, and the rope tables [B * T, headDim]. */
type LayerRows = [x: Float32Array, B: number, T: number, cos: Float32Array, sin: Float32Array];

/** One row's KV slot for a layer: K, V^T (views of the slot tensors), the entries' positions, the entry count, and the cached length. */
export type RowCache = [k: Float32Array, vT: Float32Array, positions: Int32Array, entries: number, start: number];

/** A decoder layer's shapes as the addon takes them. */
export interface LayerShape {
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  eps: number;
  /** 0: none. */
  attnSoftcap: number;
  /** Keys a query sees: positions > q - window. */
  window: number;
}

/** A decoder layer's weights as the addon takes them. */
export interface NativeLayer {
  qkv: NativeMatrix;
  o: NativeMatrix;
  gateUp: NativeMatrix;
  down: NativeMatrix;
  /** Input, post-attention, pre-feedforward, post-feedforward norms ((1 + w) each), and the q/k norm rows or null. */
  norms: [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array | null];
}

/** A Gemma 4 decoder layer's shapes as the addon takes them (native/kernels.h, Gemma4Shape). */
export interface Gemma4LayerShape extends Omit<LayerShape, 'attnSoftcap'> {
  /** 0: no MoE block. */
  experts: number;
  topK: number;
  expertIntermediate: number;
  /** Per-layer input size, 0: none. */
  perLayer: number;
  layerScalar: number;
  /** Computes its own K/V (else reads its source layer's). */
  ownKv: boolean;
  kEqV: boolean;
  /** Writes its new K/V into the caches right after attention (else the caller does, with writeKv). */
  writeCache: boolean;
}

/** A Gemma 4 decoder layer's weights as the addon takes them. */
export type NativeGemma4Layer = Gemma4LayerOf<NativeMatrix, Float32Array>;

/** The per-layer embeddings on the native path. */
export type NativePerLayerTable = Gemma4PerLayerTableOf<NativeMatrix, Float32Array>;

/** A Gemma 4 checkpoint's weights as the native path holds them. */
export interface NativeGemma4Weights {
  layers: NativeGemma4Layer[];
  perLayer?: NativePerLayerTable;
  finalNorm: Float32Array;
}

/** reduce's output: per row, the top K values and ids, the log-sum-exp and the scaled log-sum-exp. */
export interface ReducedRows {
  values: Float32Array;
  ids: Int32Array;
  lse: Float64Array;
  scaledLse: Float64Array;
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

/** Finds build/gemma_cpu.node above this file (the sources and dist/ alike). */
function addonPath(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) {
      const file = join(dir, 'build', 'gemma_cpu.node');
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
  if (!file) return (loaded = { reason: 'build/gemma_cpu.node is not built (scripts/build-native.sh needs g++)' });
  try {
    const addon = createRequire(import.meta.url)(file) as Addon;
    loaded = addon.supported() ? { addon, reason: 'AVX and FMA kernels' } : { reason: 'this CPU lacks AVX or FMA' };
  } catch (err) {
    loaded = { reason: `build/gemma_cpu.node failed to load: ${(err as Error).message}` };
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

  /** x [M, K] @ W, [M, N]. */
  multiply(w: NativeMatrix, x: Float32Array, M: number): Float32Array {
    const y = new Float32Array(M * w.N);
    this.addon.multiply(w.handle, x, M, y);
    return y;
  }

  /** Columns `ids` of W as rows [ids, K], times `scale` (the lookup in a tied embedding held as [hidden, vocab]). */
  columns(w: NativeMatrix, ids: number[], scale: number): Float32Array {
    const out = new Float32Array(ids.length * w.K);
    this.addon.gather(w.handle, Int32Array.from(ids), scale, out);
    return out;
  }

  /** Runs one decoder layer on x ([B * T, hidden], in place), attending over and writing to `caches` (one per row). */
  layer(s: LayerShape, w: NativeLayer, x: Float32Array, B: number, T: number, cos: Float32Array, sin: Float32Array, caches: Array<RowCache | null>): KernelCall<void> {
    const shape = Float64Array.of(s.hidden, s.heads, s.kvHeads, s.headDim, s.intermediate, s.eps, s.attnSoftcap, s.window);
    return bound(this.addon, 'layer', [shape, [w.qkv.handle, w.o.handle, w.gateUp.handle, w.down.handle], w.norms, x, B, T, cos, sin, caches]);
  }

  /** Whether this addon has the Gemma 4 layer (one built before it does not). */
  get gemma4(): boolean {
    return typeof this.addon.gemma4Layer === 'function' && typeof this.addon.writeKv === 'function';
  }

  /**
   * Runs one Gemma 4 layer on x ([B * T, hidden], in place). `kv` [B * T, 2 * kvHeads * headDim]: the call's keys then
   * values per token, written by a layer that owns them, read by a KV-shared one. Returns the number of experts run.
   */
  gemma4Layer(s: Gemma4LayerShape, w: NativeGemma4Layer, x: Float32Array, B: number, T: number, cos: Float32Array, sin: Float32Array, kv: Float32Array | null, pli: Float32Array | null, caches: Array<RowCache | null>): KernelCall<number> {
    const shape = Float64Array.of(s.hidden, s.heads, s.kvHeads, s.headDim, s.intermediate, s.eps, s.window, s.experts, s.topK, s.expertIntermediate, s.perLayer, s.layerScalar, +s.ownKv, +s.kEqV, +s.writeCache);
    const m = w.moe;
    const pl = w.perLayer;
    const matrices = [w.q, w.kv, w.o, w.gateUp, w.down, pl?.gate, pl?.proj, m?.router].map((x) => x?.handle ?? null);
    const experts = m ? m.gateUp.flatMap((g, e) => [g.handle, m.down[e]!.handle]) : [];
    const norms = [w.inputNorm, w.postAttnNorm, w.preFfwNorm, w.postFfwNorm, w.qNorm, w.kNorm, pl?.postNorm, m?.preNorm2, m?.postNorm1, m?.postNorm2, m?.perExpertScale].map((x) => x ?? null);
    return bound(this.addon, 'gemma4Layer', [shape, matrices, experts, norms, x, B, T, cos, sin, kv, pli, caches]);
  }

  /** Writes the call's K/V ([B * T, 2 * kvHeads * headDim], keys then values per token) into the rows' caches. */
  writeKv(kvHeads: number, headDim: number, kv: Float32Array, B: number, T: number, caches: Array<RowCache | null>): KernelCall<void> {
    return bound(this.addon, 'writeKv', [kvHeads, headDim, kv, B, T, caches]);
  }

  /**
   * Per row of logits [B, V]: the top K (largest first, ties to the lower
   * id), the log-sum-exp, and the log-sum-exp of the logits times the row's
   * scale. `masks` ([B, ceil(V / 32)] words, reduce.ts's rowMasks): the
   * tokens a row's bits leave out are set to -inf first, in place.
   */
  reduce(logits: Float32Array, B: number, V: number, K: number, scales: number[], masks: Int32Array | null = null): KernelCall<ReducedRows> {
    const out = { values: new Float32Array(B * K), ids: new Int32Array(B * K), lse: new Float64Array(B), scaledLse: new Float64Array(B) };
    return into(bound(this.addon, 'reduce', [logits, B, V, K, Float32Array.from(scales), out.values, out.ids, out.lse, out.scaledLse, masks]), out);
  }

  /** Final norm, unembedding and soft-cap of x's M rows (normalized in place): logits [M, vocab]. */
  logits(x: Float32Array, M: number, norm: Float32Array, eps: number, embed: NativeMatrix, softcap: number, out: Float32Array = new Float32Array(M * embed.N)): KernelCall<Float32Array> {
    return into(bound(this.addon, 'logits', [x, M, norm, eps, embed.handle, softcap, out]), out);
  }

  /**
   * `calls` one after another as one call: on a worker thread, one hand-over
   * for all of them (a forward pass's layers), and every call's arguments are
   * checked before any runs. The result: the sum of the calls' numeric results.
   */
  sequence(calls: Array<KernelCall<unknown>>): KernelCall<number> {
    const a = this.addon;
    const specs = calls.map((c) => c.spec);
    const sum = (results: unknown[]) => results.reduce<number>((s, r) => s + (typeof r === 'number' ? r : 0), 0);
    return {
      now: () => (a.sequence ? a.sequence(specs) : sum(calls.map((c) => c.now()))),
      later: async () => {
        if (a.sequenceAsync) return a.sequenceAsync(specs);
        const results: unknown[] = [];
        for (const c of calls) results.push(await c.later());
        return sum(results);
      },
      spec: ['sequence', [specs]],
    };
  }
}
