// Response and SSE shapes against a scripted scheduler; the official openai
// client reads them over a real loopback socket.
import t from 'tap';
import OpenAI from 'openai';
import type { GenerationEvent, GenerationRequest } from '../src/scheduler/types.js';
import { closeApp } from '../src/server.js';
import { MODEL, ScriptedScheduler, makeApp, reply, userMsg } from './http-helpers.js';

const chat = { model: MODEL, messages: [userMsg()] };

/** `data:` payloads of an SSE body, in order. */
function sseData(body: string): string[] {
  t.ok(body.endsWith('\n\n'), 'frames end with a blank line');
  return body.split('\n\n').filter((f) => f !== '').map((f) => {
    t.match(f, /^data: /);
    return f.slice('data: '.length);
  });
}

const lp = (token: string) => ({ token, logprob: -0.5, bytes: [...Buffer.from(token)], top: [{ token, logprob: -0.5, bytes: [...Buffer.from(token)] }] });

t.test('non-streamed completion: shape, n, logprobs, request conversion', async (t) => {
  const sched = new ScriptedScheduler(async function* (req: GenerationRequest): AsyncGenerator<GenerationEvent> {
    for (let c = 0; c < req.n; c++) {
      yield { type: 'token', choice: c, text: 'Hi', logprob: lp('Hi') };
      yield { type: 'token', choice: c, text: '', logprob: lp('!') };
      yield { type: 'finish', choice: c, reason: c === 0 ? 'stop' : 'length' };
    }
    yield { type: 'usage', usage: { promptTokens: 9, completionTokens: 4, cachedTokens: 3, evictedTokens: 2, promptTokensProcessed: 6 } };
  });
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => app.close());
  const res = await app.inject({
    method: 'POST', url: '/v1/chat/completions',
    payload: { ...chat, n: 2, logprobs: true, top_logprobs: 1, max_tokens: 7, temperature: 0, stop: 'x', seed: 3, user: 'u-1', prompt_cache_key: 'conv-1' },
  });
  t.equal(res.statusCode, 200);
  const body = res.json();
  t.match(body.id, /^chatcmpl-[0-9a-f]{32}$/);
  t.equal(body.object, 'chat.completion');
  t.equal(body.model, MODEL);
  t.same(body.choices.map((c: { finish_reason: string }) => c.finish_reason), ['stop', 'length']);
  t.same(body.choices[0].message, { role: 'assistant', content: 'Hi', refusal: null });
  t.same(body.choices[0].logprobs.content[0], { token: 'Hi', logprob: -0.5, bytes: [72, 105], top_logprobs: [{ token: 'Hi', logprob: -0.5, bytes: [72, 105] }] });
  t.equal(body.choices[0].logprobs.content.length, 2, 'a withheld token still reports its logprob');
  t.same(body.usage, {
    prompt_tokens: 9, completion_tokens: 4, total_tokens: 13, prompt_tokens_details: { cached_tokens: 3 },
    gemma_serve: { prompt_tokens_processed: 6, evicted_tokens: 2 },
  });
  const req = sched.requests[0]!;
  t.equal(req.n, 2);
  t.equal(req.sessionId, 'conv-1', 'prompt_cache_key names the session without a header; user is a label only');
  t.equal(req.namespace, 'open', 'without API keys every session is in the open namespace');
  t.same(req.messages, [{ role: 'user', content: 'Hi' }]);
  t.match(req.params, { maxTokens: 7, temperature: 0, stop: ['x'], seed: 3, logprobs: true, topLogprobs: 1 });
});

t.test('SSE framing as OpenAI: role, deltas, finish, usage, [DONE]', async (t) => {
  const { app } = await makeApp({ scheduler: new ScriptedScheduler(() => reply(['Hel', '', 'lo'])) });
  t.teardown(() => app.close());
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, stream: true, stream_options: { include_usage: true } } });
  t.equal(res.statusCode, 200);
  t.match(res.headers['content-type'], /^text\/event-stream/);
  const data = sseData(res.body);
  t.equal(data.at(-1), '[DONE]');
  const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
  t.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
  t.same(chunks[0].choices[0].delta, { role: 'assistant', content: '', refusal: null });
  t.same(chunks.slice(1, 3).map((c) => c.choices[0].delta.content), ['Hel', 'lo'], 'empty deltas are not sent');
  t.equal(chunks[3].choices[0].finish_reason, 'stop');
  t.same(chunks[3].choices[0].delta, {});
  t.ok(chunks.slice(0, 4).every((c) => c.usage === null), 'usage: null until the last chunk');
  t.same(chunks[4].choices, []);
  t.equal(chunks[4].usage.total_tokens, 13);
  t.equal(chunks.length, 5);
});

t.test('SSE without include_usage has no usage field; error mid-stream is an error event', async (t) => {
  const sched = new ScriptedScheduler(async function* () {
    yield { type: 'token', choice: 0, text: 'a' } as GenerationEvent;
    throw new Error('device lost');
  });
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => app.close());
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, stream: true } });
  t.equal(res.statusCode, 200);
  const data = sseData(res.body);
  t.notOk(data.includes('[DONE]'));
  const last = JSON.parse(data.at(-1)!);
  t.same(Object.keys(last), ['error']);
  t.equal(last.error.type, 'server_error');
  t.notOk('usage' in JSON.parse(data[0]!));
});

t.test('openai client over loopback: create, stream, errors', async (t) => {
  let aborted: AbortSignal | undefined;
  const sched = new ScriptedScheduler((req) => {
    if (req.messages.at(-1)!.content === 'hang') {
      aborted = req.signal;
      return (async function* () {
        yield { type: 'token', choice: 0, text: 'x' } as GenerationEvent;
        await new Promise((resolve) => req.signal.addEventListener('abort', resolve));
      })();
    }
    return reply(['Hello', ' there']);
  });
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => closeApp(app));
  const address = await app.listen({ host: '127.0.0.1', port: 0 });
  const client = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', maxRetries: 0 });

  const done = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(done.choices[0]!.message.content, 'Hello there');
  t.equal(done.usage?.prompt_tokens_details?.cached_tokens, 4);

  const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage;
  for await (const c of stream) {
    text += c.choices[0]?.delta.content ?? '';
    if (c.usage) usage = c.usage;
  }
  t.equal(text, 'Hello there');
  t.equal(usage?.completion_tokens, 2);

  await t.rejects(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'Hi' }] }), { status: 404 });
  await t.rejects(client.chat.completions.create({ model: MODEL, messages: [] }), { status: 400 });

  // Leaving a stream early closes the socket: the request's AbortSignal fires.
  const hanging = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hang' }], stream: true });
  for await (const c of hanging) {
    if (c.choices[0]?.delta.content === 'x') break;
  }
  for (let i = 0; i < 100 && aborted?.aborted !== true; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(aborted?.aborted, true, 'client disconnect aborts the generation');
});
