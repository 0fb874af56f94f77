// Hostile bodies, URLs and headers against the real service on loopback: each
// gets its 4xx in OpenAI's shape, nothing echoes a client's value whole, the
// server stays up and a session made before is left exactly as it was.
import t, { type Test } from 'tap';
import * as net from 'node:net';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { request } from 'undici';
import { loadConfig } from '../config/index.js';
import { Metrics } from '../src/metrics.js';
import { buildApp } from '../src/server.js';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';
import { ScriptedScheduler, reply } from './http-helpers.js';

const MODEL = 'gemma3-tiny';
const REDIS_DB = 7;
const LIMITS = { MAX_MESSAGES: '8', MAX_MESSAGE_CHARS: '2000', MAX_LOGIT_BIAS: '10', MAX_STOP_STRINGS: '3', MAX_JSON_DEPTH: '16' };

const redis = new Redis({ host: '127.0.0.1', port: 6379, db: REDIS_DB });
await redis.flushdb();
const svc = await startService({
  HOST: '127.0.0.1',
  PORT: '0',
  MODEL_DIR: modelDir(MODEL),
  BACKEND: 'wasm',
  SLOTS: '8',
  MAX_BATCH_SIZE: '2',
  CACHE_CAPACITY: '256',
  REDIS_URL: `redis://127.0.0.1:6379/${REDIS_DB}`,
  LOG_LEVEL: 'silent',
  ...LIMITS,
}, { handleSignals: false });
t.teardown(async () => {
  await svc.stop();
  await redis.flushdb();
  redis.disconnect();
});

const ok = (extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0, ...extra });

