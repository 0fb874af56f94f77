// The decode loop end to end on a fixture model: seeds, strategies, bias, penalties, logprobs, stop rules, tensors.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { generate, type GenerateRequest } from '../src/engine/sampler-loop.js';
import { reduceOnGraph } from '../src/engine/graph/reduce.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../src/engine/types.js';
import type { StepOutput } from '../src/engine/sampler.js';
import { modelDir, reference } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 4, capacity: 256 }));
t.teardown(() => engine.dispose());
const baseline = tf.memory().numTensors;
const prompt = engine.tokenizer.encodeChat([{ role: 'user', content: 'Tell me a story about a fox.' }]);
const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, maxTokens: 16, ...p });

async function run(requests: GenerateRequest[]): Promise<StepOutput[][]> {
  const out: StepOutput[][] = requests.map(() => []);
  for await (const e of generate(engine, requests)) out[e.index].push(e.output);
  return out;
}
const ids = (o: StepOutput[]) => o.map((x) => x.token);
const text = (o: StepOutput[]) => o.map((x) => x.text).join('');

t.test('a seeded request gives the same tokens alone and in any batch', async (t) => {
  const req = { promptIds: prompt, params: params({ temperature: 1, seed: 1234 }) };
  const other = engine.tokenizer.encodeChat([{ role: 'user', content: 'Something else entirely, and longer.' }]);
  const [alone] = await run([req]);
  const [, inBatch] = await run([{ promptIds: other, params: params({ temperature: 0.7, seed: 5 }) }, req, { promptIds: prompt, params: params({ temperature: 1.3 }) }]);
  t.same(ids(inBatch), ids(alone));
  const [again] = await run([req]);
  t.same(ids(again), ids(alone), 'reproducible');
  const [otherSeed] = await run([{ promptIds: prompt, params: params({ temperature: 1, seed: 99 }) }]);
  t.not(ids(otherSeed).join(), ids(alone).join(), 'another seed gives another sample');
});

t.test('top_k = 1 and a tiny top_p both equal greedy', async (t) => {
  const [greedy, topk1, topp] = await run([
    { promptIds: prompt, params: params({ temperature: 0 }) },
    { promptIds: prompt, params: params({ temperature: 1, topK: 1, seed: 3 }) },
    { promptIds: prompt, params: params({ temperature: 1, topP: 1e-6, seed: 4 }) },
  ]);
  t.same(ids(topk1), ids(greedy));
  t.same(ids(topp), ids(greedy));
});

t.test('a logit bias of +100 forces a token; -100 forbids one', async (t) => {
  const [forced] = await run([{ promptIds: prompt, params: params({ temperature: 1, seed: 1, logitBias: { 9259: 100 }, maxTokens: 5 }) }]);
  t.same(ids(forced), [9259, 9259, 9259, 9259, 9259]);
  const [greedy] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 1 }) }]);
  const [banned] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 1, logitBias: { [greedy[0].token]: -100 } }) }]);
  t.not(banned[0].token, greedy[0].token);
});

t.test('penalties edit exactly the generated tokens, on the device', async (t) => {
  const V = 50;
  const row = Float32Array.from({ length: V }, (_, i) => (i % 2 === 0 ? 2 : -2) + i / 100);
  const counts = new Map([[10, 3], [11, 1]]);
  const p = params({ temperature: 1, presencePenalty: 0.5, frequencyPenalty: 0.25, repetitionPenalty: 2, logitBias: { 20: 1 } });
  const [top] = await reduceOnGraph(tf.tensor2d(row, [1, V]), [{ params: p, counts, k: V }]);
  const got = new Map(Array.from(top.ids, (id, i) => [id, top.logits[i]]));
  t.ok(Math.abs(got.get(10)! - ((2.1 / 2) - 0.5 - 0.75)) < 1e-5, 'positive logit: divided by repetition, minus presence and 3x frequency');
  t.ok(Math.abs(got.get(11)! - (-1.89 * 2 - 0.5 - 0.25)) < 1e-5, 'negative logit: multiplied by repetition');
  t.ok(Math.abs(got.get(20)! - 3.2) < 1e-5, 'bias added');
  t.ok(Math.abs(got.get(12)! - 2.12) < 1e-5, 'untouched token unchanged');
  const lse = Math.log(Array.from(got.values()).reduce((s, x) => s + Math.exp(x), 0));
  t.ok(Math.abs(top.logsumexp - lse) < 1e-4, 'logsumexp over the edited logits');
  // A strong frequency penalty makes greedy decoding avoid repeats it would otherwise make.
  const [plain, penalized] = await run([
    { promptIds: prompt, params: params({ temperature: 0, maxTokens: 12 }) },
    { promptIds: prompt, params: params({ temperature: 0, maxTokens: 12, frequencyPenalty: 2, presencePenalty: 2, repetitionPenalty: 2 }) },
  ]);
  const repeats = (o: StepOutput[]) => o.length - new Set(ids(o)).size;
  t.ok(repeats(plain) > 0, 'unpenalized greedy repeats itself on this model');
  t.ok(repeats(penalized) < repeats(plain), 'penalties reduce repeats');
});

