// End to end with the official openai client: a real service (engine,
// scheduler, HTTP) listening on loopback, serving the tiny Gemma 3 fixture.
import t from 'tap';
import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';

const svc = await startService(
  {
    HOST: '127.0.0.1',
    PORT: '0',
    MODEL_DIR: modelDir(MODEL),
    BACKEND: 'wasm',
    SLOTS: '4',
    CACHE_CAPACITY: '256',
    MAX_TOKENS_LIMIT: '512',
    LOG_LEVEL: 'silent',
  },
  { handleSignals: false },
);
t.teardown(() => svc.stop());

const client = new OpenAI({ baseURL: `${svc.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
const hello: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Tell me about foxes.' }];

/** Every chunk of a streamed completion. */
async function collect(stream: AsyncIterable<ChatCompletionChunk>): Promise<ChatCompletionChunk[]> {
  const chunks: ChatCompletionChunk[] = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

t.test('the model list names the loaded model', async (t) => {
  const models = await client.models.list();
  t.same(models.data.map((m) => m.id), [MODEL]);
  t.equal(models.data[0]!.object, 'model');
});

t.test('non-streamed completion', async (t) => {
  const res = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 8, temperature: 0 });
  t.match(res.id, /^chatcmpl-[0-9a-f]{32}$/);
  t.equal(res.object, 'chat.completion');
  t.equal(res.model, MODEL);
  t.ok(Number.isInteger(res.created) && Math.abs(res.created - Date.now() / 1000) < 60, 'created is a recent unix time');
  t.equal(res.choices.length, 1);
  const c = res.choices[0]!;
  t.equal(c.index, 0);
  t.equal(c.message.role, 'assistant');
  t.type(c.message.content, 'string');
  t.ok(c.message.content!.length > 0, 'some text came back');
  t.equal(c.finish_reason, 'length', 'random weights rarely emit <end_of_turn> within 8 tokens');
  const u = res.usage!;
  t.equal(u.completion_tokens, 8);
  t.ok(u.prompt_tokens > 5, `prompt tokens counted (${u.prompt_tokens})`);
  t.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  t.equal(u.prompt_tokens_details?.cached_tokens, 0, 'a new conversation reuses nothing');

  const again = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 8, temperature: 0 });
  t.equal(again.choices[0]!.message.content, c.message.content, 'greedy decoding is deterministic');
  t.not(again.id, res.id, 'each completion has its own id');
});

t.test('streamed completion with usage', async (t) => {
  const whole = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 10, temperature: 0 });
  const chunks = await collect(
    await client.chat.completions.create({
      model: MODEL, messages: hello, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true },
    }),
  );
  t.ok(chunks.length >= 3, `${chunks.length} chunks`);
  const ids = new Set(chunks.map((c) => c.id));
  t.equal(ids.size, 1, 'every chunk carries the same id');
  t.match([...ids][0], /^chatcmpl-[0-9a-f]{32}$/);
  t.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === MODEL));
  t.equal(chunks[0]!.choices[0]!.delta.role, 'assistant', 'the first chunk announces the role');

  const last = chunks.at(-1)!;
  t.same(last.choices, [], 'the usage chunk has no choices');
  t.equal(last.usage!.completion_tokens, 10);
  t.equal(last.usage!.total_tokens, last.usage!.prompt_tokens + 10);
  t.equal(last.usage!.prompt_tokens, whole.usage!.prompt_tokens);
  t.ok(chunks.slice(0, -1).every((c) => c.usage === null || c.usage === undefined), 'only the last chunk has usage');

  const finishes = chunks.flatMap((c) => c.choices.filter((ch) => ch.finish_reason !== null).map((ch) => ch.finish_reason));
  t.same(finishes, ['length'], 'exactly one finish_reason');
  const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  t.equal(text, whole.choices[0]!.message.content, 'the streamed text equals the non-streamed text');

  const noUsage = await collect(await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 3, stream: true }));
  t.ok(noUsage.every((c) => c.usage === null || c.usage === undefined), 'no usage chunk unless asked for');
  t.ok(noUsage.at(-1)!.choices[0]!.finish_reason, 'without usage the last chunk carries the finish_reason');
});

t.test('logprobs and top_logprobs', async (t) => {
  const res = await client.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const content = res.choices[0]!.logprobs!.content!;
  t.equal(content.length, 6, 'one entry per generated token');
  t.equal(content.map((e) => e.token).join(''), res.choices[0]!.message.content, 'the tokens spell the reply');
  for (const e of content) {
    t.ok(e.logprob <= 0 && Number.isFinite(e.logprob), `logprob ${e.logprob} is a log probability`);
    t.same(e.bytes, [...Buffer.from(e.token, 'utf8')]);
    t.equal(e.top_logprobs.length, 3);
    const lps = e.top_logprobs.map((x) => x.logprob);
    t.same(lps, [...lps].sort((a, b) => b - a), 'top_logprobs are sorted, most likely first');
    // Greedy: the chosen token is the most likely one.
    t.equal(e.top_logprobs[0]!.token, e.token);
    t.ok(Math.abs(e.top_logprobs[0]!.logprob - e.logprob) < 1e-5);
    t.ok(Math.exp(lps[0]!) + Math.exp(lps[1]!) + Math.exp(lps[2]!) <= 1 + 1e-4, 'probabilities sum to at most 1');
  }

  const streamed = await collect(
    await client.chat.completions.create({
      model: MODEL, messages: hello, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2, stream: true,
    }),
  );
  const streamedLp = streamed.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
  t.equal(streamedLp.length, 6, 'streamed chunks carry the logprobs too');
  t.same(streamedLp.map((e) => e.token), content.map((e) => e.token));
  t.ok(streamedLp.every((e, i) => Math.abs(e.logprob - content[i]!.logprob) < 1e-5));

  const plain = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 2 });
  t.equal(plain.choices[0]!.logprobs, null, 'no logprobs unless asked for');
});

t.test('stop strings cut the reply before the match', async (t) => {
  const base = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 16, temperature: 0 });
  const full = base.choices[0]!.message.content!;
  t.ok(full.length >= 6, `the unconstrained reply is long enough to cut (${JSON.stringify(full)})`);
  // A stop string taken from the middle of the greedy reply: the same request must stop right before it.
  const at = Math.floor(full.length / 2);
  const stop = full.slice(at, at + 2);
  const cutAt = full.indexOf(stop);
  const res = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 16, temperature: 0, stop: [stop, '\u0000never'] });
  t.equal(res.choices[0]!.finish_reason, 'stop');
  t.equal(res.choices[0]!.message.content, full.slice(0, cutAt), `cut before ${JSON.stringify(stop)}`);
  t.ok(res.usage!.completion_tokens < 16, 'generation ended early');

  const streamed = await collect(
    await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 16, temperature: 0, stop, stream: true }),
  );
  t.equal(streamed.map((c) => c.choices[0]?.delta.content ?? '').join(''), full.slice(0, cutAt), 'streamed text is cut the same way');
  t.equal(streamed.at(-1)!.choices[0]!.finish_reason, 'stop');
});

t.test('a seed makes sampling reproducible', async (t) => {
  const ask = (seed: number) =>
    client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 12, temperature: 1.5, top_p: 1, seed });
  const [a, b] = [await ask(1234), await ask(1234)];
  t.equal(a.choices[0]!.message.content, b.choices[0]!.message.content, 'same seed, same text');
  const others = await Promise.all([1, 2, 3, 4].map((s) => ask(s)));
  const texts = new Set([a, ...others].map((r) => r.choices[0]!.message.content));
  t.ok(texts.size > 1, `different seeds give different samples (${texts.size} distinct of 5)`);
  // Sharing decode steps with other requests must not change a seeded sample.
  const batched = await Promise.all([ask(1234), ask(99), ask(1234)]);
  t.equal(batched[0]!.choices[0]!.message.content, a.choices[0]!.message.content, 'same text when batched with others');
  t.equal(batched[2]!.choices[0]!.message.content, a.choices[0]!.message.content);
});

t.test('a multi-turn conversation reuses its cache', async (t) => {
  const user = `e2e-conv-${process.pid}`;
  const turn1: ChatCompletionMessageParam[] = [
    { role: 'system', content: 'You are a terse assistant.' },
    { role: 'user', content: 'Name a colour.' },
  ];
  const r1 = await client.chat.completions.create({ model: MODEL, messages: turn1, max_tokens: 6, temperature: 0, prompt_cache_key: user, user: 'end-user-1' });
  t.equal(r1.usage!.prompt_tokens_details?.cached_tokens, 0, 'the first turn starts cold');
  const turn2: ChatCompletionMessageParam[] = [
    ...turn1,
    { role: 'assistant', content: r1.choices[0]!.message.content },
    { role: 'user', content: 'Another one?' },
  ];
  const r2 = await client.chat.completions.create({ model: MODEL, messages: turn2, max_tokens: 6, temperature: 0, prompt_cache_key: user, user: 'end-user-1' });
  const cached = r2.usage!.prompt_tokens_details!.cached_tokens!;
  t.ok(cached > 0, `the second turn reused ${cached} cached tokens`);
  t.ok(cached >= r1.usage!.prompt_tokens - 1, `at least the first prompt was reused (${cached} of ${r1.usage!.prompt_tokens})`);
  t.ok(r2.usage!.prompt_tokens > r1.usage!.prompt_tokens);
  const ext = (r2.usage as unknown as { gemma_serve: { prompt_tokens_processed: number; evicted_tokens: number } }).gemma_serve;
  t.equal(ext.prompt_tokens_processed, r2.usage!.prompt_tokens - cached, 'only the new suffix was prefilled');
  t.equal(ext.evicted_tokens, 0);

  // The same turn through the x-session-id header, streamed: the header names the session too.
  const { data: stream, response } = await client.chat.completions
    .create({ model: MODEL, messages: turn2, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } }, {
      headers: { 'x-session-id': user },
    })
    .withResponse();
  t.equal(response.headers.get('x-session-id'), user, 'the response names the session');
  const chunks = await collect(stream);
  t.ok(chunks.at(-1)!.usage!.prompt_tokens_details!.cached_tokens! > 0, 'a streamed turn reports cached tokens too');

  // Cold run of the same history: same reply (the cache changes nothing but speed).
  const cold = await client.chat.completions.create({ model: MODEL, messages: turn2, max_tokens: 6, temperature: 0, prompt_cache_key: `${user}-cold`, user: 'end-user-1' });
  t.equal(cold.usage!.prompt_tokens_details?.cached_tokens, 0);
  t.equal(cold.choices[0]!.message.content, r2.choices[0]!.message.content, 'cached and cold prefill agree');
});

t.test('n=2 returns two choices', async (t) => {
  const res = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 5, temperature: 1.2, seed: 7, n: 2 });
  t.same(res.choices.map((c) => c.index), [0, 1]);
  t.ok(res.choices.every((c) => c.finish_reason === 'length' && (c.message.content ?? '').length > 0));
  t.equal(res.usage!.completion_tokens, 10, 'completion tokens summed over choices');

  const chunks = await collect(
    await client.chat.completions.create({
      model: MODEL, messages: hello, max_tokens: 5, temperature: 1.2, seed: 7, n: 2, stream: true, stream_options: { include_usage: true },
    }),
  );
  const texts = ['', ''];
  const finishes: (string | null)[] = [null, null];
  for (const c of chunks) {
    for (const ch of c.choices) {
      texts[ch.index] += ch.delta.content ?? '';
      if (ch.finish_reason) finishes[ch.index] = ch.finish_reason;
    }
  }
  t.same(finishes, ['length', 'length'], 'each choice finishes');
  t.same(texts, res.choices.map((c) => c.message.content), 'seeded choices stream the same text as the whole response');
  t.equal(chunks.at(-1)!.usage!.completion_tokens, 10);
});

t.test('errors reach the client as APIError with OpenAI fields', async (t) => {
  const failure = (p: Promise<unknown>) => p.then(() => undefined, (err: unknown) => err);
  const notFound = await failure(client.chat.completions.create({ model: 'no-such-model', messages: hello }));
  t.ok(notFound instanceof OpenAI.NotFoundError);
  t.match(notFound, { status: 404, code: 'model_not_found', type: 'invalid_request_error' });
  const tooMany = await failure(client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 100_000 }));
  t.ok(tooMany instanceof OpenAI.BadRequestError);
  t.match(tooMany, { status: 400, type: 'invalid_request_error', param: 'max_tokens', code: 'limit_exceeded' });
});
