/**
 * Direct access to a tensor's memory on the backends that keep it in this
 * process (wasm: the module's heap; cpu: a typed array). The KV cache writes
 * new keys and values there in place instead of copying a whole slot per
 * token. Other backends (tensorflow, webgpu) return undefined and the cache
 * falls back to tensorScatterUpdate.
 *
 * Safe only for tensors that are never the packed right-hand operand of an
 * XNNPACK matmul on wasm (XNNPACK keeps a packed copy keyed by tensor and
 * would not see the write); the KV cache is always the left operand.
 */
import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
}

interface CpuBackendLike {
  data: { get(id: object): { values?: unknown } | undefined };
}

export function supportsInPlace(backend: string): boolean {
  return backend === 'wasm' || backend === 'cpu';
}

/** A Float32Array aliasing the tensor's memory; recreate it after any allocation (the wasm heap can move). */
export function memoryOf(t: tf.Tensor): Float32Array {
  const b = tf.backend() as unknown as Partial<WasmBackendLike & CpuBackendLike>;
  if (b.wasm && b.dataIdMap) {
    const info = b.dataIdMap.get(t.dataId);
    if (!info) throw new Error('tensor is not on the wasm backend');
    return new Float32Array(b.wasm.HEAPU8.buffer, info.memoryOffset, t.size);
  }
  const values = b.data?.get(t.dataId)?.values;
  if (values instanceof Float32Array) return values;
  throw new Error(`tensors on the ${tf.getBackend()} backend cannot be written in place`);
}
