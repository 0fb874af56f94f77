/**
 * Loads a Gemma 4 text checkpoint into the graph path's layout: every linear
 * weight a tfjs tensor as [in, out], norms kept as their `w` (Gemma 4's
 * RMSNorm multiplies by w, not 1 + w) and applied by the forward pass, K and
 * V fused per layer (keys only where keys double as values), the router's
 * own scales folded into its projection, and each expert's packed
 * gate/up and down weights as separate [in, out] tensors. KV-shared layers
 * have no K/V weights. The tied embedding goes through the path's
 * `WeightLayout` like Gemma 2/3's.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../model/hf-config.js';
import type { Gemma4Layer, Gemma4Weights } from './gemma4-types.js';
import { RowTable } from './row-table.js';
import { fuseTransposedArray, textPrefix, WeightError, type Keep, type TensorSource, type WeightLayout, type Weights } from './weights.js';

export type { Gemma4Layer, Gemma4Moe, Gemma4PerLayerInput, Gemma4Weights } from './gemma4-types.js';

/** Reads a Gemma 4 checkpoint; `layout` places the tied embedding (the graph's tensor layout), or loads it all its own way. */
export async function loadGemma4Weights(c: ModelConfig, src: TensorSource, layout: WeightLayout): Promise<Weights> {
  if (layout.loadGemma4) return layout.loadGemma4(c, src);
  const g = c.gemma4!;
  const prefix = textPrefix(src.names());
  const H = c.hiddenSize;
  const created: tf.Tensor[] = [];
  const keep: Keep = (t) => {
    created.push(t);
    return t;
  };
  /** The checkpoint's name of tensor `name`, checked to exist with `shape`. */
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
  const vec = async (name: string, n = H) => keep(tf.tensor1d(await get(name, [n])));
  /** PyTorch [out_i, in] parts as one [in, sum(out_i)] tensor. */
  const linear = async (names: string[], outs: number[], inDim: number) => {
    const parts = await Promise.all(names.map((n, i) => get(n, [outs[i], inDim])));
    return keep(tf.tensor2d(fuseTransposedArray(parts, outs, inDim), [inDim, outs.reduce((a, b) => a + b, 0)]));
  };
  try {
    const layers: Gemma4Layer[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `layers.${l}.`;
      const s = g.layers[l];
      const qDim = c.numHeads * s.headDim;
      const kvDim = s.numKvHeads * s.headDim;
      const I = s.intermediateSize;
      const scalar = await get(`${p}layer_scalar`, [1]);
      const layer: Gemma4Layer = {
        inputNorm: await vec(`${p}input_layernorm.weight`),
        postAttnNorm: await vec(`${p}post_attention_layernorm.weight`),
        preFfwNorm: await vec(`${p}pre_feedforward_layernorm.weight`),
        postFfwNorm: await vec(`${p}post_feedforward_layernorm.weight`),
        q: await linear([`${p}self_attn.q_proj.weight`], [qDim], H),
        qNorm: await vec(`${p}self_attn.q_norm.weight`, s.headDim),
        o: await linear([`${p}self_attn.o_proj.weight`], [H], qDim),
        gateUp: await linear([`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`], [I, I], H),
        down: await linear([`${p}mlp.down_proj.weight`], [H], I),
        layerScalar: scalar[0],
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
        const scale = await get(`${p}router.scale`, [H]);
        const root = H ** -0.5;
        for (let i = 0; i < router.length; i++) router[i] *= scale[i % H] * root;
        const gateUp = await get(`${p}experts.gate_up_proj`, [E, 2 * Im, H]);
        const down = await get(`${p}experts.down_proj`, [E, H, Im]);
        layer.moe = {
          router: keep(tf.tensor2d(fuseTransposedArray([router], [E], H), [H, E])),
          perExpertScale: await get(`${p}router.per_expert_scale`, [E]),
          preNorm2: await vec(`${p}pre_feedforward_layernorm_2.weight`),
          postNorm1: await vec(`${p}post_feedforward_layernorm_1.weight`),
          postNorm2: await vec(`${p}post_feedforward_layernorm_2.weight`),
          gateUp: Array.from({ length: E }, (_, e) => keep(tf.tensor2d(fuseTransposedArray([gateUp.subarray(e * 2 * Im * H, (e + 1) * 2 * Im * H)], [2 * Im], H), [H, 2 * Im]))),
          down: Array.from({ length: E }, (_, e) => keep(tf.tensor2d(fuseTransposedArray([down.subarray(e * H * Im, (e + 1) * H * Im)], [H], Im), [Im, H]))),
        };
      }
      layers.push(layer);
    }
    let perLayer: Gemma4Weights['perLayer'];
    if (g.perLayerInputSize) {
      const LP = c.numLayers * g.perLayerInputSize;
      perLayer = {
        table: await RowTable.load(src, checked('embed_tokens_per_layer.weight', [g.perLayerVocabSize, LP])),
        proj: await linear(['per_layer_model_projection.weight'], [LP], H),
        norm: await vec('per_layer_projection_norm.weight', g.perLayerInputSize),
      };
    }
    const finalNorm = await vec('norm.weight');
    const embedding = layout.embedding(await get('embed_tokens.weight', [c.vocabSize, H]), c, keep);
    const bytes = created.reduce((sum, t) => sum + t.size * 4, 0);
    // The per-layer table stays in host memory, outside the backend.
    return { ...embedding, finalNorm, layers: [], bytes, packedBytes: perLayer?.table.byteLength ?? 0, gemma4: { layers, perLayer } };
  } catch (err) {
    created.forEach((t) => t.dispose());
    throw err;
  }
}
