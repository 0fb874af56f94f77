/**
 * The Gemma 4 text decoder on the tfjs op graph. It shares the Gemma 2/3
 * graph path's call frame, masks, embedding and KV pool, and differs in the
 * layer: norms multiply by w, q/k/v are normed per head (v without a
 * weight), scores are unscaled, global layers have their own head size and
 * KV heads and may use keys as values, the last `num_kv_shared_layers`
 * layers attend over an earlier layer's K/V, per-layer embeddings feed a
 * gated residual at the end of each layer, an optional MoE block runs beside
 * the dense MLP, and each layer ends scaled by its `layer_scalar`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType } from '../../model/hf-config.js';
import { callFrame, type PrefillOptions } from '../forward.js';
import type { Gemma4Layer } from '../gemma4-weights.js';
import { type KVPool, type WritePlan, typeHeadDim } from '../kv-pool.js';
import { applyRope, rotateHalfMatrix } from '../rope.js';
import { disposeContext, GraphPath, type TypeContext } from './forward.js';

/** A source layer's keys and values of this call, [B, kvHeads, T, headDim], for the layers that share them. */
type CallKv = Map<number, { k: tf.Tensor4D; v: tf.Tensor4D }>;

/** gelu with the tanh approximation, as x * sigmoid(2u) (identical, fewer kernels). */
function geluTanh(x: tf.Tensor): tf.Tensor {
  const a = 2 * Math.sqrt(2 / Math.PI);
  return tf.mul(x, tf.sigmoid(tf.mul(x, tf.add(tf.mul(tf.square(x), a * 0.044715), a))));
}

export class Gemma4GraphPath extends GraphPath {
  /** rotate_half per layer type (global layers may have a wider head). */
  private readonly rotations: Record<LayerType, tf.Tensor2D>;
  /** Layers whose K/V later (KV-shared) layers attend over. */
  private readonly sources: Set<number>;

  constructor(...args: ConstructorParameters<typeof GraphPath>) {
    super(...args);
    const c = this.config;
    const sliding = rotateHalfMatrix(typeHeadDim(c, 'sliding'));
    const same = typeHeadDim(c, 'global') === typeHeadDim(c, 'sliding');
    this.rotations = { sliding, global: same ? sliding : rotateHalfMatrix(typeHeadDim(c, 'global')) };
    this.sources = new Set(c.gemma4!.layers.flatMap((s, l) => (s.kvSource !== l ? [s.kvSource] : [])));
  }

  protected override run(ids: number[][], opts: PrefillOptions): tf.Tensor2D | undefined {
    const c = this.config;
    const g4 = this.weights.gemma4!;
    const frame = callFrame(ids, opts);
    const { B, T } = frame;
    const { pool, slots } = opts;
    // Each type's rope tables at its own head size (global layers are wider).
    const { ctx, writeFirst } = this.contexts(frame, pool, slots, (type) => typeHeadDim(c, type));

    const flat = ids.flat();
    let x = tf.tidy(() => this.embed(flat));
    const perLayer = g4.perLayer ? tf.tidy(() => this.perLayerInputs(x, flat)) : undefined;
    const callKv: CallKv = new Map();
    try {
      g4.layers.forEach((w, l) => {
        const next = tf.tidy(() => {
          const pli = perLayer ? tf.reshape(tf.slice(perLayer, [0, l, 0], [B * T, 1, perLayer.shape[2]]), [B * T, perLayer.shape[2]]) as tf.Tensor2D : undefined;
          return this.layer4(x, w, l, B, T, ctx[c.layerTypes[l]], writeFirst, callKv, pli, pool, slots);
        });
        x.dispose();
        x = next;
      });
      // A source layer's K/V of a prompt chunk go in once the layers sharing them have run (they read the cache as it was).
      if (pool && slots && !writeFirst) for (const [l, kv] of callKv) pool.write(l, kv.k, kv.v, ctx[c.layerTypes[l]].write as WritePlan);
    } finally {
      for (const t of Object.values(ctx)) disposeContext(t);
      for (const kv of callKv.values()) tf.dispose([kv.k, kv.v]);
      perLayer?.dispose();
    }
    if (pool && slots && !writeFirst) pool.commitWrite(slots, T);
    return this.unembed(x, frame, opts);
  }

