// bench/peers/gguf-gemma4.ts: the GGUF written for llama.cpp's gemma4 architecture, read back (keys, tensor table, values); no llama.cpp here.
import t, { type Test } from 'tap';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { convertToGguf } from '../bench/peers/convert.js';
import { gemma4GgufName } from '../bench/peers/gguf-gemma4.js';
import { makeModel } from '../src/model/make-model.js';
import type { Gemma4Shape } from '../src/model/make-model-gemma4.js';
import { readSafetensors } from '../src/model/safetensors.js';

type Value = number | bigint | boolean | string | Value[];
interface GgufTensor { dims: number[]; type: number; offset: number }
interface Gguf { kv: Map<string, Value>; tensors: Map<string, GgufTensor>; dataStart: number; bytes: Buffer }

/** A minimal GGUF v3 reader: metadata, tensor infos, and where the data section starts. */
function readGguf(bytes: Buffer): Gguf {
  let p = 0;
  const u32 = () => { const v = bytes.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { const v = Number(bytes.readBigUInt64LE(p)); p += 8; return v; };
  const str = () => { const n = u64(); const s = bytes.toString('utf8', p, p + n); p += n; return s; };
  const value = (type: number): Value => {
    switch (type) {
      case 0: return bytes.readUInt8(p++);
      case 1: return bytes.readInt8(p++);
      case 4: return u32();
      case 5: { const v = bytes.readInt32LE(p); p += 4; return v; }
      case 6: { const v = bytes.readFloatLE(p); p += 4; return v; }
      case 7: return bytes.readUInt8(p++) !== 0;
      case 8: return str();
      case 9: { const et = u32(); const n = u64(); return Array.from({ length: n }, () => value(et)); }
      default: throw new Error(`value type ${type} not handled`);
    }
  };
  if (bytes.toString('latin1', 0, 4) !== 'GGUF') throw new Error('not a GGUF file');
  p = 4;
  if (u32() !== 3) throw new Error('not GGUF v3');
  const nTensors = u64();
  const nKv = u64();
  const kv = new Map<string, Value>();
  for (let i = 0; i < nKv; i++) {
    const k = str();
    kv.set(k, value(u32()));
  }
  const tensors = new Map<string, GgufTensor>();
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const dims = Array.from({ length: u32() }, u64);
    tensors.set(name, { dims, type: u32(), offset: u64() });
  }
  return { kv, tensors, dataStart: p + ((32 - (p % 32)) % 32), bytes };
}

const f32At = (g: Gguf, name: string): Float32Array => {
  const x = g.tensors.get(name)!;
  const n = x.dims.reduce((a, b) => a * b, 1);
  return new Float32Array(g.bytes.buffer.slice(g.bytes.byteOffset + g.dataStart + x.offset, g.bytes.byteOffset + g.dataStart + x.offset + 4 * n));
};

// A small vocabulary keeps the files small; the tokenizer's extra ids are dropped by the converter.
const SMALL: Partial<Gemma4Shape> = { vocabSize: 1024, numKvSharedLayers: 3 };

async function convert(t: Test, shape: Partial<Gemma4Shape>, type: 'f32' | 'bf16' = 'f32'): Promise<{ dir: string; g: Gguf }> {
  const root = t.testdir();
  const dir = path.join(root, 'model');
  await makeModel({ out: dir, arch: 'gemma4', preset: 'tiny', shape });
  const out = path.join(root, `m-${type}.gguf`);
  await convertToGguf(dir, out, type);
  return { dir, g: readGguf(await fsp.readFile(out)) };
}

t.test('tensor names follow llama.cpp (gguf-py constants)', async (t) => {
  t.equal(gemma4GgufName('model.embed_tokens_per_layer.weight'), 'per_layer_token_embd.weight');
  t.equal(gemma4GgufName('model.language_model.layers.3.per_layer_input_gate.weight'), 'blk.3.inp_gate.weight');
  t.equal(gemma4GgufName('model.layers.0.layer_scalar'), 'blk.0.layer_output_scale.weight');
  t.equal(gemma4GgufName('model.layers.7.router.per_expert_scale'), 'blk.7.ffn_down_exps.scale');
  t.equal(gemma4GgufName('model.layers.7.experts.gate_up_proj'), 'blk.7.ffn_gate_up_exps.weight');
  t.equal(gemma4GgufName('model.vision_tower.encoder.layers.0.mlp.fc1.weight'), null);
});

