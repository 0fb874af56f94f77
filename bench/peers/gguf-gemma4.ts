/**
 * Gemma 4 text checkpoint (`Gemma4ForCausalLM`, or the text part of
 * `Gemma4ForConditionalGeneration`) -> the metadata and tensor table of
 * llama.cpp's `gemma4` architecture; gguf.ts writes the file. The facts come
 * from llama.cpp's converter (conversion/gemma.py, class Gemma4Model), its
 * tensor names (gguf-py constants, tensor_mapping.py) and its loader
 * (src/models/gemma4.cpp, load_arch_hparams / load_arch_tensors), checked
 * against the libllama node-llama-cpp 3.21.1 bundles (llama.cpp "v0.4.0"):
 *  - norms are stored as they are (Gemma 4 multiplies by w, as llama.cpp's
 *    RMS norm does; Gemma 3's x * (1 + w) needed +1, this does not);
 *  - `attention.key_length`/`value_length` are the global layers' head size,
 *    `*_swa` the sliding layers'; `attention.sliding_window_pattern` is one
 *    bool per layer (true: sliding);
 *  - partial RoPE on global layers: `rope.dimension_count` is the whole global
 *    head and a `rope_freqs` table holds 1 for the rotated frequency pairs and
 *    1e30 (angle ~0: unrotated) for the rest, as HF's "proportional" RoPE
 *    rotates the first partial_rotary_factor * head_dim / 2 pairs of a
 *    rotate-half (NEOX) head with frequencies of the whole head size;
 *  - `attention.shared_kv_layers`: the last N layers read the K/V of layer
 *    L-N-2 (sliding) or L-N-1 (global), which llama.cpp fixes (HF: the last
 *    earlier layer of the same type); checkpoints where these differ are
 *    refused;
 *  - `feed_forward_length` per layer (double-wide MLP on KV-shared layers),
 *    `attention.head_count_kv` per layer (keys-as-values global layers);
 *  - layers without v_proj use their keys as values (attention_k_eq_v);
 *  - the MoE block: router.proj -> ffn_gate_inp, router.scale ->
 *    ffn_gate_inp.scale, router.per_expert_scale -> ffn_down_exps.scale,
 *    the fused experts.gate_up_proj / down_proj as stored.
 * The tokenizer is written as for Gemma 3 (gguf.ts, SentencePiece-style
 * `llama`): make-model's directories carry that tokenizer. llama.cpp's own
 * converter writes `tokenizer.ggml.model = gemma4` for Google's Gemma 4
 * tokenizer, which these benchmarks do not use.
 */
import type { ModelConfig } from '../../src/model/hf-config.js';
import type { TensorStore } from '../../src/model/safetensors.js';
import { addGeneral, checkpointTensors, GLOBAL_NAMES, LAYER_NAMES, mappedName, type GgufType, type Metadata, type TensorTable } from './gguf.js';

const ARCH = 'gemma4';

const GEMMA4_GLOBAL_NAMES: Record<string, string> = {
  ...GLOBAL_NAMES,
  'model.embed_tokens_per_layer.weight': 'per_layer_token_embd.weight',
  'model.per_layer_model_projection.weight': 'per_layer_model_proj.weight',
  'model.per_layer_projection_norm.weight': 'per_layer_proj_norm.weight',
};

const GEMMA4_LAYER_NAMES: Record<string, string> = {
  ...LAYER_NAMES,
  layer_scalar: 'layer_output_scale.weight',
  // Per-layer embeddings (E2B, E4B).
  'per_layer_input_gate.weight': 'inp_gate.weight',
  'per_layer_projection.weight': 'proj.weight',
  'post_per_layer_input_norm.weight': 'post_norm.weight',
  // The MoE block (26B-A4B).
  'router.proj.weight': 'ffn_gate_inp.weight',
  'router.scale': 'ffn_gate_inp.scale',
  'router.per_expert_scale': 'ffn_down_exps.scale',
  'experts.gate_up_proj': 'ffn_gate_up_exps.weight',
  'experts.down_proj': 'ffn_down_exps.weight',
  'pre_feedforward_layernorm_2.weight': 'pre_ffw_norm_2.weight',
  'post_feedforward_layernorm_1.weight': 'post_ffw_norm_1.weight',
  'post_feedforward_layernorm_2.weight': 'post_ffw_norm_2.weight',
};

/** GGUF name of a Gemma 4 checkpoint tensor (null: no llama.cpp counterpart, e.g. the vision tower). */
export function gemma4GgufName(hf: string): string | null {
  return mappedName(hf, GEMMA4_GLOBAL_NAMES, GEMMA4_LAYER_NAMES);
}

/** The layer a KV-shared layer reads in llama.cpp (its layer_reuse_cb for Gemma 3n / 4); -1: its own. */
export function llamaCppKvSource(c: ModelConfig, l: number): number {
  const shared = c.gemma4!.layers.filter((s, i) => s.kvSource !== i).length;
  const first = c.numLayers - shared;
  return l < first ? -1 : first - (c.layerTypes[l] === 'sliding' ? 2 : 1);
}