  /**
   * Per-layer embeddings, [N, layers, P]: the token's own rows (x sqrt(P))
   * plus the normed projection of its embedding (x H^-0.5), times 2^-0.5.
   */
  private perLayerInputs(x: tf.Tensor2D, ids: number[]): tf.Tensor3D {
    const c = this.config;
    const pl = this.weights.gemma4!.perLayer!;
    const P = c.gemma4!.perLayerInputSize;
    const N = ids.length;
    const own = tf.mul(tf.tensor2d(pl.table.gather(ids), [N, pl.table.cols]), tf.scalar(Math.sqrt(P)));
    const projected = tf.mul(tf.matMul(x, pl.proj), tf.scalar(c.hiddenSize ** -0.5));
    const normed = this.rmsNorm(tf.reshape(projected, [N, c.numLayers, P]), pl.norm);
    return tf.mul(tf.add(normed, tf.reshape(own, [N, c.numLayers, P])), tf.scalar(2 ** -0.5)) as tf.Tensor3D;
  }

  private layer4(
    x: tf.Tensor2D,
    w: Gemma4Layer,
    l: number,
    B: number,
    T: number,
    ctx: TypeContext,
    writeFirst: boolean,
    callKv: CallKv,
    pli?: tf.Tensor2D,
    pool?: KVPool,
    slots?: number[],
  ): tf.Tensor2D {
    const c = this.config;
    const s = c.gemma4!.layers[l];
    const type = c.layerTypes[l];
    const { headDim: hd, numKvHeads: nkv } = s;
    const nq = c.numHeads;
    const N = B * T;
    const R = this.rotations[type];
    // [N, n, hd] -> [B, n, T, hd].
    const heads = (t: tf.Tensor, n: number): tf.Tensor4D => (T === 1 ? tf.reshape(t, [B, n, 1, hd]) : tf.transpose(tf.reshape(t, [B, T, n, hd]), [0, 2, 1, 3]));

    // Attention: q (and k) normed per head with w then rotated; v normed without a weight; scores unscaled.
    const hn = this.rmsNorm(x, w.inputNorm);
    const q = heads(applyRope(this.rmsNorm(tf.reshape(tf.matMul(hn, w.q), [N, nq, hd]), w.qNorm), ctx.cos, ctx.sin, R), nq);
    const own = s.kvSource === l;
    let k: tf.Tensor4D;
    let v: tf.Tensor4D;
    if (own) {
      const kv = tf.reshape(tf.matMul(hn, w.kv!), [N, s.kEqV ? nkv : 2 * nkv, hd]);
      const rawK = s.kEqV ? kv : tf.slice(kv, [0, 0, 0], [N, nkv, hd]);
      const rawV = s.kEqV ? kv : tf.slice(kv, [0, nkv, 0], [N, nkv, hd]);
      k = heads(applyRope(this.rmsNorm(rawK, w.kNorm), ctx.cos, ctx.sin, R), nkv);
      v = heads(this.rmsNorm(rawV), nkv);
      if (pool && slots && writeFirst) pool.write(l, k, v, ctx.write as WritePlan);
      else if (this.sources.has(l)) callKv.set(l, { k: tf.keep(k), v: tf.keep(v) });
    } else {
      const src = callKv.get(s.kvSource);
      if (!writeFirst && !src) throw new Error(`layer ${l}: the K/V of layer ${s.kvSource} are missing`);
      k = src?.k as tf.Tensor4D;
      v = src?.v as tf.Tensor4D;
    }
    const attn = this.attendRows(q, nkv, writeFirst ? undefined : { k, v }, s.kvSource, ctx, B, T, null, pool, slots);
    if (own && pool && slots && !writeFirst && !this.sources.has(l)) pool.write(l, k, v, ctx.write as WritePlan);
    const h = tf.add(x, this.rmsNorm(tf.matMul(attn, w.o), w.postAttnNorm)) as tf.Tensor2D;

    // Dense MLP, and beside it the experts (routed on the residual h).
    const I = s.intermediateSize;
    const gu = tf.matMul(this.rmsNorm(h, w.preFfwNorm), w.gateUp);
    let ffw: tf.Tensor = tf.matMul(tf.mul(geluTanh(tf.slice(gu, [0, 0], [N, I])), tf.slice(gu, [0, I], [N, I])) as tf.Tensor2D, w.down);
    if (w.moe) ffw = tf.add(this.rmsNorm(ffw, w.moe.postNorm1), this.rmsNorm(this.experts(h, w), w.moe.postNorm2));
    let y = tf.add(h, this.rmsNorm(ffw, w.postFfwNorm)) as tf.Tensor2D;

    // Per-layer input: gelu(y @ gate) * its per-layer embedding, projected back, normed, added.
    if (w.perLayer && pli) {
      const gated = tf.mul(geluTanh(tf.matMul(y, w.perLayer.gate)), pli) as tf.Tensor2D;
      y = tf.add(y, this.rmsNorm(tf.matMul(gated, w.perLayer.proj), w.perLayer.postNorm)) as tf.Tensor2D;
    }
    return tf.mul(y, tf.scalar(w.layerScalar)) as tf.Tensor2D;
  }

