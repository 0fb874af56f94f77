// The running service under load and abuse, over real sockets (undici):
// batching, disconnects, queue overflow, bad requests next to a live stream,
// sessions, health, and SIGTERM on the real CLI process.
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { startService, type RunningService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MODEL = 'gemma3-tiny';
const BODY_LIMIT = 16 * 1024;

function serviceEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    HOST: '127.0.0.1',
    PORT: '0',
    MODEL_DIR: modelDir(MODEL),
    BACKEND: 'wasm',
    SLOTS: '6',
    MAX_BATCH_SIZE: '6',
    CACHE_CAPACITY: '512',
    MAX_TOKENS_LIMIT: '4000',
    BODY_LIMIT_BYTES: String(BODY_LIMIT),
    LOG_LEVEL: 'silent',
    ...extra,
  };
}

const svc = await startService(serviceEnv(), { handleSignals: false });
t.teardown(() => svc.stop());

const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: MODEL,
  messages: [{ role: 'user', content: 'Tell me a long story.' }],
  temperature: 0,
  ...extra,
});

function post(base: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal) {
  return request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
}

interface Chunk {
  id: string;
  object: string;
  choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: { prompt_tokens: number; completion_tokens: number } | null;
}

/** SSE `data:` payloads as they arrive; '[DONE]' is yielded as the string. */
async function* sse(body: AsyncIterable<Buffer>): AsyncGenerator<Chunk | '[DONE]' | { error: ErrorShape }> {
  let buf = '';
  for await (const b of body) {
    buf += b.toString('utf8');
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!frame.startsWith('data: ')) throw new Error(`bad SSE frame ${JSON.stringify(frame)}`);
      const data = frame.slice(6);
      yield data === '[DONE]' ? '[DONE]' : JSON.parse(data);
    }
  }
  if (buf !== '') throw new Error(`unterminated SSE frame ${JSON.stringify(buf)}`);
}

/** A streaming request read in the background; `firstToken` resolves at the first content chunk. */
function startStream(base: string, body: Record<string, unknown>, headers: Record<string, string> = {}, signal?: AbortSignal) {
  let gotToken!: () => void;
  const firstToken = new Promise<void>((r) => (gotToken = r));
  let finishedAt = 0;
  const done = (async () => {
    const res = await post(base, { ...body, stream: true, stream_options: { include_usage: true } }, headers, signal);
    if (res.statusCode !== 200) throw new Error(`stream answered ${res.statusCode}: ${await res.body.text()}`);
    const events: (Chunk | '[DONE]' | { error: ErrorShape })[] = [];
    let text = '';
    for await (const ev of sse(res.body)) {
      events.push(ev);
      if (ev !== '[DONE]' && 'choices' in ev && ev.choices[0]?.delta.content) {
        text += ev.choices[0].delta.content;
        gotToken();
      }
    }
    finishedAt = performance.now();
    const chunks = events.filter((e): e is Chunk => e !== '[DONE]' && 'choices' in e);
    return {
      events,
      text,
      finish: chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter((f) => f !== null),
      usage: chunks.at(-1)?.usage ?? undefined,
      finishedAt,
    };
  })();
  done.catch(() => gotToken());
  return { firstToken, done };
}

