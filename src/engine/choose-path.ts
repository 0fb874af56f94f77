/**
 * Which forward path runs, decided once at load from the backend and the
 * kernel settings, and nowhere else:
 *   webgpu  -> the fused WGSL programs (or the graph, when asked for);
 *   wasm, cpu -> the native CPU kernels where they are built and the CPU runs
 *              them, else the tfjs graph (on wasm with two threads or more,
 *              its linear layers split by columns with a worker thread);
 *   tensorflow -> the graph.
 */
import type { KernelChoice } from '../../config/index.js';
import type { ModelConfig } from '../model/hf-config.js';
import type { BackendName } from './backend.js';
import type { ForwardPath, PathName } from './forward.js';
import { ColumnSplit, splitLayout } from './graph/column-split.js';
import { GraphPath } from './graph/forward.js';
import { Gemma4GraphPath } from './graph/gemma4.js';
import { reduceOnGraph } from './graph/reduce.js';
import { NativeKernels, nativeAddon } from './native/kernels.js';
import { NativePath } from './native/forward.js';
import { Gemma4NativePath } from './native/gemma4.js';
import { nativeLayout } from './native/weights.js';
import { supportsInPlace } from './tensor-memory.js';
import { WebGPUPath } from './webgpu/forward.js';
import { Gemma4WebGPUPath } from './webgpu/gemma4.js';
import { reduceFused } from './webgpu/reduce.js';
import { gpuLayout, type StoragePolicy } from './webgpu/weights.js';
import { tensorLayout, type WeightLayout, type Weights } from './weights.js';

/** The choices are config's CPU_KERNELS. */
export type { KernelChoice };

export interface PathOptions {
  /** On webgpu: the fused WGSL programs or the tfjs op graph. */
  webgpuKernels: 'fused' | 'graph';
  /** On wasm and cpu: the native kernels, the tfjs graph, or the native kernels where they can run. */
  kernels: KernelChoice;
  /** Native kernel threads. */
  threads: number;
  /** With the graph on wasm: 2 or more splits the linear layers with a worker thread. */
  graphThreads: number;
  /** On webgpu with the fused programs: the most bytes one embedding part may hold. */
  maxTensorBytes?: number;
  /** On webgpu with the fused Gemma 2/3 programs: bf16 weights where the checkpoint's are ('auto'), or all f32. */
  webgpuWeights?: StoragePolicy;
  /** Sizes the worker thread's hand-off buffer. */
  maxBatch: number;
  prefillChunk: number;
}

/** The chosen path before its weights are loaded: what the loader must prepare for it. */
export interface PathChoice {
  name: PathName;
  backend: BackendName;
  /** The native kernels (path 'native'). */
  native?: NativeKernels;
  /** The worker thread that multiplies half of each weight (path 'graph' on wasm with 2+ threads). */
  split?: ColumnSplit;
  /** Where the path keeps its weights. */
  layout: WeightLayout;
  /** What runs the linear layers, and why (the start-up log's `linear`). */
  description: string;
}

/** Throws where 'native' was asked for and cannot run. */
export function choosePath(config: ModelConfig, backend: BackendName, opts: PathOptions): PathChoice {
  if (config.gemma4) return gemma4Path(config, backend, opts);
  if (backend === 'webgpu') {
    // The fused programs take the embedding in parts that fit one buffer binding; the graph needs it whole.
    if (opts.webgpuKernels === 'graph') return { name: 'graph', backend, layout: tensorLayout(), description: 'webgpu backend' };
    const policy = opts.webgpuWeights ?? 'auto';
    return { name: 'webgpu', backend, layout: gpuLayout(policy, opts.maxTensorBytes), description: `webgpu backend (fused programs, ${policy === 'auto' ? 'bf16 weights where the checkpoint holds bf16' : 'f32 weights'})` };
  }
  if (backend !== 'wasm' && backend !== 'cpu') return { name: 'graph', backend, layout: tensorLayout(), description: `${backend} backend` };
  if (opts.kernels !== 'tfjs') {
    const { addon, reason } = nativeAddon();
    if (addon) {
      const native = new NativeKernels(addon, opts.threads);
      return { name: 'native', backend, native, layout: nativeLayout(native), description: `native kernels: ${reason}, ${opts.threads} thread(s)` };
    }
    if (opts.kernels === 'native') throw new Error(`the native CPU kernels cannot run: ${reason}`);
    return graphOnCpu(config, backend, opts, `tfjs graph (no native kernels: ${reason})`);
  }
  return graphOnCpu(config, backend, opts, 'tfjs graph (CPU_KERNELS=tfjs)');
}

