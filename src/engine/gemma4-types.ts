/**
 * The Gemma 4 part of a model's weights (gemma4-weights.ts loads it; the
 * graph path's gemma4.ts reads it): per-layer attention and MLP tensors, the
 * per-layer embeddings and the mixture-of-experts block.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RowTable } from './row-table.js';

export interface Gemma4PerLayerInput {
  /** [H, P]: per_layer_input_gate, transposed. */
  gate: tf.Tensor2D;
  /** [P, H]: per_layer_projection, transposed. */
  proj: tf.Tensor2D;
  postNorm: tf.Tensor1D;
}

export interface Gemma4Moe {
  /** [H, E]: router.proj with router.scale * H^-0.5 folded into its rows. */
  router: tf.Tensor2D;
  perExpertScale: Float32Array;
  preNorm2: tf.Tensor1D;
  postNorm1: tf.Tensor1D;
  postNorm2: tf.Tensor1D;
  /** Per expert: [H, 2 * moeIntermediate] (gate columns, then up) and [moeIntermediate, H]. */
  gateUp: tf.Tensor2D[];
  down: tf.Tensor2D[];
}

export interface Gemma4Layer {
  inputNorm: tf.Tensor1D;
  postAttnNorm: tf.Tensor1D;
  preFfwNorm: tf.Tensor1D;
  postFfwNorm: tf.Tensor1D;
  /** [H, heads * headDim]. */
  q: tf.Tensor2D;
  qNorm: tf.Tensor1D;
  /** [H, 2 * kvHeads * headDim] (k then v), or [H, kvHeads * headDim] where keys are the values; absent on KV-shared layers. */
  kv?: tf.Tensor2D;
  kNorm?: tf.Tensor1D;
  /** [heads * headDim, H]. */
  o: tf.Tensor2D;
  /** [H, 2 * I] (gate, then up) and [I, H]. */
  gateUp: tf.Tensor2D;
  down: tf.Tensor2D;
  perLayer?: Gemma4PerLayerInput;
  moe?: Gemma4Moe;
  layerScalar: number;
}

export interface Gemma4Weights {
  layers: Gemma4Layer[];
  /** Per-layer embeddings: the table [vocabPerLayer, L * P] in host memory, the model projection [H, L * P] and its norm [P]. */
  perLayer?: { table: RowTable; proj: tf.Tensor2D; norm: tf.Tensor1D };
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
