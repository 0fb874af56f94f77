/**
 * Fails before loading, with the figures, when a model and its caches cannot
 * fit where the chosen path would put them (the wasm heap, the host, one GPU
 * buffer), instead of a late out-of-bounds error halfway through a load.
 */
import { totalmem } from 'node:os';
import type { ModelConfig } from '../model/hf-config.js';
import { backendMemoryLimit, backendTensorLimit, type BackendName } from './backend.js';
import { layerKv, SLIDING_SLACK } from './kv-pool.js';
import { ModelTooLargeError, parameterCount, weightBytesNeeded } from './weights.js';

/** Fails before loading, with the figures, when the model and caches cannot fit the backend. */
export function checkMemory(
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
  const host = nativeHostBytes(c);
  if (nativeWeights && host > totalmem()) {
    throw new ModelTooLargeError(
      `the model's weights need up to ${gib(host)} of host memory for the native CPU kernels (half that for a bf16 checkpoint) ` +
        `but the machine has ${gib(totalmem())}; use a smaller model`,
    );
  }
  const limit = backendMemoryLimit(backend, totalmem());
  if (limit === undefined) return;
  // The native kernels hold the linear weights and the embedding outside the backend (the wasm heap);
  // every path keeps Gemma 4's per-layer table in host memory (row-table.ts).
  const weights = nativeWeights ? 4 * p.norms : weightBytesNeeded(c, backend) - 4 * perLayerTable(c) * (backend === 'wasm' ? 2 : 1);
  const sliding = Math.min(capacity, c.slidingWindow + SLIDING_SLACK);
  // Per layer with its own K/V (Gemma 4's KV-shared layers hold none), at its own KV heads and head size.
  const perSlot = c.layerTypes.reduce((s, t, l) => {
    const kv = layerKv(c, l);
    return kv.source === l ? s + (t === 'global' ? capacity : sliding) * kv.heads * kv.headDim * 8 : s;
  }, 0);
  const kv = perSlot * slots;
  // Logits, the MLP and attention of a prompt chunk, and the routed rows of Gemma 4's experts (gate/up and activation).
  const moe = c.gemma4?.moe;
  const experts = moe ? chunk * moe.topK * 3 * moe.intermediateSize : 0;
  const transient = 4 * (maxBatch * c.vocabSize * 3 + chunk * (4 * widestMlp(c) + 8 * c.hiddenSize) + c.numHeads * chunk * (capacity + chunk) * 2 + experts);
  const need = weights + kv + transient;
  if (need > limit) {
    throw new ModelTooLargeError(
      `the model needs about ${gib(need)} on the ${backend} backend (weights ${gib(weights)}, KV cache ${gib(kv)} for ${slots} slots of ${capacity}, ` +
        `activations ${gib(transient)}) but the backend holds ${gib(limit)}; use a smaller model, fewer slots (SLOTS) or a smaller CACHE_CAPACITY`,
    );
  }
}

/**
 * Host bytes of the native kernels' weights, at most: packed matrices at 4
 * bytes a value; Gemma 4's per-layer embedding table (most of E2B's
 * parameters) at 2, held as the checkpoint's bf16 bits and never widened.
 */
function nativeHostBytes(c: ModelConfig): number {
  const p = parameterCount(c);
  const table = perLayerTable(c);
  return 4 * (p.embedding - table + p.linear) + 2 * table;
}

/** Values of Gemma 4's per-layer embedding table (0 without one). */
function perLayerTable(c: ModelConfig): number {
  const g = c.gemma4;
  return g?.perLayerInputSize ? g.perLayerVocabSize * c.numLayers * g.perLayerInputSize : 0;
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
    ['the fused gate/up projection', [H, 2 * widestMlp(c)]],
    ['the fused q/k/v projection', [H, widestQkv(c)]],
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

/** The widest dense MLP of any layer (Gemma 4's KV-shared layers may be double wide). */
function widestMlp(c: ModelConfig): number {
  return Math.max(c.intermediateSize, ...(c.gemma4?.layers.map((s) => s.intermediateSize) ?? []));
}

/** The widest fused q/k/v projection of any layer, at each layer's own head size and KV heads. */
function widestQkv(c: ModelConfig): number {
  const g = c.gemma4;
  if (!g) return (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  return Math.max(...g.layers.map((s) => (c.numHeads + 2 * s.numKvHeads) * s.headDim));
}