/**
 * Gemma 4: on wasm and cpu the native kernels as for Gemma 2/3 (where the
 * addon has the Gemma 4 layer), else the graph without the column split;
 * on webgpu the fused programs (webgpu/gemma4.ts) unless the graph is asked for.
 */
function gemma4Path(config: ModelConfig, backend: BackendName, opts: PathOptions): PathChoice {
  // The fused WGSL programs have the Gemma 4 layer (webgpu/gemma4.ts); the embedding in parts that fit one binding.
  if (backend === 'webgpu' && opts.webgpuKernels !== 'graph') return { name: 'webgpu', backend, layout: tensorLayout(opts.maxTensorBytes), description: 'webgpu backend (fused Gemma 4 programs)' };
  let why = 'CPU_KERNELS=tfjs';
  if ((backend === 'wasm' || backend === 'cpu') && opts.kernels !== 'tfjs') {
    const { addon, reason } = nativeAddon();
    const native = addon ? new NativeKernels(addon, opts.threads) : undefined;
    if (native?.gemma4) return { name: 'native', backend, native, layout: nativeLayout(native), description: `native kernels: ${reason}, ${opts.threads} thread(s)` };
    why = native ? 'build/gemma_cpu.node predates the Gemma 4 layer; run npm run build:native' : reason;
    if (opts.kernels === 'native') throw new Error(`the native CPU kernels cannot run ${config.family}: ${why}`);
  }
  return { name: 'graph', backend, layout: tensorLayout(), description: `tfjs graph (${backend === 'wasm' || backend === 'cpu' ? why : `${backend} backend`})` };
}

function graphOnCpu(config: ModelConfig, backend: BackendName, opts: PathOptions, description: string): PathChoice {
  if (backend !== 'wasm' || opts.graphThreads < 2) return { name: 'graph', backend, layout: tensorLayout(), description };
  const split = columnSplitFor(config, opts.maxBatch, opts.prefillChunk);
  return { name: 'graph', backend, split, layout: splitLayout(split), description: `${description}, linear weights split with a wasm worker thread` };
}

/** The path over its loaded weights. */
export function createPath(choice: PathChoice, config: ModelConfig, weights: Weights): ForwardPath {
  switch (choice.name) {
    case 'webgpu':
      return config.gemma4 ? new Gemma4WebGPUPath(config, weights) : new WebGPUPath(config, weights);
    case 'native':
      if (config.gemma4) return new Gemma4NativePath(config, weights, choice.native!, choice.backend === 'wasm');
      return new NativePath(config, weights, choice.native!, choice.backend === 'wasm');
    case 'graph':
      return new (config.gemma4 ? Gemma4GraphPath : GraphPath)(config, weights, {
        // On webgpu the graph's logits are reduced by the fused programs too: no [B, V] tfjs op runs there.
        reduce: choice.backend === 'webgpu' ? reduceFused : reduceOnGraph,
        inPlaceCache: supportsInPlace(choice.backend),
        split: choice.split,
      });
  }
}

/** The worker's hand-off buffer: the largest x and remote result of a decode step or prompt chunk (larger calls go in row blocks). */
function columnSplitFor(c: ModelConfig, maxBatch: number, chunk: number): ColumnSplit {
  const rows = Math.max(maxBatch, chunk);
  const widest = Math.max(c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize);
  const remote = Math.max((c.numHeads + 2 * c.numKvHeads) * c.headDim, 2 * c.intermediateSize, c.hiddenSize) / 2;
  return new ColumnSplit(rows * widest, Math.max(rows * remote, maxBatch * Math.ceil(c.vocabSize / 2)));
}
