/**
 * Loads a Gemma 4 text checkpoint for the native kernels: every linear weight
 * packed (held in 16 bits where each value is a bfloat16), each expert's
 * gate/up and down packed on their own so a token streams only its chosen
 * experts, norms as Float32Arrays (Gemma 4 multiplies by w), and the
 * per-layer embedding table kept as the checkpoint's bf16 bits: on E2B it is
 * 262,144 x 35 x 256 values, 4.7 GB in 16 bits, and a call reads only its
 * tokens' rows. The graph's tfjs layout (gemma4-weights.ts) is untouched.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/hf-config.js';
import { RowTable } from '../row-table.js';
import { concat, textPrefix, WeightError, type TensorSource, type Weights } from '../weights.js';
import type { NativeGemma4Layer, NativeKernels, NativeMatrix } from './kernels.js';

/** The per-layer embeddings on the native path. */
export interface NativePerLayerTable {
  /** [vocabPerLayer, L * P] in host memory (bf16 bits of a bf16 checkpoint). */
  table: RowTable;
  /** [H, L * P]: per_layer_model_projection. */
  proj: NativeMatrix;
  /** [P]: per_layer_projection_norm. */
  norm: Float32Array;
}

export interface NativeGemma4Weights {
  layers: NativeGemma4Layer[];
  perLayer?: NativePerLayerTable;
  finalNorm: Float32Array;
}

export async function loadGemma4Native(c: ModelConfig, src: TensorSource, kernels: NativeKernels): Promise<Weights> {
  const g = c.gemma4!;
  const prefix = textPrefix(src.names());
  const H = c.hiddenSize;
  const checked = (name: string, shape: number[]): string => {
    const full = prefix + name;
    if (!src.has(full)) throw new WeightError(`tensor "${full}" is missing from the checkpoint`);
    const info = src.info(full);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`tensor "${full}" has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    return full;
  };
  const get = (name: string, shape: number[]): Promise<Float32Array> => src.read(checked(name, shape));
  const vec = (name: string, n = H) => get(name, [n]);
  /** PyTorch [out_i, in] parts as one packed W [in, sum(out_i)]. */
  const linear = async (names: string[], outs: number[], inDim: number): Promise<NativeMatrix> => {
    const parts = await Promise.all(names.map((n, i) => get(n, [outs[i], inDim])));
    return kernels.pack(concat(parts), inDim, outs.reduce((a, b) => a + b, 0), true);
  };

  const layers: NativeGemma4Layer[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `layers.${l}.`;
    const s = g.layers[l];
    const qDim = c.numHeads * s.headDim;
    const kvDim = s.numKvHeads * s.headDim;
    const I = s.intermediateSize;
    const layer: NativeGemma4Layer = {
      inputNorm: await vec(`${p}input_layernorm.weight`),
      postAttnNorm: await vec(`${p}post_attention_layernorm.weight`),
      preFfwNorm: await vec(`${p}pre_feedforward_layernorm.weight`),
      postFfwNorm: await vec(`${p}post_feedforward_layernorm.weight`),
      q: await linear([`${p}self_attn.q_proj.weight`], [qDim], H),
      qNorm: await vec(`${p}self_attn.q_norm.weight`, s.headDim),
      o: await linear([`${p}self_attn.o_proj.weight`], [H], qDim),
      gateUp: await linear([`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`], [I, I], H),
      down: await linear([`${p}mlp.down_proj.weight`], [H], I),
      layerScalar: (await get(`${p}layer_scalar`, [1]))[0],
    };
    if (s.kvSource === l) {
      const names = s.kEqV ? [`${p}self_attn.k_proj.weight`] : [`${p}self_attn.k_proj.weight`, `${p}self_attn.v_proj.weight`];
      layer.kv = await linear(names, names.map(() => kvDim), H);
      layer.kNorm = await vec(`${p}self_attn.k_norm.weight`, s.headDim);
    }
    if (g.perLayerInputSize) {
      const P = g.perLayerInputSize;
      layer.perLayer = {
        gate: await linear([`${p}per_layer_input_gate.weight`], [P], H),
        proj: await linear([`${p}per_layer_projection.weight`], [H], P),
        postNorm: await vec(`${p}post_per_layer_input_norm.weight`),
      };
    }
    if (g.moe) {
      const { numExperts: E, intermediateSize: Im } = g.moe;
      const router = await get(`${p}router.proj.weight`, [E, H]);
      const scale = await vec(`${p}router.scale`);
      const root = H ** -0.5;
      for (let i = 0; i < router.length; i++) router[i] *= scale[i % H] * root;
      const gateUp = await get(`${p}experts.gate_up_proj`, [E, 2 * Im, H]);
      const down = await get(`${p}experts.down_proj`, [E, H, Im]);
      layer.moe = {
        router: kernels.pack(router, H, E, true),
        gateUp: Array.from({ length: E }, (_, e) => kernels.pack(gateUp.subarray(e * 2 * Im * H, (e + 1) * 2 * Im * H), H, 2 * Im, true)),
        down: Array.from({ length: E }, (_, e) => kernels.pack(down.subarray(e * H * Im, (e + 1) * H * Im), Im, H, true)),
        perExpertScale: await get(`${p}router.per_expert_scale`, [E]),
        preNorm2: await vec(`${p}pre_feedforward_layernorm_2.weight`),
        postNorm1: await vec(`${p}post_feedforward_layernorm_1.weight`),
        postNorm2: await vec(`${p}post_feedforward_layernorm_2.weight`),
      };
    }
    layers.push(layer);
  }

  let perLayer: NativePerLayerTable | undefined;
  if (g.perLayerInputSize) {
    const LP = c.numLayers * g.perLayerInputSize;
    perLayer = {
      table: await RowTable.load(src, checked('embed_tokens_per_layer.weight', [g.perLayerVocabSize, LP])),
      proj: await linear(['per_layer_model_projection.weight'], [LP], H),
      norm: await vec('per_layer_projection_norm.weight', g.perLayerInputSize),
    };
  }
  const finalNormValues = await vec('norm.weight');
  const embedT = kernels.pack(await get('embed_tokens.weight', [c.vocabSize, H]), H, c.vocabSize, true);
  const gemma4Native: NativeGemma4Weights = { layers, perLayer, finalNorm: finalNormValues };
  const finalNorm = tf.tensor1d(finalNormValues);
  return { embedT, embedParts: [], finalNorm, layers: [], bytes: finalNorm.size * 4, packedBytes: nativeGemma4Bytes(gemma4Native, embedT), gemma4Native };
}

/** Host bytes of the packed matrices and the per-layer table. */
function nativeGemma4Bytes(w: NativeGemma4Weights, embedT: NativeMatrix): number {
  const matrices: NativeMatrix[] = [embedT];
  for (const l of w.layers) {
    matrices.push(l.q, l.o, l.gateUp, l.down);
    if (l.kv) matrices.push(l.kv);
    if (l.perLayer) matrices.push(l.perLayer.gate, l.perLayer.proj);
    if (l.moe) matrices.push(l.moe.router, ...l.moe.gateUp, ...l.moe.down);
  }
  if (w.perLayer) matrices.push(w.perLayer.proj);
  return matrices.reduce((sum, m) => sum + m.bytes, 0) + (w.perLayer?.table.byteLength ?? 0);
}
