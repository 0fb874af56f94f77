/**
 * What the fused Gemma 4 programs (gemma4.ts) hold beside the loaded
 * weights: per layer one vector buffer of its norm weights, layer scalar and
 * per-expert scales (LayerVec), the experts packed per layer, and the
 * activations of a call (tfjs tensors
 * sized for the largest call so far, so tf.memory() counts them).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/hf-config.js';
import type { Gemma4Weights } from '../gemma4-types.js';
import type { ScratchSize } from './fused-path.js';
import type { GpuRuntime } from './gpu.js';
import { LayerVec } from './gemma4-kernels.js';

export interface LayerPack {
  /** [9 * H + E]: the LayerVec slots (absent ones zero), the layer scalar, the per-expert scales. */
  vec: tf.Tensor;
  /** The experts as [E, H, 2 * Im] and [E, Im, H] (the per-expert tensors they replace are disposed). */
  experts?: { gateUp: tf.Tensor; down: tf.Tensor };
}

/** Packs each layer's vectors and experts. The experts' per-expert tensors are disposed and their lists emptied. */
export function packLayers(c: ModelConfig, w: Gemma4Weights): LayerPack[] {
  const H = c.hiddenSize;
  return w.layers.map((lw, l) =>
    tf.tidy(() => {
      const zeros = tf.zeros([H]);
      const m = lw.moe;
      const slots: tf.Tensor[] = new Array(LayerVec.SCALAR).fill(zeros);
      slots[LayerVec.POST_ATTN] = lw.postAttnNorm;
      slots[LayerVec.PRE_FFW] = lw.preFfwNorm;
      slots[LayerVec.POST_FFW] = lw.postFfwNorm;
      if (m) [slots[LayerVec.POST_FFW_1], slots[LayerVec.POST_FFW_2], slots[LayerVec.PRE_FFW_2]] = [m.postNorm1, m.postNorm2, m.preNorm2];
      if (lw.perLayer) slots[LayerVec.PLE_POST] = lw.perLayer.postNorm;
      if (l + 1 < w.layers.length) slots[LayerVec.NEXT_INPUT] = w.layers[l + 1].inputNorm;
      const vec = tf.keep(tf.concat([...slots, tf.tensor1d([lw.layerScalar]), tf.tensor1d(m ? m.perExpertScale : [])]));
      if (!m) return { vec };
      const experts = { gateUp: tf.keep(tf.stack(m.gateUp)), down: tf.keep(tf.stack(m.down)) };
      tf.dispose([...m.gateUp, ...m.down]);
      m.gateUp = [];
      m.down = [];
      return { vec, experts };
    }),
  );
}

export function disposePacks(packs: LayerPack[]): void {
  for (const p of packs) tf.dispose([p.vec, ...(p.experts ? [p.experts.gateUp, p.experts.down] : [])]);
}

/** Activations of one call. */
export interface Scratch4 extends ScratchSize {
  x: tf.Tensor;
  xn: tf.Tensor;
  /** The MoE block's normed input, and a second [N, H] output (experts, per-layer projection). */
  xm: tf.Tensor;
  y: tf.Tensor;
  y2: tf.Tensor;
  q: tf.Tensor;
  attn: tf.Tensor;
  /** Call K/V of the layers no later layer reads. */
  kv: tf.Tensor;
  /** Call K/V of each source layer (kept through the call for the layers sharing it). */
  kvSrc: Map<number, tf.Tensor>;
  act: tf.Tensor;
  partials: tf.Tensor;
  final: tf.Tensor;
  /** Per-layer inputs: the call's own table rows, the projection (then the combined inputs), the gate. */
  pleOwn?: tf.Tensor;
  ple?: tf.Tensor;
  pleGate?: tf.Tensor;
  /** Routing weights [N, E] and the experts' activations [E, N, Im]. */
  route?: tf.Tensor;
  actE?: tf.Tensor;
}

/** Allocates the activations for `tokens` tokens, `outRows` logit rows and `blocks` attention blocks. */
export function allocScratch4(c: ModelConfig, gpu: GpuRuntime, sources: Set<number>, size: ScratchSize): Scratch4 {
  const { tokens, outRows, blocks } = size;
  const g = c.gemma4!;
  const H = c.hiddenSize;
  const n = tokens;
  const kvw = (l: number) => 2 * g.layers[l].numKvHeads * g.layers[l].headDim;
  const maxHd = Math.max(g.typeHeadDim.global, g.typeHeadDim.sliding);
  const qDim = c.numHeads * maxHd;
  // Kept: a forward pass may run inside a caller's tf.tidy, which must not take the scratch with it.
  const t = (size: number) => tf.keep(gpu.emptyTensor([Math.max(1, size)]));
  const s: Scratch4 = {
    tokens,
    outRows,
    blocks,
    x: t(n * H),
    xn: t(n * H),
    xm: t(n * H),
    y: t(n * H),
    y2: t(n * H),
    q: t(n * qDim),
    attn: t(n * qDim),
    kv: t(n * Math.max(...g.layers.map((_, l) => kvw(l)))),
    kvSrc: new Map([...sources].map((l) => [l, t(n * kvw(l))])),
    act: t(n * Math.max(...g.layers.map((s) => s.intermediateSize))),
    partials: t(n * c.numHeads * blocks * (maxHd + 2)),
    final: t(outRows * H),
  };
  if (g.perLayerInputSize) {
    const LP = c.numLayers * g.perLayerInputSize;
    Object.assign(s, { pleOwn: t(n * LP), ple: t(n * LP), pleGate: t(n * g.perLayerInputSize) });
  }
  if (g.moe) Object.assign(s, { route: t(n * g.moe.numExperts), actE: t(g.moe.numExperts * n * g.moe.intermediateSize) });
  return s;
}

export function disposeScratch4(s: Scratch4): void {
  tf.dispose([s.x, s.xn, s.xm, s.y, s.y2, s.q, s.attn, s.kv, ...s.kvSrc.values(), s.act, s.partials, s.final]);
  tf.dispose([s.pleOwn, s.ple, s.pleGate, s.route, s.actE].filter((x): x is tf.Tensor => x !== undefined));
}