/** What llama.cpp's gemma4 cannot express; empty when it computes this checkpoint as transformers does. */
export function gemma4Unsupported(c: ModelConfig): string[] {
  const g = c.gemma4;
  if (c.family !== 'gemma4' || !g) return [`family ${c.family} is not gemma4`];
  const why: string[] = [];
  // llama.cpp maps shared layers by position, transformers by type: they agree only when the last two
  // layers computing their own K/V are sliding then global (true of E2B and E4B).
  g.layers.forEach((s, l) => {
    const theirs = llamaCppKvSource(c, l);
    if (theirs >= 0 && theirs !== s.kvSource) {
      why.push(`KV-shared layer ${l} (${c.layerTypes[l]}) reads layer ${s.kvSource}, llama.cpp would read layer ${theirs} (${c.layerTypes[theirs] ?? 'none'})`);
    }
  });
  if (c.rope.sliding.partialFactor !== undefined && c.rope.sliding.partialFactor !== 1) why.push('sliding layers use partial RoPE');
  if (c.rope.sliding.factor !== 1 || c.rope.global.factor !== 1) why.push('RoPE scaling factors other than 1');
  if (g.perLayerInputSize && g.perLayerVocabSize !== c.vocabSize) why.push(`per-layer embedding vocabulary ${g.perLayerVocabSize} != vocab_size ${c.vocabSize}`);
  if (g.scoreScale !== 1) why.push(`attention score scale ${g.scoreScale} (llama.cpp fixes 1)`);
  return why;
}

/** One value for all layers, or one per layer where they differ (as llama.cpp's converter writes them). */
function perLayer(meta: Metadata, key: string, values: number[]): void {
  if (values.every((v) => v === values[0])) meta.u32(key, values[0]!);
  else meta.i32s(key, values);
}

/** Writes the gemma4 metadata into `meta` and returns the tensor table (tokenizer keys are gguf.ts's). */
export async function gemma4Table(dir: string, c: ModelConfig, meta: Metadata, store: TensorStore, type: GgufType): Promise<TensorTable> {
  const why = gemma4Unsupported(c);
  if (why.length) throw new Error(`${dir}: llama.cpp's gemma4 cannot express this checkpoint: ${why.join('; ')}`);
  const g = c.gemma4!;
  const A = ARCH;
  const headFull = g.typeHeadDim.global;
  const headSwa = g.typeHeadDim.sliding;
  const shared = g.layers.filter((s, i) => s.kvSource !== i).length;

  addGeneral(meta, A, dir, type);
  meta.u32(`${A}.context_length`, c.maxPositions);
  meta.u32(`${A}.embedding_length`, c.hiddenSize);
  meta.u32(`${A}.block_count`, c.numLayers);
  perLayer(meta, `${A}.feed_forward_length`, g.layers.map((s) => s.intermediateSize));
  meta.u32(`${A}.attention.head_count`, c.numHeads);
  perLayer(meta, `${A}.attention.head_count_kv`, g.layers.map((s) => s.numKvHeads));
  meta.f32(`${A}.attention.layer_norm_rms_epsilon`, c.rmsNormEps);
  meta.u32(`${A}.attention.key_length`, headFull);
  meta.u32(`${A}.attention.value_length`, headFull);
  meta.u32(`${A}.attention.key_length_swa`, headSwa);
  meta.u32(`${A}.attention.value_length_swa`, headSwa);
  meta.u32(`${A}.attention.sliding_window`, c.slidingWindow);
  meta.bools(`${A}.attention.sliding_window_pattern`, c.layerTypes.map((t) => t === 'sliding'));
  meta.u32(`${A}.attention.shared_kv_layers`, shared);
  // Both RoPE bases are written: llama.cpp's default for the sliding one is the global one.
  meta.f32(`${A}.rope.freq_base`, c.rope.global.base);
  meta.f32(`${A}.rope.freq_base_swa`, c.rope.sliding.base);
  meta.u32(`${A}.rope.dimension_count`, headFull);
  meta.u32(`${A}.rope.dimension_count_swa`, headSwa);
  // Required by the loader, 0 when the model has none.
  meta.u32(`${A}.embedding_length_per_layer_input`, g.perLayerInputSize);
  if (c.finalLogitSoftcap !== null) meta.f32(`${A}.final_logit_softcapping`, c.finalLogitSoftcap);
  if (g.moe) {
    meta.u32(`${A}.expert_count`, g.moe.numExperts);
    meta.u32(`${A}.expert_used_count`, g.moe.topK);
    meta.u32(`${A}.expert_feed_forward_length`, g.moe.intermediateSize);
  }

  const { tensors, skipped } = await checkpointTensors(dir, store, type, gemma4GgufName);
  // Proportional RoPE on global layers: rotated pairs keep their frequency, the others get ~0.
  const pairs = headFull / 2;
  const rotated = Math.floor((headFull * (c.rope.global.partialFactor ?? 1)) / 2);
  const freqs = new Float32Array(pairs).fill(1e30);
  freqs.fill(1, 0, rotated);
  tensors.push({ name: 'rope_freqs.weight', shape: [pairs], type: 'f32', source: { values: freqs } });
  return { tensors, skipped };
}
