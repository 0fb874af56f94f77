/**
 * Gemma 4 text settings (`Gemma4ForCausalLM`, model_type `gemma4_text`, or
 * the text part of `Gemma4ForConditionalGeneration` under `text_config`),
 * read into `ModelConfig.gemma4` beside the fields every family shares.
 * What differs per layer (head size, KV heads, whose K/V a layer reads, MLP
 * width) is spelled out per layer so the paths never re-derive it. A field
 * whose value the engine does not implement is refused here, naming it.
 */
import { ModelConfigError, type Gemma4LayerShape, type Gemma4Settings, type LayerType, type ModelConfig, type RopeSettings } from './model-config.js';

export type { Gemma4LayerShape, Gemma4Settings };

type Json = Record<string, unknown>;

function field(text: Json, key: string, file: string): number | null {
  const v = text[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ModelConfigError(`${file}: field "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function req(text: Json, key: string, file: string, fallback?: number): number {
  const v = field(text, key, file);
  if (v !== null) return v;
  if (fallback !== undefined) return fallback;
  throw new ModelConfigError(`${file}: required field "${key}" is missing`);
}

function refuse(file: string, key: string, value: unknown, why: string): never {
  throw new ModelConfigError(`${file}: field "${key}" = ${JSON.stringify(value)} is not supported by this engine (${why})`);
}

function ropeOf(entry: unknown, type: string, file: string): RopeSettings {
  const e = (entry ?? {}) as Json;
  const key = `rope_parameters.${type}`;
  const kind = e.rope_type ?? 'default';
  const base = typeof e.rope_theta === 'number' ? e.rope_theta : type === 'full_attention' ? 1_000_000 : 10_000;
  const factor = typeof e.factor === 'number' ? e.factor : 1;
  const partial = typeof e.partial_rotary_factor === 'number' ? e.partial_rotary_factor : 1;
  if (kind === 'default') {
    if (partial !== 1) refuse(file, `${key}.partial_rotary_factor`, partial, 'default RoPE rotates the whole head');
    if (factor !== 1) refuse(file, `${key}.factor`, factor, 'default RoPE has no scaling factor');
    return { base, factor: 1 };
  }
  if (kind === 'proportional') {
    if (!(partial > 0 && partial <= 1)) refuse(file, `${key}.partial_rotary_factor`, partial, 'expected a value in (0, 1]');
    return { base, factor, partialFactor: partial };
  }
  return refuse(file, `${key}.rope_type`, kind, 'default and proportional are');
}

/** Parses a Gemma 4 text config (already unwrapped from `text_config`). */
export function parseGemma4(architecture: string, text: Json, cfg: Json, generation: Json, file: string): ModelConfig {
  // 1. Values the engine does not implement are refused by name.
  const expect = (key: string, ok: (v: unknown) => boolean, why: string) => {
    if (!ok(text[key])) refuse(file, key, text[key], why);
  };
  const absentOr = (...allowed: unknown[]) => (v: unknown) => v === undefined || v === null || allowed.includes(v);
  expect('attention_bias', absentOr(false), 'projections without bias only');
  expect('hidden_activation', absentOr('gelu_pytorch_tanh', 'gelu_tanh'), 'GELU with the tanh approximation only');
  // "vision" makes only image tokens attend both ways: text alone stays causal.
  expect('use_bidirectional_attention', absentOr('vision'), 'causal attention over text only');
  expect('attn_logit_softcapping', absentOr(), 'Gemma 4 does not soft-cap scores');
  expect('tie_word_embeddings', absentOr(true), 'the output projection must be the tied embedding');
  if (cfg !== text && cfg.tie_word_embeddings === false) refuse(file, 'tie_word_embeddings', false, 'the output projection must be the tied embedding');
  expect('model_type', absentOr('gemma4_text', 'gemma4'), 'a Gemma 4 text model');

  const hiddenSize = req(text, 'hidden_size', file);
  const numHeads = req(text, 'num_attention_heads', file);
  const headDim = req(text, 'head_dim', file, hiddenSize / numHeads);
  // Absent fields take Gemma4TextConfig's defaults; null ones mean None there (global_head_dim: the sliding size).
  const globalHeadDim = text.global_head_dim === undefined ? 512 : (field(text, 'global_head_dim', file) || headDim);
  const numLayers = req(text, 'num_hidden_layers', file);
  const numKvHeads = req(text, 'num_key_value_heads', file, numHeads);
  const kEqV = text.attention_k_eq_v === true;
  const numGlobalKv = kEqV ? req(text, 'num_global_key_value_heads', file, numKvHeads) : numKvHeads;
  const intermediateSize = req(text, 'intermediate_size', file);
  const shared = req(text, 'num_kv_shared_layers', file, 0);
  const doubleWide = text.use_double_wide_mlp === true;

  const rawTypes = text.layer_types ?? Array.from({ length: numLayers }, (_, i) => ((i + 1) % 6 ? 'sliding_attention' : 'full_attention'));
  if (!Array.isArray(rawTypes) || rawTypes.length !== numLayers) refuse(file, 'layer_types', rawTypes, `one entry per layer (${numLayers}) is required`);
  const layerTypes: LayerType[] = rawTypes.map((t, i) => {
    if (t === 'sliding_attention') return 'sliding';
    if (t === 'full_attention') return 'global';
    return refuse(file, `layer_types[${i}]`, t, 'sliding_attention and full_attention are');
  });
  // As transformers does: the last layer is always global.
  layerTypes[numLayers - 1] = 'global';
  for (const [n, kv] of [[numKvHeads, 'num_key_value_heads'], [numGlobalKv, 'num_global_key_value_heads']] as const) {
    if (numHeads % n !== 0) refuse(file, kv, n, `num_attention_heads ${numHeads} must be a multiple of it`);
  }

  const params = (text.rope_parameters ?? {
    sliding_attention: { rope_type: 'default', rope_theta: 10_000 },
    full_attention: { rope_type: 'proportional', partial_rotary_factor: 0.25, rope_theta: 1_000_000 },
  }) as Json;
  if (!params.full_attention && !params.sliding_attention) refuse(file, 'rope_parameters', text.rope_parameters, 'one entry per layer type is expected');
  const rope = { global: ropeOf(params.full_attention, 'full_attention', file), sliding: ropeOf(params.sliding_attention, 'sliding_attention', file) };

  // 2. Per-layer shapes; KV-shared layers read the last earlier layer of their own type.
  const firstShared = numLayers - shared;
  if (shared < 0 || firstShared < 1) refuse(file, 'num_kv_shared_layers', shared, 'at least one layer must compute its own K/V');
  const typeHeadDim: Record<LayerType, number> = { sliding: headDim, global: globalHeadDim };
  const layers: Gemma4LayerShape[] = layerTypes.map((type, l) => {
    let kvSource = l;
    if (l >= firstShared) {
      kvSource = layerTypes.lastIndexOf(type, firstShared - 1);
      if (kvSource < 0) refuse(file, 'num_kv_shared_layers', shared, `shared layer ${l} has no earlier ${type} layer to read`);
    }
    const global = type === 'global';
    return {
      headDim: typeHeadDim[type],
      numKvHeads: global && kEqV ? numGlobalKv : numKvHeads,
      kvSource,
      kEqV: global && kEqV,
      intermediateSize: intermediateSize * (doubleWide && l >= firstShared ? 2 : 1),
    };
  });

  // 3. Per-layer embeddings and the MoE block.
  const perLayerInputSize = text.hidden_size_per_layer_input === undefined ? 256 : (field(text, 'hidden_size_per_layer_input', file) ?? 0);
  const vocabSize = req(text, 'vocab_size', file, 262_144);
  const perLayerVocabSize = perLayerInputSize ? req(text, 'vocab_size_per_layer_input', file, 262_144) : 0;
  let moe: Gemma4Settings['moe'] = null;
  if (text.enable_moe_block === true) {
    moe = { numExperts: req(text, 'num_experts', file), topK: req(text, 'top_k_experts', file), intermediateSize: req(text, 'moe_intermediate_size', file) };
    if (moe.topK < 1 || moe.topK > moe.numExperts) refuse(file, 'top_k_experts', moe.topK, `expected 1..num_experts (${moe.numExperts})`);
  }

  const eos = generation.eos_token_id ?? text.eos_token_id ?? cfg.eos_token_id ?? 1;
  const eosIds = (Array.isArray(eos) ? eos : [eos]).filter((x): x is number => typeof x === 'number');
  return {
    family: 'gemma4',
    architecture,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: req(text, 'rms_norm_eps', file, 1e-6),
    // Scores are unscaled: 1 ** -0.5 = 1.
    queryPreAttnScalar: 1,
    slidingWindow: req(text, 'sliding_window', file, 512),
    layerTypes,
    rope,
    attnLogitSoftcap: null,
    finalLogitSoftcap: field(text, 'final_logit_softcapping', file),
    qkNorm: true,
    maxPositions: req(text, 'max_position_embeddings', file, 131_072),
    bosId: req(text, 'bos_token_id', file, req(cfg, 'bos_token_id', file, 2)),
    padId: req(text, 'pad_token_id', file, 0),
    eosIds: eosIds.length > 0 ? eosIds : [1],
    gemma4: { layers, typeHeadDim, normStyle: 'w', scoreScale: 1, perLayerInputSize, perLayerVocabSize, moe },
  };
}

/** Gemma 4's parameter count as this engine stores it (the memory check): per-layer shapes, per-layer embeddings, experts. */
export function gemma4ParameterCount(c: ModelConfig): { embedding: number; linear: number; norms: number } {
  const g = c.gemma4!;
  const H = c.hiddenSize;
  let linear = 0;
  let norms = H;
  g.layers.forEach((s, l) => {
    const qDim = c.numHeads * s.headDim;
    const kvDim = s.kvSource === l ? (s.kEqV ? 1 : 2) * s.numKvHeads * s.headDim : 0;
    linear += H * (qDim + kvDim) + qDim * H + 3 * H * s.intermediateSize;
    norms += 4 * H + 2 * s.headDim;
    if (g.perLayerInputSize) linear += 2 * H * g.perLayerInputSize;
    if (g.moe) linear += H * g.moe.numExperts + g.moe.numExperts * 3 * H * g.moe.intermediateSize;
  });
  const perLayer = g.perLayerInputSize ? g.perLayerVocabSize * c.numLayers * g.perLayerInputSize + H * c.numLayers * g.perLayerInputSize : 0;
  return { embedding: c.vocabSize * H + perLayer, linear, norms };
}
