/**
 * The loaded model: backend, config, tokenizer, weights and the KV pool. It
 * checks before loading that the model fits the backend's memory, and warms
 * the weights up (XNNPACK packs each matmul weight on first use).
 */
import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { availableParallelism, totalmem } from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import { loadModelConfig, type ModelConfig } from '../model/hf-config.js';
import { defaultModelDir } from '../model/make-model.js';
import { readSafetensors } from '../model/safetensors.js';
import { GemmaTokenizer } from '../model/tokenizer.js';
import { backendMemoryLimit, backendTensorLimit, initBackend, releaseBackend, type BackendChoice, type BackendName } from './backend.js';
import { KVPool, SLIDING_SLACK } from './kv-pool.js';
import { supportsInPlace } from './tensor-memory.js';
import { GemmaModel, type ForwardPass } from './model.js';
import { WebGPUModel } from './webgpu/fused-model.js';
import { ColumnSplit } from './column-split.js';
import { NativeKernels, nativeAddon } from './native-kernels.js';
import { NativeModel } from './native-model.js';
import { webgpuMemory } from './webgpu/adapter.js';
import { disposeWeights, loadWeights, ModelTooLargeError, parameterCount, weightBytesNeeded } from './weights.js';

export interface EngineOptions {
  /** Hugging Face model directory; absent means the embedded default model. */
  modelDir?: string;
  /** Name the model is served under (defaults to the directory name). */
  modelId?: string;
  backend?: BackendChoice;
  /** KV slots (sessions whose caches stay on the device). */
  slots?: number;
  /** Global-layer KV entries per slot. */
  cacheCapacity?: number;
  /** Largest K of the device-side top-k. */
  topKCap?: number;
  /** Largest batch a decode step runs (sizes the transient memory estimate). */
  maxBatch?: number;
  /** Largest prefill chunk (sizes the transient memory estimate). */
  prefillChunk?: number;
  /** On webgpu: the fused WGSL programs (default) or the tfjs op graph that the other backends run. */
  webgpuKernels?: 'fused' | 'graph';
  /**
   * On wasm and cpu: the linear layers on the native AVX/FMA kernels, or on
   * tfjs's own matmuls; 'auto' takes the native kernels where they are built
   * and the CPU runs them (the default, as in the service).
   */
  kernels?: KernelChoice;
  /**
   * On wasm and cpu: threads for the native kernels (default: one per core;
   * process-wide, the last engine loaded sets it),
   * or with tfjs on wasm, 2 to split each linear weight by columns with a worker thread (default 1).
   */
  threads?: number;
  /** On webgpu with the fused programs: the most bytes one embedding part may hold (default: the device's binding limit). */
  maxTensorBytes?: number;
}

export type KernelChoice = 'auto' | 'native' | 'tfjs';

export interface MemoryReport {
  /** Weight bytes in the backend and in the native kernels. */
  weightsBytes: number;
  kvCacheBytes: number;
  /** Backend bytes held by neither weights nor KV (activations, packed copies, scratch). */
  transientBytes: number;
  backendBytes: number;
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

export const DEFAULT_MODEL_ID = 'gemma-serve-default';

export class Engine {
  private constructor(
    readonly config: ModelConfig,
    readonly tokenizer: GemmaTokenizer,
    readonly model: ForwardPass,
    readonly pool: KVPool,
    readonly backend: { name: BackendName; reason: string },
    readonly modelId: string,
    readonly modelDir: string,
    readonly topKCap: number,
    /** What runs the linear layers, and why (for the start-up log). */
    readonly linearKernels: string,
  ) {}

  /** Wall time of `load`, warm-up included. */
  loadMs = 0;