  /**
   * The MoE block on the residual h: router softmax over experts, the top-k
   * renormalized and scaled per expert; each chosen expert runs only on its
   * tokens, and the weighted outputs are summed back per token.
   */
  private experts(h: tf.Tensor2D, w: Gemma4Layer): tf.Tensor2D {
    const moe = w.moe!;
    const { numExperts: E, topK } = this.config.gemma4!.moe!;
    const N = h.shape[0];
    const probs = tf.softmax(tf.matMul(this.rmsNorm(h), moe.router)).dataSync();
    const rows: number[][] = Array.from({ length: E }, () => []);
    const weights: number[][] = Array.from({ length: E }, () => []);
    for (let n = 0; n < N; n++) {
      const p = Array.from(probs.subarray(n * E, (n + 1) * E));
      const order = p.map((_, e) => e).sort((a, b) => p[b] - p[a] || a - b).slice(0, topK);
      const sum = order.reduce((acc, e) => acc + p[e], 0);
      for (const e of order) {
        rows[e].push(n);
        weights[e].push((p[e] / sum) * moe.perExpertScale[e]);
      }
    }
    const x = this.rmsNorm(h, moe.preNorm2);
    const parts: tf.Tensor2D[] = [];
    const at: Array<{ n: number; weight: number }> = [];
    for (let e = 0; e < E; e++) {
      if (rows[e].length === 0) continue;
      const Im = moe.down[e].shape[0];
      const xe = tf.gather(x, tf.tensor1d(rows[e], 'int32'));
      const gu = tf.matMul(xe, moe.gateUp[e]);
      const n = rows[e].length;
      const act = tf.mul(geluTanh(tf.slice(gu, [0, 0], [n, Im])), tf.slice(gu, [0, Im], [n, Im])) as tf.Tensor2D;
      parts.push(tf.matMul(act, moe.down[e]));
      rows[e].forEach((row, i) => at.push({ n: row, weight: weights[e][i] }));
    }
    // Weighted sum back per token: [N, M] routing weights times the M expert outputs.
    const combine = new Float32Array(N * at.length);
    at.forEach(({ n, weight }, m) => (combine[n * at.length + m] = weight));
    return tf.matMul(tf.tensor2d(combine, [N, at.length]), tf.concat(parts, 0));
  }

  override dispose(): void {
    tf.dispose([...new Set(Object.values(this.rotations))]);
    super.dispose();
  }
}
