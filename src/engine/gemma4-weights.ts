/**
 * Reads a Gemma 4 text checkpoint once for every path (`readGemma4`): names
 * and shapes checked, K and V fused per layer (keys only where keys double as
 * values; KV-shared layers have none), the router's own scales folded into
 * its projection, each expert's packed gate/up and down weights apart, norms
 * kept as their `w` (Gemma 4's RMSNorm multiplies by w, not 1 + w). The path
 * says how it holds each linear weight, from its PyTorch [out_i, in] parts,
 * and each norm: `loadGemma4Weights` here as tfjs tensors [in, out] (the
 * graph and webgpu paths), native/gemma4-weights.ts as packed matrices.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../model/hf-config.js';
import type { Gemma4LayerOf, Gemma4PerLayerTableOf, Gemma4Weights } from './gemma4-types.js';
import { RowTable } from './row-table.js';
import { CheckpointReader, fuseTransposed, type Keep, type TensorSource, type WeightLayout, type Weights } from './weights.js';

export type { Gemma4Layer, Gemma4LayerOf, Gemma4Moe, Gemma4PerLayerInput, Gemma4PerLayerTableOf, Gemma4Weights } from './gemma4-types.js';

/** How a path holds Gemma 4's weights: a linear weight as M, a norm's w as V. */
export interface Gemma4Holder<M, V> {
  /** PyTorch [out_i, in] parts as one weight [in, sum(out_i)]. */
  linear(parts: Float32Array[], outs: number[], inDim: number): M;
  vector(w: Float32Array): V;
}

/** A Gemma 4 checkpoint's text weights as a path holds them, and the tied embedding's [vocab, H] rows for its own layout. */
export interface Gemma4Parts<M, V> {
  layers: Gemma4LayerOf<M, V>[];
  perLayer?: Gemma4PerLayerTableOf<M, V>;
  finalNorm: V;
  embedding: Float32Array;
}

/** Reads a Gemma 4 checkpoint, handing each weight to `hold`. */
export async function readGemma4<M, V>(c: ModelConfig, src: TensorSource, hold: Gemma4Holder<M, V>): Promise<Gemma4Parts<M, V>> {
  const g = c.gemma4!;
  const r = new CheckpointReader(src);
  const H = c.hiddenSize;
  const vec = async (name: string, n = H) => hold.vector(await r.get(name, [n]));
  const linear = async (names: string[], outs: number[], inDim: number) =>
    hold.linear(await Promise.all(names.map((n, i) => r.get(n, [outs[i], inDim]))), outs, inDim);
  const layers: Gemma4LayerOf<M, V>[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `layers.${l}.`;
    const s = g.layers[l];
    const qDim = c.numHeads * s.headDim;
    const kvDim = s.numKvHeads * s.headDim;
    const I = s.intermediateSize;
    const layer: Gemma4LayerOf<M, V> = {
      inputNorm: await vec(`${p}input_layernorm.weight`),
      postAttnNorm: await vec(`${p}post_attention_layernorm.weight`),
      preFfwNorm: await vec(`${p}pre_feedforward_layernorm.weight`),
      postFfwNorm: await vec(`${p}post_feedforward_layernorm.weight`),
      q: await linear([`${p}self_attn.q_proj.weight`], [qDim], H),
      qNorm: await vec(`${p}self_attn.q_norm.weight`, s.headDim),
      o: await linear([`${p}self_attn.o_proj.weight`], [H], qDim),
      gateUp: await linear([`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`], [I, I], H),
      down: await linear([`${p}mlp.down_proj.weight`], [H], I),
      layerScalar: (await r.get(`${p}layer_scalar`, [1]))[0],
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
      const router = await r.get(`${p}router.proj.weight`, [E, H]);
      const scale = await r.get(`${p}router.scale`, [H]);
      const root = H ** -0.5;
      for (let i = 0; i < router.length; i++) router[i] *= scale[i % H] * root;
      const gateUp = await r.get(`${p}experts.gate_up_proj`, [E, 2 * Im, H]);
      const down = await r.get(`${p}experts.down_proj`, [E, H, Im]);
      layer.moe = {
        router: hold.linear([router], [E], H),
        perExpertScale: await r.get(`${p}router.per_expert_scale`, [E]),
        preNorm2: await vec(`${p}pre_feedforward_layernorm_2.weight`),
        postNorm1: await vec(`${p}post_feedforward_layernorm_1.weight`),
        postNorm2: await vec(`${p}post_feedforward_layernorm_2.weight`),
        gateUp: Array.from({ length: E }, (_, e) => hold.linear([gateUp.subarray(e * 2 * Im * H, (e + 1) * 2 * Im * H)], [2 * Im], H)),
        down: Array.from({ length: E }, (_, e) => hold.linear([down.subarray(e * H * Im, (e + 1) * H * Im)], [H], Im)),
      };
    }
    layers.push(layer);
  }
  let perLayer: Gemma4PerLayerTableOf<M, V> | undefined;
  if (g.perLayerInputSize) {
    const LP = c.numLayers * g.perLayerInputSize;
    perLayer = {
      table: await RowTable.load(src, r.name('embed_tokens_per_layer.weight', [g.perLayerVocabSize, LP])),
      proj: await linear(['per_layer_model_projection.weight'], [LP], H),
      norm: await vec('per_layer_projection_norm.weight', g.perLayerInputSize),
    };
  }
  const finalNorm = await vec('norm.weight');
  return { layers, perLayer, finalNorm, embedding: await r.get('embed_tokens.weight', [c.vocabSize, H]) };
}

/** Loads a Gemma 4 checkpoint as tfjs tensors, the tied embedding placed by `layout`, or the path's own way (`layout.loadGemma4`). */
export async function loadGemma4Weights(c: ModelConfig, src: TensorSource, layout: WeightLayout): Promise<Weights> {
  if (layout.loadGemma4) return layout.loadGemma4(c, src);
  const created: tf.Tensor[] = [];
  const keep: Keep = (t) => {
    created.push(t);
    return t;
  };
  try {
    const w = await readGemma4(c, src, { linear: (parts, outs, inDim) => keep(fuseTransposed(parts, outs, inDim)), vector: (v) => keep(tf.tensor1d(v)) });
    const embedding = layout.embedding(w.embedding, c, keep);
    const bytes = created.reduce((sum, t) => sum + t.size * 4, 0);
    const gemma4: Gemma4Weights = { layers: w.layers, perLayer: w.perLayer };
    // The per-layer table stays in host memory, outside the backend.
    return { ...embedding, finalNorm: w.finalNorm, layers: [], bytes, packedBytes: w.perLayer?.table.byteLength ?? 0, gemma4 };
  } catch (err) {
    created.forEach((t) => t.dispose());
    throw err;
  }
}
