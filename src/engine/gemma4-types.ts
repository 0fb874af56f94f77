/**
 * The Gemma 4 part of a model's weights (gemma4-weights.ts loads it; the
 * graph path's gemma4.ts reads it): per-layer attention and MLP tensors, the
 * per-layer embeddings and the mixture-of-experts block.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RowTable } from './row-table.js';

/** A Gemma 4 layer's weights as a path holds them (Gemma4Layer: tfjs tensors; NativeGemma4Layer: packed). */
export interface Gemma4LayerOf<M, V> {
  inputNorm: V;
  postAttnNorm: V;
  preFfwNorm: V;
  postFfwNorm: V;
  /** [H, heads * headDim], and the per-head norm. */
  q: M;
  qNorm: V;
  /** [H, 2 * kvHeads * headDim] (k then v), or [H, kvHeads * headDim] where keys are the values; absent on KV-shared layers. */
  kv?: M;
  kNorm?: V;
  /** [heads * headDim, H]. */
  o: M;
  /** [H, 2 * I] (gate, then up) and [I, H]. */
  gateUp: M;
  down: M;
  /** per_layer_input_gate [H, P], per_layer_projection [P, H]. */
  perLayer?: { gate: M; proj: M; postNorm: V };
  /** router [H, E] with router.scale * H^-0.5 folded into its rows; per expert gate/up [H, 2 * Im] and down [Im, H]. */
  moe?: { router: M; perExpertScale: Float32Array; preNorm2: V; postNorm1: V; postNorm2: V; gateUp: M[]; down: M[] };
  layerScalar: number;
}

/** The per-layer embeddings: the table [vocabPerLayer, L * P] in host memory (bf16 bits of a bf16 checkpoint), the model projection [H, L * P] and its norm [P]. */
export interface Gemma4PerLayerTableOf<M, V> {
  table: RowTable;
  proj: M;
  norm: V;
}

/** The graph's and the fused webgpu programs' layout: tfjs tensors. */
export type Gemma4Layer = Gemma4LayerOf<tf.Tensor2D, tf.Tensor1D>;
export type Gemma4PerLayerInput = NonNullable<Gemma4Layer['perLayer']>;
export type Gemma4Moe = NonNullable<Gemma4Layer['moe']>;

export interface Gemma4Weights {
  layers: Gemma4Layer[];
  /** Per-layer embeddings: the table [vocabPerLayer, L * P] in host memory, the model projection [H, L * P] and its norm [P]. */
  perLayer?: Gemma4PerLayerTableOf<tf.Tensor2D, tf.Tensor1D>;
}

/** Every tensor of the Gemma 4 part of the weights. */
export function gemma4Tensors(w: Gemma4Weights): tf.Tensor[] {
  const out: tf.Tensor[] = [];
  for (const l of w.layers) {
    out.push(l.inputNorm, l.postAttnNorm, l.preFfwNorm, l.postFfwNorm, l.q, l.qNorm, l.o, l.gateUp, l.down);
    if (l.kv) out.push(l.kv);
    if (l.kNorm) out.push(l.kNorm);
    if (l.perLayer) out.push(l.perLayer.gate, l.perLayer.proj, l.perLayer.postNorm);
    if (l.moe) out.push(l.moe.router, l.moe.preNorm2, l.moe.postNorm1, l.moe.postNorm2, ...l.moe.gateUp, ...l.moe.down);
  }
  if (w.perLayer) out.push(w.perLayer.proj, w.perLayer.norm);
  return out;
}
