/**
 * The forward pass on webgpu as fused WGSL programs (kernels.ts,
 * attention.ts): per layer a q/k/v matmul, q/k norm + rope, attention in two
 * passes (with the cache write), the output projection, a residual + norm,
 * the gate/up matmul with gelu, the down projection and another residual +
 * norm. Same contract as GemmaModel (model.ts): B rows of T tokens against
 * the pool's caches, logits of the last positions (or every position) as a
 * tfjs tensor the caller owns. The call around the layers is FusedPath's.
 *
 * The cache is KVPool's pooled layout (per layer K [slots, kv, E, hd] and
 * V^T [slots, kv, hd, E]), so one dispatch serves every row of a batch;
 * bookkeeping and compaction stay KVPool's.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerType, ModelConfig } from '../../model/hf-config.js';
import { callRope } from '../forward.js';
import type { KVPool } from '../kv-pool.js';
import type { Weights } from '../weights.js';
import { ATTENTION_BLOCK, attentionCombineKernel, attentionKernel, kvWriteKernel, type AttentionShape } from './attention.js';
import { FusedPath, type FusedCall, type ScratchSize } from './fused-path.js';
import type { Binding } from './gpu.js';
import { normKernel, qkRopeKernel, residualKernel, type RopeShape } from './kernels.js';

/** Activations of one call (tfjs tensors, so tf.memory() counts them). */
interface Scratch extends ScratchSize {
  x: tf.Tensor;
  xn: tf.Tensor;
  qkv: tf.Tensor;
  attn: tf.Tensor;
  y: tf.Tensor;
  act: tf.Tensor;
  /** Attention partials: per (token, head, block) headDim outputs, max and sum. */
  partials: tf.Tensor;
  final: tf.Tensor;
}

/** The head size the programs take: one thread per element of a head. */
function checkHeadDim(config: ModelConfig): ModelConfig {
  const hd = config.headDim;
  if (hd > 256 || (hd & (hd - 1)) !== 0) throw new Error(`the webgpu kernels need a power-of-two head size up to 256, not ${hd}`);
  return config;
}

export class WebGPUPath extends FusedPath<Scratch> {
  private readonly qkvWidth: number;

  constructor(config: ModelConfig, weights: Weights) {
    super(checkHeadDim(config), weights, 4 * config.headDim * 4);
    this.qkvWidth = (config.numHeads + 2 * config.numKvHeads) * config.headDim;
  }

