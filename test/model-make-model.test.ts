import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { loadConfig } from '../config/index.js';
import { makeModel, defaultModelDir, PRESETS, parameterCount, layerTypes } from '../src/model/make-model.js';
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
