// CORS on a real HTTP server (loopback): off by default; with CORS_ORIGINS a
// browser's preflight from a listed origin is answered before authentication,
// one from another origin gets no CORS headers, and the real cross-origin
// request carries Access-Control-Allow-Origin. Bad CORS_ORIGINS fail at start.
import t from 'tap';
import { loadConfig } from '../config/index.js';
import { MODEL, ScriptedScheduler, makeApp, reply } from './http-helpers.js';

const KEY = 'cors-test-key';
const APP = 'https://app.example.com';

async function listen(env: Record<string, string>) {
  const sched = new ScriptedScheduler(() => reply(['Hi', ' there']));
  const { app } = await makeApp({ env: { API_KEYS: KEY, ...env }, scheduler: sched });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  return base;
}

const preflight = (base: string, origin: string, path = '/v1/chat/completions') =>
  fetch(`${base}${path}`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,x-stainless-os' },
  });

t.test('a preflight from a listed origin passes before authentication', async (t) => {
  const base = await listen({ CORS_ORIGINS: `${APP}, https://other.example.org`, CORS_MAX_AGE: '120' });
  const res = await preflight(base, APP);
  t.equal(res.status, 204, 'answered without a key');
  t.equal(res.headers.get('access-control-allow-origin'), APP);
  t.match(res.headers.get('access-control-allow-methods') ?? '', /POST/);
  t.match(res.headers.get('access-control-allow-headers') ?? '', /authorization/i, 'the headers asked for are allowed');
  t.equal(res.headers.get('access-control-max-age'), '120');
  t.match(res.headers.get('vary') ?? '', /origin/i);

  const post = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { origin: APP, authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }] }),
  });
  t.equal(post.status, 200, 'the real request still needs and has its key');
  t.equal(post.headers.get('access-control-allow-origin'), APP);
  t.match(post.headers.get('access-control-expose-headers') ?? '', /x-request-id/);
  const noKey = await fetch(`${base}/v1/models`, { headers: { origin: APP } });
  t.equal(noKey.status, 401, 'CORS does not open a route');
  t.equal(noKey.headers.get('access-control-allow-origin'), APP, 'the 401 can be read by the page');
  t.equal(((await noKey.json()) as { error: { code: string } }).error.code, 'invalid_api_key');
});

t.test('a preflight from another origin gets no CORS headers', async (t) => {
  const base = await listen({ CORS_ORIGINS: APP });
  const res = await preflight(base, 'https://evil.example.net');
  t.not(res.status, 204);
  t.equal(res.headers.get('access-control-allow-origin'), null, 'no allow-origin: the browser refuses');
  const body = (await res.json()) as { error: { type: string } };
  t.type(body.error.type, 'string', "the refusal is in OpenAI's error shape");
  const get = await fetch(`${base}/v1/models`, { headers: { origin: 'https://evil.example.net', authorization: `Bearer ${KEY}` } });
  t.equal(get.status, 200, 'a request with a key still works from anywhere (CORS is the browser\'s check)');
  t.equal(get.headers.get('access-control-allow-origin'), null);
});

t.test('* allows any origin', async (t) => {
  const base = await listen({ CORS_ORIGINS: '*' });
  const res = await preflight(base, 'https://anything.example');
  t.equal(res.status, 204);
  t.equal(res.headers.get('access-control-allow-origin'), 'https://anything.example');
});

t.test('CORS is off by default: OPTIONS is answered as before', async (t) => {
  const base = await listen({});
  const res = await preflight(base, APP);
  t.equal(res.headers.get('access-control-allow-origin'), null);
  t.equal(res.status, 401, 'an OPTIONS request needs a key like any other');
  const keyed = await fetch(`${base}/v1/chat/completions`, { method: 'OPTIONS', headers: { authorization: `Bearer ${KEY}` } });
  t.equal(keyed.status, 405, 'a known path answers OPTIONS with 405');
  t.match(keyed.headers.get('allow') ?? '', /POST/);
  t.equal(((await keyed.json()) as { error: { type: string } }).error.type, 'invalid_request_error');
});

t.test('bad CORS_ORIGINS fail at start, naming the variable', async (t) => {
  t.throws(() => loadConfig({ CORS_ORIGINS: 'app.example.com' }), { param: 'CORS_ORIGINS' });
  t.throws(() => loadConfig({ CORS_ORIGINS: '*,https://a.example' }), { param: 'CORS_ORIGINS' });
  t.throws(() => loadConfig({ CORS_MAX_AGE: '-1' }), { param: 'CORS_MAX_AGE' });
  t.same(loadConfig({ CORS_ORIGINS: 'https://a.example/, http://localhost:3000' }).server.corsOrigins, ['https://a.example', 'http://localhost:3000']);
});
