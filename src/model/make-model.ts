/**
 * Writes a Gemma 3 (or, with `arch: 'gemma4'`, Gemma 4: make-model-gemma4.ts)
 * model with deterministic random weights as a Hugging Face directory (config.json, generation_config.json,
 * model.safetensors, tokenizer files), so the service runs without
 * downloading a checkpoint. Tensors are generated and streamed chunk by chunk,
 * so even the 12B preset (~23.5 GB in bf16) never sits in memory.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { GemmaServeError } from '../errors.js';
import { writeGemma4TokenizerFiles } from './gemma4-chat-files.js';
import { gemma4HfConfig, gemma4TensorSpecs, GEMMA4_PRESETS, type Gemma4PresetName, type Gemma4Shape } from './make-model-gemma4.js';
import { specElements, writeRandomSafetensors, type GenSpec } from './random-tensors.js';
import type { WritableDType } from './safetensors.js';
import { defaultTokenizerFiles } from './tokenizer.js';

export type PresetName = 'tiny' | '270m' | '1b' | '4b' | '12b';

export interface ModelShape {
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  slidingWindow: number;
  queryPreAttnScalar: number;
  maxPositionEmbeddings: number;
  vocabSize: number;
  /** Every `slidingPattern`-th layer is global, the others sliding. */
  slidingPattern: number;
  /**
   * Linear RoPE scaling factor of the global layers (Gemma 3 4B/12B/27B: 8,
   * for their 128K context); absent: unscaled. Sliding layers are never scaled.
   */
  ropeScalingFactor?: number;
}

const GEMMA3_VOCAB = 262144;

export const PRESETS: Readonly<Record<PresetName, Readonly<ModelShape>>> = {
  tiny: {
    numLayers: 6, hiddenSize: 64, numHeads: 4, numKvHeads: 1, headDim: 32, intermediateSize: 256,
    slidingWindow: 32, queryPreAttnScalar: 32, maxPositionEmbeddings: 32768, vocabSize: GEMMA3_VOCAB, slidingPattern: 6,
  },
  '270m': {
    numLayers: 18, hiddenSize: 640, numHeads: 4, numKvHeads: 1, headDim: 256, intermediateSize: 2048,
    slidingWindow: 512, queryPreAttnScalar: 256, maxPositionEmbeddings: 32768, vocabSize: GEMMA3_VOCAB, slidingPattern: 6,
  },
  '1b': {
    numLayers: 26, hiddenSize: 1152, numHeads: 4, numKvHeads: 1, headDim: 256, intermediateSize: 6912,
    slidingWindow: 512, queryPreAttnScalar: 256, maxPositionEmbeddings: 32768, vocabSize: GEMMA3_VOCAB, slidingPattern: 6,
  },
  // Text model of google/gemma-3-4b-it (~3.88 B parameters).
  '4b': {
    numLayers: 34, hiddenSize: 2560, numHeads: 8, numKvHeads: 4, headDim: 256, intermediateSize: 10240,
    slidingWindow: 1024, queryPreAttnScalar: 256, maxPositionEmbeddings: 131072, vocabSize: GEMMA3_VOCAB, slidingPattern: 6,
    ropeScalingFactor: 8,
  },
  // Text model of google/gemma-3-12b-it (~11.77 B parameters).
  '12b': {
    numLayers: 48, hiddenSize: 3840, numHeads: 16, numKvHeads: 8, headDim: 256, intermediateSize: 15360,
    slidingWindow: 1024, queryPreAttnScalar: 256, maxPositionEmbeddings: 131072, vocabSize: GEMMA3_VOCAB, slidingPattern: 6,
    ropeScalingFactor: 8,
  },
};

/** Bump when the generated weights or files change, so cached default models are rebuilt. */
const GENERATOR_VERSION = 2;
const DEFAULT_SEED = 0;

export class MakeModelError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 500, code: 'make_model_error' });
  }
}

export function layerTypes(s: ModelShape): ('sliding_attention' | 'full_attention')[] {
  return Array.from({ length: s.numLayers }, (_, i) => ((i + 1) % s.slidingPattern === 0 ? 'full_attention' : 'sliding_attention'));
}

/** RoPE of the global layers: theta 1e6, linearly scaled where the shape says so. */
function globalRope(s: ModelShape): Record<string, unknown> {
  if (s.ropeScalingFactor === undefined) return { rope_theta: 1000000.0, rope_type: 'default' };
  return { factor: s.ropeScalingFactor, rope_theta: 1000000.0, rope_type: 'linear' };
}

