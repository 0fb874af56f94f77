/**
 * Picks the TensorFlow.js backend once per process: `tensorflow` when
 * tfjs-node(-gpu) loads (native libtensorflow, GPU with CUDA), else `wasm`
 * (SIMD, fast matmuls through XNNPACK), else `cpu`. tfjs-node is an optional
 * dependency whose install needs the internet, so loading it may fail.
 */
import * as tf from '@tensorflow/tfjs-core';
import { GemmaServeError } from '../errors.js';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';
export type BackendChoice = BackendName | 'auto';

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

let chosen: { name: BackendName; reason: string } | undefined;

/**
 * Starts the backend; later calls with the same choice return the same
 * backend, and a different explicit choice switches to it (tests compare
 * backends in one process).
 */
export async function initBackend(choice: BackendChoice = 'auto'): Promise<{ name: BackendName; reason: string }> {
  if (chosen && (choice === 'auto' || choice === chosen.name) && tf.getBackend() === chosen.name) return chosen;
  if (choice === 'tensorflow' || choice === 'auto') {
    const pkg = await tryTensorflow();
    if (pkg && (await tf.setBackend('tensorflow'))) {
      chosen = { name: 'tensorflow', reason: `${pkg} loaded` };
      return chosen;
    }
    if (choice === 'tensorflow') {
      throw new BackendError('BACKEND=tensorflow but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node loads; install one or choose wasm/cpu');
    }
  }
  const order: BackendName[] = choice === 'auto' ? ['wasm', 'cpu'] : [choice];
  for (const name of order) {
    try {
      if (await start(name)) {
        await tf.ready();
        const reason = choice === 'auto' ? `tfjs-node not available; ${name} is the fastest backend that started` : 'forced by configuration';
        chosen = { name, reason };
        return chosen;
      }
    } catch (err) {
      if (choice !== 'auto') throw new BackendError(`backend ${name} failed to start: ${(err as Error).message}`);
    }
  }
  throw new BackendError(`no TensorFlow.js backend could be started (tried ${order.join(', ')})`);
}

/** Bytes the current backend can hold, or undefined where it is not known up front. */
export function backendMemoryLimit(name: BackendName, systemBytes: number): number | undefined {
  if (name === 'wasm') return WASM_HEAP_LIMIT_BYTES;
  if (name === 'cpu') return systemBytes;
  return undefined;
}
