import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  readSafetensors, writeSafetensors, f32ToBf16, bf16ToF32, encodeHeader, SafetensorsWriter,
  ModelFileError, TensorNotFoundError,
} from '../src/model/safetensors.js';

const FIXTURE = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), 'fixtures/hf-reference/gemma3-tiny');

/** Independent decode of one bf16 tensor straight from the file bytes. */
async function decodeBf16(file: string, name: string): Promise<{ shape: number[]; values: Float32Array }> {
  const buf = await fsp.readFile(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const e = header[name];
  const [b, end] = e.data_offsets as [number, number];
  const dv = new DataView(new ArrayBuffer(4));
  const values = new Float32Array((end - b) / 2);
  for (let i = 0; i < values.length; i++) {
    dv.setUint32(0, buf.readUInt16LE(8 + n + b + 2 * i) << 16);
    values[i] = dv.getFloat32(0);
  }
  return { shape: e.shape, values };
}

t.test('bf16 conversion rounds to nearest even', async (t) => {
  const x = new Float32Array([
    1, -2.5, 0, -0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 1 - 2 ** -9,
    3.4028234663852886e38, Infinity, -Infinity, NaN, 1e-40,
  ]);
  const back = bf16ToF32(f32ToBf16(x));
  t.same(Array.from(back.subarray(0, 4)), [1, -2.5, 0, -0]);
  t.ok(Object.is(back[3], -0), '-0 keeps its sign');
  t.equal(back[4], 1, 'halfway rounds down to even');
  t.equal(back[5], 1 + 2 ** -6, 'halfway rounds up to even');
  t.equal(back[6], 1 + 2 ** -7, 'above halfway rounds up');
  t.equal(back[7], 1, 'below halfway of 1 - 2^-9 rounds to 1');
  t.equal(back[8], Infinity, 'f32 max overflows to inf');
  t.equal(back[9], Infinity);
  t.equal(back[10], -Infinity);
  t.ok(Number.isNaN(back[11]), 'NaN stays NaN');
  t.ok(back[12]! > 0 && Math.abs(back[12]! - 1e-40) <= 2 ** -134, 'subnormals round to the nearest bf16 subnormal');
});

t.test('write and read back F32 and BF16', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'model.safetensors');
  const a = new Float32Array(6).map((_, i) => i * 0.1 - 0.2);
  const b = new Float32Array([1.00390625, 3.14159, -1e-3, 65504, 2 ** -130]);
  await writeSafetensors(file, [
    { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
    { name: 'b.weight', dtype: 'BF16', shape: [5], data: b },
    { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    { name: 'scalar', dtype: 'F32', shape: [], data: new Float32Array([7]) },
  ], { format: 'pt', note: 'x' });

  const raw = await fsp.readFile(file);
  const n = Number(raw.readBigUInt64LE(0));
  t.equal(n % 8, 0, 'header padded to 8 bytes');
  const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8'));
  t.same(header.__metadata__, { format: 'pt', note: 'x' });
  t.same(header.a.data_offsets, [0, 24]);
  t.same(header['b.weight'].data_offsets, [24, 34]);
  t.same(header.empty.data_offsets, [34, 34]);
  t.same(header.scalar.data_offsets, [34, 38]);
  t.equal(raw.length, 8 + n + 38);

  for (const target of [dir, file]) {
    const s = await readSafetensors(target);
    t.same(s.names().sort(), ['a', 'b.weight', 'empty', 'scalar']);
    t.same(s.metadata, { format: 'pt', note: 'x' });
    t.same(s.info('a'), { ...s.info('a'), dtype: 'F32', shape: [2, 3], byteLength: 24 });
    t.same(Array.from(await s.read('a')), Array.from(a), 'F32 is exact');
    const rb = await s.read('b.weight');
    t.same(Array.from(rb), Array.from(bf16ToF32(f32ToBf16(b))), 'BF16 is the rounded value');
    t.equal(rb[0], 1, '1.00390625 (halfway) rounds to even 1');
    t.equal(s.info('b.weight').dtype, 'BF16');
    t.equal((await s.read('empty')).length, 0);
    t.same(Array.from(await s.read('scalar')), [7]);
    t.ok(s.has('a'));
    t.notOk(s.has('nope'));
    t.throws(() => s.info('nope'), TensorNotFoundError);
    await t.rejects(s.read('nope'), TensorNotFoundError);
    await s.close();
  }
});

t.test('reads F16', async (t) => {
  const file = path.join(t.testdir(), 'h.safetensors');
  const h = encodeHeader([{ name: 'h', dtype: 'BF16', shape: [6] }]);
  const halves = new Uint16Array([0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x7c00]);
  // Same length: the header keeps its 8-byte padding.
  const header = Buffer.from(Buffer.from(h).toString('latin1').replace('"BF16"', '"F16" '), 'latin1');
  await fsp.writeFile(file, Buffer.concat([header, Buffer.from(halves.buffer)]));
  const s = await readSafetensors(file);
  t.equal(s.info('h').dtype, 'F16');
  t.same(Array.from(await s.read('h')), [1, -2, 0.5, 65504, 2 ** -24, Infinity]);
  await s.close();
});

t.test('streaming writer checks chunk boundaries', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'x.safetensors');
  const w = await SafetensorsWriter.create(file, [{ name: 'a', dtype: 'F32', shape: [4] }, { name: 'b', dtype: 'BF16', shape: [2] }]);
  await w.append(new Float32Array([1, 2]));
  await t.rejects(w.append(new Float32Array(3)), ModelFileError, 'a chunk cannot span two tensors');
  await w.append(new Float32Array([3, 4]));
  await w.append(new Float32Array([5, 6]));
  await t.rejects(w.append(new Float32Array(1)), ModelFileError, 'no data past the last tensor');
  await w.close();
  const s = await readSafetensors(file);
  t.same(Array.from(await s.read('a')), [1, 2, 3, 4]);
  t.same(Array.from(await s.read('b')), [5, 6]);
  await s.close();

  const w2 = await SafetensorsWriter.create(path.join(dir, 'y.safetensors'), [{ name: 'a', dtype: 'F32', shape: [4] }]);
  await w2.append(new Float32Array(2));
  await t.rejects(w2.close(), /closed before tensor "a"/);
  await t.rejects(writeSafetensors(path.join(dir, 'z.safetensors'), [{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), ModelFileError);
});

t.test('reads the sharded HF fixture', async (t) => {
  const s = await readSafetensors(FIXTURE);
  const index = JSON.parse(await fsp.readFile(path.join(FIXTURE, 'model.safetensors.index.json'), 'utf8'));
  t.same(s.names().sort(), Object.keys(index.weight_map).sort());
  t.equal(s.names().length, 1 + 6 * 13 + 1);
  t.same(s.info('model.embed_tokens.weight').shape, [262144, 32]);
  t.same(s.info('model.layers.0.self_attn.q_proj.weight').shape, [64, 32]);
  t.same(s.info('model.layers.0.self_attn.k_proj.weight').shape, [16, 32]);
  t.same(s.info('model.layers.5.mlp.down_proj.weight').shape, [32, 64]);
  t.same(s.info('model.norm.weight').shape, [32]);
  let params = 0;
  for (const n of s.names()) {
    const i = s.info(n);
    t.equal(i.dtype, 'BF16');
    t.equal(path.basename(i.file), index.weight_map[n]);
    params += i.shape.reduce((a, b) => a * b, 1);
  }
  t.equal(params, index.metadata.total_parameters);
  for (const name of ['model.embed_tokens.weight', 'model.layers.3.self_attn.q_norm.weight', 'model.layers.5.mlp.gate_proj.weight', 'model.norm.weight']) {
    const ref = await decodeBf16(path.join(FIXTURE, index.weight_map[name]), name);
    const got = await s.read(name);
    t.same(s.info(name).shape, ref.shape);
    t.equal(got.length, ref.values.length);
    let same = true;
    for (let i = 0; i < got.length; i++) if (!Object.is(got[i], ref.values[i])) { same = false; break; }
    t.ok(same, `${name} matches an independent bf16 decode`);
  }
  const norm = await s.read('model.layers.0.input_layernorm.weight');
  t.ok(norm.some((v) => v !== 0), 'norm weights are non-zero');
  await s.close();
});

t.test('errors name the file and tensor', async (t) => {
  const dir = t.testdir({ empty: {}, notfile: { 'model.safetensors': {} } });
  await t.rejects(readSafetensors(path.join(dir, 'missing')), { name: 'ModelFileError', message: /missing/ });
  await t.rejects(readSafetensors(path.join(dir, 'empty')), { name: 'ModelFileError', message: /no model\.safetensors/ });

  const garbage = path.join(dir, 'garbage.safetensors');
  const hdr = Buffer.from('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'); // unterminated JSON
  const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(hdr.length));
  await fsp.writeFile(garbage, Buffer.concat([len, hdr, Buffer.alloc(4)]));
  await t.rejects(readSafetensors(garbage), { name: 'ModelFileError', file: garbage, message: /bad safetensors header in .*garbage\.safetensors/ });

  const huge = path.join(dir, 'huge.safetensors');
  const len2 = Buffer.alloc(8); len2.writeBigUInt64LE(1000000n);
  await fsp.writeFile(huge, Buffer.concat([len2, Buffer.from('{}')]));
  await t.rejects(readSafetensors(huge), { name: 'ModelFileError', message: /huge\.safetensors.*header length/ });

  await fsp.writeFile(path.join(dir, 'tiny.safetensors'), Buffer.alloc(3));
  await t.rejects(readSafetensors(path.join(dir, 'tiny.safetensors')), { name: 'ModelFileError', message: /tiny\.safetensors/ });

  const unk = path.join(dir, 'unk.safetensors');
  const h3 = encodeHeader([{ name: 'w', dtype: 'F32', shape: [2] }]);
  const text = Buffer.from(h3.subarray(8)).toString('utf8').replace('"F32"', '"Q4K"');
  await fsp.writeFile(unk, Buffer.concat([Buffer.from(h3.subarray(0, 8)), Buffer.from(text), Buffer.alloc(8)]));
  await t.rejects(readSafetensors(unk), { name: 'ModelFileError', tensor: 'w', message: /unknown dtype "Q4K" for tensor "w" in .*unk\.safetensors/ });

  const trunc = path.join(dir, 'trunc.safetensors');
  await writeSafetensors(trunc, [{ name: 'w', dtype: 'F32', shape: [4], data: new Float32Array(4) }]);
  await fsp.truncate(trunc, (await fsp.stat(trunc)).size - 4);
  await t.rejects(readSafetensors(trunc), { name: 'ModelFileError', tensor: 'w', message: /tensor "w" data out of range in .*trunc\.safetensors/ });

  const mismatch = path.join(dir, 'mismatch.safetensors');
  const h4 = encodeHeader([{ name: 'w', dtype: 'F32', shape: [2] }]);
  const t4 = Buffer.from(h4.subarray(8)).toString('utf8').replace('[2]', '[3]');
  await fsp.writeFile(mismatch, Buffer.concat([Buffer.from(h4.subarray(0, 8)), Buffer.from(t4), Buffer.alloc(12)]));
  await t.rejects(readSafetensors(mismatch), { name: 'ModelFileError', message: /tensor "w" has 8 bytes but shape \[3\]/ });

  const ints = path.join(dir, 'ints.safetensors');
  const h5 = encodeHeader([{ name: 'ids', dtype: 'F32', shape: [1] }]);
  const t5 = Buffer.from(h5.subarray(8)).toString('utf8').replace('"F32"', '"I32"');
  await fsp.writeFile(ints, Buffer.concat([Buffer.from(h5.subarray(0, 8)), Buffer.from(t5), Buffer.alloc(4)]));
  const s = await readSafetensors(ints);
  t.equal(s.info('ids').dtype, 'I32');
  await t.rejects(s.read('ids'), { name: 'ModelFileError', tensor: 'ids', message: /dtype I32/ });
  t.equal((await s.readBytes('ids')).length, 4);
  await s.close();

  // A sharded directory whose second shard is gone.
  const sharded = path.join(dir, 'sharded');
  await fsp.mkdir(sharded);
  await fsp.copyFile(path.join(FIXTURE, 'model.safetensors.index.json'), path.join(sharded, 'model.safetensors.index.json'));
  await fsp.copyFile(path.join(FIXTURE, 'model-00002-of-00002.safetensors'), path.join(sharded, 'model-00002-of-00002.safetensors'));
  await t.rejects(readSafetensors(sharded), { name: 'ModelFileError', message: /model-00001-of-00002\.safetensors.*missing/ });

  await fsp.writeFile(path.join(sharded, 'model.safetensors.index.json'), '{not json');
  await t.rejects(readSafetensors(sharded), { name: 'ModelFileError', message: /bad index .*model\.safetensors\.index\.json/ });
});