/** config.json in the newer transformers style (layer_types, rope_parameters per layer type). */
export function hfConfig(s: ModelShape): Record<string, unknown> {
  return {
    architectures: ['Gemma3ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    attn_logit_softcapping: null,
    bos_token_id: 2,
    dtype: 'bfloat16',
    eos_token_id: 1,
    final_logit_softcapping: null,
    head_dim: s.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    hidden_size: s.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: s.intermediateSize,
    layer_types: layerTypes(s),
    max_position_embeddings: s.maxPositionEmbeddings,
    model_type: 'gemma3_text',
    num_attention_heads: s.numHeads,
    num_hidden_layers: s.numLayers,
    num_key_value_heads: s.numKvHeads,
    pad_token_id: 0,
    query_pre_attn_scalar: s.queryPreAttnScalar,
    rms_norm_eps: 1e-6,
    rope_parameters: {
      full_attention: globalRope(s),
      sliding_attention: { rope_theta: 10000.0, rope_type: 'default' },
    },
    sliding_window: s.slidingWindow,
    tie_word_embeddings: true,
    use_bidirectional_attention: false,
    use_cache: true,
    vocab_size: s.vocabSize,
  };
}

/** Tensor names, shapes (PyTorch [out, in]) and init scales, in file order. */
export function tensorSpecs(s: ModelShape, dtype: WritableDType = 'BF16'): GenSpec[] {
  const H = s.hiddenSize, hd = s.headDim, I = s.intermediateSize;
  const q = s.numHeads * hd, kv = s.numKvHeads * hd;
  // std 1/sqrt(fan_in) keeps every projection's output O(1); embeddings use
  // 1/sqrt(H) so that x * sqrt(H) is O(1) and tied logits have std ~1.
  const lin = (name: string, out: number, inp: number): GenSpec => ({ name, dtype, shape: [out, inp], mean: 0, std: 1 / Math.sqrt(inp) });
  const norm = (name: string, n: number): GenSpec => ({ name, dtype, shape: [n], mean: 0, std: 0.1 });
  const out: GenSpec[] = [{ name: 'model.embed_tokens.weight', dtype, shape: [s.vocabSize, H], mean: 0, std: 1 / Math.sqrt(H) }];
  for (let i = 0; i < s.numLayers; i++) {
    const p = `model.layers.${i}.`;
    out.push(
      norm(`${p}input_layernorm.weight`, H),
      norm(`${p}post_attention_layernorm.weight`, H),
      norm(`${p}pre_feedforward_layernorm.weight`, H),
      norm(`${p}post_feedforward_layernorm.weight`, H),
      lin(`${p}self_attn.q_proj.weight`, q, H),
      lin(`${p}self_attn.k_proj.weight`, kv, H),
      lin(`${p}self_attn.v_proj.weight`, kv, H),
      lin(`${p}self_attn.o_proj.weight`, H, q),
      norm(`${p}self_attn.q_norm.weight`, hd),
      norm(`${p}self_attn.k_norm.weight`, hd),
      lin(`${p}mlp.gate_proj.weight`, I, H),
      lin(`${p}mlp.up_proj.weight`, I, H),
      lin(`${p}mlp.down_proj.weight`, H, I),
    );
  }
  // Final norm around (1 + w) ~ 4 widens the tied logits to std ~4, so the
  // next-token distribution is peaked (top-1 ~10%) rather than near uniform.
  out.push({ name: 'model.norm.weight', dtype, shape: [H], mean: 3, std: 0.3 });
  return out;
}

export function parameterCount(s: ModelShape): number {
  return specElements(tensorSpecs(s));
}

export type Architecture = 'gemma3' | 'gemma4';

export interface MakeModelOptions {
  out: string;
  /** Gemma 3 (default) or Gemma 4; each has its own presets. */
  arch?: Architecture;
  preset: PresetName | Gemma4PresetName;
  seed?: number;
  /** Storage dtype of model.safetensors (default BF16, as released checkpoints). */
  dtype?: WritableDType;
  /** Overrides of the preset's shape (tests). */
  shape?: Partial<ModelShape> | Partial<Gemma4Shape>;
}

/** The preset names of an architecture. */
export function presetNames(arch: Architecture = 'gemma3'): string[] {
  return Object.keys(arch === 'gemma4' ? GEMMA4_PRESETS : PRESETS);
}

/** The config.json and tensors of the model `opts` asks for. */
function modelFiles(opts: MakeModelOptions): { config: Record<string, unknown>; specs: GenSpec[]; eos: number[] } {
  const arch = opts.arch ?? 'gemma3';
  const presets: Readonly<Record<string, object>> = arch === 'gemma4' ? GEMMA4_PRESETS : PRESETS;
  const base = Object.hasOwn(presets, opts.preset) ? presets[opts.preset] : undefined;
  if (!base) throw new MakeModelError(`unknown ${arch} preset ${JSON.stringify(opts.preset)}; known: ${presetNames(arch).join(', ')}`);
  const dtype = opts.dtype ?? 'BF16';
  if (arch === 'gemma4') {
    const shape = { ...base, ...opts.shape } as Gemma4Shape;
    return { config: gemma4HfConfig(shape), specs: gemma4TensorSpecs(shape, dtype), eos: [1, 106] };
  }
  const shape = { ...base, ...opts.shape } as ModelShape;
  return { config: hfConfig(shape), specs: tensorSpecs(shape, dtype), eos: [1, 106] };
}

/** Writes the model directory `out` (created if missing; existing files are overwritten). */
export async function makeModel(opts: MakeModelOptions): Promise<void> {
  const { config, specs, eos } = modelFiles(opts);
  const seed = opts.seed ?? DEFAULT_SEED;
  await fsp.mkdir(opts.out, { recursive: true });
  await writeRandomSafetensors(path.join(opts.out, 'model.safetensors'), specs, seed, {
    format: 'pt',
    generator: `gemma-serve make-model v${GENERATOR_VERSION}`,
    ...(opts.arch === 'gemma4' ? { arch: 'gemma4' } : {}),
    preset: opts.preset,
    seed: String(seed),
  });
  const json = (o: unknown) => JSON.stringify(o, null, 2) + '\n';
  await fsp.writeFile(path.join(opts.out, 'config.json'), json(config));
  await fsp.writeFile(path.join(opts.out, 'generation_config.json'),
    json({ bos_token_id: 2, eos_token_id: eos, pad_token_id: 0, do_sample: true, top_k: 64, top_p: 0.95 }));
  if (opts.arch === 'gemma4') {
    // Gemma 3's vocabulary with Gemma 4's control tokens at their ids, and Gemma 4's chat template.
    await writeGemma4TokenizerFiles(opts.out);
    return;
  }
  const tok = defaultTokenizerFiles();
  await fsp.copyFile(tok.tokenizerJson, path.join(opts.out, 'tokenizer.json'));
  await fsp.copyFile(tok.tokenizerConfig, path.join(opts.out, 'tokenizer_config.json'));
}

function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'gemma-serve' && pkg.version) return pkg.version;
    } catch { /* keep walking up */ }
    const up = path.dirname(dir);
    if (up === dir) return '0';
    dir = up;
  }
}