t.test('greedy logprobs equal the reference (top logit minus logsumexp)', async (t) => {
  const c = reference('gemma3-tiny').cases[1];
  const [out] = await run([{ promptIds: c.input_ids, params: params({ temperature: 0, logprobs: true, topLogprobs: 5, maxTokens: 6, stopTokenIds: [] }) }]);
  const last = c.input_ids.length - 1;
  const first = out[0].logprob!;
  t.ok(Math.abs(first.logprob - (c.top_logits[last][0] - c.logsumexp[last])) < 1e-3, 'chosen token');
  first.top.forEach((alt, j) => t.ok(Math.abs(alt.logprob - (c.top_logits[last][j] - c.logsumexp[last])) < 1e-3, `alternative ${j}`));
  t.same(ids(out).slice(0, 1), [c.greedy_new_ids[0]]);
  // Later steps: the reference's top-5 logits minus the logsumexp of a full pass over the same tokens.
  for (let s = 1; s < out.length; s++) {
    const seq = [...c.input_ids, ...c.greedy_new_ids.slice(0, s)];
    const full = await engine.score(seq, 1);
    const lse = full[seq.length - 1].logsumexp;
    out[s].logprob!.top.forEach((alt, j) => t.ok(Math.abs(alt.logprob - (c.greedy_top5_logits[s][j] - lse)) < 1e-3, `step ${s} alternative ${j}`));
  }
  t.same(first.bytes, Array.from(engine.tokenizer.tokenBytes(out[0].token)), 'bytes of the chosen token');
});

t.test('a stop string spanning tokens stops generation and is not emitted', async (t) => {
  const [plain] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 16 }) }]);
  const full = text(plain);
  // Take a stop string across the boundary of the 4th and 5th token's text.
  const boundary = plain.slice(0, 4).map((o) => o.text).join('').length;
  const stop = full.slice(boundary - 2, boundary + 2);
  t.ok(stop.length === 4, `stop string ${JSON.stringify(stop)} spans two tokens`);
  const [stopped] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 16, stop: [stop] }) }]);
  const got = text(stopped);
  t.equal(got, full.slice(0, full.indexOf(stop)), 'text up to the stop string, without it');
  t.equal(stopped.at(-1)!.finish, 'stop');
  t.equal(plain.at(-1)!.finish, 'length');
  t.ok(stopped.length < plain.length, 'generation ended early');
});

t.test('max_tokens ends with length; the end-of-turn token ends with stop', async (t) => {
  const [out] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 3 }) }]);
  t.equal(out.length, 3);
  t.equal(out[2].finish, 'length');
  const [eot] = await run([{ promptIds: prompt, params: params({ temperature: 0, maxTokens: 8, logitBias: { [engine.tokenizer.endOfTurnId]: 100 } }) }]);
  t.equal(eot.length, 1);
  t.equal(eot[0].finish, 'stop');
  t.equal(eot[0].text, '', 'the end-of-turn token is not emitted');
});

t.test('tensor count is back at its baseline', async (t) => {
  for (let s = 0; s < engine.slots; s++) engineParts(engine).pool.reset(s);
  t.equal(tf.memory().numTensors, baseline);
});

t.test('parameters out of range are refused with the field named', async (t) => {
  const bad: Array<[Partial<SamplingParams>, string]> = [
    [{ temperature: -1 }, 'temperature'],
    [{ topP: 0 }, 'top_p'],
    [{ logprobs: true, topLogprobs: 21 }, 'top_logprobs'],
    [{ logitBias: { [engine.config.vocabSize]: 1 } }, 'logit_bias'],
  ];
  for (const [p, param] of bad) {
    await t.rejects(run([{ promptIds: prompt, params: params(p) }]), { status: 400, param }, `${param} checked`);
  }
  t.equal(tf.memory().numTensors, baseline, 'a refused request leaves no tensor behind');
});
