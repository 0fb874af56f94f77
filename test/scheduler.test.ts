// Continuous batching over a real engine: prefix reuse, batching, cancellation, queue limits, n choices.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { QueueFullError } from '../src/scheduler/errors.js';
import { modelDir } from './helpers/fixtures.js';
import { chat, makeStack } from './helpers/stack.js';
import { testEngineOptions } from './helpers/engine-options.js';

const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 4, capacity: 256 }));
t.teardown(() => engine.dispose());
const baseline = tf.memory().numTensors;

t.test('a resent conversation is matched and its cache reused', async (t) => {
  const s = makeStack(engine);
  // The reply must not start with a space: Gemma's template trims replies, and
  // a conversation is matched only when the resent reply agrees with the cache.
  const first = await chat(s, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hi there' }], { logitBias: { 9259: 100 } });
  t.equal(first.usage.cachedTokens, 0);
  t.equal(first.finish, 'length');
  t.ok(first.sessionId, 'a session id was assigned');
  const second = await chat(s, [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi there' },
    { role: 'assistant', content: first.text },
    { role: 'user', content: 'And again?' },
  ]);
  t.equal(second.sessionId, first.sessionId, 'matched to the same session by prefix');
  t.ok(second.usage.cachedTokens > 10, `cached tokens reused (${second.usage.cachedTokens})`);
  t.equal(second.usage.promptTokensProcessed, second.usage.promptTokens - second.usage.cachedTokens);
  // Same answer as a cold run of the same history.
  const cold = await chat(makeStack(engine), [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi there' },
    { role: 'assistant', content: first.text },
    { role: 'user', content: 'And again?' },
  ], {}, 'cold');
  t.equal(second.text, cold.text, 'reusing the cache gives the same greedy reply as prefilling from scratch');
  await s.scheduler.shutdown(1000);
});

t.test('concurrent requests share decode steps', async (t) => {
  const s = makeStack(engine);
  const results = await Promise.all(
    [0, 1, 2].map((i) => chat(s, [{ role: 'user', content: `Request number ${i}` }], { maxTokens: 12 }, `batch-${i}`)),
  );
  t.ok(results.every((r) => r.finish === 'length' && r.usage.completionTokens === 12));
  t.ok(Math.max(...s.steps) > 1, `some steps ran several rows (max ${Math.max(...s.steps)})`);
  await s.scheduler.shutdown(1000);
});

t.test('a cancelled request leaves the batch and frees its slot', async (t) => {
  const s = makeStack(engine);
  const ac = new AbortController();
  const stream = s.scheduler.submit({
    requestId: 'cancel-me',
    sessionId: 'cancel-session',
    messages: [{ role: 'user', content: 'Keep going' }],
    params: { ...(await import('../src/engine/types.js')).DEFAULT_SAMPLING, temperature: 0, maxTokens: 10_000 },
    n: 1,
    signal: ac.signal,
  });
  let seen = 0;
  for await (const e of stream) {
    if (e.type === 'token' && ++seen === 3) ac.abort();
  }
  t.ok(seen >= 3 && seen < 50, `stream ended soon after the abort (${seen} tokens)`);
  t.equal(s.slots.busySlots(), 0, 'no slot is held');
  const again = await chat(s, [{ role: 'user', content: 'Keep going' }], {}, 'cancel-session');
  t.ok(again.usage.cachedTokens > 0, 'the session cache stayed');
  await s.scheduler.shutdown(1000);
});

t.test('a full queue answers 429', async (t) => {
  const s = makeStack(engine, { maxQueue: 1, maxBatch: 1 });
  const p1 = chat(s, [{ role: 'user', content: 'one' }], { maxTokens: 40 }, 'q1');
  while (s.scheduler.stats().running === 0) await new Promise((r) => setTimeout(r, 5));
  const p2 = chat(s, [{ role: 'user', content: 'two' }], { maxTokens: 4 }, 'q2');
  let thrown: unknown;
  try {
    await chat(s, [{ role: 'user', content: 'three' }], {}, 'q3');
  } catch (err) {
    thrown = err;
  }
  t.ok(thrown instanceof QueueFullError, 'the third request is refused');
  t.equal((thrown as QueueFullError).status, 429);
  const [r1, r2] = await Promise.all([p1, p2]);
  t.equal(r1.finish, 'length');
  t.equal(r2.finish, 'length');
  await s.scheduler.shutdown(1000);
});

t.test('n choices each get their own row; seeded choices differ and reproduce', async (t) => {
  const s = makeStack(engine);
  const run = async () => {
    const stream = s.scheduler.submit({
      requestId: 'n3',
      messages: [{ role: 'user', content: 'Pick something' }],
      params: { ...(await import('../src/engine/types.js')).DEFAULT_SAMPLING, temperature: 1, seed: 42, maxTokens: 6 },
      n: 3,
      signal: new AbortController().signal,
    });
    const texts = ['', '', ''];
    const finishes: string[] = [];
    for await (const e of stream) {
      if (e.type === 'token') texts[e.choice] += e.text;
      if (e.type === 'finish') finishes[e.choice] = e.reason;
    }
    return { texts, finishes };
  };
  const a = await run();
  const b = await run();
  t.same(a.finishes, ['length', 'length', 'length']);
  t.same(a.texts, b.texts, 'same seed, same choices');
  t.ok(new Set(a.texts).size > 1, 'choices differ from each other');
  t.equal(s.slots.busySlots(), 0);
  await s.scheduler.shutdown(1000);
});

t.test('tensors are back at baseline', async (t) => {
  for (let i = 0; i < engine.slots; i++) engineParts(engine).pool.reset(i);
  t.equal(tf.memory().numTensors, baseline);
});
