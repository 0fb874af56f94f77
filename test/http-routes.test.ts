// Auth, 404s, health phases, metrics, sessions and scheduler refusals, through app.inject.
import t from 'tap';
import { QueueFullError, ShuttingDownError } from '../src/scheduler/errors.js';
import { MODEL, ScriptedScheduler, makeApp, reply, userMsg } from './http-helpers.js';

const chat = { model: MODEL, messages: [userMsg()] };

t.test('API keys: /v1 needs a bearer token, /health and /metrics do not', async (t) => {
  const { app } = await makeApp({ env: { API_KEYS: 'k1, k2' } });
  t.teardown(() => app.close());
  let res = await app.inject({ method: 'GET', url: '/v1/models' });
  t.equal(res.statusCode, 401);
  t.same(Object.keys(res.json().error).sort(), ['code', 'message', 'param', 'type']);
  t.equal(res.json().error.code, 'invalid_api_key');
  res = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer nope' } });
  t.equal(res.statusCode, 401);
  res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat });
  t.equal(res.statusCode, 401, 'auth runs before validation and the scheduler');
  res = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer k2' } });
  t.equal(res.statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 200);
});

t.test('404s in the error shape', async (t) => {
  const { app } = await makeApp();
  t.teardown(() => app.close());
  let res = await app.inject({ method: 'GET', url: '/v1/nope' });
  t.equal(res.statusCode, 404);
  t.equal(res.json().error.code, 'unknown_url');
  res = await app.inject({ method: 'GET', url: '/v1/models/other' });
  t.equal(res.statusCode, 404);
  t.equal(res.json().error.code, 'model_not_found');
  res = await app.inject({ method: 'GET', url: `/v1/models/${MODEL}` });
  t.equal(res.json().id, MODEL);
  res = await app.inject({ method: 'GET', url: '/v1/sessions/abc' });
  t.equal(res.statusCode, 404);
  t.equal(res.json().error.code, 'session_not_found');
  res = await app.inject({ method: 'DELETE', url: '/v1/sessions/abc' });
  t.equal(res.statusCode, 404);
});

t.test('sessions: inspect and delete', async (t) => {
  const sched = new ScriptedScheduler(() => reply(['x']));
  sched.sessions.set('s1', {
    id: 's1', resident: true, slot: 2, cachedTokens: 40, keptTurns: 3, evictedTokens: 12, createdAt: 1_700_000_000_000, lastUsedAt: 1_700_000_100_000,
  });
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => app.close());
  let res = await app.inject({ method: 'GET', url: '/v1/sessions/s1' });
  t.same(res.json(), {
    id: 's1', object: 'session', resident: true, slot: 2, cached_tokens: 40, kept_turns: 3, evicted_tokens: 12, created: 1_700_000_000, last_used: 1_700_000_100,
  });
  res = await app.inject({ method: 'DELETE', url: '/v1/sessions/s1' });
  t.same(res.json(), { id: 's1', object: 'session.deleted', deleted: true });
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions/s1' })).statusCode, 404);
});

t.test('ready and chat follow the service phase; health stays 200', async (t) => {
  const { app, service } = await makeApp({ phase: 'loading' });
  t.teardown(() => app.close());
  let res = await app.inject({ method: 'GET', url: '/health' });
  t.equal(res.statusCode, 200, 'liveness: the process answers');
  t.same(res.json(), { status: 'loading', model: MODEL });
  res = await app.inject({ method: 'GET', url: '/ready' });
  t.equal(res.statusCode, 503);
  t.equal(res.json().error.code, 'model_loading');
  res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat });
  t.equal(res.statusCode, 503);
  t.equal(res.json().error.code, 'model_loading');
  t.equal(res.headers['retry-after'], '5');
  // Validation still answers while loading.
  res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, messages: [] } });
  t.equal(res.statusCode, 400);
  service.phase = 'draining';
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 503);
  t.equal((await app.inject({ method: 'GET', url: '/health' })).json().status, 'draining');
  res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat });
  t.equal(res.json().error.code, 'shutting_down');
  service.phase = 'ready';
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
});

t.test('scheduler refusals keep their status: 429 with Retry-After, 503', async (t) => {
  let error: Error = new QueueFullError(64, 2);
  const sched = new ScriptedScheduler(() => (async function* () { throw error; })());
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => app.close());
  for (const stream of [false, true]) {
    error = new QueueFullError(64, 2);
    let res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, stream } });
    t.equal(res.statusCode, 429, `stream=${stream}`);
    t.equal(res.headers['retry-after'], '2');
    t.equal(res.json().error.code, 'queue_full');
    error = new ShuttingDownError();
    res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, stream } });
    t.equal(res.statusCode, 503);
  }
});

t.test('metrics: exposition with gemma_serve_ names and request counts', async (t) => {
  const { app, metrics } = await makeApp({ scheduler: new ScriptedScheduler(() => reply(['a', 'b'])) });
  t.teardown(() => app.close());
  await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat });
  // Latencies have one clock, the scheduler's observer (wired in service.ts): the route records none.
  const before = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  t.ok(before.includes('gemma_serve_time_to_first_token_seconds_count 0'), 'the route does not time the first token');
  t.ok(before.includes('gemma_serve_inter_token_latency_seconds_count 0'), 'the route does not time tokens');
  metrics.setMemory({ weightsBytes: 1000, kvCacheBytes: 200, transientBytes: 30, backendBytes: 1300 });
  metrics.recordEviction('turn');
  metrics.observeStep(3);
  metrics.observeFirstToken(40);
  metrics.observeInterToken(7);
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  t.match(res.headers['content-type'], /text\/plain/);
  const text = res.body;
  for (const line of [
    'gemma_serve_memory_weights_bytes 1000',
    'gemma_serve_memory_kv_cache_bytes 200',
    'gemma_serve_memory_transient_bytes 30',
    'gemma_serve_memory_backend_total_bytes 1300',
    'gemma_serve_evictions_total{kind="turn"} 1',
    'gemma_serve_generation_tokens_total 2',
    'gemma_serve_prompt_tokens_total 10',
    'gemma_serve_cached_prompt_tokens_total 4',
    'gemma_serve_requests_total{route="/v1/chat/completions",status="200"} 1',
    'gemma_serve_finished_choices_total{reason="stop"} 1',
    'gemma_serve_step_batch_size_count 1',
    'gemma_serve_queue_depth 0',
    'gemma_serve_time_to_first_token_seconds_count 1',
    'gemma_serve_inter_token_latency_seconds_count 1',
    'gemma_serve_time_to_first_token_seconds_sum 0.04',
    'gemma_serve_inter_token_latency_seconds_sum 0.007',
  ]) t.ok(text.includes(line), line);
});

t.test('request id: honoured from x-request-id, echoed back', async (t) => {
  const sched = new ScriptedScheduler(() => reply(['a']));
  const { app } = await makeApp({ scheduler: sched });
  t.teardown(() => app.close());
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat, headers: { 'x-request-id': 'abc-123', 'x-session-id': 'conv-1' } });
  t.equal(res.headers['x-request-id'], 'abc-123');
  t.equal(res.headers['x-session-id'], 'conv-1');
  t.equal(sched.requests[0]!.requestId, 'abc-123');
  t.equal(sched.requests[0]!.sessionId, 'conv-1');
});
