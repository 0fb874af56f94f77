// Prompts arriving while a stream decodes are prefilled chunk by chunk, with a
// decode step between chunks: the running stream keeps producing tokens.
import t from 'tap';
import { Engine } from '../src/engine/engine.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { modelDir } from './helpers/fixtures.js';
import { chat, makeStack } from './helpers/stack.js';
import { TokenizerPool } from '../src/model/tokenizer-pool.js';
import type { ChatTurn } from '../src/scheduler/types.js';
import { testEngineOptions } from './helpers/engine-options.js';

const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 5, capacity: 256 }));
t.teardown(() => engine.dispose());

const CHUNK = 8;

t.test('a decode step runs between the prefill chunks of waiting prompts', async (t) => {
  const s = makeStack(engine, { prefillChunk: CHUNK });
  const submit = (id: string, content: string, maxTokens: number) =>
    s.scheduler.submit({
      requestId: id,
      sessionId: id,
      messages: [{ role: 'user', content }],
      params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens },
      n: 1,
      signal: new AbortController().signal,
    });

  const running = submit('running', 'Go on for a while.', 200)[Symbol.asyncIterator]();
  for (let seen = 0; seen < 2; ) if ((await running.next()).value?.type === 'token') seen++;

  // Four prompts of several chunks each, admitted together.
  const longPrompt = (i: number) => `Prompt ${i}: ${'the quick brown fox jumps over the lazy dog '.repeat(4)}`;
  const prefillRounds = [0, 1, 2, 3]
    .map((i) => Math.ceil(engine.tokenizer.encodeChat([{ role: 'user', content: longPrompt(i) }], { addGenerationPrompt: true }).length / CHUNK))
    .reduce((a, b) => a + b, 0);
  const stepsBefore = s.steps.length;
  const firstTokenAtStep = await Promise.all(
    [0, 1, 2, 3].map(async (i) => {
      let at = -1;
      for await (const e of submit(`waiting-${i}`, longPrompt(i), 2)) if (e.type === 'token' && at < 0) at = s.steps.length;
      return at;
    }),
  );
  const stepsDuringPrefill = Math.max(...firstTokenAtStep) - stepsBefore;
  t.ok(prefillRounds >= 12, `the waiting prompts need ${prefillRounds} prefill chunks`);
  t.ok(
    stepsDuringPrefill >= prefillRounds - 4,
    `${stepsDuringPrefill} decode steps ran while ${prefillRounds} prefill chunks were processed`,
  );
  for (;;) if ((await running.next()).done) break;
  await s.scheduler.shutdown(1000);
});

t.test('prompts tokenized off the main thread generate what prompts tokenized in submit do', async (t) => {
  const pool = new TokenizerPool(engine.tokenizer, { workers: 1, minChars: 20 });
  t.teardown(() => pool.close());
  const plain = makeStack(engine, { prefillChunk: CHUNK });
  const pooled = makeStack(engine, { prefillChunk: CHUNK, encoder: pool });
  const messages: ChatTurn[] = [{ role: 'user', content: 'Long enough to go to a worker: <end_of_turn> stays text.' }];
  t.ok(pool.accepts(messages));
  const [a, b] = [await chat(plain, messages, { maxTokens: 6 }), await chat(pooled, messages, { maxTokens: 6 })];
  t.equal(b.text, a.text, 'same greedy reply');
  t.equal(b.usage.promptTokens, a.usage.promptTokens, 'same prompt length');
  // A template error fails its own request only, as an error event.
  const bad: ChatTurn[] = [{ role: 'user', content: 'x'.repeat(30) }, { role: 'user', content: 'y'.repeat(30) }];
  await t.rejects(chat(pooled, bad), { name: 'ChatTemplateError' });
  t.equal((await chat(pooled, messages, { maxTokens: 6 })).text, a.text, 'the next request is served');
  await plain.scheduler.shutdown(1000);
  await pooled.scheduler.shutdown(1000);
});
