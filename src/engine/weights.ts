/**
 * Loads Hugging Face Gemma weights into the engine's layout: q/k/v fused into
 * one matrix and gate/up into another (fewer kernels per token), norms stored
 * as (1 + w), the query scale folded into a weight, and the tied embedding
 * kept once for the unembedding. Where each linear weight and the embedding
 * then live is the forward path's own `WeightLayout`: tfjs tensors as
 * [in, out] (XNNPACK's fast path on wasm; `transposeB` is ~7x slower) with
 * the norms that feed a projection folded into its rows (`tensorLayout`,
 * here), split by columns with a worker thread (graph/), or packed for the
 * native kernels (native/).
 */
import * as tf from '@tensorflow/tfjs-core';
import { GemmaServeError } from '../errors.js';
import type { ModelConfig } from '../model/hf-config.js';
import { gemma4ParameterCount } from '../model/gemma4-config.js';
import { gemma4Tensors, type Gemma4Weights } from './gemma4-types.js';
import type { NativeGemma4Weights } from './native/kernels.js';
import { WeightError, type TensorSource } from './tensor-source.js';

export { WeightError, type TensorSource } from './tensor-source.js';

/** A weight W [K, N] held outside tfjs by a path's own kernels (the native CPU kernels pack them). */
export interface PackedMatrix {
  readonly K: number;
  readonly N: number;
  readonly bytes: number;
}

/** Columns of a weight held by a worker thread (the graph path's column split). */
export interface RemoteColumns {
  id: number;
  cols: number;
}

/** A linear weight as [in, out]: a tfjs tensor, or packed by a path's own kernels. */
export type Linear = tf.Tensor2D | PackedMatrix;

export function isNative(w: tf.Tensor | PackedMatrix): w is PackedMatrix {
  return !(w instanceof tf.Tensor);
}

/** The weight as a tfjs tensor (the webgpu programs bind tensors). */
export function tensorOf(w: Linear): tf.Tensor2D {
  if (isNative(w)) throw new Error('this weight is held by the native CPU kernels, not by a tfjs backend');
  return w;
}

export interface LayerWeights {
  postAttnNorm: tf.Tensor1D;
  postFfwNorm: tf.Tensor1D;
  /**
   * The input and pre-feedforward norms, where they are not folded into the
   * next projection's rows (the native kernels keep a bf16 checkpoint's
   * values unscaled, so they stay 16-bit).
   */
  inputNorm?: tf.Tensor1D;
  preFfwNorm?: tf.Tensor1D;
  /** [hidden, (heads + 2 * kvHeads) * headDim]: q, k, v columns side by side, rows scaled by the input norm. */
  qkv: Linear;
  /** [heads + kvHeads, headDim]: (1 + w) per head row; q rows carry the score scale. Gemma 3 only. */
  qkNorm?: tf.Tensor2D;
  /** [heads * headDim, hidden]. */
  o: Linear;
  /** [hidden, 2 * intermediate]: gate columns, then up columns, rows scaled by the pre-feedforward norm. */
  gateUp: Linear;
  /** [intermediate, hidden]. */
  down: Linear;
  /** With a column split: each projection above holds its first columns, the worker the rest. */
  remote?: Record<'qkv' | 'o' | 'gateUp' | 'down', RemoteColumns>;
}

export interface Weights {
  /** [hidden, vocab]: the tied embedding, transposed (the first of embedParts when it is split). */
  embedT: Linear;
  /**
   * The embedding as [hidden, count] tables of consecutive token ids from
   * `from`: one part, or several where one buffer cannot hold it (webgpu
   * binds a tensor whole, up to 2 GiB on NVIDIA's Vulkan driver).
   */
  embedParts: Array<{ table: tf.Tensor2D; from: number }>;
  finalNorm: tf.Tensor1D;
  layers: LayerWeights[];
  /** Bytes held by all weight tensors (of this thread's backend). */
  bytes: number;
  /** Bytes held outside tfjs (packed matrices, Gemma 4's per-layer table). */
  packedBytes: number;
  /** With a column split: the embedding's remote columns, and its [vocab, hidden] rows for lookups. */
  embedRemote?: RemoteColumns;
  embedRows?: Float32Array;
  /** Gemma 4 (gemma4-weights.ts): its layers live here and `layers` is empty. */
  gemma4?: Gemma4Weights;
  /** Gemma 4 on the native kernels (native/gemma4-weights.ts): packed layers, the per-layer table in 16 bits. */
  gemma4Native?: NativeGemma4Weights;
}

