// Structured outputs in the engine: a grammar's mask is applied before top-K
// on every forward path (native top-k, the WGSL reduction, the tfjs graph),
// so every candidate a row gets is a token the grammar allows, and the
// log-sum-exp is taken over the allowed tokens only. Also the grammar set
// built over the vocabulary: compiled grammars are cached by schema.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine } from '../src/engine/engine.js';
import type { RowLogitsInput } from '../src/engine/reduce.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { engineBackends } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';
import { modelDir } from './helpers/fixtures.js';

const prompt = [2, 105, 2364, 107, 9259, 106, 107, 105, 4368, 107];
const allowedBy = (mask: Int32Array, id: number) => ((mask[id >> 5]! >>> (id & 31)) & 1) === 1;

/** A mask allowing `ids` only. */
function maskOf(V: number, ids: number[]): Int32Array {
  const m = new Int32Array(Math.ceil(V / 32));
  for (const id of ids) m[id >> 5]! |= 1 << (id & 31);
  return m;
}

let reference: { ids: number[]; lse: number } | undefined;

for (const { label, backend, kernels, threads } of engineBackends()) {
  t.test(`a mask leaves only allowed candidates on ${label}`, async (t) => {
    const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend, cpuKernels: kernels, cpuThreads: threads, slots: 2, capacity: 64 }));
    t.teardown(() => engine.dispose());
    const V = engine.config.vocabSize;
    const baseline = tf.memory().numTensors;
    const allowed = [5, 77, 1000, 4097, 60000, V - 1];
    const row = (mask?: Int32Array): RowLogitsInput => ({ params: { ...DEFAULT_SAMPLING, temperature: 0 }, counts: new Map(), k: 8, ...(mask ? { mask } : {}) });

    const free = (await engine.prefill(0, prompt, row()))!;
    const masked = (await engine.prefill(1, prompt, row(maskOf(V, allowed))))!;
    const finite = Array.from(masked.logits).filter((l) => l > -1e30).length;
    t.equal(finite, allowed.length, 'as many real candidates as allowed tokens');
    const ids = Array.from(masked.ids.slice(0, finite)).sort((a, b) => a - b);
    t.same(ids, allowed, 'every real candidate is allowed, and every allowed token is a candidate (K > allowed)');
    t.ok(masked.logsumexp < free.logsumexp, 'the log-sum-exp covers the allowed tokens only');
    // The allowed tokens keep the logits they have unmasked: compare with the same tokens' values where both have them.
    const best = masked.ids[0]!;
    const at = Array.from(free.ids).indexOf(best);
    if (at >= 0) t.ok(Math.abs(free.logits[at]! - masked.logits[0]!) < 1e-4, 'a masked row keeps its allowed logits');

    // Decode step, two rows: one masked, one free.
    const [a, b] = await engine.decode([masked.ids[0]!, free.ids[0]!], [1, 0], [row(maskOf(V, [3, 4])), row()]);
    t.same(Array.from(a!.ids.slice(0, 2)).sort((x, y) => x - y), [3, 4], 'a masked row in a batch');
    t.ok(b!.logits.every((l) => l > -1e30), 'the other row in the batch is untouched');
    for (const id of a!.ids.slice(0, 2)) t.ok(allowedBy(maskOf(V, [3, 4]), id));

    if (!reference) reference = { ids, lse: masked.logsumexp };
    else {
      t.same(ids, reference.ids, 'the same candidates as the first path');
      t.ok(Math.abs(masked.logsumexp - reference.lse) < 1e-3, 'the same masked log-sum-exp as the first path');
    }
    await engine.resetSlot(0);
    await engine.resetSlot(1);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}

t.test('grammars over the vocabulary: compiled once per schema, a matcher per row', async (t) => {
  const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 1, capacity: 64, grammarCacheSize: 2 }));
  t.teardown(() => engine.dispose());
  const grammars = await engine.grammars();
  t.equal(await engine.grammars(), grammars, 'built once');
  const schema = (n: number) => ({ kind: 'json_schema' as const, schema: { type: 'object', properties: { a: { type: 'integer', maximum: n } }, required: ['a'] }, param: 'p' });
  const first = await grammars.compile(schema(1));
  t.equal(await grammars.compile(schema(1)), first, 'the same schema comes from the cache');
  await grammars.compile(schema(2));
  await grammars.compile(schema(3));
  t.equal(grammars.cached, 2, 'the cache keeps GRAMMAR_CACHE_SIZE grammars');
  t.not(await grammars.compile(schema(1)), first, 'the least recently used one was dropped and is compiled again');

  const matcher = await grammars.matcher(await grammars.compile({ kind: 'json_object' }));
  const mask = await matcher.mask();
  const tok = engine.tokenizer;
  const allowed = Array.from({ length: engine.config.vocabSize }, (_, id) => id).filter((id) => allowedBy(mask, id));
  t.ok(allowed.length > 0 && allowed.every((id) => tok.tokenText(id).replace(/^▁/, '').startsWith('{') || tok.tokenText(id) === '<0x7B>'), 'a JSON object starts with {');
  t.notOk(allowed.includes(tok.endOfTurnId), 'no stop before the object');
  const open = allowed.find((id) => tok.tokenText(id) === '{')!;
  t.ok(matcher.accept(open));
  t.notOk(matcher.terminated);
  matcher.dispose();
  matcher.dispose();
  // A length-bounded string leaves raw control characters out, as JSON does (the vocabulary has a bare U+001F token).
  const bounded = await grammars.matcher(await grammars.compile({ kind: 'json_schema', schema: { type: 'object', properties: { s: { type: 'string', maxLength: 4 } }, required: ['s'] }, param: 'p' }));
  const idOf = (text: string) => Array.from({ length: engine.config.vocabSize }, (_, id) => id).find((id) => tok.tokenText(id) === text)!;
  for (const piece of ['{', '<0x0A>', '▁', '▁', '"', 's', '":', '▁"']) t.ok(bounded.accept(idOf(piece)), `accepts ${JSON.stringify(piece)}`);
  const inString = await bounded.mask();
  t.ok(allowedBy(inString, idOf('a')), 'a letter is allowed in the string');
  t.notOk(allowedBy(inString, idOf('\x1f')), 'a raw control character is not');
  t.notOk(allowedBy(inString, idOf('<0x1F>')), 'nor its byte');
  bounded.dispose();
  await t.rejects(grammars.compile({ kind: 'json_schema', schema: { type: 'bogus' }, param: 'response_format.json_schema.schema' }), { param: 'response_format.json_schema.schema', status: 400 });
  await t.rejects(grammars.compile({ kind: 'json_schema', schema: { type: 'array', uniqueItems: true }, param: 'x' }), { param: 'x.uniqueItems' });
});
