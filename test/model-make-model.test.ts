import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { loadConfig } from '../config/index.js';
import { makeModel, defaultModelDir, hfConfig, PRESETS, parameterCount, layerTypes, presetNames } from '../src/model/make-model.js';
import { parameterCount as engineParameterCount } from '../src/engine/weights.js';
import { parseModelConfig } from '../src/model/hf-config.js';
import { readSafetensors } from '../src/model/safetensors.js';
import { GemmaTokenizer } from '../src/model/tokenizer.js';

function stats(x: Float32Array): { mean: number; std: number } {
  let s = 0, s2 = 0;
  for (const v of x) { s += v; s2 += v * v; }
  const mean = s / x.length;
  return { mean, std: Math.sqrt(s2 / x.length - mean * mean) };
}

t.test('presets', async (t) => {
  t.same(layerTypes(PRESETS['270m']).filter((l) => l === 'full_attention').length, 3);
  t.equal(layerTypes(PRESETS['270m'])[5], 'full_attention');
  t.equal(layerTypes(PRESETS['1b'])[25], 'sliding_attention');
  // Gemma 3 270M has ~268M parameters with the tied embedding.
  t.ok(Math.abs(parameterCount(PRESETS['270m']) - 268_098_176) < 1e6, `270m params ${parameterCount(PRESETS['270m'])}`);
  t.ok(Math.abs(parameterCount(PRESETS['1b']) - 999_885_952) < 2e6, `1b params ${parameterCount(PRESETS['1b'])}`);
});

// Text models of google/gemma-3-4b-it and -12b-it. Their weights (7.8 and 23.5 GB
// in bf16) are never generated here: only the shapes and config.json are checked.
t.test('4b and 12b presets: released shapes, scaled global RoPE', async (t) => {
  t.same(presetNames(), ['tiny', '270m', '1b', '4b', '12b']);
  const released = {
    '4b': { layers: 34, hidden: 2560, heads: 8, kv: 4, inter: 10240, params: 3.88e9 },
    '12b': { layers: 48, hidden: 3840, heads: 16, kv: 8, inter: 15360, params: 11.77e9 },
  } as const;
  for (const [name, r] of Object.entries(released)) {
    const p = PRESETS[name as '4b' | '12b'];
    t.match(p, {
      numLayers: r.layers, hiddenSize: r.hidden, numHeads: r.heads, numKvHeads: r.kv, headDim: 256,
      intermediateSize: r.inter, slidingWindow: 1024, queryPreAttnScalar: 256, vocabSize: 262144,
      slidingPattern: 6, maxPositionEmbeddings: 131072, ropeScalingFactor: 8,
    }, name);

    // config.json, read back by the engine's own parser.
    const raw = hfConfig(p);
    t.same(raw.rope_parameters, {
      full_attention: { factor: 8, rope_theta: 1e6, rope_type: 'linear' },
      sliding_attention: { rope_theta: 1e4, rope_type: 'default' },
    }, `${name} rope_parameters`);
    const c = parseModelConfig(JSON.parse(JSON.stringify(raw)));
    t.match(c, {
      family: 'gemma3', numLayers: r.layers, hiddenSize: r.hidden, numHeads: r.heads, numKvHeads: r.kv, headDim: 256,
      intermediateSize: r.inter, slidingWindow: 1024, queryPreAttnScalar: 256, vocabSize: 262144, maxPositions: 131072,
    }, `${name} parsed`);
    t.same(c.rope, { global: { base: 1e6, factor: 8 }, sliding: { base: 1e4, factor: 1 } }, `${name} rope parsed`);
    const globals = c.layerTypes.flatMap((l, i) => (l === 'global' ? [i] : []));
    t.same(globals, Array.from({ length: Math.floor(r.layers / 6) }, (_, k) => 6 * k + 5), `${name} every 6th layer global`);

    // Parameters: the tensors make-model would write, and the engine's count of the parsed config.
    const n = parameterCount(p);
    t.ok(Math.abs(n - r.params) / r.params < 0.01, `${name} params ${n} within 1% of ${r.params}`);
    const e = engineParameterCount(c);
    t.equal(e.embedding + e.linear + e.norms, n, `${name} engine parameter count`);
  }
});

t.test('presets without scaling keep default global RoPE', async (t) => {
  for (const name of ['tiny', '270m', '1b'] as const) {
    t.equal(PRESETS[name].ropeScalingFactor, undefined);
    t.same(parseModelConfig(hfConfig(PRESETS[name])).rope.global, { base: 1e6, factor: 1 }, name);
  }
});

