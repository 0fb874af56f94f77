/**
 * Reads a Hugging Face `config.json` for Gemma 2 / Gemma 3 text models into one
 * normalized shape. Real checkpoints use two styles: the older one
 * (`rope_theta`, `rope_local_base_freq`, `rope_scaling`,
 * `sliding_window_pattern`; Gemma 2 alternates layers) and the newer one
 * (`layer_types`, `rope_parameters` per layer type). Multimodal Gemma 3
 * checkpoints keep the text settings under `text_config`. Gemma 4 text
 * configs (also under `text_config` in `Gemma4ForConditionalGeneration`)
 * are read by gemma4-config.ts into the same shape plus `gemma4`.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGemma4 } from './gemma4-config.js';
import { ModelConfigError, type LayerType, type ModelConfig, type RopeSettings } from './model-config.js';

export { ModelConfigError, type Gemma4LayerShape, type Gemma4Settings, type LayerType, type ModelConfig, type RopeSettings } from './model-config.js';


const SUPPORTED: Record<string, 'gemma2' | 'gemma3' | 'gemma4'> = {
  Gemma4ForCausalLM: 'gemma4',
  Gemma4ForConditionalGeneration: 'gemma4',
  Gemma3ForCausalLM: 'gemma3',
  Gemma3ForConditionalGeneration: 'gemma3',
  Gemma2ForCausalLM: 'gemma2',
};

type Json = Record<string, unknown>;

function num(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key];
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelConfigError(`${file}: required field "${key}" is missing`);
  }
  throw new ModelConfigError(`${file}: field "${key}" must be a number, got ${JSON.stringify(v)}`);
}

function optNum(cfg: Json, key: string): number | null {
  const v = cfg[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function ropeFrom(entry: unknown, fallbackBase: number): RopeSettings {
  const e = (entry ?? {}) as Json;
  const type = (e.rope_type ?? e.type ?? 'default') as string;
  const base = typeof e.rope_theta === 'number' ? e.rope_theta : fallbackBase;
  if (type === 'linear') return { base, factor: typeof e.factor === 'number' ? e.factor : 1 };
  if (type === 'default') return { base, factor: 1 };
  throw new ModelConfigError(`config.json: RoPE type "${type}" is not supported (default and linear are)`);
}

function layerTypesOf(text: Json, family: 'gemma2' | 'gemma3', n: number, file: string): LayerType[] {
  const raw = text.layer_types;
  if (Array.isArray(raw)) {
    if (raw.length !== n) {
      throw new ModelConfigError(`${file}: layer_types has ${raw.length} entries for ${n} layers`);
    }
    return raw.map((t, i) => {
      if (t === 'sliding_attention') return 'sliding';
      if (t === 'full_attention') return 'global';
      throw new ModelConfigError(`${file}: layer_types[${i}] = ${JSON.stringify(t)} is not supported`);
    });
  }
  if (family === 'gemma2') return Array.from({ length: n }, (_, i) => (i % 2 === 0 ? 'sliding' : 'global'));
  const pattern = num(text, 'sliding_window_pattern', file, optNum(text, '_sliding_window_pattern') ?? 6);
  return Array.from({ length: n }, (_, i) => ((i + 1) % pattern === 0 ? 'global' : 'sliding'));
}

/** Normalizes an already parsed config.json (plus the optional generation_config.json). */
export function parseModelConfig(cfg: Json, generation: Json = {}, file = 'config.json'): ModelConfig {
  const architecture = Array.isArray(cfg.architectures) ? String(cfg.architectures[0]) : '';
  const family = SUPPORTED[architecture];
  if (!family) {
    throw new ModelConfigError(
      `${file}: architecture "${architecture || '(none)'}" is not supported; ` +
        `expected one of ${Object.keys(SUPPORTED).join(', ')}`,
    );
  }
  const wrapped = architecture.endsWith('ForConditionalGeneration');
  const text: Json = wrapped ? ((cfg.text_config ?? {}) as Json) : cfg;
  if (family === 'gemma4') return parseGemma4(architecture, text, cfg, generation, file);
  const hiddenSize = num(text, 'hidden_size', file);
  const numHeads = num(text, 'num_attention_heads', file);
  const headDim = num(text, 'head_dim', file, hiddenSize / numHeads);
  const numLayers = num(text, 'num_hidden_layers', file);
  const numKvHeads = num(text, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelConfigError(`${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }

  let rope: Record<LayerType, RopeSettings>;
  const params = text.rope_parameters as Json | undefined;
  if (params && (params.full_attention || params.sliding_attention)) {
    rope = {
      global: ropeFrom(params.full_attention, 1_000_000),
      sliding: ropeFrom(params.sliding_attention, 10_000),
    };
  } else if (params) {
    const shared = ropeFrom(params, 10_000);
    rope = { global: shared, sliding: family === 'gemma3' ? { base: 10_000, factor: 1 } : shared };
  } else {
    const globalBase = num(text, 'rope_theta', file, family === 'gemma3' ? 1_000_000 : 10_000);
    const scaling = text.rope_scaling ? ropeFrom({ ...(text.rope_scaling as Json), rope_theta: globalBase }, globalBase) : { base: globalBase, factor: 1 };
    const localBase = family === 'gemma3' ? num(text, 'rope_local_base_freq', file, 10_000) : globalBase;
    rope = { global: scaling, sliding: { base: localBase, factor: 1 } };
  }

  const eos = generation.eos_token_id ?? text.eos_token_id ?? cfg.eos_token_id ?? 1;
  const eosIds = (Array.isArray(eos) ? eos : [eos]).filter((x): x is number => typeof x === 'number');

  return {
    family,
    architecture,
    vocabSize: num(text, 'vocab_size', file, 262_144),
    hiddenSize,
    intermediateSize: num(text, 'intermediate_size', file),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num(text, 'rms_norm_eps', file, 1e-6),
    queryPreAttnScalar: num(text, 'query_pre_attn_scalar', file, headDim),
    slidingWindow: num(text, 'sliding_window', file, 4096),
    layerTypes: layerTypesOf(text, family, numLayers, file),
    rope,
    attnLogitSoftcap: optNum(text, 'attn_logit_softcapping'),
    finalLogitSoftcap: optNum(text, 'final_logit_softcapping'),
    qkNorm: family === 'gemma3',
    maxPositions: num(text, 'max_position_embeddings', file, 8192),
    bosId: num(text, 'bos_token_id', file, num(cfg, 'bos_token_id', file, 2)),
    padId: num(text, 'pad_token_id', file, 0),
    eosIds: eosIds.length > 0 ? eosIds : [1],
  };
}

async function readJson(path: string, required: boolean): Promise<Json | undefined> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ModelConfigError(`cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(raw) as Json;
  } catch (err) {
    throw new ModelConfigError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
}

/** Reads `config.json` (required) and `generation_config.json` (optional) from a model directory. */
export async function loadModelConfig(dir: string): Promise<ModelConfig> {
  const file = join(dir, 'config.json');
  const cfg = (await readJson(file, true)) as Json;
  const generation = (await readJson(join(dir, 'generation_config.json'), false)) ?? {};
  return parseModelConfig(cfg, generation, file);
}
