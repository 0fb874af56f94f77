/**
 * Picks the TensorFlow.js backend once per process: `tensorflow` when
 * tfjs-node(-gpu) loads (native libtensorflow, GPU with CUDA), else `webgpu`
 * when a hardware GPU adapter answers (Dawn over Vulkan), else `wasm` (SIMD,
 * fast matmuls through XNNPACK), else `cpu`. tfjs-node and the WebGPU packages
 * are optional dependencies (tfjs-node's install needs the internet), so
 * loading them may fail.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendChoice } from '../../config/index.js';
import { GemmaServeError } from '../errors.js';
import { probeWebGPU, releaseWebGPU, startWebGPU, webgpuLimits } from './webgpu/adapter.js';

/** The choices are config's BACKENDS (BACKEND). */
export type { BackendChoice };
export type BackendName = Exclude<BackendChoice, 'auto'>;

/** A requested backend could not be started. */
export class BackendError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 500, code: 'backend_unavailable' });
  }
}

/** Memory the backend can address; wasm's heap is capped below 4 GiB. */
export const WASM_HEAP_LIMIT_BYTES = Math.floor(3.84 * 1024 ** 3);

async function tryTensorflow(): Promise<string | undefined> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      if (tf.findBackend('tensorflow')) return pkg;
    } catch {
      // Not installed (its install script needs the internet) or no native library.
    }
  }
  return undefined;
}

async function start(name: BackendName): Promise<boolean> {
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  if (name === 'cpu') await import('@tensorflow/tfjs-backend-cpu');
  if (!tf.findBackendFactory(name)) return false;
  return tf.setBackend(name);
}

/** Starts webgpu when an adapter answers; `detail` names the adapter, or says why not. */
async function tryWebGPU(quiet: boolean): Promise<{ started: boolean; detail: string }> {
  if (tf.findBackend('webgpu') && webgpuLimits() && (await tf.setBackend('webgpu'))) return { started: true, detail: 'the device started earlier' };
  const probe = await probeWebGPU({ quiet });
  if (!probe.ok) return { started: false, detail: probe.reason };
  try {
    await startWebGPU(probe);
    return { started: true, detail: probe.name };
  } catch (err) {
    return { started: false, detail: `the webgpu backend failed to start on ${probe.name}: ${(err as Error).message}` };
  }
}

let chosen: { name: BackendName; reason: string } | undefined;

/**
 * Starts the backend; later calls with the same choice return the same
 * backend, and a different explicit choice switches to it (tests compare
 * backends in one process).
 */
export async function initBackend(choice: BackendChoice = 'auto'): Promise<{ name: BackendName; reason: string }> {
  if (chosen && (choice === 'auto' || choice === chosen.name) && tf.getBackend() === chosen.name) return chosen;
  const skipped: string[] = [];
  if (choice === 'tensorflow' || choice === 'auto') {
    const pkg = await tryTensorflow();
    if (pkg && (await tf.setBackend('tensorflow'))) {
      chosen = { name: 'tensorflow', reason: `${pkg} loaded` };
      return chosen;
    }
    if (choice === 'tensorflow') {
      throw new BackendError('BACKEND=tensorflow but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node loads; install one or choose wasm/cpu');
    }
    skipped.push('tensorflow: tfjs-node not available');
  }
  if (choice === 'webgpu' || choice === 'auto') {
    const gpu = await tryWebGPU(choice === 'auto');
    if (gpu.started) {
      chosen = { name: 'webgpu', reason: `${choice === 'auto' ? `${skipped.join('; ')}; ` : 'forced by configuration; '}GPU adapter: ${gpu.detail}` };
      return chosen;
    }
    if (choice === 'webgpu') throw new BackendError(`BACKEND=webgpu but ${gpu.detail}; install the optional packages webgpu and @tensorflow/tfjs-backend-webgpu, make the GPU's Vulkan driver reachable, or choose wasm/cpu`);
    skipped.push(`webgpu: ${gpu.detail}`);
  }
  const order: BackendName[] = choice === 'auto' ? ['wasm', 'cpu'] : [choice];
  for (const name of order) {
    try {
      if (await start(name)) {
        await tf.ready();
        const reason = choice === 'auto' ? `${skipped.join('; ')}; ${name} is the fastest backend that started` : 'forced by configuration';
        chosen = { name, reason };
        return chosen;
      }
    } catch (err) {
      if (choice !== 'auto') throw new BackendError(`backend ${name} failed to start: ${(err as Error).message}`);
    }
  }
  throw new BackendError(`no TensorFlow.js backend could be started (tried ${order.join(', ')})`);
}

/**
 * Lets go of what keeps the process alive once the engine is done: the webgpu
 * device and Dawn instance (tfjs falls back to another registered backend if
 * asked for tensors after this). The other backends hold nothing of the kind.
 */
export function releaseBackend(): void {
  if (chosen?.name === 'webgpu') {
    releaseWebGPU();
    chosen = undefined;
  }
}

/** Bytes the current backend can hold, or undefined where it is not known up front (a GPU's memory is not reported by WebGPU). */
export function backendMemoryLimit(name: BackendName, systemBytes: number): number | undefined {
  if (name === 'wasm') return WASM_HEAP_LIMIT_BYTES;
  if (name === 'cpu') return systemBytes;
  return undefined;
}

/**
 * The largest single tensor the backend can hold, in bytes, or undefined when
 * there is no such limit. On webgpu one tensor is one buffer bound whole to a
 * shader, so it cannot exceed the device's maxStorageBufferBindingSize (2 GiB
 * on NVIDIA's Vulkan driver) nor its maxBufferSize.
 */
export function backendTensorLimit(name: BackendName): { bytes: number; what: string } | undefined {
  if (name !== 'webgpu') return undefined;
  const l = webgpuLimits();
  if (!l) return undefined;
  return l.maxBufferSize < l.maxStorageBufferBindingSize
    ? { bytes: l.maxBufferSize, what: 'maxBufferSize' }
    : { bytes: l.maxStorageBufferBindingSize, what: 'maxStorageBufferBindingSize' };
}
