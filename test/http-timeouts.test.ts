// Slow and too many clients against the real service on loopback (tiny model, real Redis):
// a half-sent body or half-sent headers are cut off at the configured timeout with a 408
// in OpenAI's shape, never reach the scheduler (no queue place, row or slot), and the one
// slot serves the next request; sockets past MAX_CONNECTIONS_PER_ADDRESS are closed at accept.
import t from 'tap';
import * as net from 'node:net';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';
const REDIS_DB = 10;
const HEADERS_TIMEOUT_MS = 600;
const REQUEST_TIMEOUT_MS = 1200;

const redis = new Redis({ host: '127.0.0.1', port: 6379, db: REDIS_DB });
await redis.flushdb();
const svc = await startService({
  HOST: '127.0.0.1',
  PORT: '0',
  MODEL_DIR: modelDir(MODEL),
  BACKEND: 'wasm',
  SLOTS: '1',
  MAX_BATCH_SIZE: '1',
  CACHE_CAPACITY: '256',
  REDIS_URL: `redis://127.0.0.1:6379/${REDIS_DB}`,
  LOG_LEVEL: 'silent',
  HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
  REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
  MAX_CONNECTIONS_PER_ADDRESS: '3',
}, { handleSignals: false });
t.teardown(async () => {
  await svc.stop();
  await redis.flushdb();
  redis.disconnect();
});
const port = Number(new URL(svc.url).port);
const stats = () => svc.state.scheduler!.stats();

/** Writes `bytes` and leaves the socket open; resolves with what came back once the server closed it. */
function halfSend(bytes: string): { sock: net.Socket; closed: Promise<{ text: string; ms: number }> } {
  const sock = net.connect(port, '127.0.0.1');
  const t0 = Date.now();
  let text = '';
  sock.on('data', (b) => (text += b.toString('utf8')));
  sock.on('error', () => undefined);
  sock.write(bytes);
  return { sock, closed: new Promise((resolve) => sock.on('close', () => resolve({ text, ms: Date.now() - t0 }))) };
}

function parse(text: string): { status: number; body: { error: Record<string, unknown> } } {
  const i = text.indexOf('\r\n\r\n');
  return { status: Number(text.slice(0, i).split(' ')[1]), body: JSON.parse(text.slice(i + 4)) as { error: Record<string, unknown> } };
}

async function chat(): Promise<{ status: number; json: { choices?: unknown[] } }> {
  const res = await request(`${svc.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, temperature: 0 }),
  });
  return { status: res.statusCode, json: (await res.body.json()) as { choices?: unknown[] } };
}

t.test('a half-sent body is cut off with a 408 and never reaches the scheduler', async (t) => {
  const body = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hello there, slowly' }], max_tokens: 3 });
  const half = halfSend(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n`
    + `Content-Length: ${body.length}\r\n\r\n${body.slice(0, 20)}`);
  // While the body is incomplete the request holds nothing in the scheduler.
  await new Promise((r) => setTimeout(r, HEADERS_TIMEOUT_MS / 2));
  t.same({ queued: stats().queueDepth, running: stats().running }, { queued: 0, running: 0 }, 'no queue place, no row while the body trickles');
  const { text, ms } = await half.closed;
  const r = parse(text);
  t.equal(r.status, 408, 'request timeout');
  t.match(r.body, { error: { type: 'invalid_request_error', code: 'request_timeout', param: null } }, 'OpenAI error shape');
  t.ok(ms >= REQUEST_TIMEOUT_MS - 100, `not before the timeout (${ms} ms)`);
  t.ok(ms < REQUEST_TIMEOUT_MS + 15_000, `cut off within a generous bound (${ms} ms)`);
  // The one slot and row are free: the next request is served.
  const next = await chat();
  t.equal(next.status, 200);
  t.equal(next.json.choices?.length, 1);
});

t.test('half-sent headers are cut off at the headers timeout', async (t) => {
  const { text, ms } = await halfSend('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty').closed;
  t.equal(parse(text).status, 408);
  t.ok(ms >= HEADERS_TIMEOUT_MS - 100 && ms < HEADERS_TIMEOUT_MS + 15_000, `at the headers timeout (${ms} ms)`);
});

t.test('a socket that sends nothing is closed too', async (t) => {
  const { ms } = await halfSend('').closed;
  t.ok(ms < HEADERS_TIMEOUT_MS + 15_000, `closed (${ms} ms)`);
});

t.test('sockets past MAX_CONNECTIONS_PER_ADDRESS are closed at accept, counted, and room comes back', async (t) => {
  const held = [0, 1, 2].map(() => net.connect(port, '127.0.0.1'));
  await Promise.all(held.map((s) => new Promise((r) => s.once('connect', r))));
  // A full request on the fourth socket: it is closed without an answer.
  const extra = halfSend('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
  const { text } = await extra.closed;
  t.equal(text, '', 'closed without a response');
  for (const s of held) s.destroy();
  await new Promise((r) => setTimeout(r, 100));
  const res = await request(`${svc.url}/metrics`);
  t.equal(res.statusCode, 200, 'a new socket is accepted once the others closed');
  const line = (await res.body.text()).split('\n').find((l) => l.startsWith('gemma_serve_connections_refused_total{reason="per_address"}'));
  t.ok(line !== undefined && Number(line.split(' ')[1]) >= 1, `counted: ${line}`);
});
