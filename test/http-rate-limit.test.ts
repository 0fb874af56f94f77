// Per-key rate limits on a real server on loopback with a real Redis: requests per window
// (@fastify/rate-limit's Redis store) and tokens per window (reserved at admission,
// corrected to usage at the end), 429 in OpenAI's shape with Retry-After and the
// x-ratelimit-* headers, lifted when the (short) window ends; probes never limited.
import t from 'tap';
import { Redis } from 'ioredis';
import { request } from 'undici';
import type { FastifyInstance } from 'fastify';
import { MODEL, ScriptedScheduler, makeApp, reply } from './http-helpers.js';

const REDIS_DB = 11;
const KEY_A = 'sk-rate-a';
const KEY_B = 'sk-rate-b';
const redis = new Redis({ host: '127.0.0.1', port: 6379, db: REDIS_DB });
await redis.flushdb();
t.teardown(async () => {
  await redis.flushdb();
  redis.disconnect();
});

async function listen(env: Record<string, string>): Promise<{ app: FastifyInstance; base: string; sched: ScriptedScheduler }> {
  const sched = new ScriptedScheduler(() => reply(['ok']));
  const { app } = await makeApp({ env: { API_KEYS: `${KEY_A},${KEY_B}`, REDIS_URL: `redis://127.0.0.1:6379/${REDIS_DB}`, ...env }, scheduler: sched });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, base, sched };
}

async function call(base: string, path: string, key = KEY_A, body?: unknown) {
  const res = await request(`${base}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.statusCode, headers: res.headers, json: (await res.body.json()) as Record<string, any> };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('requests per window: 429 with Retry-After and x-ratelimit headers, from Redis, lifted after the window', async (t) => {
  const WINDOW = 1500;
  const { app, base } = await listen({ RATE_LIMIT_RPM: '2', RATE_LIMIT_WINDOW_MS: String(WINDOW) });
  t.teardown(() => app.close());
  const first = await call(base, '/v1/models');
  t.equal(first.status, 200);
  t.equal(first.headers['x-ratelimit-limit-requests'], '2');
  t.equal(first.headers['x-ratelimit-remaining-requests'], '1');
  t.match(first.headers['x-ratelimit-reset-requests'], /^(\d+ms|[\d.]+s)$/);
  t.equal((await call(base, '/v1/models')).status, 200);
  const over = await call(base, '/v1/models');
  t.equal(over.status, 429);
  t.same(Object.keys(over.json.error).sort(), ['code', 'message', 'param', 'type'], 'OpenAI error shape');
  t.match(over.json.error, { type: 'requests', code: 'rate_limit_exceeded', param: null, message: /Rate limit reached on requests/ });
  t.ok(Number(over.headers['retry-after']) >= 1 && Number(over.headers['retry-after']) <= 2, `Retry-After ${over.headers['retry-after']}`);
  t.equal(over.headers['x-ratelimit-remaining-requests'], '0');
  t.ok((await redis.keys('gemma-serve:ratelimit:requests:*')).length > 0, 'counted in Redis');
  // Another key has its own budget; probes are never limited.
  t.equal((await call(base, '/v1/models', KEY_B)).status, 200, 'another key is not limited');
  for (const p of ['/health', '/ready', '/metrics']) {
    const r = await request(`${base}${p}`);
    await r.body.text();
    t.equal(r.statusCode, 200, `${p} is not limited`);
    t.equal(r.headers['x-ratelimit-limit-requests'], undefined, `${p} has no rate-limit headers`);
  }
  await sleep(WINDOW + 200);
  t.equal((await call(base, '/v1/models')).status, 200, 'let through again after the window');
});

t.test('the in-memory store without REDIS_URL', async (t) => {
  const sched = new ScriptedScheduler(() => reply(['ok']));
  const { app } = await makeApp({ env: { RATE_LIMIT_RPM: '1', RATE_LIMIT_WINDOW_MS: '60000' }, scheduler: sched });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  t.equal((await call(base, '/v1/models')).status, 200);
  const over = await call(base, '/v1/models');
  t.equal(over.status, 429, 'limited per client address when keys are off');
  t.ok(Number(over.headers['retry-after']) > 50);
});

t.test('tokens per window: reserved at admission, corrected to usage at the end', async (t) => {
  const { app, base, sched } = await listen({ RATE_LIMIT_TPM: '100', RATE_LIMIT_WINDOW_MS: '60000' });
  t.teardown(() => app.close());
  // 'Hi' reserves ceil(2/4) + 4 = 5 prompt tokens, + 80 max_tokens = 85. The scripted usage is 10 + 1 = 11.
  const body = { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 80 };
  const first = await call(base, '/v1/chat/completions', KEY_A, body);
  t.equal(first.status, 200);
  t.equal(first.headers['x-ratelimit-limit-tokens'], '100');
  t.equal(first.headers['x-ratelimit-remaining-tokens'], '15', 'the reservation is counted');
  const keys = await redis.keys('gemma-serve:ratelimit:tokens:*');
  t.equal(keys.length, 1, 'counted in Redis');
  for (let i = 0; i < 50 && (await redis.get(keys[0]!)) !== '11'; i++) await sleep(20);
  t.equal(await redis.get(keys[0]!), '11', 'corrected to prompt + completion tokens when it ended');
  // Without the correction 85 + 85 would pass 100; with it 11 + 85 fits.
  const second = await call(base, '/v1/chat/completions', KEY_A, body);
  t.equal(second.status, 200, 'admitted thanks to the correction');
  t.equal(second.headers['x-ratelimit-remaining-tokens'], '4');
  for (let i = 0; i < 50 && (await redis.get(keys[0]!)) !== '22'; i++) await sleep(20);
  // 22 + 85 passes 100.
  const third = await call(base, '/v1/chat/completions', KEY_A, body);
  t.equal(third.status, 429);
  t.match(third.json.error, { type: 'tokens', code: 'rate_limit_exceeded', param: null });
  t.ok(Number(third.headers['retry-after']) >= 1);
  t.equal(sched.requests.length, 2, 'the refused request never reached the scheduler');
  const tooBig = await call(base, '/v1/chat/completions', KEY_B, { ...body, max_tokens: 200 });
  t.equal(tooBig.status, 429);
  t.match(tooBig.json.error.message, /alone asks for more than the limit/);
});

t.test('a request refused by the scheduler gives its reservation back', async (t) => {
  const { app, base } = await listen({ RATE_LIMIT_TPM: '100', RATE_LIMIT_WINDOW_MS: '60000', API_KEYS: 'sk-rate-c' });
  t.teardown(() => app.close());
  const failing = app.gemma.service.scheduler as ScriptedScheduler;
  failing.submit = () => { throw Object.assign(new (class extends Error {})('boom'), {}); };
  const body = { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 60 };
  t.equal((await call(base, '/v1/chat/completions', 'sk-rate-c', body)).status, 500);
  const keys = await redis.keys('gemma-serve:ratelimit:tokens:*');
  const mine = (await Promise.all(keys.map(async (k) => [k, await redis.get(k)] as const))).filter(([, v]) => v === '0');
  t.ok(mine.length >= 1, 'the reservation was returned');
});

t.test('x-ratelimit-reset-* durations are written as OpenAI writes them', async (t) => {
  const { formatReset } = await import('../src/http/rate-limit.js');
  t.same([20, 999, 1000, 1500, 59_999, 60_000, 360_000, 61_250].map(formatReset), ['20ms', '999ms', '1s', '1.5s', '59.999s', '1m0s', '6m0s', '1m1.25s']);
});
