// Loading: config styles, multimodal checkpoints, dtypes, and clear errors that name what is wrong.
import t from 'tap';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/engine/engine.js';
import { readSafetensors, writeSafetensors, type TensorData } from '../src/model/safetensors.js';
import { modelDir } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

const IDS = [2, 105, 1645, 300, 77, 1024];
const work = await mkdtemp(join(tmpdir(), 'gemma-serve-load-'));
t.teardown(() => rm(work, { recursive: true, force: true }));

async function copyModel(name: string, as: string): Promise<string> {
  const dir = join(work, as);
  await cp(modelDir(name), dir, { recursive: true });
  return dir;
}

async function rewrite(dir: string, edit: (tensors: TensorData[]) => TensorData[], dtype: 'BF16' | 'F32' = 'BF16'): Promise<void> {
  const store = await readSafetensors(dir);
  const tensors: TensorData[] = [];
  for (const name of store.names()) {
    const info = store.info(name);
    tensors.push({ name, dtype, shape: info.shape, data: await store.read(name) });
  }
  await store.close();
  await rm(join(dir, 'model.safetensors'), { force: true });
  await writeSafetensors(join(dir, 'model.safetensors'), edit(tensors));
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => Record<string, unknown>): Promise<void> {
  const file = join(dir, 'config.json');
  await writeFile(file, JSON.stringify(edit(JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>)));
}

async function scores(dir: string): Promise<number[][]> {
  const engine = await Engine.load(testEngineOptions({ dir, backend: 'cpu', slots: 1, capacity: 32 }));
  try {
    return (await engine.score(IDS, 5)).map((p) => p.top_logits);
  } finally {
    engine.dispose();
  }
}

const reference = await scores(modelDir('gemma3-tiny-scaled'));

t.test('Gemma3ForConditionalGeneration: text config under text_config, tensors under a language-model prefix', async (t) => {
  const dir = await copyModel('gemma3-tiny-scaled', 'multimodal');
  await editConfig(dir, (c) => ({ architectures: ['Gemma3ForConditionalGeneration'], model_type: 'gemma3', text_config: { ...c, model_type: 'gemma3_text' } }));
  await rewrite(dir, (ts) => [
    ...ts.map((x) => ({ ...x, name: x.name.replace(/^model\./, 'model.language_model.') })),
    { name: 'model.vision_tower.vision_model.embeddings.patch_embedding.weight', dtype: 'BF16', shape: [4, 3], data: new Float32Array(12) },
  ]);
  t.same(await scores(dir), reference, 'same logits as the plain checkpoint');
});

t.test('F32 weights give the same logits as the BF16 originals', async (t) => {
  const dir = await copyModel('gemma3-tiny-scaled', 'f32');
  await rewrite(dir, (ts) => ts, 'F32');
  t.same(await scores(dir), reference);
});

t.test('errors name the file, tensor or value at fault', async (t) => {
  // Four slots throughout: the size these loads have always been checked at (the refusals below estimate memory from it).
  await t.rejects(Engine.load(testEngineOptions({ dir: join(work, 'nowhere'), backend: 'cpu', slots: 4 })), /nowhere.*config\.json|config\.json.*nowhere/s, 'missing directory');

  const arch = await copyModel('gemma2-tiny', 'arch');
  await editConfig(arch, (c) => ({ ...c, architectures: ['LlamaForCausalLM'] }));
  await t.rejects(Engine.load(testEngineOptions({ dir: arch, backend: 'cpu', slots: 4 })), /LlamaForCausalLM.*not supported/, 'unknown architecture');

  const missing = await copyModel('gemma2-tiny', 'missing');
  await rewrite(missing, (ts) => ts.filter((x) => x.name !== 'model.layers.2.mlp.up_proj.weight'));
  await t.rejects(Engine.load(testEngineOptions({ dir: missing, backend: 'cpu', slots: 4 })), /model\.layers\.2\.mlp\.up_proj\.weight.*missing/, 'missing tensor');

  const shape = await copyModel('gemma2-tiny', 'shape');
  await editConfig(shape, (c) => ({ ...c, intermediate_size: 80 }));
  await t.rejects(Engine.load(testEngineOptions({ dir: shape, backend: 'cpu', slots: 4 })), /gate_proj\.weight" has shape \[64, 32\], expected \[80, 32\]/, 'shape mismatch shows both shapes');

  const noWeights = await copyModel('gemma2-tiny', 'noweights');
  await rm(join(noWeights, 'model.safetensors'));
  await t.rejects(Engine.load(testEngineOptions({ dir: noWeights, backend: 'cpu', slots: 4 })), /model\.safetensors/, 'missing weights file');

  const huge = await copyModel('gemma2-tiny', 'huge');
  await editConfig(huge, (c) => ({ ...c, hidden_size: 8192, intermediate_size: 32768, num_hidden_layers: 40, vocab_size: 256000 }));
  await t.rejects(
    Engine.load(testEngineOptions({ dir: huge, backend: 'wasm', cpuKernels: 'tfjs', slots: 4 })),
    /needs about [\d.]+ GiB on the wasm backend .* but the backend holds 3\.84 GiB/,
    'a model too large for wasm is refused before loading, with both figures',
  );
  await t.rejects(
    Engine.load(testEngineOptions({ dir: huge, backend: 'wasm', cpuKernels: 'native', slots: 4 })),
    /weights need up to [\d.]+ GiB of host memory for the native CPU kernels .* but the machine has [\d.]+ GiB/,
    'with the native kernels the weights are checked against host memory instead',
  );
});