  static async load(opts: EngineOptions = {}): Promise<Engine> {
    const t0 = performance.now();
    const backend = await initBackend(opts.backend ?? 'auto');
    const dir = resolve(opts.modelDir ?? (await defaultModelDir()));
    const config = await loadModelConfig(dir);
    const slots = opts.slots ?? 4;
    const capacity = opts.cacheCapacity ?? 1024;
    const fused = backend.name === 'webgpu' && opts.webgpuKernels !== 'graph';
    const linear = linearKernels(backend.name, opts.kernels ?? 'auto', opts.threads ?? availableParallelism());
    const native = linear.native;
    checkMemory(config, backend.name, slots, capacity, opts.maxBatch ?? slots, opts.prefillChunk ?? 256, fused, native !== undefined);
    // Checkpoints without tokenizer files (the test fixtures) get the Gemma 3 tokenizer.
    const tokenizer = existsSync(join(dir, 'tokenizer.json')) ? await GemmaTokenizer.fromModelDir(dir) : await GemmaTokenizer.fromDefault();
    const store = await readSafetensors(dir);
    const split = !native && backend.name === 'wasm' && (opts.threads ?? 1) >= 2 ? columnSplitFor(config, opts.maxBatch ?? slots, opts.prefillChunk ?? 256) : undefined;
    let weights;
    try {
      weights = await loadWeights(config, store, { maxTensorBytes: fused ? opts.maxTensorBytes ?? backendTensorLimit(backend.name)?.bytes : undefined, split, native });
      await split?.start();
    } catch (err) {
      split?.dispose();
      throw err;
    } finally {
      await store.close();
    }
    const model = fused ? new WebGPUModel(config, weights) : weights.native ? new NativeModel(config, weights) : new GemmaModel(config, weights);
    const pool = new KVPool(config, slots, capacity, supportsInPlace(backend.name), model instanceof WebGPUModel ? model.slotWriter() : undefined);
    const engine = new Engine(
      config,
      tokenizer,
      model,
      pool,
      backend,
      opts.modelId ?? (opts.modelDir ? basename(dir) : DEFAULT_MODEL_ID),
      dir,
      opts.topKCap ?? 64,
      split ? `${linear.description}, linear weights split with a wasm worker thread` : linear.description,
    );
    engine.warmUp();
    engine.loadMs = performance.now() - t0;
    return engine;
  }

  /** Runs every weight through its matmul once so the first request does not pay for packing. */
  private warmUp(): void {
    const logits = this.model.forward([[this.config.bosId]]);
    logits.dispose();
  }

  get slots(): number {
    return this.pool.slots;
  }

  get capacity(): number {
    return this.pool.capacity;
  }

  memory(): MemoryReport {
    const backendBytes = tf.memory().numBytes;
    const { bytes, nativeBytes = 0 } = this.model.weights;
    const kvCacheBytes = this.pool.bytes();
    const report: MemoryReport = { weightsBytes: bytes + nativeBytes, kvCacheBytes, backendBytes, transientBytes: Math.max(0, backendBytes - bytes - kvCacheBytes) };
    const device = this.backend.name === 'webgpu' ? webgpuMemory() : undefined;
    if (device) {
      report.deviceBytesInUse = device.inUse;
      report.deviceBytesAllocated = device.allocated;
    }
    if (this.model.weights.split) report.workerBytes = this.model.weights.split.workerBytes;
    return report;
  }

  /**
   * One full forward pass over `ids` (no cache), reduced on the device to the
   * top-k logits and the logsumexp at every position.
   */
  async score(ids: number[], topK = 20): Promise<Array<{ top_ids: number[]; top_logits: number[]; logsumexp: number }>> {
    const { values, indices, lse } = tf.tidy(() => {
      const logits = this.model.forward([ids], { allPositions: true });
      const top = tf.topk(logits, topK);
      return { values: top.values, indices: top.indices, lse: tf.logSumExp(logits, -1) };
    });
    const [v, i, l] = await Promise.all([values.data(), indices.data(), lse.data()]);
    tf.dispose([values, indices, lse]);
    return ids.map((_, p) => ({
      top_ids: Array.from(i.subarray(p * topK, (p + 1) * topK)),
      top_logits: Array.from(v.subarray(p * topK, (p + 1) * topK)),
      logsumexp: l[p],
    }));
  }

