/**
 * The engine: the one facade the scheduler and the service use. It loads a
 * model onto the forward path chosen for this machine (choose-path.ts),
 * holds that path and its KV pool, and offers what the layers above need:
 * prefill and decode calls that come back as top-K candidates, the slot
 * operations of the rolling cache (reset, truncate, compact, rebuild), the
 * tokenizer and the limits. Compute and slot operations return promises, so
 * the work behind them can move off the calling thread without touching
 * their callers. Tensors never cross this boundary.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadModelConfig, type ModelConfig } from '../model/hf-config.js';
import { defaultModelDir } from '../model/make-model.js';
import { readSafetensors } from '../model/safetensors.js';
import { GemmaTokenizer } from '../model/tokenizer.js';
import { backendTensorLimit, initBackend, releaseBackend, type BackendName } from './backend.js';
import { choosePath, createPath } from './choose-path.js';
import type { ForwardPath, PathName } from './forward.js';
import { Grammars, type GrammarLimits } from './grammar/grammars.js';
import type { KVPool } from './kv-pool.js';
import { checkMemory } from './memory-check.js';
import type { EngineOptions } from './options.js';
import type { RowLogitsInput } from './reduce.js';
import type { TopK } from './types.js';
import { webgpuMemory } from './webgpu/adapter.js';
import { loadGemma4Weights } from './gemma4-weights.js';
import { disposeWeights, loadWeights } from './weights.js';

export { checkTensorLimit } from './memory-check.js';
export type { KernelChoice } from './choose-path.js';
export { DEFAULT_MODEL_ID } from '../../config/index.js';
export { engineOptions, type EngineOptions, type EngineTuning } from './options.js';

export interface MemoryReport {
  /** Weight bytes in the backend and in the native kernels. */
  weightsBytes: number;
  kvCacheBytes: number;
  /** Backend bytes held by neither weights nor KV (activations, packed copies, scratch). */
  transientBytes: number;
  backendBytes: number;
  /** Host memory the path holds outside the backend: native weights plus scratch buffers. */
  hostBytes: number;
  /** The part of `hostBytes` that is weights (also counted in `weightsBytes`). */
  hostWeightsBytes: number;
  /**
   * GPU memory as the webgpu backend's buffer manager counts it: bytes of
   * buffers holding live tensors, and bytes allocated on the device (those
   * plus freed buffers kept for reuse). Absent on backends without their own
   * device memory accounting (wasm, cpu, tensorflow).
   */
  deviceBytesInUse?: number;
  deviceBytesAllocated?: number;
  /** Bytes of the wasm worker thread's backend (the remote columns of the weights and their packed copies), where one runs. */
  workerBytes?: number;
}

/** What the engine runs on, for logs and metrics. */
export interface EngineInfo {
  modelId: string;
  modelDir: string;
  backend: { name: BackendName; reason: string };
  path: PathName;
  /** What runs the linear layers, and why (for the start-up log). */
  linearKernels: string;
}

/** The path and the pool behind an engine, for parity tests and benchmarks that check them directly. */
export interface EngineParts {
  path: ForwardPath;
  pool: KVPool;
}

const parts = new WeakMap<Engine, EngineParts>();

/** The forward path and KV pool of an engine: for tests and benchmarks only; the service goes through the facade. */
export function engineParts(engine: Engine): EngineParts {
  return parts.get(engine)!;
}

