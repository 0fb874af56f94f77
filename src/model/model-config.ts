/**
 * What the engine knows of a model: the fields every Gemma family shares and
 * Gemma 4's per-layer settings, as hf-config.ts and gemma4-config.ts read
 * them from a checkpoint's config.json. Types only, plus the load error.
 */
import { GemmaServeError } from '../errors.js';

export type LayerType = 'sliding' | 'global';

export interface RopeSettings {
  base: number;
  /** Linear scaling: positions are divided by this (1 = none). */
  factor: number;
  /**
   * Gemma 4's proportional RoPE: only the first `partialFactor * headDim / 2`
   * frequency pairs rotate (exponents over the whole head), the rest have
   * frequency 0. Absent: every pair rotates.
   */
  partialFactor?: number;
}

export interface ModelConfig {
  family: 'gemma2' | 'gemma3' | 'gemma4';
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  /** Scores are scaled by queryPreAttnScalar ** -0.5. */
  queryPreAttnScalar: number;
  slidingWindow: number;
  layerTypes: LayerType[];
  rope: Record<LayerType, RopeSettings>;
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
  /** Gemma 3 normalizes q and k per head before RoPE. */
  qkNorm: boolean;
  maxPositions: number;
  bosId: number;
  padId: number;
  eosIds: number[];
  /**
   * Gemma 4 only: per-layer shapes, norm style, score scale, per-layer
   * embeddings and MoE (gemma4-config.ts). There `headDim`, `numKvHeads` and
   * `intermediateSize` are the sliding layers' values and
   * `queryPreAttnScalar` is 1 (unscaled scores).
   */
  gemma4?: Gemma4Settings;
}

/** The model directory's config.json is missing, unreadable or not a supported Gemma. */
export class ModelConfigError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 500, type: 'server_error', code: 'model_config' });
  }
}

/** One decoder layer's shapes. */
export interface Gemma4LayerShape {
  headDim: number;
  numKvHeads: number;
  /** The layer whose K/V this layer attends over: itself, or (KV-shared layers) the last earlier layer of its type. */
  kvSource: number;
  /** Keys double as values (no v_proj): global layers with `attention_k_eq_v`. */
  kEqV: boolean;
  /** The dense MLP's width (twice intermediate_size on KV-shared layers with `use_double_wide_mlp`). */
  intermediateSize: number;
}

export interface Gemma4Settings {
  layers: Gemma4LayerShape[];
  /** Head size per layer type (global layers use `global_head_dim`). */
  typeHeadDim: Record<LayerType, number>;
  /** RMSNorm multiplies by w (not 1 + w); the value norm has no weight. */
  normStyle: 'w';
  /** Attention scores are multiplied by this (1: unscaled). */
  scoreScale: number;
  /** Per-layer embeddings: size per layer and their vocabulary (0 / null: none). */
  perLayerInputSize: number;
  perLayerVocabSize: number;
  /** The mixture-of-experts block beside the dense MLP, in every layer, or null. */
  moe: { numExperts: number; topK: number; intermediateSize: number } | null;
}