const defaultDirs = new Map<string, Promise<string>>();

/**
 * A directory holding the `tiny` preset, created once per machine under
 * `cacheDir` (config's `model.cacheDir`: GEMMA_SERVE_CACHE_DIR, or the OS temp
 * dir). Built in a private temp dir and renamed into place, so concurrent
 * processes never see a half-written model.
 */
export function defaultModelDir(cacheDir: string, seed: number = DEFAULT_SEED): Promise<string> {
  const key = `${seed}:${cacheDir}`;
  let p = defaultDirs.get(key);
  if (!p) {
    p = ensureDefaultModel(cacheDir, seed);
    defaultDirs.set(key, p);
    p.catch(() => defaultDirs.delete(key));
  }
  return p;
}

async function isComplete(dir: string): Promise<boolean> {
  const need = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
  const ok = await Promise.all(need.map((f) => fsp.stat(path.join(dir, f)).then((s) => s.isFile(), () => false)));
  return ok.every(Boolean);
}

async function ensureDefaultModel(root: string, seed: number): Promise<string> {
  const dir = path.join(root, `gemma-serve-${packageVersion()}-g${GENERATOR_VERSION}-tiny-${seed}`);
  if (await isComplete(dir)) return dir;
  await fsp.mkdir(root, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await makeModel({ out: tmp, preset: 'tiny', seed });
    try {
      await fsp.rename(tmp, dir);
    } catch (e) {
      // Another process finished first (rename onto a non-empty dir fails): use theirs.
      if (!(await isComplete(dir))) throw new MakeModelError(`cannot install default model at ${dir}: ${(e as Error).message}`);
    }
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
  return dir;
}
