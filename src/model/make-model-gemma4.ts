/**
 * The Gemma 4 shapes make-model writes (`--arch gemma4`): a tiny one for
 * tests and the published text models E2B, E4B, 26B-A4B and 31B, as their
 * config.json files give them, with the tensors a `Gemma4ForCausalLM`
 * checkpoint holds (per-layer embeddings, KV-shared layers without K/V
 * weights, keys-as-values global layers without v_proj, the MoE block).
 * Gemma 4's norms multiply by w, so generated norm weights sit around 1.
 */
import type { WritableDType } from './safetensors.js';
import { specElements, type GenSpec } from './random-tensors.js';

export type Gemma4PresetName = 'tiny' | 'e2b' | 'e4b' | '26b-a4b' | '31b';

export interface Gemma4Shape {
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  /** KV heads of global layers where keys are the values (attention_k_eq_v); null: numKvHeads. */
  numGlobalKvHeads: number | null;
  headDim: number;
  globalHeadDim: number;
  intermediateSize: number;
  slidingWindow: number;
  /** Every `slidingPattern`-th layer is global, the others sliding. */
  slidingPattern: number;
  numKvSharedLayers: number;
  doubleWideMlp: boolean;
  kEqV: boolean;
  /** Per-layer embedding width; 0: none. */
  perLayerInputSize: number;
  moe: { numExperts: number; topK: number; intermediateSize: number } | null;
  maxPositionEmbeddings: number;
  vocabSize: number;
}

const VOCAB = 262144;

// tiny: the shared layers read layers 1 (sliding) and 2 (global), the last two before them, as llama.cpp's
// gemma4 loader requires (it reads n_kv_from_start - 2 and - 1), so the peer benchmark runs it too.
export const GEMMA4_PRESETS: Readonly<Record<Gemma4PresetName, Readonly<Gemma4Shape>>> = {
  tiny: {
    numLayers: 6, hiddenSize: 64, numHeads: 4, numKvHeads: 1, numGlobalKvHeads: null, headDim: 32, globalHeadDim: 64,
    intermediateSize: 128, slidingWindow: 32, slidingPattern: 3, numKvSharedLayers: 3, doubleWideMlp: true, kEqV: false,
    perLayerInputSize: 16, moe: null, maxPositionEmbeddings: 32768, vocabSize: VOCAB,
  },
  e2b: {
    numLayers: 35, hiddenSize: 1536, numHeads: 8, numKvHeads: 1, numGlobalKvHeads: null, headDim: 256, globalHeadDim: 512,
    intermediateSize: 6144, slidingWindow: 512, slidingPattern: 5, numKvSharedLayers: 20, doubleWideMlp: true, kEqV: false,
    perLayerInputSize: 256, moe: null, maxPositionEmbeddings: 131072, vocabSize: VOCAB,
  },
  e4b: {
    numLayers: 42, hiddenSize: 2560, numHeads: 8, numKvHeads: 2, numGlobalKvHeads: null, headDim: 256, globalHeadDim: 512,
    intermediateSize: 10240, slidingWindow: 512, slidingPattern: 6, numKvSharedLayers: 18, doubleWideMlp: false, kEqV: false,
    perLayerInputSize: 256, moe: null, maxPositionEmbeddings: 131072, vocabSize: VOCAB,
  },
  '26b-a4b': {
    numLayers: 30, hiddenSize: 2816, numHeads: 16, numKvHeads: 8, numGlobalKvHeads: 2, headDim: 256, globalHeadDim: 512,
    intermediateSize: 2112, slidingWindow: 1024, slidingPattern: 6, numKvSharedLayers: 0, doubleWideMlp: false, kEqV: true,
    perLayerInputSize: 0, moe: { numExperts: 128, topK: 8, intermediateSize: 704 }, maxPositionEmbeddings: 262144, vocabSize: VOCAB,
  },
  '31b': {
    numLayers: 60, hiddenSize: 5376, numHeads: 32, numKvHeads: 16, numGlobalKvHeads: 4, headDim: 256, globalHeadDim: 512,
    intermediateSize: 21504, slidingWindow: 1024, slidingPattern: 6, numKvSharedLayers: 0, doubleWideMlp: false, kEqV: true,
    perLayerInputSize: 0, moe: null, maxPositionEmbeddings: 262144, vocabSize: VOCAB,
  },
};

export function gemma4LayerTypes(s: Gemma4Shape): ('sliding_attention' | 'full_attention')[] {
  return Array.from({ length: s.numLayers }, (_, i) => ((i + 1) % s.slidingPattern === 0 || i === s.numLayers - 1 ? 'full_attention' : 'sliding_attention'));
}