/** Prometheus text exposition as `name{labels}` -> value. */
async function metrics(base: string): Promise<Map<string, number>> {
  const res = await request(`${base}/metrics`);
  t.equal(res.statusCode, 200);
  const out = new Map<string, number>();
  for (const line of (await res.body.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

async function waitFor(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface ErrorShape {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

/** Asserts OpenAI's error shape, exactly those four fields. */
async function expectError(t: Test, res: { statusCode: number; headers: Record<string, unknown>; body: { json(): Promise<unknown> } }, status: number, want: Partial<ErrorShape>) {
  t.equal(res.statusCode, status, `status ${status}`);
  t.match(String(res.headers['content-type']), /^application\/json/);
  const body = (await res.body.json()) as { error: ErrorShape };
  t.same(Object.keys(body), ['error']);
  t.same(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  t.type(body.error.message, 'string');
  t.ok(body.error.message.length > 10, body.error.message);
  t.match(body.error, want);
  return body.error;
}

t.test('/health answers 200 with the model once ready', async (t) => {
  const res = await request(`${svc.url}/health`);
  t.equal(res.statusCode, 200);
  t.same(await res.body.json(), { status: 'ok', model: MODEL });
});

t.test('concurrent requests share decode steps', async (t) => {
  const before = await metrics(svc.url);
  const results = await Promise.all(
    [0, 1, 2, 3].map((i) => startStream(svc.url, chatBody({ max_tokens: 16, messages: [{ role: 'user', content: `Request ${i}` }] })).done),
  );
  t.ok(results.every((r) => r.usage?.completion_tokens === 16 && r.finish[0] === 'length'), 'every stream completed');
  const after = await metrics(svc.url);
  const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  const steps = delta('gemma_serve_step_batch_size_count');
  const single = delta('gemma_serve_step_batch_size_bucket{le="1"}');
  t.ok(steps > 0, `${steps} decode steps ran`);
  t.ok(steps - single > 0, `${steps - single} of ${steps} decode steps ran more than one row`);
  // 4 x 16 tokens in fewer steps than 64 is only possible with batching.
  t.ok(steps < 64, `64 tokens took ${steps} steps`);
  t.equal(delta('gemma_serve_generation_tokens_total'), 64);
});

t.test('latency histograms: one first token and a gap per later token, timed by the scheduler', async (t) => {
  const before = await metrics(svc.url);
  const sentAt = performance.now();
  const s = startStream(svc.url, chatBody({ max_tokens: 8, messages: [{ role: 'user', content: 'Count the latencies.' }] }), { 'x-session-id': `e2e-latency-${process.pid}` });
  await s.firstToken;
  const clientFirstToken = (performance.now() - sentAt) / 1000;
  const r = await s.done;
  const clientTotal = (r.finishedAt - sentAt) / 1000;
  t.same(r.finish, ['length']);
  t.equal(r.usage?.completion_tokens, 8);
  const after = await metrics(svc.url);
  const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  t.equal(delta('gemma_serve_time_to_first_token_seconds_count'), 1, 'one time to first token per request');
  t.equal(delta('gemma_serve_inter_token_latency_seconds_count'), 7, 'one gap between each of the 8 tokens and the next');
  t.equal(delta('gemma_serve_generation_tokens_total'), 8);
  // The scheduler's clock starts after the request was sent and stops before the client reads the token.
  const ttft = delta('gemma_serve_time_to_first_token_seconds_sum');
  t.ok(ttft > 0 && ttft <= clientFirstToken, `time to first token ${ttft} s, the client saw ${clientFirstToken} s`);
  const gaps = delta('gemma_serve_inter_token_latency_seconds_sum');
  t.ok(gaps > 0 && ttft + gaps <= clientTotal, `inter-token gaps ${gaps} s, the whole stream ${clientTotal} s`);
  // Sessions on this instance are the resident ones (their slots); the request's session is one of them.
  t.ok((after.get('gemma_serve_sessions') ?? 0) >= 1, 'the session is resident');
  t.equal(after.get('gemma_serve_sessions'), after.get('gemma_serve_slots_used'), 'resident sessions hold the used slots');
});

t.test('a client that disconnects mid-stream frees its row', async (t) => {
  const session = `e2e-disconnect-${process.pid}`;
  const ac = new AbortController();
  const before = await metrics(svc.url);
  const s = startStream(svc.url, chatBody({ max_tokens: 3000 }), { 'x-session-id': session }, ac.signal);
  await s.firstToken;
  ac.abort();
  await t.rejects(s.done, 'the client side ends with the abort');
  await waitFor('running_requests to reach 0', async () => (await metrics(svc.url)).get('gemma_serve_running_requests') === 0);
  // No more decode steps once the row left: nothing else is running.
  const m1 = await metrics(svc.url);
  await new Promise((r) => setTimeout(r, 300));
  const m2 = await metrics(svc.url);
  t.equal(m2.get('gemma_serve_step_batch_size_count'), m1.get('gemma_serve_step_batch_size_count'), 'decoding stopped');
  const generated = (m2.get('gemma_serve_generation_tokens_total') ?? 0) - (before.get('gemma_serve_generation_tokens_total') ?? 0);
  t.ok(generated < 3000, `the cancelled stream generated ${generated} of 3000 tokens`);
  t.equal(
    (m2.get('gemma_serve_finished_choices_total{reason="cancelled"}') ?? 0) - (before.get('gemma_serve_finished_choices_total{reason="cancelled"}') ?? 0),
    1,
    'counted as cancelled',
  );
  // The session's slot is free again: its next request runs at once.
  const again = await startStream(svc.url, chatBody({ max_tokens: 4 }), { 'x-session-id': session }).done;
  t.same(again.finish, ['length']);
  t.equal(again.events.at(-1), '[DONE]');
  t.equal((await metrics(svc.url)).get('gemma_serve_running_requests'), 0);
});

t.test('bad requests get 4xx in OpenAI shape while a stream carries on', async (t) => {
  const long = startStream(svc.url, chatBody({ max_tokens: 300 }));
  await long.firstToken;
  const bad = async () => {
    await expectError(t, await post(svc.url, '{"model": "gemma3-tiny", "messages": ['), 400, { type: 'invalid_request_error', code: 'invalid_json' });
    await expectError(t, await post(svc.url, chatBody({ max_tokens: '10' })), 400, { param: 'max_tokens', code: 'invalid_type' });
    await expectError(t, await post(svc.url, chatBody({ temperature: 'hot' })), 400, { param: 'temperature' });
    await expectError(t, await post(svc.url, { model: MODEL, messages: 'hello' }), 400, { param: 'messages' });
    await expectError(t, await post(svc.url, { model: MODEL, messages: [] }), 400, { param: 'messages' });
    await expectError(t, await post(svc.url, { model: MODEL, messages: [{ role: 'wizard', content: 'hi' }] }), 400, { param: 'messages[0].role' });
    await expectError(t, await post(svc.url, chatBody({ max_tokens: 4001 })), 400, { param: 'max_tokens' });
    await expectError(t, await post(svc.url, chatBody({ max_completion_tokens: 1e6 })), 400, { param: 'max_completion_tokens' });
    const huge = chatBody({ messages: [{ role: 'user', content: 'x'.repeat(BODY_LIMIT * 2) }] });
    await expectError(t, await post(svc.url, huge), 413, { code: 'request_too_large' });
    await expectError(t, await post(svc.url, chatBody({ model: 'gpt-4o' })), 404, { code: 'model_not_found' });
    await expectError(t, await post(svc.url, '<chat/>', { 'content-type': 'application/xml' }), 415, { code: 'unsupported_media_type' });
    await expectError(t, await post(svc.url, chatBody({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }] })), 400, {
      param: 'messages[0].content[0]',
    });
    return performance.now();
  };
  const badDoneAt = await bad();
  const r = await long.done;
  t.ok(badDoneAt < r.finishedAt, 'the stream was still running while the bad requests were answered');
  t.same(r.finish, ['length'], 'the stream finished normally');
  t.equal(r.usage?.completion_tokens, 300);
  t.equal(r.events.at(-1), '[DONE]');
  t.notOk(r.events.some((e) => e !== '[DONE]' && 'error' in e), 'no error event in the stream');
});

t.test('sessions can be inspected and deleted', async (t) => {
  const id = `e2e-session-${process.pid}`;
  const first = await post(svc.url, chatBody({ max_tokens: 4 }), { 'x-session-id': id });
  t.equal(first.statusCode, 200);
  t.equal(first.headers['x-session-id'], id);
  const firstBody = (await first.body.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };

  const got = await request(`${svc.url}/v1/sessions/${id}`);
  t.equal(got.statusCode, 200);
  const info = (await got.body.json()) as Record<string, unknown>;
  t.match(info, { id, object: 'session', resident: true, slot: Number, kept_turns: Number, evicted_tokens: 0, created: Number, last_used: Number });
  t.ok((info.cached_tokens as number) >= firstBody.usage.prompt_tokens, `the cache holds the prompt (${info.cached_tokens} tokens)`);

  const del = await request(`${svc.url}/v1/sessions/${id}`, { method: 'DELETE' });
  t.equal(del.statusCode, 200);
  t.same(await del.body.json(), { id, object: 'session.deleted', deleted: true });
  await expectError(t, await request(`${svc.url}/v1/sessions/${id}`), 404, { code: 'session_not_found' });
  await expectError(t, await request(`${svc.url}/v1/sessions/${id}`, { method: 'DELETE' }), 404, { code: 'session_not_found' });

  const again = await post(svc.url, chatBody({ max_tokens: 4 }), { 'x-session-id': id });
  const againBody = (await again.body.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } };
  t.equal(againBody.usage.prompt_tokens_details.cached_tokens, 0, 'a deleted session starts cold');
});

t.test('a full queue answers 429 with Retry-After', async (t) => {
  const small: RunningService = await startService(serviceEnv({ SLOTS: '2', MAX_BATCH_SIZE: '1', MAX_QUEUE: '1' }), { handleSignals: false });
  t.teardown(() => small.stop());
  const running = startStream(small.url, chatBody({ max_tokens: 200 }));
  await running.firstToken;
  const queued = startStream(small.url, chatBody({ max_tokens: 4, messages: [{ role: 'user', content: 'queued' }] }));
  await waitFor('a queued request', async () => (await metrics(small.url)).get('gemma_serve_queue_depth') === 1);
  const res = await post(small.url, chatBody({ max_tokens: 4 }));
  t.equal(res.headers['retry-after'], '1');
  await expectError(t, res, 429, { type: 'rate_limit_error', code: 'queue_full', param: null });
  const [r1, r2] = await Promise.all([running.done, queued.done]);
  t.same(r1.finish, ['length'], 'the running request was not disturbed');
  t.same(r2.finish, ['length'], 'the queued request ran once a row was free');
  t.ok(r2.finishedAt > r1.finishedAt, 'with one row, the queued request ran after the first');
  const m = await metrics(small.url);
  t.equal(m.get('gemma_serve_requests_total{route="/v1/chat/completions",status="429"}'), 1);
});

/** dist/ must hold a build at least as new as the sources for the CLI test. */
function ensureBuilt(): void {
  const cli = join(ROOT, 'dist', 'src', 'cli.js');
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const p = join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(p) : e.name.endsWith('.ts') ? statSync(p).mtimeMs : 0);
    }, 0);
  if (existsSync(cli) && statSync(cli).mtimeMs >= Math.max(...['src', 'routes', 'config'].map((d) => newest(join(ROOT, d))))) return;
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (!existsSync(cli)) throw new Error(`building dist failed: ${r.stdout}${r.stderr}`);
}

