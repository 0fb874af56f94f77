// Admission on a real server on loopback: load shedding (503 at once, before the body is
// read), the liveness and readiness probes through loading, serving and draining, SSE pings
// on a stream that waits for its first token, and a response that outlasts
// REQUEST_TIMEOUT_MS (which bounds the request only).
import t from 'tap';
import * as net from 'node:net';
import { request } from 'undici';
import type { FastifyInstance } from 'fastify';
import type { ServiceState } from '../src/http/service.js';
import type { GenerationEvent } from '../src/scheduler/types.js';
import { MODEL, ScriptedScheduler, makeApp, reply } from './http-helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A scripted scheduler whose queue depth the test sets. */
class QueuedScheduler extends ScriptedScheduler {
  queueDepth = 0;
  override stats() { return { queueDepth: this.queueDepth, running: 0, batchSize: 1 }; }
}

async function listen(env: Record<string, string>, script: () => AsyncIterable<GenerationEvent> = () => reply(['ok']), phase?: ServiceState['phase']) {
  const sched = new QueuedScheduler(script);
  const { app, service } = await makeApp({ env, scheduler: sched, ...(phase ? { phase } : {}) });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  return { app: app as FastifyInstance, service, base, sched };
}

const chatBody = (extra: Record<string, unknown> = {}) => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, ...extra });

async function post(base: string, body: string) {
  const res = await request(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

t.test('load shedding: 503 with Retry-After at once while the queue is at SHED_QUEUE_DEPTH', async (t) => {
  const { app, base, sched } = await listen({ SHED_QUEUE_DEPTH: '2', MAX_QUEUE: '8' });
  t.teardown(() => app.close());
  sched.queueDepth = 1;
  t.equal((await post(base, chatBody())).status, 200, 'below the bound: served');
  sched.queueDepth = 2;
  const shed = await post(base, chatBody());
  t.equal(shed.status, 503);
  t.match(JSON.parse(shed.text), { error: { type: 'server_error', code: 'server_overloaded', param: null } });
  t.equal(shed.headers['retry-after'], '1');
  t.equal((await request(`${base}/ready`)).statusCode, 200, 'readiness is about the model, not the load');
  // Refused before the body is read: headers alone get the answer.
  const sock = net.connect(Number(new URL(base).port), '127.0.0.1');
  let text = '';
  sock.on('data', (b) => (text += b.toString('utf8')));
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n');
  for (let i = 0; i < 100 && !text.includes('\r\n\r\n'); i++) await sleep(20);
  sock.destroy();
  t.match(text, /^HTTP\/1\.1 503 /, 'answered without the body');
  t.equal(sched.requests.length, 1, 'only the first request reached the scheduler');
});

t.test('/health stays 200 while /ready follows loading, serving and draining', async (t) => {
  const { app, base, service } = await listen({}, undefined, 'loading');
  t.teardown(() => app.close());
  const get = async (p: string) => {
    const res = await request(`${base}${p}`);
    return { status: res.statusCode, headers: res.headers, json: (await res.body.json()) as Record<string, any> };
  };
  t.same(await get('/health').then((r) => [r.status, r.json]), [200, { status: 'loading', model: MODEL }]);
  let ready = await get('/ready');
  t.equal(ready.status, 503);
  t.match(ready.json, { error: { code: 'model_loading', type: 'server_error' } });
  t.equal(ready.headers['retry-after'], '5');
  service.phase = 'ready';
  t.same(await get('/ready').then((r) => [r.status, r.json]), [200, { status: 'ok', model: MODEL }]);
  t.same(await get('/health').then((r) => [r.status, r.json]), [200, { status: 'ok', model: MODEL }]);
  service.phase = 'draining';
  ready = await get('/ready');
  t.equal(ready.status, 503);
  t.match(ready.json, { error: { code: 'shutting_down' } });
  t.same(await get('/health').then((r) => [r.status, r.json.status]), [200, 'draining']);
});

t.test('a stream waiting for its first token gets SSE pings, then its tokens', async (t) => {
  const slow = async function* (): AsyncGenerator<GenerationEvent> {
    await sleep(700);
    yield* reply(['Hello', ' there']);
  };
  const { app, base } = await listen({ SSE_PING_MS: '100' }, slow);
  t.teardown(() => app.close());
  const r = await post(base, chatBody({ stream: true }));
  t.equal(r.status, 200);
  const frames = r.text.split('\n\n').filter((f) => f !== '');
  const pings = frames.filter((f) => f === ': ping');
  t.ok(pings.length >= 2, `pinged while waiting (${pings.length})`);
  t.ok(frames.findIndex((f) => f !== ': ping') > frames.findIndex((f) => f === ': ping'), 'pings come first');
  const data = frames.filter((f) => f.startsWith('data: ')).map((f) => f.slice(6));
  t.equal(data.at(-1), '[DONE]');
  const text = data.slice(0, -1).map((d) => JSON.parse(d).choices[0]?.delta?.content ?? '').join('');
  t.equal(text, 'Hello there', 'the tokens follow');
});

t.test('a fast stream is not pinged; a failure after pings arrives in-band', async (t) => {
  const failing = async function* (): AsyncGenerator<GenerationEvent> {
    await sleep(400);
    throw new Error('engine fell over');
  };
  const { app, base } = await listen({ SSE_PING_MS: '100' }, failing);
  t.teardown(() => app.close());
  const r = await post(base, chatBody({ stream: true }));
  t.equal(r.status, 200, 'headers were sent with the first ping');
  t.match(r.text, /^: ping\n\n/);
  t.match(r.text, /data: \{"error":\{.*"type":"server_error"/);
  t.notMatch(r.text, /\[DONE\]/);
  const fast = await listen({ SSE_PING_MS: '5000' });
  t.teardown(() => fast.app.close());
  t.notMatch((await post(fast.base, chatBody({ stream: true }))).text, /: ping/);
});

t.test('REQUEST_TIMEOUT_MS bounds the request, not a long response', async (t) => {
  const long = async function* (): AsyncGenerator<GenerationEvent> {
    yield { type: 'token', choice: 0, text: 'a' };
    await sleep(1500);
    yield* reply(['b']);
  };
  const { app, base } = await listen({ REQUEST_TIMEOUT_MS: '500', HEADERS_TIMEOUT_MS: '400' }, long);
  t.teardown(() => app.close());
  const r = await post(base, chatBody({ stream: true }));
  t.equal(r.status, 200);
  t.match(r.text, /data: \[DONE\]\n\n$/, 'the stream ran to its end');
});