async function post(body: string, contentType = 'application/json', headers: Record<string, string> = {}) {
  const res = await request(`${svc.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': contentType, ...headers }, body });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

function openAiError(t: Test, r: { status: number; text: string }, status: number, label: string) {
  t.equal(r.status, status, `${label}: ${status}`);
  const body = JSON.parse(r.text) as { error: { message: string; type: string; param: string | null; code: string | null } };
  t.same(Object.keys(body), ['error'], `${label}: one error object`);
  t.same(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], `${label}: OpenAI error shape`);
  t.ok(body.error.message.length > 10 && body.error.message.length < 400, `${label}: a short message (${body.error.message.length} chars)`);
  return body.error;
}

/** Raw bytes on a socket: what the HTTP parser refuses before any route. */
async function raw(bytes: string): Promise<{ status: number; head: string; text: string }> {
  const { port } = new URL(svc.url);
  const sock = net.connect(Number(port), '127.0.0.1');
  let data = '';
  sock.on('data', (b) => (data += b.toString('utf8')));
  sock.write(bytes);
  await new Promise<void>((resolve) => sock.on('close', () => resolve()));
  const [head, body] = [data.slice(0, data.indexOf('\r\n\r\n')), data.slice(data.indexOf('\r\n\r\n') + 4)];
  return { status: Number(head.split(' ')[1]), head: `${head}\r\n`, text: body };
}

let keeper: Record<string, unknown>;

t.test('a session made before the abuse', async (t) => {
  const r = await post(JSON.stringify(ok({ messages: [{ role: 'user', content: 'Remember the lighthouse.' }], max_tokens: 4 })), 'application/json', { 'x-session-id': 'keeper' });
  t.equal(r.status, 200);
  keeper = (await (await request(`${svc.url}/v1/sessions/keeper`)).body.json()) as Record<string, unknown>;
  t.ok(Number(keeper.cached_tokens) > 0);
});

t.test('bodies', async (t) => {
  const deep = `{"model":"${MODEL}","messages":${'['.repeat(20_000)}${']'.repeat(20_000)}}`;
  t.equal(openAiError(t, await post(deep), 400, 'nested 20,000 deep').code, 'json_too_deep');
  const deepString = JSON.stringify(ok({ messages: [{ role: 'user', content: '[{'.repeat(700) }] }));
  t.equal((await post(deepString)).status, 200, 'brackets inside strings are text, not nesting');

  const huge = 'x'.repeat(900_000);
  for (const [label, body] of [
    ['a 900 kB model name', ok({ model: huge })],
    ['a 900 kB role', ok({ messages: [{ role: huge, content: 'x' }] })],
    ['a 900 kB unknown field', { ...ok(), [huge.slice(0, 100_000)]: 1 }],
    ['a 900 kB stop string', ok({ stop: [huge] })],
  ] as const) {
    const r = await post(JSON.stringify(body));
    t.ok(r.text.length < 1000, `${label}: the error does not echo it (${r.text.length} bytes)`);
    openAiError(t, r, r.status, label);
    t.ok(r.status === 400 || r.status === 404, `${label}: 400/404`);
  }

  const bias = Object.fromEntries(Array.from({ length: 60_000 }, (_, i) => [String(i), 1]));
  t.match(openAiError(t, await post(JSON.stringify(ok({ logit_bias: bias }))), 400, '60,000 logit_bias entries'), { param: 'logit_bias' });
  const tenBias = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [String(i + 1000), 1]));
  t.equal((await post(JSON.stringify(ok({ logit_bias: tenBias })))).status, 200, 'MAX_LOGIT_BIAS entries are fine');

  t.match(openAiError(t, await post(JSON.stringify(ok({ stop: ['a', 'b', 'c', 'd'] }))), 400, '4 stop strings'), { param: 'stop' });
  t.equal((await post(JSON.stringify(ok({ stop: ['a', 'b', 'c'] })))).status, 200, 'MAX_STOP_STRINGS stop strings are fine');

  const many = Array.from({ length: 9 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `m${i}` }));
  t.match(openAiError(t, await post(JSON.stringify(ok({ messages: many }))), 400, '9 messages'), { param: 'messages' });
  t.match(openAiError(t, await post(JSON.stringify(ok({ messages: [{ role: 'user', content: 'y'.repeat(2001) }] }))), 400, 'a 2001-char message'),
    { param: 'messages[0].content' });
  const parts = [{ type: 'text', text: 'y'.repeat(1500) }, { type: 'text', text: 'y'.repeat(1500) }];
  t.match(openAiError(t, await post(JSON.stringify(ok({ messages: [{ role: 'user', content: parts }] }))), 400, 'parts adding up past the limit'),
    { param: 'messages[0].content' });

  t.equal(openAiError(t, await post(JSON.stringify(ok()), 'text/plain'), 415, 'text/plain').code, 'unsupported_media_type');
  t.equal(openAiError(t, await post('model=x', 'application/x-www-form-urlencoded'), 415, 'a form').code, 'unsupported_media_type');
  openAiError(t, await post('{"model": '), 400, 'truncated JSON');
  openAiError(t, await post('{"__proto__": {"x": 1}, "model": "m", "messages": []}'), 400, 'prototype poisoning');
});

t.test('URLs, methods and headers', async (t) => {
  const get = async (path: string, method = 'GET') => {
    const res = await request(`${svc.url}${path}`, { method: method as 'GET' });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
  };
  t.equal(openAiError(t, await get('/nowhere'), 404, 'unknown path').code, 'unknown_url');
  const put = await get('/v1/chat/completions', 'PUT');
  t.equal(openAiError(t, put, 405, 'PUT on a POST route').code, 'method_not_allowed');
  t.equal(put.headers.allow, 'POST');
  t.equal(openAiError(t, await get(`/v1/sessions/${'s'.repeat(400)}`), 414, 'a 400-char path segment').code, 'uri_too_long');
  t.equal(openAiError(t, await get(`/v1/sessions/${'s'.repeat(256)}`), 404, 'a 256-char session name reaches the route').code, 'session_not_found');
  t.equal(openAiError(t, await get('/v1/models/%E0%A4%A'), 400, 'a malformed percent-escape').code, 'invalid_url');

  const big = await raw(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  t.equal(openAiError(t, big, 431, 'headers over the limit').code, 'headers_too_large');
  const longUrl = await raw(`GET /v1/models?${'q'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  t.equal(openAiError(t, longUrl, 431, 'a request line over the limit').code, 'headers_too_large');
  t.equal(openAiError(t, await raw('NOT HTTP AT ALL\r\n\r\n'), 400, 'garbage').code, 'malformed_request');
  // Node answers these two itself unless told otherwise: CONNECT with a closed socket, an unknown Expect with an empty 417.
  const connect = await raw('CONNECT /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  t.equal(openAiError(t, connect, 405, 'CONNECT').code, 'method_not_allowed');
  t.match(connect.head, /\r\nAllow: GET, HEAD, POST, DELETE\r\n/, 'CONNECT: 405 with Allow');
  const expect = await raw('GET /health HTTP/1.1\r\nHost: x\r\nExpect: nothing\r\nConnection: close\r\n\r\n');
  t.equal(openAiError(t, expect, 417, 'an Expect other than 100-continue').code, 'expectation_failed');
});

t.test('the server is up and the earlier session intact', async (t) => {
  t.equal((await request(`${svc.url}/health`)).statusCode, 200);
  const now = (await (await request(`${svc.url}/v1/sessions/keeper`)).body.json()) as Record<string, unknown>;
  t.same({ ...now, last_used: 0 }, { ...keeper, last_used: 0 }, 'the session is as it was');
  const r = await post(JSON.stringify(ok({
    messages: [{ role: 'user', content: 'Remember the lighthouse.' }, { role: 'assistant', content: 'x' }, { role: 'user', content: 'Well?' }],
  })), 'application/json', { 'x-session-id': 'keeper' });
  t.equal(r.status, 200);
  t.ok((JSON.parse(r.text) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens > 0, 'and it still reuses its cache');
});

t.test('log lines quote a short prefix of a client value', async (t) => {
  const lines: string[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } });
  const app = await buildApp({
    config: loadConfig({}),
    service: { phase: 'ready', scheduler: new ScriptedScheduler(() => reply(['x'])), model: { created: 0, vocabSize: 262144 } },
    metrics: new Metrics({ defaultMetrics: false }),
    logger: pino({ level: 'info' }, sink),
  });
  t.teardown(() => app.close());
  const huge = 'z'.repeat(900_000);
  const res = await app.inject({ method: 'POST', url: `/v1/chat/completions?${'q'.repeat(5000)}`, payload: { model: huge, messages: [{ role: 'user', content: 'x' }] } });
  t.equal(res.statusCode, 400);
  t.ok(lines.length >= 2, `${lines.length} log lines`);
  for (const line of lines) t.ok(line.length < 2000, `a log line of ${line.length} bytes`);
});
