// make-model --arch gemma4: the published shapes (parameter counts against Google's figures) and a tiny Gemma 4 directory the engine loads and decodes.
import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Engine } from '../src/engine/engine.js';
import { loadModelConfig, parseModelConfig } from '../src/model/hf-config.js';
import { makeModel, MakeModelError, presetNames } from '../src/model/make-model.js';
import { GEMMA4_PRESETS, gemma4HfConfig, gemma4LayerTypes, gemma4ParameterCounts, gemma4TensorSpecs } from '../src/model/make-model-gemma4.js';
import { gemma4ParameterCount } from '../src/model/gemma4-config.js';
import { readSafetensors } from '../src/model/safetensors.js';
import { testEngineOptions } from './helpers/engine-options.js';

t.test('Gemma 4 presets have the published shapes', async (t) => {
  t.same(presetNames('gemma4'), ['tiny', 'e2b', 'e4b', '26b-a4b', '31b']);
  const billions = (n: number) => Math.round(n / 1e7) / 100;
  // E2B / E4B: Google's "2.3B / 4.5B effective" are the text weights without the per-layer embedding table
  // (rounded on the model card; E4B's published shapes give 4.64B).
  for (const [name, effective] of [['e2b', 2.3], ['e4b', 4.5]] as const) {
    const s = GEMMA4_PRESETS[name];
    const table = s.vocabSize * s.numLayers * s.perLayerInputSize;
    const { total } = gemma4ParameterCounts(s);
    t.ok(Math.abs((total - table) / 1e9 - effective) < 0.15, `${name}: ${billions(total - table)}B effective (published ${effective}B)`);
  }
  const moe = gemma4ParameterCounts(GEMMA4_PRESETS['26b-a4b']);
  t.ok(Math.abs(moe.total / 1e9 - 25.2) < 0.1, `26b-a4b: ${billions(moe.total)}B total (published 25.2B)`);
  t.ok(Math.abs(moe.active / 1e9 - 3.8) < 0.1, `26b-a4b: ${billions(moe.active)}B active (published 3.8B)`);
  t.ok(Math.abs(gemma4ParameterCounts(GEMMA4_PRESETS['31b']).total / 1e9 - 30.7) < 0.1, '31b: 30.7B');

  const e2b = gemma4LayerTypes(GEMMA4_PRESETS.e2b);
  t.equal(e2b.filter((x) => x === 'full_attention').length, 7, 'e2b: 4 sliding : 1 global');
  t.equal(e2b[4], 'full_attention');
  for (const name of ['e2b', 'e4b', '26b-a4b', '31b'] as const) {
    // The engine's own count (the memory check) reads the same config the same way.
    const c = parseModelConfig(gemma4HfConfig(GEMMA4_PRESETS[name]));
    const mine = gemma4ParameterCount(c);
    t.equal(mine.embedding + mine.linear, gemma4ParameterCounts(GEMMA4_PRESETS[name]).total - normCount(name), `${name}: the engine's parameter count agrees`);
  }
  function normCount(name: keyof typeof GEMMA4_PRESETS): number {
    return gemma4TensorSpecs(GEMMA4_PRESETS[name]).filter((x) => x.shape.length === 1).reduce((a, x) => a + x.shape[0], 0);
  }
  await t.rejects(makeModel({ out: t.testdir(), arch: 'gemma4', preset: '270m' }), MakeModelError, 'a Gemma 3 preset name is not a Gemma 4 one');
});

t.test('the tiny Gemma 4 preset writes a directory the engine serves', async (t) => {
  const out = path.join(t.testdir(), 'g4');
  await makeModel({ out, arch: 'gemma4', preset: 'tiny', seed: 3 });
  const config = JSON.parse(await fsp.readFile(path.join(out, 'config.json'), 'utf8'));
  t.match(config, { architectures: ['Gemma4ForCausalLM'], model_type: 'gemma4_text', num_kv_shared_layers: 3, use_double_wide_mlp: true, hidden_size_per_layer_input: 16 });
  const c = await loadModelConfig(out);
  t.equal(c.family, 'gemma4');
  t.same(c.gemma4!.layers.map((l) => l.kvSource), [0, 1, 2, 1, 1, 2], 'the last three layers read the K/V of the last earlier layer of their type');
  t.same(c.gemma4!.layers.map((l) => l.intermediateSize), [128, 128, 128, 256, 256, 256], 'KV-shared layers have the double-wide MLP');

  const tokenizer = JSON.parse(await fsp.readFile(path.join(out, 'tokenizer.json'), 'utf8')) as { added_tokens: { id: number; content: string }[] };
  t.same(tokenizer.added_tokens.filter((a) => a.id === 105 || a.id === 106).map((a) => a.content), ['<|turn>', '<turn|>'], 'Gemma 4\'s turn markers');
  t.ok(await fsp.stat(path.join(out, 'chat_template.jinja')), 'Gemma 4\'s chat template');

  const s = await readSafetensors(out);
  t.notOk(s.has('model.layers.3.self_attn.k_proj.weight'), 'KV-shared layers have no K/V weights');
  t.same(s.info('model.embed_tokens_per_layer.weight').shape, [262144, 6 * 16]);
  t.same((await s.read('model.layers.1.layer_scalar'))[0], 1);
  await s.close();

  const engine = await Engine.load(testEngineOptions({ dir: out, backend: 'cpu', cpuKernels: 'tfjs', slots: 1, capacity: 64 }));
  t.teardown(() => engine.dispose());
  const baseline = tf.memory().numTensors;
  const ids = engine.tokenizer.encodeChat([{ role: 'user', content: 'Hello there' }]);
  const scored = await engine.score(ids, 5);
  t.equal(scored.length, ids.length);
  t.ok(scored.every((p) => p.top_logits.every(Number.isFinite) && Math.abs(p.top_logits[0]) <= 30), 'finite logits within the soft-cap');
  // Random weights, yet a peaked next-token distribution: the top logit stands clear of the log-sum-exp's uniform floor.
  t.ok(scored.some((p) => p.top_logits[0] - p.logsumexp > -Math.log(262144) + 2), 'not a uniform distribution');
  t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
});
