// Authorization is decided on the route the router matched: every spelling of a
// /v1 path that reaches a route (percent-escapes, double slashes, dot segments,
// trailing slashes, case, query strings) needs the key, over a real socket.
import t, { type Test } from 'tap';
import { Client } from 'undici';
import type { FastifyInstance } from 'fastify';
import { keyNamespace } from '../src/http/auth.js';
import { MODEL, ScriptedScheduler, makeApp, reply } from './http-helpers.js';

const KEY = 'sk-test-key-1';
const OTHER_KEY = 'sk-test-key-2';

async function listen(env: Record<string, string>): Promise<{ app: FastifyInstance; base: string; sched: ScriptedScheduler }> {
  const sched = new ScriptedScheduler(() => reply(['ok']));
  const { app } = await makeApp({ env: { API_KEYS: `${KEY},${OTHER_KEY}`, ...env }, scheduler: sched });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, base, sched };
}

const chatBody = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });

/** The canonical routes, with what a keyed request gets. */
const ROUTES = [
  { method: 'GET', path: '/v1/models', ok: 200 },
  { method: 'GET', path: `/v1/models/${MODEL}`, ok: 200 },
  { method: 'POST', path: '/v1/chat/completions', ok: 200 },
  { method: 'GET', path: '/v1/sessions/abc', ok: 404 },
  { method: 'DELETE', path: '/v1/sessions/abc', ok: 404 },
] as const;

/** Ways to spell a path that a router or proxy may treat as the same; `same` ones reach the route here. */
function variants(path: string): { path: string; same: boolean }[] {
  const rest = path.slice('/v1'.length); // '/models', '/chat/completions', ...
  const last = rest.split('/').pop()!;
  const escaped = rest.replace(last, `%${last.charCodeAt(0).toString(16)}${last.slice(1)}`);
  return [
    { path, same: true },
    { path: `/%761${rest}`, same: true },
    { path: `/v%31${rest}`, same: true },
    { path: `/%76%31${rest}`, same: true },
    { path: `/v1${escaped}`, same: true },
    { path: `${path}?x=1`, same: true },
    { path: `${path}?`, same: true },
    { path: `/${path}`, same: false },
    { path: `/v1/${rest}`, same: false },
    { path: `/v1/.${rest}`, same: false },
    { path: `/x/..${path}`, same: false },
    { path: `${path}/`, same: false },
    { path: `/V1${rest}`, same: false },
    { path: path.toUpperCase(), same: false },
  ];
}

/** A request whose path goes on the wire exactly as written (no URL normalisation of dot segments). */
async function call(base: string, method: string, path: string, headers: Record<string, string> = {}) {
  const client = new Client(base);
  const res = await client.request({
    path,
    method: method as 'GET',
    headers: method === 'POST' ? { 'content-type': 'application/json', ...headers } : headers,
    ...(method === 'POST' ? { body: chatBody } : {}),
  });
  const text = await res.body.text();
  await client.close();
  return { status: res.statusCode, text, headers: res.headers };
}

function errorShape(t: Test, text: string, label: string) {
  const body = JSON.parse(text) as { error: Record<string, unknown> };
  t.same(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], `${label}: OpenAI error shape`);
  return body.error;
}

t.test('every spelling of every /v1 route needs the key; with it, the route answers as usual', async (t) => {
  const { app, base } = await listen({});
  t.teardown(() => app.close());
  for (const r of ROUTES) {
    for (const v of variants(r.path)) {
      const label = `${r.method} ${v.path}`;
      const anon = await call(base, r.method, v.path);
      t.equal(anon.status, 401, `${label} without a key`);
      t.equal(errorShape(t, anon.text, label).code, 'invalid_api_key');
      const wrong = await call(base, r.method, v.path, { authorization: 'Bearer nope' });
      t.equal(wrong.status, 401, `${label} with a wrong key`);
      const keyed = await call(base, r.method, v.path, { authorization: `Bearer ${KEY}` });
      if (v.same) t.equal(keyed.status, r.ok, `${label} with the key reaches the route`);
      else t.equal(keyed.status, 404, `${label} with the key is an unknown URL`);
      if (keyed.status >= 400) errorShape(t, keyed.text, label);
    }
  }
});

t.test('unknown paths need a key too (deny by default), then 404/405 in OpenAI shape', async (t) => {
  const { app, base } = await listen({});
  t.teardown(() => app.close());
  for (const path of ['/v1', '/v1/', '/v2/models', '/admin', '/', '/metricsx', '/%2e%2e/v1/models']) {
    t.equal((await call(base, 'GET', path)).status, 401, `GET ${path} without a key`);
    const keyed = await call(base, 'GET', path, { authorization: `Bearer ${KEY}` });
    t.equal(keyed.status, 404, `GET ${path} with a key`);
    t.equal(errorShape(t, keyed.text, path).code, 'unknown_url');
  }
  const put = await call(base, 'PUT', '/v1/models', { authorization: `Bearer ${KEY}` });
  t.equal(put.status, 405);
  t.equal(put.headers.allow, 'GET');
  t.equal(errorShape(t, put.text, 'PUT').code, 'method_not_allowed');
  t.equal((await call(base, 'PUT', '/v1/models')).status, 401, 'a wrong method without a key is still 401');
});

t.test('/health is public; /metrics is public unless METRICS_AUTH', async (t) => {
  const open = await listen({});
  t.teardown(() => open.app.close());
  t.equal((await call(open.base, 'GET', '/health')).status, 200);
  t.equal((await call(open.base, 'GET', '/health?probe=1')).status, 200);
  t.equal((await call(open.base, 'GET', '/metrics')).status, 200);

  const closed = await listen({ METRICS_AUTH: 'true' });
  t.teardown(() => closed.app.close());
  t.equal((await call(closed.base, 'GET', '/health')).status, 200, 'health stays public');
  t.equal((await call(closed.base, 'GET', '/metrics')).status, 401);
  t.equal((await call(closed.base, 'GET', '/%6detrics')).status, 401, 'an escaped spelling too');
  const keyed = await call(closed.base, 'GET', '/metrics', { authorization: `Bearer ${OTHER_KEY}` });
  t.equal(keyed.status, 200);
  t.match(keyed.text, /gemma_serve_/);
});

t.test('requests carry their key namespace to the scheduler', async (t) => {
  const { app, base, sched } = await listen({});
  t.teardown(() => app.close());
  await call(base, 'POST', '/v1/chat/completions', { authorization: `Bearer ${KEY}` });
  await call(base, 'POST', '/v1/chat/completions', { authorization: `bearer   ${OTHER_KEY}  ` });
  t.equal(sched.requests.length, 2);
  t.equal(sched.requests[0]!.namespace, keyNamespace(KEY));
  t.equal(sched.requests[1]!.namespace, keyNamespace(OTHER_KEY));
  t.not(keyNamespace(KEY), keyNamespace(OTHER_KEY));
  t.notMatch(keyNamespace(KEY), KEY, 'the namespace does not contain the key');
});