  protected encode(s: Scratch, call: FusedCall): void {
    const { N, pool } = call;
    const c = this.config;
    const g = this.gpu;
    const H = c.hiddenSize;
    const buf = (t: tf.TensorInfo) => g.bufferOf(t);
    const step = this.stepBuffer;

    const layers = this.weights.layers;
    const norms = layers.map((lw) => [lw.inputNorm, lw.preFfwNorm].map((w) => buf(w!)));
    this.embedRows(s.x, N);
    this.program('norm', () => normKernel({ H, eps: c.rmsNormEps, rows: 'all', weight: true, threads: 256 }), 'norm', [step, buf(s.x), buf(s.xn), norms[0][0]], N);
    const residual = () => residualKernel({ H, eps: c.rmsNormEps });
    const plain = { kind: 'plain' } as const;

    layers.forEach((lw, l) => {
      const type = c.layerTypes[l];
      const shape = this.attentionShape(type, pool);
      // The norm after the MLP's residual feeds the next layer (after the last one: unused, the final norm runs on x).
      const nextNorm = norms[l + 1]?.[0] ?? buf(this.weights.finalNorm);
      this.linear(`qkv:${l}`, lw.qkv, plain, buf(s.xn), buf(s.qkv), N);
      const ropeBindings: Binding[] = [step, this.ropeBuffer, buf(s.qkv)];
      if (lw.qkNorm) ropeBindings.push(buf(lw.qkNorm));
      this.program(`rope:${type}`, () => qkRopeKernel(shape), `rope:${l}`, ropeBindings, N, c.numHeads + c.numKvHeads);

      const tag = `${type}:${shape.entries}`;
      const cache = pool?.pooled ? [buf(pool.pooled.k[l]), buf(pool.pooled.vT[l])] : this.noCache;
      const blocks = Math.ceil(this.keys(call, shape.entries) / ATTENTION_BLOCK);
      this.program(`attn:${tag}`, () => attentionKernel(shape), `attn:${l}`, [step, buf(s.qkv), ...cache, buf(s.partials)], blocks, N, c.numKvHeads);
      if (pool && call.T > 1) this.program(`kvw:${tag}`, () => kvWriteKernel(shape), `kvw:${l}`, [step, buf(s.qkv), ...cache], N, c.numKvHeads);
      this.program(`comb:${tag}`, () => attentionCombineKernel(shape), `comb:${l}`, [step, buf(s.partials), buf(s.attn)], N, c.numHeads);

      this.linear(`o:${l}`, lw.o, plain, buf(s.attn), buf(s.y), N);
      this.program('residual', residual, `res:attn:${l}`, [step, buf(s.y), buf(lw.postAttnNorm), buf(s.x), buf(s.xn), norms[l][1]], N);
      this.linear(`gateUp:${l}`, lw.gateUp, { kind: 'geglu' }, buf(s.xn), buf(s.act), N);
      this.linear(`down:${l}`, lw.down, plain, buf(s.act), buf(s.y), N);
      this.program('residual', residual, `res:ffw:${l}`, [step, buf(s.y), buf(lw.postFfwNorm), buf(s.x), buf(s.xn), nextNorm], N);
    });

    if (call.out) this.logitsRows(s.x, s.final, call.outRows, call.out);
  }

  private attentionShape(type: LayerType, pool: KVPool | undefined): AttentionShape & RopeShape {
    const c = this.config;
    return {
      headDim: c.headDim,
      numHeads: c.numHeads,
      numKvHeads: c.numKvHeads,
      ...this.span(type, pool),
      softcap: c.attnLogitSoftcap,
      layout: 'fused',
      writes: true,
      threads: c.headDim,
      stageQ: true,
      eps: c.rmsNormEps,
      qkNorm: c.qkNorm,
      ropeTable: type === 'global' ? 0 : 1,
    };
  }

  /** cos and sin per token for both layer types: [type][cos, sin][N][headDim]. */
  protected ropeData(starts: number[], T: number): Float32Array {
    const hd = this.config.headDim;
    const N = starts.length * T;
    const tables = callRope(this.config, { B: starts.length, T, starts });
    const data = new Float32Array(4 * N * hd);
    (['global', 'sliding'] as const).forEach((type, i) => {
      const { cos, sin } = tables[type];
      data.set(cos, 2 * i * N * hd);
      data.set(sin, (2 * i + 1) * N * hd);
    });
    return data;
  }

  protected makeScratch(size: ScratchSize): Scratch {
    const c = this.config;
    const n = size.tokens;
    // Kept: a forward pass may run inside a caller's tf.tidy, which must not take the scratch with it.
    const t = (floats: number) => tf.keep(this.gpu.emptyTensor([floats]));
    return {
      ...size,
      x: t(n * c.hiddenSize),
      xn: t(n * c.hiddenSize),
      qkv: t(n * this.qkvWidth),
      attn: t(n * c.numHeads * c.headDim),
      y: t(n * c.hiddenSize),
      act: t(n * c.intermediateSize),
      partials: t(n * c.numHeads * size.blocks * (c.headDim + 2)),
      final: t(size.outRows * c.hiddenSize),
    };
  }

  protected disposeScratch(s: Scratch): void {
    tf.dispose([s.x, s.xn, s.qkv, s.attn, s.y, s.act, s.partials, s.final]);
  }
}