t.test('SIGTERM drains: running streams finish, new requests are refused, exit 0', async (t) => {
  ensureBuilt();
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'src', 'cli.js'), 'serve'], {
    cwd: ROOT,
    env: { ...process.env, ...serviceEnv({ LOG_LEVEL: 'info', SHUTDOWN_GRACE_MS: '20000' }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  // pino writes JSON lines; the 'ready' line carries the listening URL.
  const base = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no 'ready' line; stdout: ${out} stderr: ${stderr}`)), 30_000);
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const rec = JSON.parse(line) as { msg?: string; url?: string };
          if (rec.msg === 'ready' && rec.url) {
            clearTimeout(timer);
            resolve(rec.url);
          }
        } catch {
          // a partial line; read on
        }
      }
    });
    void exited.then((e) => reject(new Error(`exited early (${JSON.stringify(e)}): ${stderr}`)));
  });

  const stream = startStream(base, chatBody({ max_tokens: 250 }));
  await stream.firstToken;
  child.kill('SIGTERM');
  await waitFor('/ready to report draining', async () => {
    const res = await request(`${base}/ready`).catch(() => undefined);
    return res !== undefined && res.statusCode === 503 && ((await res.body.json()) as { error: { code: string } }).error.code === 'shutting_down';
  });
  const refused = await post(base, chatBody({ max_tokens: 4 })).then(
    async (res) => ({ status: res.statusCode, body: (await res.body.json()) as { error: ErrorShape } }),
    (err: Error & { code?: string }) => ({ status: 0, code: err.code }),
  );
  if (refused.status === 0) t.equal((refused as { code?: string }).code, 'ECONNREFUSED', 'connection refused after SIGTERM');
  else t.match(refused, { status: 503, body: { error: { code: 'shutting_down', type: 'server_error' } } }, 'a new request gets 503');
  const r = await stream.done;
  t.same(r.finish, ['length'], 'the running stream finished');
  t.equal(r.usage?.completion_tokens, 250);
  t.equal(r.events.at(-1), '[DONE]');
  const exit = await exited;
  t.same(exit, { code: 0, signal: null }, 'the process exited 0');
  t.equal(stderr, '', 'nothing on stderr');
  await t.rejects(request(`${base}/health`), { code: 'ECONNREFUSED' }, 'nothing listens any more');
});

t.test('streams still running when the grace period ends get an error event', async (t) => {
  const short: RunningService = await startService(serviceEnv({ SHUTDOWN_GRACE_MS: '200' }), { handleSignals: false });
  const stream = startStream(short.url, chatBody({ max_tokens: 3000 }));
  const plain = post(short.url, chatBody({ max_tokens: 3000 }));
  await stream.firstToken;
  await waitFor('both requests to run', async () => (await metrics(short.url)).get('gemma_serve_running_requests') === 2);
  await short.stop();
  const r = await stream.done;
  t.same(r.finish, [], 'no finish_reason: the reply was cut short');
  t.match(r.events.at(-1), { error: { code: 'shutting_down', type: 'server_error', param: null } }, 'the stream ends with an error event');
  t.notOk(r.events.includes('[DONE]'), 'and without [DONE]');
  await expectError(t, await plain, 503, { code: 'shutting_down' });
});
