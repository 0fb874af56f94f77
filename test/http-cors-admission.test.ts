// CORS preflights come before admission: with CORS_ORIGINS set, a listed
// origin's preflight is answered (204) even when the credential is over its
// request rate or the queue is full, and it does not use up the rate; the
// real request is still refused in OpenAI's shape, and the page can read that
// refusal (Access-Control-Allow-Origin on the 429 / 503).
import t from 'tap';
import { MODEL, ScriptedScheduler, makeApp, reply } from './http-helpers.js';

const KEY = 'cors-admission-key';
const APP = 'https://app.example.com';

/** A scheduler whose queue reports `depth` waiting requests. */
class QueuedScheduler extends ScriptedScheduler {
  constructor(private readonly depth: number) { super(() => reply(['ok'])); }
  override stats() { return { queueDepth: this.depth, running: 1, batchSize: 1 }; }
}

async function listen(env: Record<string, string>, depth = 0) {
  const { app } = await makeApp({ env: { API_KEYS: KEY, CORS_ORIGINS: APP, ...env }, scheduler: new QueuedScheduler(depth) });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  return base;
}

const preflight = (base: string, path = '/v1/chat/completions') =>
  fetch(`${base}${path}`, {
    method: 'OPTIONS',
    headers: { origin: APP, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,openai-beta,x-stainless-retry-count' },
  });

const chat = (base: string) =>
  fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { origin: APP, authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }] }),
  });

t.test('preflights are answered before the request rate limit and do not count against it', async (t) => {
  const base = await listen({ RATE_LIMIT_RPM: '1' });
  for (let i = 0; i < 3; i++) t.equal((await preflight(base)).status, 204, `preflight ${i + 1}: 204`);
  t.equal((await chat(base)).status, 200, 'the one allowed request is still there');
  const limited = await chat(base);
  t.equal(limited.status, 429, 'the next is over the rate');
  t.equal(limited.headers.get('access-control-allow-origin'), APP, 'the page can read the 429');
  t.equal(((await limited.json()) as { error: { type: string } }).error.type, 'requests');
  const pre = await preflight(base);
  t.equal(pre.status, 204, 'a preflight over the rate is still answered');
  t.match(pre.headers.get('access-control-allow-headers') ?? '', /openai-beta/);
});

t.test('preflights are answered before load shedding', async (t) => {
  const base = await listen({ MAX_QUEUE: '4', SHED_QUEUE_DEPTH: '2' }, 3);
  const pre = await preflight(base);
  t.equal(pre.status, 204, 'answered while the queue is over SHED_QUEUE_DEPTH');
  t.equal(pre.headers.get('access-control-allow-origin'), APP);
  const shed = await chat(base);
  t.equal(shed.status, 503, 'the real request is shed');
  t.ok(shed.headers.get('retry-after'), 'with Retry-After');
  t.equal(shed.headers.get('access-control-allow-origin'), APP, 'which the page can read');
  t.match(shed.headers.get('access-control-expose-headers') ?? '', /retry-after/);
  t.type(((await shed.json()) as { error: { message: string } }).error.message, 'string');
});

t.test('a preflight for an unknown path or from another origin is no way around the key', async (t) => {
  const base = await listen({});
  const unknown = await preflight(base, '/v1/nope');
  t.equal(unknown.status, 204, 'a listed origin\'s preflight is answered for any path (the real request decides)');
  const real = await fetch(`${base}/v1/nope`, { method: 'POST', headers: { origin: APP } });
  t.equal(real.status, 401, 'the real request to it needs a key');
  const other = await fetch(`${base}/v1/chat/completions`, {
    method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
  });
  t.equal(other.status, 401, 'another origin\'s preflight is an ordinary OPTIONS request: a key is needed');
  t.equal(other.headers.get('access-control-allow-origin'), null);
  t.equal(((await other.json()) as { error: { code: string } }).error.code, 'invalid_api_key');
  const keyed = await fetch(`${base}/v1/chat/completions`, {
    method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST', authorization: `Bearer ${KEY}` },
  });
  t.equal(keyed.status, 405, 'with a key, the 405 it gets with CORS off');
  t.match(keyed.headers.get('allow') ?? '', /POST/);
  t.equal(((await keyed.json()) as { error: { type: string } }).error.type, 'invalid_request_error');
});