t.test('tiny Gemma 4 -> gemma4 GGUF: keys, tensor table, values as stored', async (t) => {
  const { dir, g } = await convert(t, SMALL);
  const A = 'gemma4.';
  const kv = (k: string) => g.kv.get(k);
  t.equal(kv('general.architecture'), 'gemma4');
  t.equal(kv(`${A}block_count`), 6);
  t.equal(kv(`${A}embedding_length`), 64);
  t.equal(kv(`${A}attention.key_length`), 64, 'global head size');
  t.equal(kv(`${A}attention.value_length`), 64);
  t.equal(kv(`${A}attention.key_length_swa`), 32, 'sliding head size');
  t.equal(kv(`${A}attention.value_length_swa`), 32);
  t.same(kv(`${A}attention.sliding_window_pattern`), [true, true, false, true, true, false]);
  t.equal(kv(`${A}attention.sliding_window`), 32);
  t.equal(kv(`${A}attention.shared_kv_layers`), 3);
  t.same(kv(`${A}feed_forward_length`), [128, 128, 128, 256, 256, 256], 'double-wide MLP on the KV-shared layers');
  t.equal(kv(`${A}attention.head_count_kv`), 1);
  t.equal(kv(`${A}rope.dimension_count`), 64);
  t.equal(kv(`${A}rope.dimension_count_swa`), 32);
  t.equal(kv(`${A}rope.freq_base`), 1e6);
  t.equal(kv(`${A}rope.freq_base_swa`), 1e4);
  t.equal(kv(`${A}embedding_length_per_layer_input`), 16);
  t.equal(kv(`${A}final_logit_softcapping`), 30);
  t.equal(kv('tokenizer.ggml.model'), 'llama');
  t.equal((kv('tokenizer.ggml.tokens') as string[]).length, 1024);

  // Every checkpoint tensor has its GGUF name (tied lm_head: none), plus rope_freqs.
  const store = await readSafetensors(dir);
  t.teardown(() => store.close());
  const expected = new Set([...store.names().map((n) => gemma4GgufName(n)!), 'rope_freqs.weight']);
  t.same([...g.tensors.keys()].sort(), [...expected].sort());
  t.notOk(g.tensors.has('output.weight'));
  for (const l of [3, 4, 5]) t.notOk(g.tensors.has(`blk.${l}.attn_k.weight`), `KV-shared layer ${l} has no K`);
  t.same(g.tensors.get('blk.2.attn_q.weight')!.dims, [64, 4 * 64], 'ggml order: fastest dimension first');
  t.same(g.tensors.get('per_layer_token_embd.weight')!.dims, [6 * 16, 1024]);
  t.same(g.tensors.get('blk.0.layer_output_scale.weight')!.dims, [1]);
  for (const x of g.tensors.values()) t.equal(x.offset % 32, 0);

  // Norms as stored (x * w), unlike Gemma 3's 1 + w.
  t.same(Array.from(f32At(g, 'blk.1.attn_norm.weight')), Array.from(await store.read('model.layers.1.input_layernorm.weight')));
  t.same(Array.from(f32At(g, 'output_norm.weight')), Array.from(await store.read('model.norm.weight')));
  // Proportional RoPE: 0.25 of the 64-wide global head rotates, 8 of 32 frequency pairs.
  const freqs = Array.from(f32At(g, 'rope_freqs.weight'));
  t.same(freqs.slice(0, 8), Array(8).fill(1));
  t.ok(freqs.slice(8).every((f) => f > 1e29), 'the other 24 pairs get angle ~0');
});

t.test('bf16 keeps a BF16 checkpoint bit for bit; 1-D tensors stay f32', async (t) => {
  const { dir, g } = await convert(t, SMALL, 'bf16');
  const store = await readSafetensors(dir);
  t.teardown(() => store.close());
  t.equal(g.kv.get('general.file_type'), 32, 'LLAMA_FTYPE_MOSTLY_BF16');
  const q = g.tensors.get('blk.0.attn_q.weight')!;
  t.equal(q.type, 30, 'GGML_TYPE_BF16');
  const raw = await store.readBytes('model.layers.0.self_attn.q_proj.weight');
  t.ok(Buffer.from(raw).equals(g.bytes.subarray(g.dataStart + q.offset, g.dataStart + q.offset + raw.length)));
  t.equal(g.tensors.get('blk.0.attn_norm.weight')!.type, 0);
});

t.test('keys-as-values and MoE layers', async (t) => {
  const { g } = await convert(t, { ...SMALL, kEqV: true, numGlobalKvHeads: 2, moe: { numExperts: 4, topK: 2, intermediateSize: 32 } });
  t.same(g.kv.get('gemma4.attention.head_count_kv'), [1, 1, 2, 1, 1, 2], 'global layers have their own KV heads');
  t.equal(g.kv.get('gemma4.expert_count'), 4);
  t.equal(g.kv.get('gemma4.expert_used_count'), 2);
  t.equal(g.kv.get('gemma4.expert_feed_forward_length'), 32);
  t.notOk(g.tensors.has('blk.2.attn_v.weight'), 'keys are the values');
  t.same(g.tensors.get('blk.0.ffn_gate_up_exps.weight')!.dims, [64, 64, 4]);
  t.same(g.tensors.get('blk.0.ffn_down_exps.weight')!.dims, [32, 64, 4]);
  t.same(g.tensors.get('blk.0.ffn_gate_inp.weight')!.dims, [64, 4]);
  t.same(g.tensors.get('blk.0.ffn_gate_inp.scale')!.dims, [64]);
  t.same(g.tensors.get('blk.0.ffn_down_exps.scale')!.dims, [4]);
});

t.test('a KV-sharing layout llama.cpp reads differently is refused, naming the layers', async (t) => {
  const root = t.testdir();
  // Two shared layers of six (every third global): the shared sliding layer 4 reads layer 3, llama.cpp would read layer 2.
  await makeModel({ out: path.join(root, 'model'), arch: 'gemma4', preset: 'tiny', shape: { vocabSize: 1024, numKvSharedLayers: 2 } });
  await t.rejects(convertToGguf(path.join(root, 'model'), path.join(root, 'x.gguf')), /KV-shared layer 4 \(sliding\) reads layer 3, llama\.cpp would read layer 2 \(global\)/);
});
