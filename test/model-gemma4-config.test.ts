// Gemma 4 configs: the per-layer shapes read from the fixtures, values the engine does not implement refused by name,
// the multimodal wrapper (text_config, weights under model.language_model.) giving the same logits, and the paths that refuse it.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { Engine, checkTensorLimit } from '../src/engine/engine.js';
import { choosePath, type PathOptions } from '../src/engine/choose-path.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { ModelConfigError, parseModelConfig } from '../src/model/hf-config.js';
import { modelDir, reference } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

type Json = Record<string, unknown>;
const TOL = 1e-3;

async function fixtureConfig(name: string): Promise<Json> {
  return JSON.parse(await readFile(join(modelDir(name), 'config.json'), 'utf8')) as Json;
}

t.test('per-layer shapes of the PLE fixture', async (t) => {
  const c = parseModelConfig(await fixtureConfig('gemma4-tiny-ple'));
  const g = c.gemma4!;
  t.equal(c.family, 'gemma4');
  t.equal(c.queryPreAttnScalar, 1, 'scores unscaled');
  t.same(g.layers.map((l) => l.kvSource), [0, 1, 2, 3, 4, 4, 4, 3], 'the last 3 layers read the last earlier layer of their type');
  t.same(g.layers.map((l) => l.headDim), [16, 16, 16, 32, 16, 16, 16, 32]);
  t.same(g.layers.map((l) => l.intermediateSize), [96, 96, 96, 96, 96, 192, 192, 192], 'double-wide MLP on the KV-shared layers');
  t.equal(g.perLayerInputSize, 8);
  t.equal(g.moe, null);
  t.same(c.rope.global, { base: 1_000_000, factor: 1, partialFactor: 0.25 });
  t.same(c.rope.sliding, { base: 10_000, factor: 1 });
});

t.test('per-layer shapes of the MoE fixture', async (t) => {
  const c = parseModelConfig(await fixtureConfig('gemma4-tiny-moe'));
  const g = c.gemma4!;
  t.same(g.layers.map((l) => l.numKvHeads), [2, 2, 1, 2, 2, 1], 'global layers have their own KV-head count');
  t.same(g.layers.map((l) => l.kEqV), [false, false, true, false, false, true], 'keys as values on global layers');
  t.same(g.moe, { numExperts: 4, topK: 2, intermediateSize: 24 });
  t.equal(g.perLayerInputSize, 0);
});

t.test('absent fields take Gemma4TextConfig defaults; null ones mean none', async (t) => {
  const base = await fixtureConfig('gemma4-tiny-ple');
  const { global_head_dim: _g, hidden_size_per_layer_input: _p, vocab_size_per_layer_input: _v, ...rest } = base;
  const absent = parseModelConfig(rest).gemma4!;
  t.equal(absent.typeHeadDim.global, 512);
  t.equal(absent.perLayerInputSize, 256);
  t.equal(absent.perLayerVocabSize, 262_144);
  const nulls = parseModelConfig({ ...base, global_head_dim: null, hidden_size_per_layer_input: null }).gemma4!;
  t.equal(nulls.typeHeadDim.global, 16, 'global layers fall back to head_dim');
  t.equal(nulls.perLayerInputSize, 0, 'no per-layer embeddings');
  const types = [...(base.layer_types as string[])];
  types[types.length - 1] = 'sliding_attention';
  t.equal(parseModelConfig({ ...base, layer_types: types }).layerTypes.at(-1), 'global', 'the last layer is global, as transformers forces it');
});

t.test('values the engine does not implement are refused, naming the field', async (t) => {
  const base = await fixtureConfig('gemma4-tiny-ple');
  const cases: Array<[string, Json]> = [
    ['attention_bias', { attention_bias: true }],
    ['hidden_activation', { hidden_activation: 'silu' }],
    ['use_bidirectional_attention', { use_bidirectional_attention: 'all' }],
    ['tie_word_embeddings', { tie_word_embeddings: false }],
    ['rope_parameters.full_attention.rope_type', { rope_parameters: { full_attention: { rope_type: 'yarn', rope_theta: 1e6 }, sliding_attention: { rope_type: 'default', rope_theta: 1e4 } } }],
    ['layer_types[2]', { layer_types: ['sliding_attention', 'sliding_attention', 'chunked_attention', 'full_attention', 'sliding_attention', 'sliding_attention', 'sliding_attention', 'full_attention'] }],
    ['top_k_experts', { enable_moe_block: true, num_experts: 4, top_k_experts: 5, moe_intermediate_size: 8 }],
  ];
  for (const [field, patch] of cases) {
    t.throws(() => parseModelConfig({ ...base, ...patch }), { name: 'ModelConfigError', message: new RegExp(`"${field.replace(/[[\].]/g, '\\$&')}"`) }, field);
  }
  t.throws(() => parseModelConfig({ ...base, ...cases[0][1] }), ModelConfigError);
});