export class Engine {
  readonly modelId: string;
  readonly modelDir: string;
  readonly backend: { name: BackendName; reason: string };
  readonly pathName: PathName;
  readonly linearKernels: string;
  /** Wall time of `load`, warm-up included. */
  loadMs = 0;
  private readonly path: ForwardPath;
  private readonly pool: KVPool;
  /** Structured outputs' grammars over this vocabulary, built at first use (grammars). */
  private grammarSet: Promise<Grammars> | undefined;
  private grammarLimits: GrammarLimits = { cacheSize: 1, maxStringLength: 0 };
  /** The tail of the calls in flight (exclusive). */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: ForwardPath,
    readonly tokenizer: GemmaTokenizer,
    info: EngineInfo,
    /** Largest K of the device-side top-k. */
    readonly topKCap: number,
    slots: number,
    capacity: number,
  ) {
    this.path = path;
    this.pool = path.createPool(slots, capacity);
    this.modelId = info.modelId;
    this.modelDir = info.modelDir;
    this.backend = info.backend;
    this.pathName = info.path;
    this.linearKernels = info.linearKernels;
    parts.set(this, { path, pool: this.pool });
  }

  static async load(opts: EngineOptions): Promise<Engine> {
    const t0 = performance.now();
    const backend = await initBackend(opts.backend);
    const dir = resolve(opts.dir ?? (await defaultModelDir(opts.cacheDir)));
    const config = await loadModelConfig(dir);
    const { slots, capacity, maxBatchSize: maxBatch, prefillChunk } = opts;
    const choice = choosePath(config, backend.name, {
      webgpuKernels: opts.webgpuKernels ?? 'fused',
      kernels: opts.cpuKernels,
      threads: opts.cpuThreads,
      graphThreads: opts.graphThreads ?? opts.cpuThreads,
      maxTensorBytes: opts.maxTensorBytes ?? backendTensorLimit(backend.name)?.bytes,
      webgpuWeights: opts.webgpuWeights ?? 'auto',
      maxBatch,
      prefillChunk,
    });
    checkMemory(config, backend.name, slots, capacity, maxBatch, prefillChunk, choice.name === 'webgpu', choice.native !== undefined);
    // Checkpoints without tokenizer files (the test fixtures) get the Gemma 3 tokenizer.
    const tokenizer = existsSync(join(dir, 'tokenizer.json')) ? await GemmaTokenizer.fromModelDir(dir) : await GemmaTokenizer.fromDefault();
    const store = await readSafetensors(dir);
    let weights;
    try {
      weights = await (config.gemma4 ? loadGemma4Weights : loadWeights)(config, store, choice.layout);
      await choice.split?.start();
    } catch (err) {
      choice.split?.dispose();
      throw err;
    } finally {
      await store.close();
    }
    const info: EngineInfo = {
      modelId: opts.id,
      modelDir: dir,
      backend,
      path: choice.name,
      linearKernels: choice.description,
    };
    const engine = new Engine(createPath(choice, config, weights), tokenizer, info, opts.topKCap, slots, capacity);
    engine.grammarLimits = { cacheSize: opts.grammarCacheSize, maxStringLength: opts.grammarMaxStringLength };
    engine.warmUp();
    engine.loadMs = performance.now() - t0;
    return engine;
  }

  /** Runs every weight through its matmul once so the first request does not pay for packing. */
  private warmUp(): void {
    this.path.forward([[this.config.bosId]]).dispose();
  }

  get config(): ModelConfig {
    return this.path.config;
  }

  get slots(): number {
    return this.pool.slots;
  }

  /** Global-layer KV entries per slot. */
  get capacity(): number {
    return this.pool.capacity;
  }

  // Compute: each call comes back as top-K candidates; the logits stay on the path.

  /**
   * Runs a prompt chunk into the slot's cache. With `row`, the chunk is the
   * prompt's last: its last position is reduced to that row's candidates.
   */
  prefill(slot: number, ids: number[], row?: RowLogitsInput): Promise<TopK | undefined> {
    return this.exclusive(async () => {
      const logits = await this.path.prefillAsync(ids, { pool: this.pool, slots: [slot], noLogits: row === undefined });
      if (!logits || !row) return undefined;
      const [top] = await this.path.reduce(logits, [row]);
      return top;
    });
  }

  /** One decode step: token `tokens[b]` appended to slot `slots[b]`, each row reduced to its candidates. */
  decode(tokens: number[], slots: number[], rows: RowLogitsInput[]): Promise<TopK[]> {
    return this.exclusive(async () => {
      const logits = await this.path.forwardAsync(tokens.map((t) => [t]), { pool: this.pool, slots });
      return this.path.reduce(logits, rows);
    });
  }

  /**
   * One full forward pass over `ids` (no cache), reduced on the device to the
   * top-k logits and the logsumexp at every position.
   */
  score(ids: number[], topK = 20): Promise<Array<{ top_ids: number[]; top_logits: number[]; logsumexp: number }>> {
    return this.exclusive(() => this.scoreNow(ids, topK));
  }

  private async scoreNow(ids: number[], topK: number): Promise<Array<{ top_ids: number[]; top_logits: number[]; logsumexp: number }>> {
    const { values, indices, lse } = tf.tidy(() => {
      const logits = this.path.forward([ids], { allPositions: true });
      const top = tf.topk(logits, topK);
      return { values: top.values, indices: top.indices, lse: tf.logSumExp(logits, -1) };
    });
    const [v, i, l] = await Promise.all([values.data(), indices.data(), lse.data()]);
    tf.dispose([values, indices, lse]);
    return ids.map((_, p) => ({
      top_ids: Array.from(i.subarray(p * topK, (p + 1) * topK)),
      top_logits: Array.from(v.subarray(p * topK, (p + 1) * topK)),
      logsumexp: l[p]!,
    }));
  }

  // Slot operations: what the rolling cache tells the engine to do with a slot's K/V.

  /** Tokens in the slot's cache; the next token gets this position. */
  slotLength(slot: number): number {
    return this.pool.length(slot);
  }

  /** Whether the slot can be cut back to `n` tokens without recomputing (sliding rings keep only their window). */
  canTruncate(slot: number, n: number): boolean {
    return this.pool.canTruncate(slot, n);
  }

  /** Empties the slot. */
  resetSlot(slot: number): Promise<void> {
    return this.exclusive(() => this.pool.reset(slot));
  }

  /** Drops every token at position >= n (see canTruncate). */
  truncateSlot(slot: number, n: number): Promise<void> {
    return this.exclusive(() => this.pool.truncate(slot, n));
  }

  /** Keeps the tokens of `keep` (ascending position ranges), renumbered from 0 with their keys re-rotated. */
  compactSlot(slot: number, keep: Array<[number, number]>): Promise<void> {
    return this.exclusive(() => this.pool.compact(slot, keep));
  }

  /** Empties the slot and prefills `ids` into it (recompute eviction, a restored session). */
  rebuildSlot(slot: number, ids: number[]): Promise<void> {
    return this.exclusive(async () => {
      this.pool.reset(slot);
      if (ids.length > 0) await this.path.prefillAsync(ids, { pool: this.pool, slots: [slot], noLogits: true });
    });
  }

  /**
   * Runs the engine's calls one at a time, in the order they were made. A
   * native pass runs on a worker thread and writes the pool's memory in
   * place; until it is done no other call may touch the pool or allocate a
   * tensor (a wasm heap that grows could move what the worker writes).
   */
  private exclusive<T>(work: () => T | Promise<T>): Promise<T> {
    const result = this.queue.then(work);
    this.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /**
   * The grammar engine over this model's vocabulary (structured outputs),
   * built at first use: ~0.3 s for a 262k vocabulary, on the main thread.
   */
  grammars(): Promise<Grammars> {
    if (!this.grammarSet) {
      const tok = this.tokenizer;
      const V = Math.min(tok.vocabSize, this.config.vocabSize);
      const tokens = Array.from({ length: V }, (_, id) => tok.tokenText(id));
      const stopIds = [...new Set([...this.config.eosIds, tok.eosId, tok.endOfTurnId])].filter((id) => id < V);
      const building = Grammars.create({ tokens, stopIds }, this.grammarLimits);
      // A failed build is tried again by the next request rather than kept.
      building.catch(() => (this.grammarSet = undefined));
      this.grammarSet = building;
      return building;
    }
    return this.grammarSet;
  }

  memory(): MemoryReport {
    const backendBytes = tf.memory().numBytes;
    const m = this.path.memory();
    const kvCacheBytes = this.pool.bytes();
    const report: MemoryReport = {
      weightsBytes: m.backendWeightBytes + m.hostWeightBytes,
      kvCacheBytes,
      backendBytes,
      hostBytes: m.hostWeightBytes + m.hostScratchBytes,
      hostWeightsBytes: m.hostWeightBytes,
      transientBytes: Math.max(0, backendBytes - m.backendWeightBytes - kvCacheBytes),
    };
    const device = this.backend.name === 'webgpu' ? webgpuMemory() : undefined;
    if (device) {
      report.deviceBytesInUse = device.inUse;
      report.deviceBytesAllocated = device.allocated;
    }
    if (m.workerBytes !== undefined) report.workerBytes = m.workerBytes;
    return report;
  }

  dispose(): void {
    this.pool.dispose();
    this.path.dispose();
    disposeWeights(this.path.weights);
    // On webgpu the device keeps Node from exiting; one engine per process is the rule there.
    releaseBackend();
  }
}