t.test('tiny preset writes a loadable HF directory', async (t) => {
  const dir = t.testdir();
  const out = path.join(dir, 'm');
  const start = Date.now();
  await makeModel({ out, preset: 'tiny', seed: 7 });
  t.ok(Date.now() - start < 10_000, `tiny written in ${Date.now() - start} ms`);
  const p = PRESETS.tiny;

  const config = JSON.parse(await fsp.readFile(path.join(out, 'config.json'), 'utf8'));
  t.match(config, {
    architectures: ['Gemma3ForCausalLM'], model_type: 'gemma3_text',
    hidden_size: p.hiddenSize, num_hidden_layers: p.numLayers, num_attention_heads: p.numHeads,
    num_key_value_heads: p.numKvHeads, head_dim: p.headDim, intermediate_size: p.intermediateSize,
    sliding_window: p.slidingWindow, query_pre_attn_scalar: p.queryPreAttnScalar,
    max_position_embeddings: 32768, vocab_size: 262144, rms_norm_eps: 1e-6,
    hidden_activation: 'gelu_pytorch_tanh', tie_word_embeddings: true,
    bos_token_id: 2, eos_token_id: 1, pad_token_id: 0,
    rope_parameters: {
      full_attention: { rope_theta: 1e6, rope_type: 'default' },
      sliding_attention: { rope_theta: 1e4, rope_type: 'default' },
    },
  });
  t.same(config.layer_types, [...Array(5).fill('sliding_attention'), 'full_attention']);
  const gen = JSON.parse(await fsp.readFile(path.join(out, 'generation_config.json'), 'utf8'));
  t.same(gen.eos_token_id, [1, 106]);

  const s = await readSafetensors(out);
  const H = p.hiddenSize, hd = p.headDim, I = p.intermediateSize;
  const expected: Record<string, number[]> = { 'model.embed_tokens.weight': [262144, H], 'model.norm.weight': [H] };
  for (let i = 0; i < p.numLayers; i++) {
    const l = `model.layers.${i}.`;
    for (const n of ['input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm', 'post_feedforward_layernorm']) expected[`${l}${n}.weight`] = [H];
    expected[`${l}self_attn.q_proj.weight`] = [p.numHeads * hd, H];
    expected[`${l}self_attn.k_proj.weight`] = [p.numKvHeads * hd, H];
    expected[`${l}self_attn.v_proj.weight`] = [p.numKvHeads * hd, H];
    expected[`${l}self_attn.o_proj.weight`] = [H, p.numHeads * hd];
    expected[`${l}self_attn.q_norm.weight`] = [hd];
    expected[`${l}self_attn.k_norm.weight`] = [hd];
    expected[`${l}mlp.gate_proj.weight`] = [I, H];
    expected[`${l}mlp.up_proj.weight`] = [I, H];
    expected[`${l}mlp.down_proj.weight`] = [H, I];
  }
  t.same(s.names().sort(), Object.keys(expected).sort());
  for (const [n, shape] of Object.entries(expected)) {
    t.same(s.info(n).shape, shape, n);
    t.equal(s.info(n).dtype, 'BF16');
  }
  t.equal(s.metadata.format, 'pt');

  const emb = stats(await s.read('model.embed_tokens.weight'));
  t.ok(Math.abs(emb.std - 1 / Math.sqrt(H)) < 0.01, `embedding std ${emb.std}`);
  t.ok(Math.abs(emb.mean) < 1e-3);
  const q = stats(await s.read('model.layers.0.self_attn.q_proj.weight'));
  t.ok(Math.abs(q.std - 1 / Math.sqrt(H)) < 0.02, `q_proj std ${q.std}`);
  const norm = stats(await s.read('model.layers.2.input_layernorm.weight'));
  t.ok(norm.std > 0.05 && norm.std < 0.2, `norm std ${norm.std}`);

  // Deterministic per seed; another seed differs.
  const again = path.join(dir, 'again');
  const other = path.join(dir, 'other');
  await makeModel({ out: again, preset: 'tiny', seed: 7 });
  await makeModel({ out: other, preset: 'tiny', seed: 8 });
  const a = await fsp.readFile(path.join(out, 'model.safetensors'));
  t.ok(a.equals(await fsp.readFile(path.join(again, 'model.safetensors'))), 'same seed, same bytes');
  t.notOk(a.equals(await fsp.readFile(path.join(other, 'model.safetensors'))), 'other seed, other bytes');

  const tok = await GemmaTokenizer.fromModelDir(out);
  t.same(tok.encode('Hello world'), [2, 9259, 1902]);
  t.equal(tok.applyChatTemplate([{ role: 'user', content: 'Hi' }]), '<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n');
  await s.close();
});

t.test('shape overrides and F32 storage', async (t) => {
  const out = path.join(t.testdir(), 'small');
  await makeModel({ out, preset: 'tiny', dtype: 'F32', shape: { numLayers: 2, vocabSize: 1024 } });
  const s = await readSafetensors(out);
  t.equal(s.names().length, 1 + 2 * 13 + 1);
  t.same(s.info('model.embed_tokens.weight').shape, [1024, 64]);
  t.equal(s.info('model.norm.weight').dtype, 'F32');
  const config = JSON.parse(await fsp.readFile(path.join(out, 'config.json'), 'utf8'));
  t.equal(config.num_hidden_layers, 2);
  t.same(config.layer_types, ['sliding_attention', 'sliding_attention']);
  await s.close();
});

t.test('defaultModelDir builds once, atomically', async (t) => {
  // The cache dir comes from config (GEMMA_SERVE_CACHE_DIR), as Engine.load passes it.
  const cache = loadConfig({ GEMMA_SERVE_CACHE_DIR: t.testdir() }).model.cacheDir;
  const [d1, d2] = await Promise.all([defaultModelDir(cache, 123), defaultModelDir(cache, 123)]);
  t.equal(d1, d2);
  t.equal(path.dirname(d1), cache);
  t.match(path.basename(d1), /^gemma-serve-.*-tiny-123$/);
  const entries = await fsp.readdir(cache);
  t.same(entries, [path.basename(d1)], 'no temp dirs left behind');
  const s = await readSafetensors(d1);
  t.same(s.info('model.embed_tokens.weight').shape, [262144, 64]);
  await s.close();
});