t.test('Gemma4ForConditionalGeneration: the text part under text_config and model.language_model. gives the same logits', async (t) => {
  const name = 'gemma4-tiny-moe';
  const dir = join(t.testdir(), 'wrapped');
  await mkdir(dir);
  const text = await fixtureConfig(name);
  const wrapped = {
    architectures: ['Gemma4ForConditionalGeneration'],
    model_type: 'gemma4',
    text_config: { ...text, architectures: undefined },
    vision_config: { model_type: 'gemma4_vision', hidden_size: 16 },
  };
  await writeFile(join(dir, 'config.json'), JSON.stringify(wrapped));
  // Rename every tensor in the header; the data bytes stay as they are.
  const file = await readFile(join(modelDir(name), 'model.safetensors'));
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8')) as Json;
  const renamed: Json = {};
  for (const [k, v] of Object.entries(header)) renamed[k.startsWith('model.') ? `model.language_model.${k.slice('model.'.length)}` : k] = v;
  let json = JSON.stringify(renamed);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  await writeFile(join(dir, 'model.safetensors'), Buffer.concat([len, Buffer.from(json), file.subarray(8 + n)]));

  const plain = await Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'cpu', cpuKernels: 'tfjs', slots: 1, capacity: 64 }));
  t.teardown(() => plain.dispose());
  const multi = await Engine.load(testEngineOptions({ dir, backend: 'cpu', cpuKernels: 'tfjs', slots: 1, capacity: 64 }));
  t.teardown(() => multi.dispose());
  const c = reference(name).cases[0];
  const [a, b] = [await plain.score(c.input_ids, c.top_k), await multi.score(c.input_ids, c.top_k)];
  a.forEach((p, i) => {
    t.same(b[i].top_ids, p.top_ids, `position ${i}: same top ids`);
    t.ok(Math.max(...b[i].top_logits.map((v, j) => Math.abs(v - p.top_logits[j]))) < 1e-6, `position ${i}: same logits`);
    t.ok(Math.max(...b[i].top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j]))) < TOL, `position ${i}: within ${TOL} of the reference`);
  });
});

t.test('Gemma 4 takes the native kernels and the fused webgpu programs as Gemma 2/3 do', async (t) => {
  const c = parseModelConfig(await fixtureConfig('gemma4-tiny-ple'));
  const opts: PathOptions = { webgpuKernels: 'fused', kernels: 'auto', threads: 2, graphThreads: 2, maxBatch: 4, prefillChunk: 64 };
  const built = nativeAddon().addon !== undefined;
  t.equal(choosePath(c, 'wasm', opts).name, built ? 'native' : 'graph', 'auto: the native kernels where they are built');
  t.equal(choosePath(c, 'cpu', { ...opts, kernels: 'tfjs' }).name, 'graph', 'CPU_KERNELS=tfjs: the graph');
  t.equal(choosePath(c, 'webgpu', opts).name, 'webgpu', 'webgpu: the fused programs');
  t.equal(choosePath(c, 'webgpu', { ...opts, webgpuKernels: 'graph' }).name, 'graph');
  t.notOk(choosePath(c, 'wasm', { ...opts, kernels: 'tfjs' }).split, 'no column split for Gemma 4 on the graph');
  if (built) t.equal(choosePath(c, 'cpu', { ...opts, kernels: 'native' }).name, 'native');
  else t.throws(() => choosePath(c, 'cpu', { ...opts, kernels: 'native' }), /native CPU kernels/);
});

t.test('the one-buffer check sizes Gemma 4 projections at the widest layer', async (t) => {
  const c = parseModelConfig(await fixtureConfig('gemma4-tiny-ple'));
  // q/k/v of a global layer: 4 heads x 32 + 2 x 2 KV heads x 32 = 256 columns (a sliding layer's are 128); gate/up of a double-wide layer 2 x 192.
  const H = c.hiddenSize;
  const just = (cols: number) => ({ bytes: 4 * H * cols, what: 'test limit' });
  t.doesNotThrow(() => checkTensorLimit(c, 'webgpu', just(2 * 192), true), 'the widest layers fit exactly');
  t.throws(() => checkTensorLimit(c, 'webgpu', just(2 * 192 - 1), true), { message: /gate\/up projection \[48 x 384\]/ }, 'a double-wide MLP is counted');
  const qkvOnly = parseModelConfig({ ...(await fixtureConfig('gemma4-tiny-ple')), use_double_wide_mlp: false, intermediate_size: 16 });
  t.throws(() => checkTensorLimit(qkvOnly, 'webgpu', just(255), true), { message: /q\/k\/v projection \[48 x 256\]/ }, 'global layers at global_head_dim');
  t.doesNotThrow(() => checkTensorLimit(qkvOnly, 'webgpu', just(256), true));
});