/** Where a forward path keeps its weights. */
export interface WeightLayout {
  /**
   * Whether the input and pre-feedforward norms are folded into the next
   * projection's rows (the native kernels keep a bf16 checkpoint's values
   * unscaled, so they stay 16-bit, and apply the norms themselves).
   */
  foldNorms: boolean;
  /** A fused linear weight from PyTorch [out_i, in] parts; `keep` registers a tensor it creates. */
  linear(parts: Float32Array[], outs: number[], inDim: number, keep: Keep): { t: Linear; remote?: RemoteColumns };
  /** The tied embedding from its [vocab, hidden] rows. */
  embedding(embed: Float32Array, c: ModelConfig, keep: Keep): Pick<Weights, 'embedT' | 'embedParts' | 'embedRemote' | 'embedRows'>;
  /** The path's own Gemma 4 loader, where its layout is not the graph's tfjs tensors (the native kernels). */
  loadGemma4?(c: ModelConfig, src: TensorSource): Promise<Weights>;
}

/** Registers a tensor the loader created, so a failed load disposes it. */
export type Keep = <T extends tf.Tensor>(t: T) => T;

/**
 * Every weight a tfjs tensor, as [in, out], norms folded; the embedding in
 * parts no larger than `maxPartBytes` (webgpu binds a tensor whole, up to
 * 2 GiB on NVIDIA's Vulkan driver), else whole.
 */
export function tensorLayout(maxPartBytes?: number): WeightLayout {
  return {
    foldNorms: true,
    linear: (parts, outs, inDim, keep) => ({ t: keep(fuseTransposed(parts, outs, inDim)) }),
    embedding: (embed, c, keep) => {
      const H = c.hiddenSize;
      const part = embeddingPartSize(c, maxPartBytes);
      const embedParts: Weights['embedParts'] = [];
      for (let from = 0; from < c.vocabSize; from += part) {
        const count = Math.min(part, c.vocabSize - from);
        embedParts.push({ table: keep(fuseTransposed([embed.subarray(from * H, (from + count) * H)], [count], H)), from });
      }
      return { embedT: embedParts[0]!.table, embedParts };
    },
  };
}

/** A tensor the model needs is absent or has the wrong shape. */

/** The model will not fit the backend's memory. */
export class ModelTooLargeError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 500, code: 'model_too_large' });
  }
}

/** Finds the prefix under which the text model's tensors live (e.g. `model.` or `model.language_model.`). */
export function textPrefix(names: string[]): string {
  const embeds = names.filter((n) => n.endsWith('embed_tokens.weight'));
  const pick = embeds.find((n) => n.includes('language_model')) ?? embeds[0];
  if (!pick) throw new WeightError('no tensor named "*embed_tokens.weight" in the checkpoint');
  return pick.slice(0, -'embed_tokens.weight'.length);
}