  dispose(): void {
    this.pool.dispose();
    this.model.dispose();
    disposeWeights(this.model.weights);
    // On webgpu the device keeps Node from exiting; one engine per process is the rule there.
    releaseBackend();
  }
}

/** The native kernels where chosen and available, and a line for the start-up log; throws where 'native' was asked for and cannot run. */
function linearKernels(backend: BackendName, choice: KernelChoice, threads: number): { native?: NativeKernels; description: string } {
  if (backend !== 'wasm' && backend !== 'cpu') return { description: `${backend} backend` };
  if (choice === 'tfjs') return { description: 'tfjs graph (CPU_KERNELS=tfjs)' };
  const { addon, reason } = nativeAddon();
  if (addon) return { native: new NativeKernels(addon, threads), description: `native kernels: ${reason}, ${threads} thread(s)` };
  if (choice === 'native') throw new Error(`the native CPU kernels cannot run: ${reason}`);
  return { description: `tfjs graph (no native kernels: ${reason})` };
}

/** The worker's hand-off buffer: the largest x and remote result of a decode step or prompt chunk (larger calls go in row blocks). */
function columnSplitFor(c: ModelConfig, maxBatch: number, chunk: number): ColumnSplit {
  const rows = Math.max(maxBatch, chunk);
  const widest = Math.max(c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize);
  const remote = Math.max((c.numHeads + 2 * c.numKvHeads) * c.headDim, 2 * c.intermediateSize, c.hiddenSize) / 2;
  return new ColumnSplit(rows * widest, Math.max(rows * remote, maxBatch * Math.ceil(c.vocabSize / 2)));
}

/** Fails before loading, with the figures, when the model and caches cannot fit the backend. */
function checkMemory(
  c: ModelConfig,
  backend: BackendName,
  slots: number,
  capacity: number,
  maxBatch: number,
  chunk: number,
  embeddingSplits: boolean,
  nativeWeights: boolean,
): void {
  checkTensorLimit(c, backend, backendTensorLimit(backend), embeddingSplits);
  const gib = (n: number) => `${(n / 1024 ** 3).toFixed(2)} GiB`;
  const p = parameterCount(c);
  if (nativeWeights && 4 * (p.embedding + p.linear) > totalmem()) {
    throw new ModelTooLargeError(
      `the model's weights need up to ${gib(4 * (p.embedding + p.linear))} of host memory for the native CPU kernels (half that for a bf16 checkpoint) ` +
        `but the machine has ${gib(totalmem())}; use a smaller model`,
    );
  }
  const limit = backendMemoryLimit(backend, totalmem());
  if (limit === undefined) return;
  // The native kernels hold the linear weights and the embedding outside the backend (the wasm heap).
  const weights = nativeWeights ? 4 * p.norms : weightBytesNeeded(c, backend);
  const sliding = Math.min(capacity, c.slidingWindow + SLIDING_SLACK);
  const perSlot = c.layerTypes.reduce((s, t) => s + (t === 'global' ? capacity : sliding), 0) * c.numKvHeads * c.headDim * 8;
  const kv = perSlot * slots;
  const transient = 4 * (maxBatch * c.vocabSize * 3 + chunk * (4 * c.intermediateSize + 8 * c.hiddenSize) + c.numHeads * chunk * (capacity + chunk) * 2);
  const need = weights + kv + transient;
  if (need > limit) {
    throw new ModelTooLargeError(
      `the model needs about ${gib(need)} on the ${backend} backend (weights ${gib(weights)}, KV cache ${gib(kv)} for ${slots} slots of ${capacity}, ` +
        `activations ${gib(transient)}) but the backend holds ${gib(limit)}; use a smaller model, fewer slots (SLOTS) or a smaller CACHE_CAPACITY`,
    );
  }
}

/**
 * Fails before loading when one weight is larger than the backend can hold
 * as a single tensor (webgpu binds a tensor's buffer whole; Gemma 3 4B's tied
 * embedding is 2.5 GiB in float32, over NVIDIA's 2 GiB).
 */
export function checkTensorLimit(c: ModelConfig, backend: BackendName, limit = backendTensorLimit(backend), embeddingSplits = false): void {
  if (!limit) return;
  const H = c.hiddenSize;
  const largest: Array<[string, number[]]> = [
    // The fused webgpu programs split the embedding by token ids; the graph needs it whole.
    ...(embeddingSplits ? [] : ([['the tied embedding', [H, c.vocabSize]]] as Array<[string, number[]]>)),
    ['the fused gate/up projection', [H, 2 * c.intermediateSize]],
    ['the fused q/k/v projection', [H, (c.numHeads + 2 * c.numKvHeads) * c.headDim]],
  ];
  for (const [what, shape] of largest) {
    const bytes = 4 * shape[0] * shape[1];
    if (bytes > limit.bytes) {
      const gib = (n: number) => `${(n / 1024 ** 3).toFixed(2)} GiB`;
      throw new ModelTooLargeError(
        `${what} [${shape.join(' x ')}] is ${gib(bytes)} in float32, but the ${backend} device holds at most ${gib(limit.bytes)} ` +
          `in one buffer (${limit.what} = ${limit.bytes} bytes); only the embedding is split across buffers, by the fused webgpu programs: ` +
          'use a smaller model, or BACKEND=wasm/cpu',
      );
    }
  }
}
