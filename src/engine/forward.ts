/**
 * The contract every forward path implements, and the call frame they share.
 *
 * A forward path is one way of running the Gemma decoder: the tfjs op graph
 * (graph/), the native CPU kernels (native/) or fused WGSL programs
 * (webgpu/). Each owns its weight layout, the KV layout it attends over and
 * the decode step's reduction of logits to top-K. The engine picks one path
 * at load (engine.ts) and talks to it only through this interface; nothing
 * else asks which backend runs.
 *
 * One call runs B rows of T new tokens each (prefill: B = 1; decode: T = 1)
 * against the rows' cached K/V in the pool, writes the new K/V into the pool
 * and returns the logits of each row's last position only (the hidden state
 * is cut before the unembedding), or of every position when asked (`score`).
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../model/hf-config.js';
import type { KVPool } from './kv-pool.js';
import type { RowLogitsInput } from './reduce.js';
import { callPositions, ropeTables } from './rope.js';
import type { TopK } from './types.js';
import type { Weights } from './weights.js';

export type PathName = 'graph' | 'native' | 'webgpu';

export interface ForwardOptions {
  /** Cache to attend over and write to; absent means a standalone pass (no cache). */
  pool?: KVPool;
  /** One slot per row (required with a pool). */
  slots?: number[];
  /** Logits for every position instead of the last one (B must be 1). */
  allPositions?: boolean;
}

export interface PrefillOptions extends ForwardOptions {
  /** Skip the unembedding (a prefill chunk that is not the prompt's last). */
  noLogits?: boolean;
}

/** What a path holds, by where it lives (the memory gauges, bench:memory and the start-up check read it). */
export interface PathMemory {
  /** Weight bytes in the tfjs backend (wasm heap, GPU buffers). */
  backendWeightBytes: number;
  /** Weight bytes in host memory outside the backend (the native kernels' packed matrices). */
  hostWeightBytes: number;
  /** Scratch and reused output buffers in host memory. */
  hostScratchBytes: number;
  /** Bytes of a worker thread's backend (the tfjs graph's column split), where one runs. */
  workerBytes?: number;
}

export interface ForwardPath {
  readonly name: PathName;
  readonly config: ModelConfig;
  readonly weights: Weights;
  /** Runs `ids` ([B][T], equal T per row); logits [B, V] (or [T, V] with allPositions). The caller owns the result. */
  forward(ids: number[][], opts?: ForwardOptions): tf.Tensor2D;
  /** Runs a prompt chunk into the cache; logits of its last position unless `noLogits`. */
  prefill(ids: number[], opts: PrefillOptions): tf.Tensor2D | undefined;
  /**
   * forward and prefill as the engine calls them: the native path runs its
   * kernels on a worker thread so the event loop keeps serving; the others
   * run as forward and prefill do. Nothing else may touch the pool or
   * allocate tensors until the promise settles (the engine serializes its calls).
   */
  forwardAsync(ids: number[][], opts?: ForwardOptions): Promise<tf.Tensor2D>;
  prefillAsync(ids: number[], opts: PrefillOptions): Promise<tf.Tensor2D | undefined>;
  /** The decode step's reduction: bias and penalties, then each row's top-K and log-sum-exps. Disposes `logits`. */
  reduce(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]>;
  /** The KV pool in the layout this path attends over. */
  createPool(slots: number, capacity: number): KVPool;
  memory(): PathMemory;
  dispose(): void;
}

/** The shape of one call, checked once for every path. */
export interface CallFrame {
  B: number;
  T: number;
  /** Each row's cached length (0 without a pool): its first new token's position. */
  starts: number[];
}

/** Checks a forward call's rows and slots; returns B, T and each row's cached length (0 without a pool). */
export function callFrame(ids: number[][], opts: ForwardOptions): CallFrame {
  const B = ids.length;
  const T = ids[0]!.length;
  if (ids.some((r) => r.length !== T)) throw new Error('forward: every row must have the same number of tokens');
  const { pool, slots } = opts;
  if (pool && (!slots || slots.length !== B)) throw new Error('forward: one slot per row is required with a pool');
  if (opts.allPositions && B !== 1) throw new Error('forward: allPositions needs a single row');
  const starts = pool && slots ? slots.map((s) => pool.length(s)) : new Array<number>(B).fill(0);
  return { B, T, starts };
}

/** Per layer type, the cos/sin tables of the call's positions (row-major [B*T, headDim]). */
export function callRope(config: ModelConfig, frame: CallFrame) {
  const positions = callPositions(frame.starts, frame.T);
  return {
    global: ropeTables(positions, config.headDim, config.rope.global),
    sliding: ropeTables(positions, config.headDim, config.rope.sliding),
  };
}

/** The index of each row's last token in a [B*T] layout (the rows whose logits a call returns). */
export function lastRows(frame: CallFrame): number[] {
  return Array.from({ length: frame.B }, (_, b) => b * frame.T + frame.T - 1);
}

/** `forward` and `prefill` as every path has them: two views of one `run`. */
export abstract class ForwardBase {
  forward(ids: number[][], opts: ForwardOptions = {}): tf.Tensor2D {
    const logits = this.run(ids, opts);
    if (!logits) throw new Error('forward: a pass without noLogits returns logits');
    return logits;
  }

  prefill(ids: number[], opts: PrefillOptions): tf.Tensor2D | undefined {
    return this.run([ids], opts);
  }

  async forwardAsync(ids: number[][], opts: ForwardOptions = {}): Promise<tf.Tensor2D> {
    const logits = await this.runAsync(ids, opts);
    if (!logits) throw new Error('forward: a pass without noLogits returns logits');
    return logits;
  }

  prefillAsync(ids: number[], opts: PrefillOptions): Promise<tf.Tensor2D | undefined> {
    return this.runAsync([ids], opts);
  }

  protected abstract run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined;

  /** `run` off the event loop where the path can; by default `run` itself. */
  protected async runAsync(ids: number[][], opts: PrefillOptions): Promise<tf.Tensor2D | undefined> {
    return this.run(ids, opts);
  }
}