/** config.json as published Gemma 4 text checkpoints write it. */
export function gemma4HfConfig(s: Gemma4Shape): Record<string, unknown> {
  return {
    architectures: ['Gemma4ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    attention_k_eq_v: s.kEqV,
    bos_token_id: 2,
    dtype: 'bfloat16',
    enable_moe_block: s.moe !== null,
    eos_token_id: 1,
    final_logit_softcapping: 30.0,
    global_head_dim: s.globalHeadDim,
    head_dim: s.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    hidden_size: s.hiddenSize,
    hidden_size_per_layer_input: s.perLayerInputSize,
    initializer_range: 0.02,
    intermediate_size: s.intermediateSize,
    layer_types: gemma4LayerTypes(s),
    max_position_embeddings: s.maxPositionEmbeddings,
    model_type: 'gemma4_text',
    moe_intermediate_size: s.moe?.intermediateSize ?? null,
    num_attention_heads: s.numHeads,
    num_experts: s.moe?.numExperts ?? null,
    num_global_key_value_heads: s.numGlobalKvHeads,
    num_hidden_layers: s.numLayers,
    num_key_value_heads: s.numKvHeads,
    num_kv_shared_layers: s.numKvSharedLayers,
    pad_token_id: 0,
    rms_norm_eps: 1e-6,
    rope_parameters: {
      full_attention: { partial_rotary_factor: 0.25, rope_theta: 1000000.0, rope_type: 'proportional' },
      sliding_attention: { rope_theta: 10000.0, rope_type: 'default' },
    },
    sliding_window: s.slidingWindow,
    tie_word_embeddings: true,
    top_k_experts: s.moe?.topK ?? null,
    use_bidirectional_attention: null,
    use_cache: true,
    use_double_wide_mlp: s.doubleWideMlp,
    vocab_size: s.vocabSize,
    vocab_size_per_layer_input: s.perLayerInputSize ? s.vocabSize : null,
  };
}

/** Tensor names, shapes (PyTorch [out, in]) and init scales of a Gemma 4 text checkpoint, in file order. */
export function gemma4TensorSpecs(s: Gemma4Shape, dtype: WritableDType = 'BF16'): GenSpec[] {
  const H = s.hiddenSize, P = s.perLayerInputSize, L = s.numLayers;
  const types = gemma4LayerTypes(s);
  const firstShared = L - s.numKvSharedLayers;
  // std 1/sqrt(fan_in) keeps every projection's output O(1); norms multiply by w ~ 1.
  const lin = (name: string, shape: number[], fanIn: number): GenSpec => ({ name, dtype, shape, mean: 0, std: 1 / Math.sqrt(fanIn) });
  const norm = (name: string, n: number, mean = 1): GenSpec => ({ name, dtype, shape: [n], mean, std: 0.1 });
  const out: GenSpec[] = [{ name: 'model.embed_tokens.weight', dtype, shape: [s.vocabSize, H], mean: 0, std: 1 / Math.sqrt(H) }];
  if (P) {
    out.push(
      { name: 'model.embed_tokens_per_layer.weight', dtype, shape: [s.vocabSize, L * P], mean: 0, std: 1 / Math.sqrt(P) },
      lin('model.per_layer_model_projection.weight', [L * P, H], H),
      norm('model.per_layer_projection_norm.weight', P),
    );
  }
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    const global = types[i] === 'full_attention';
    const hd = global ? s.globalHeadDim : s.headDim;
    const kEqV = global && s.kEqV;
    const kvHeads = kEqV ? (s.numGlobalKvHeads ?? s.numKvHeads) : s.numKvHeads;
    const I = s.intermediateSize * (s.doubleWideMlp && i >= firstShared ? 2 : 1);
    const q = s.numHeads * hd;
    out.push(
      norm(`${p}input_layernorm.weight`, H),
      norm(`${p}post_attention_layernorm.weight`, H),
      norm(`${p}pre_feedforward_layernorm.weight`, H),
      norm(`${p}post_feedforward_layernorm.weight`, H),
      { name: `${p}layer_scalar`, dtype, shape: [1], mean: 1, std: 0 },
      lin(`${p}self_attn.q_proj.weight`, [q, H], H),
      norm(`${p}self_attn.q_norm.weight`, hd),
      lin(`${p}self_attn.o_proj.weight`, [H, q], q),
    );
    if (i < firstShared) {
      out.push(lin(`${p}self_attn.k_proj.weight`, [kvHeads * hd, H], H), norm(`${p}self_attn.k_norm.weight`, hd));
      if (!kEqV) out.push(lin(`${p}self_attn.v_proj.weight`, [kvHeads * hd, H], H));
    }
    out.push(lin(`${p}mlp.gate_proj.weight`, [I, H], H), lin(`${p}mlp.up_proj.weight`, [I, H], H), lin(`${p}mlp.down_proj.weight`, [H, I], I));
    if (P) {
      out.push(lin(`${p}per_layer_input_gate.weight`, [P, H], H), lin(`${p}per_layer_projection.weight`, [H, P], P), norm(`${p}post_per_layer_input_norm.weight`, H));
    }
    if (s.moe) {
      const { numExperts: E, intermediateSize: Im } = s.moe;
      out.push(
        lin(`${p}router.proj.weight`, [E, H], H),
        norm(`${p}router.scale`, H),
        norm(`${p}router.per_expert_scale`, E),
        lin(`${p}experts.gate_up_proj`, [E, 2 * Im, H], H),
        lin(`${p}experts.down_proj`, [E, H, Im], Im),
        norm(`${p}pre_feedforward_layernorm_2.weight`, H),
        norm(`${p}post_feedforward_layernorm_1.weight`, H),
        norm(`${p}post_feedforward_layernorm_2.weight`, H),
      );
    }
  }
  // A final norm around 4 widens the tied logits (before the soft-cap), so the next-token distribution is peaked.
  out.push({ name: 'model.norm.weight', dtype, shape: [H], mean: 4, std: 0.3 });
  return out;
}

/** Stored parameters, and those a token reads (the chosen experts only). */
export function gemma4ParameterCounts(s: Gemma4Shape): { total: number; active: number } {
  const specs = gemma4TensorSpecs(s);
  const total = specElements(specs);
  if (!s.moe) return { total, active: total };
  const experts = specElements(specs.filter((t) => t.name.includes('.experts.')));
  return { total, active: total - experts + (experts * s.moe.topK) / s.moe.numExperts };
}