/** Parameter count of the model as this engine stores it (for the memory check). */
export function parameterCount(c: ModelConfig): { embedding: number; linear: number; norms: number } {
  if (c.gemma4) return gemma4ParameterCount(c);
  const H = c.hiddenSize;
  const attn = H * (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * H;
  const mlp = 3 * H * c.intermediateSize;
  return {
    embedding: c.vocabSize * H,
    linear: c.numLayers * (attn + mlp),
    norms: c.numLayers * (4 * H + 2 * c.headDim) + H,
  };
}

/**
 * Bytes the weights occupy once loaded and warmed up. On wasm XNNPACK keeps a
 * packed copy of every matmul weight, so those count twice.
 */
export function weightBytesNeeded(c: ModelConfig, backend: string): number {
  const p = parameterCount(c);
  const packed = backend === 'wasm' ? p.embedding + p.linear : 0;
  return 4 * (p.embedding + p.linear + p.norms + packed);
}

/** A checkpoint's text-model tensors by their names under its prefix, each checked to exist with the shape expected. */
export class CheckpointReader {
  private readonly prefix: string;

  constructor(private readonly src: TensorSource) {
    this.prefix = textPrefix(src.names());
  }

  /** The checkpoint's full name of tensor `name`, checked to exist with `shape`. */
  name(name: string, shape: number[]): string {
    const full = this.prefix + name;
    if (!this.src.has(full)) throw new WeightError(`tensor "${full}" is missing from the checkpoint`);
    const info = this.src.info(full);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`tensor "${full}" has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    return full;
  }

  async get(name: string, shape: number[]): Promise<Float32Array> {
    return this.src.read(this.name(name, shape));
  }
}

/** Writes `src` ([rows, cols], row-major) transposed into `dst` ([cols, dstCols]) at column `colOffset`. */
function transposeInto(src: Float32Array, rows: number, cols: number, dst: Float32Array, dstCols: number, colOffset: number): void {
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        for (let c = c0; c < c1; c++) dst[c * dstCols + colOffset + r] = src[base + c];
      }
    }
  }
}

/** Stacks PyTorch [out_i, in] matrices into one [in, sum(out_i)] matrix. */
export function fuseTransposedArray(parts: Float32Array[], outs: number[], inDim: number): Float32Array {
  const total = outs.reduce((a, b) => a + b, 0);
  const dst = new Float32Array(inDim * total);
  let offset = 0;
  parts.forEach((p, i) => {
    transposeInto(p, outs[i], inDim, dst, total, offset);
    offset += outs[i];
  });
  return dst;
}

/** The parts one after another (PyTorch [out_i, in] matrices stacked as [sum(out_i), in]). */
export function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** PyTorch [out_i, in] parts as one [in, sum(out_i)] tensor. */
export function fuseTransposed(parts: Float32Array[], outs: number[], inDim: number): tf.Tensor2D {
  return tf.tensor2d(fuseTransposedArray(parts, outs, inDim), [inDim, outs.reduce((a, b) => a + b, 0)]);
}

/** Scales column j of a PyTorch [out, in] matrix by w[j]: diag(w) folded into the product's input side. */
function scaleInputs(m: Float32Array, w: Float32Array): Float32Array {
  const n = w.length;
  for (let i = 0; i < m.length; i++) m[i] *= w[i % n];
  return m;
}

function onePlus(w: Float32Array, scale = 1): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = (1 + w[i]) * scale;
  return out;
}

/** Token ids per embedding part, so that no part exceeds `maxBytes` (all in one part without a limit). */
export function embeddingPartSize(c: ModelConfig, maxBytes?: number): number {
  if (!maxBytes) return c.vocabSize;
  const fits = Math.floor(maxBytes / (4 * c.hiddenSize));
  return Math.min(c.vocabSize, Math.max(1, fits));
}

/** Reads a Gemma 2/3 checkpoint, converts it to the engine's layout and hands it to the path's `layout` (Gemma 4: gemma4-weights.ts). */
export async function loadWeights(c: ModelConfig, src: TensorSource, layout: WeightLayout): Promise<Weights> {
  const r = new CheckpointReader(src);
  const H = c.hiddenSize;
  const hd = c.headDim;
  const qDim = c.numHeads * hd;
  const kvDim = c.numKvHeads * hd;
  const I = c.intermediateSize;
  const scale = c.queryPreAttnScalar ** -0.5;
  const created: tf.Tensor[] = [];
  const keep: Keep = (t) => {
    created.push(t);
    return t;
  };
  const fold = layout.foldNorms;
  const linear = (parts: Float32Array[], outs: number[], inDim: number) => layout.linear(parts, outs, inDim, keep);
  try {
    const norm = async (name: string, size = H, s = 1): Promise<tf.Tensor1D> => keep(tf.tensor1d(onePlus(await r.get(name, [size]), s)));
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const p = `layers.${i}.`;
      // x * rms * w then @ W equals x * rms then @ (diag(w) W): one multiply fewer per norm.
      const inputNorm = onePlus(await r.get(`${p}input_layernorm.weight`, [H]));
      const preFfwNorm = onePlus(await r.get(`${p}pre_feedforward_layernorm.weight`, [H]));
      const into = (m: Float32Array, w: Float32Array): Float32Array => (fold ? scaleInputs(m, w) : m);
      const q = into(await r.get(`${p}self_attn.q_proj.weight`, [qDim, H]), inputNorm);
      // RMS-normalized queries (Gemma 3) lose any scale on Wq, so the score scale goes into q_norm there.
      if (!c.qkNorm) for (let j = 0; j < q.length; j++) q[j] *= scale;
      const k = into(await r.get(`${p}self_attn.k_proj.weight`, [kvDim, H]), inputNorm);
      const v = into(await r.get(`${p}self_attn.v_proj.weight`, [kvDim, H]), inputNorm);
      const gate = into(await r.get(`${p}mlp.gate_proj.weight`, [I, H]), preFfwNorm);
      const up = into(await r.get(`${p}mlp.up_proj.weight`, [I, H]), preFfwNorm);
      const qkv = linear([q, k, v], [qDim, kvDim, kvDim], H);
      const o = linear([await r.get(`${p}self_attn.o_proj.weight`, [H, qDim])], [H], qDim);
      const gateUp = linear([gate, up], [I, I], H);
      const down = linear([await r.get(`${p}mlp.down_proj.weight`, [H, I])], [H], I);
      const layer: LayerWeights = {
        postAttnNorm: await norm(`${p}post_attention_layernorm.weight`),
        postFfwNorm: await norm(`${p}post_feedforward_layernorm.weight`),
        qkv: qkv.t,
        o: o.t,
        gateUp: gateUp.t,
        down: down.t,
      };
      if (!fold) {
        layer.inputNorm = keep(tf.tensor1d(inputNorm));
        layer.preFfwNorm = keep(tf.tensor1d(preFfwNorm));
      }
      if (qkv.remote && o.remote && gateUp.remote && down.remote) layer.remote = { qkv: qkv.remote, o: o.remote, gateUp: gateUp.remote, down: down.remote };
      if (c.qkNorm) {
        const qn = onePlus(await r.get(`${p}self_attn.q_norm.weight`, [hd]), scale);
        const kn = onePlus(await r.get(`${p}self_attn.k_norm.weight`, [hd]));
        const rows = new Float32Array((c.numHeads + c.numKvHeads) * hd);
        for (let h = 0; h < c.numHeads; h++) rows.set(qn, h * hd);
        for (let h = 0; h < c.numKvHeads; h++) rows.set(kn, (c.numHeads + h) * hd);
        layer.qkNorm = keep(tf.tensor2d(rows, [c.numHeads + c.numKvHeads, hd]));
      }
      layers.push(layer);
    }
    const finalNorm = await norm('norm.weight');
    const embedding = layout.embedding(await r.get('embed_tokens.weight', [c.vocabSize, H]), c, keep);
    const packedBytes = [embedding.embedT, ...layers.flatMap((l) => [l.qkv, l.o, l.gateUp, l.down])].reduce((sum, w) => sum + (isNative(w) ? w.bytes : 0), 0);
    const bytes = created.reduce((sum, t) => sum + t.size * 4, 0);
    return { ...embedding, finalNorm, layers, bytes, packedBytes };
  } catch (err) {
    created.forEach((t) => t.dispose());
    throw err;
  }
}

/** Disposes the weights' tensors (packed matrices are freed with their handles, a worker's columns with the worker). */
export function disposeWeights(w: Weights): void {
  for (const p of w.embedParts) p.table.dispose();
  w.finalNorm.dispose();
  if (w.gemma4) tf.dispose(gemma4Tensors(w.gemma4));
  for (const l of w.layers) {
    // Native matrices are freed with their handles.
    for (const t of [l.postAttnNorm, l.postFfwNorm, l.inputNorm, l.preFfwNorm, l.qkv, l.o, l.gateUp, l.down, l.qkNorm]) if (t && !isNative(t)) t.dispose();
  }
}
