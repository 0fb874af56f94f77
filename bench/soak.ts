/**
 * `npm run bench:soak`: the real service under minutes of mixed load, as a
 * client sees it. It starts `gemma-serve serve` as a child process on a free
 * loopback port (MODEL_DIR, BACKEND and every other setting from this
 * process's environment; unset MODEL_DIR = the embedded default model), waits
 * for it to be ready, warms it up with one request of each kind, then for
 * SOAK_SECONDS keeps SOAK_CONCURRENCY clients busy with a seeded mix of:
 *
 * - streamed chat completions (some with top_p/top_k/penalties/logit_bias/stop),
 * - long prompts (about SOAK_LONG_PROMPT_TOKENS tokens, several prefill chunks),
 * - streams the client cancels after a few chunks (the fetch is aborted),
 * - non-streamed completions (some with n = 2),
 * - sessions: 2-3 turns under one `x-session-id`, each resending the history
 *   (so follow-ups reuse the cache), sometimes ending with a DELETE,
 * - invalid requests, which must get an OpenAI-shaped 4xx
 *   (`{"error": {"message", "type", ...}}`).
 *
 * Meanwhile it scrapes /metrics every SOAK_METRICS_INTERVAL_S and records the
 * memory gauges (tensor backend bytes, KV cache, transient, GPU in use and
 * allocated, process RSS, JS heap, external). At the end it checks that the
 * service still answers (/health, one more chat completion), stops it with
 * SIGTERM and prints one JSON object: outcomes, client-side TTFT (p50, p95),
 * decode tokens/s per stream, aggregate tokens/s, the gauges at start, after
 * warm-up, at the end and their maxima, a leak check, and how the child
 * exited (with the tail of its stderr if it crashed).
 *
 * The leak check compares two idle points (no running or queued request):
 * the first after warm-up and the one after the load. Tensor gauges (backend
 * total, KV cache, transient, GPU in use) must not grow by more than
 * SOAK_LEAK_TOLERANCE_BYTES; RSS, heap and GPU allocated (freed buffers kept
 * for reuse) are reported, not judged.
 *
 * Nothing hangs: every request has a timeout (SOAK_REQUEST_TIMEOUT_S), idle
 * waits and the shutdown are bounded, and a watchdog kills the child and
 * prints what it has if the whole run overstays its bound.
 *
 * Exit code 1 when the service crashed (exited before SIGTERM, or not cleanly
 * after it), any 5xx or in-stream error appeared, a request timed out, an
 * invalid request was not refused with an OpenAI-shaped 4xx, the service was
 * not alive or not idle at the end, or a tensor gauge grew after warm-up;
 * 2 when the watchdog fired.
 *
 * Environment: SOAK_SECONDS (180), SOAK_CONCURRENCY (8), SOAK_MAX_TOKENS (48),
 * SOAK_LONG_PROMPT_TOKENS (3000), SOAK_REQUEST_TIMEOUT_S (120),
 * SOAK_METRICS_INTERVAL_S (5), SOAK_START_TIMEOUT_S (600), SOAK_IDLE_TIMEOUT_S
 * (60), SOAK_LEAK_TOLERANCE_BYTES (65536), SOAK_SEED (1), SOAK_MODEL_LABEL
 * (free text for the report, e.g. "270m preset"), DEVICE_NAME.
 *
 *   MODEL_DIR=/tmp/m1b BACKEND=webgpu DEVICE_NAME=H100 node dist/bench/soak.js
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

function num(name: string, dflt: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a non-negative number, got ${JSON.stringify(raw)}`);
  return v;
}

const SECONDS = num('SOAK_SECONDS', 180);
const CONCURRENCY = Math.max(1, Math.floor(num('SOAK_CONCURRENCY', 8)));
const MAX_TOKENS = Math.max(2, Math.floor(num('SOAK_MAX_TOKENS', 48)));
const LONG_PROMPT_TOKENS = Math.floor(num('SOAK_LONG_PROMPT_TOKENS', 3000));
const REQUEST_TIMEOUT_MS = num('SOAK_REQUEST_TIMEOUT_S', 120) * 1000;
const METRICS_INTERVAL_MS = Math.max(500, num('SOAK_METRICS_INTERVAL_S', 5) * 1000);
const START_TIMEOUT_MS = num('SOAK_START_TIMEOUT_S', 600) * 1000;
const IDLE_TIMEOUT_MS = num('SOAK_IDLE_TIMEOUT_S', 60) * 1000;
const LEAK_TOLERANCE_BYTES = num('SOAK_LEAK_TOLERANCE_BYTES', 65536);
const SHUTDOWN_WAIT_MS = num('SHUTDOWN_GRACE_MS', 10_000) + 30_000;
const SEED = Math.floor(num('SOAK_SEED', 1));
/** The whole run's bound: start, warm-up, load, the in-flight tail, idle waits, final checks, shutdown. */
const WATCHDOG_MS = START_TIMEOUT_MS + SECONDS * 1000 + 3 * REQUEST_TIMEOUT_MS + 2 * IDLE_TIMEOUT_MS + SHUTDOWN_WAIT_MS + 60_000;

// ---------------------------------------------------------------------------
// The child process.

interface Child {
  proc: ChildProcess;
  url?: string;
  stdoutTail: string;
  stderrTail: string;
  /** Set once it exited; `expected` when it was after our SIGTERM. */
  exit?: { code: number | null; signal: NodeJS.Signals | null; expected: boolean };
  exited: Promise<void>;
  sigtermSent: boolean;
  /** We killed it (SIGKILL: it overstayed the shutdown wait, or the run failed): not a crash of its own. */
  killed: boolean;
  /** Log records at warn (40) or above, counted by message; the first few kept whole. */
  warnings: Map<string, number>;
  errors: Map<string, number>;
  errorSamples: string[];
}

const TAIL = 2048;
const tail = (s: string, n = TAIL) => (s.length > n ? s.slice(s.length - n) : s);

function startChild(): Child {
  const cli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const proc = spawn(process.execPath, [cli, 'serve'], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let resolveExit!: () => void;
  const child: Child = {
    proc,
    stdoutTail: '',
    stderrTail: '',
    exited: new Promise((r) => (resolveExit = r)),
    sigtermSent: false,
    killed: false,
    warnings: new Map(),
    errors: new Map(),
    errorSamples: [],
  };
  let partial = '';
  proc.stdout!.on('data', (b: Buffer) => {
    const s = b.toString();
    child.stdoutTail = tail(child.stdoutTail + s, 8 * TAIL);
    partial += s;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      let rec: { level?: number; msg?: string; url?: string; err?: { message?: string } };
      try {
        rec = JSON.parse(line) as typeof rec;
      } catch {
        continue;
      }
      if (rec.msg === 'ready' && typeof rec.url === 'string') child.url = rec.url;
      if ((rec.level ?? 0) >= 50) {
        const key = `${rec.msg ?? ''}${rec.err?.message ? `: ${rec.err.message.slice(0, 200)}` : ''}`;
        child.errors.set(key, (child.errors.get(key) ?? 0) + 1);
        if (child.errorSamples.length < 3) child.errorSamples.push(line.slice(0, 1500));
      } else if ((rec.level ?? 0) >= 40) {
        const key = (rec.msg ?? '').slice(0, 200);
        child.warnings.set(key, (child.warnings.get(key) ?? 0) + 1);
      }
    }
  });
  proc.stderr!.on('data', (b: Buffer) => {
    child.stderrTail = tail(child.stderrTail + b.toString());
  });
  proc.once('exit', (code, signal) => {
    child.exit = { code, signal, expected: child.sigtermSent };
    if (!child.sigtermSent) stopAll.abort(new Error('the service exited'));
    resolveExit();
  });
  return child;
}

/** Resolves with the URL once the 'ready' line is logged and /health answers 200. */
async function waitReady(child: Child): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < START_TIMEOUT_MS) {
    if (child.exit) throw new Error(`the service exited (code ${child.exit.code}, signal ${child.exit.signal}) before it was ready`);
    if (child.url !== undefined) {
      const res = await get('/health', 5000).catch(() => undefined);
      if (res?.status === 200) return performance.now() - t0;
    }
    await sleep(250);
  }
  throw new Error(`the service was not ready after ${START_TIMEOUT_MS / 1000} s`);
}

/** SIGTERM, then SIGKILL if it has not exited in time. */
async function stopChild(child: Child): Promise<{ graceful: boolean; ms: number }> {
  const t0 = performance.now();
  if (child.exit) return { graceful: false, ms: 0 };
  child.sigtermSent = true;
  child.proc.kill('SIGTERM');
  const inTime = await Promise.race([child.exited.then(() => true), sleep(SHUTDOWN_WAIT_MS).then(() => false)]);
  if (!inTime) {
    child.killed = true;
    child.proc.kill('SIGKILL');
    await Promise.race([child.exited, sleep(10_000)]);
  }
  return { graceful: inTime, ms: Math.round(performance.now() - t0) };
}

// ---------------------------------------------------------------------------
// HTTP.

/** Aborted when the service exits on its own, or the watchdog fires: every request stops at once. */
const stopAll = new AbortController();
let child: Child;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Sleeps `ms`, or less if the run is being stopped. */
function sleepUnlessStopped(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      stopAll.signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    stopAll.signal.addEventListener('abort', done, { once: true });
  });
}

function signalFor(timeoutMs: number, cancel?: AbortController): { signal: AbortSignal; timeout: AbortSignal } {
  const timeout = AbortSignal.timeout(timeoutMs);
  return { signal: AbortSignal.any([timeout, stopAll.signal, ...(cancel ? [cancel.signal] : [])]), timeout };
}

async function get(path: string, timeoutMs = 10_000): Promise<{ status: number; text: string }> {
  const res = await fetch(`${child.url}${path}`, { signal: signalFor(timeoutMs).signal });
  return { status: res.status, text: await res.text() };
}

type Kind = 'stream' | 'long' | 'cancel' | 'nonstream' | 'session' | 'session_delete' | 'invalid';
type Outcome = 'ok' | 'cancelled' | 'client_error' | 'server_error' | 'failed_connection' | 'timeout' | 'bad_response';

interface Result {
  kind: Kind;
  outcome: Outcome;
  status?: number;
  ttftMs?: number;
  decodeTps?: number;
  promptTokens?: number;
  completionTokens?: number;
  cachedTokens?: number;
  /** Whether a 4xx was meant (an invalid request) and came in OpenAI's shape. */
  expected4xx?: boolean;
  shapeOk?: boolean;
  detail?: string;
  text?: string;
  followUp?: boolean;
  /** Which invalid request it was. */
  case?: string;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number };
}

function isErrorShape(text: string): boolean {
  try {
    const e = (JSON.parse(text) as { error?: { message?: unknown; type?: unknown } }).error;
    return typeof e?.message === 'string' && typeof e.type === 'string';
  } catch {
    return false;
  }
}

function failure(kind: Kind, err: unknown, timeout: AbortSignal, cancel?: AbortController, extra: Partial<Result> = {}): Result {
  if (cancel?.signal.aborted) return { kind, outcome: 'cancelled', ...extra };
  if (timeout.aborted) return { kind, outcome: 'timeout', detail: `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`, ...extra };
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  return { kind, outcome: 'failed_connection', detail: (e.cause?.code ?? e.cause?.message ?? e.message ?? String(err)).slice(0, 200), ...extra };
}

function httpFailure(kind: Kind, status: number, text: string): Result {
  return {
    kind,
    outcome: status >= 500 ? 'server_error' : status >= 400 ? 'client_error' : 'bad_response',
    status,
    shapeOk: isErrorShape(text),
    detail: text.slice(0, 300),
  };
}

interface ChatOptions {
  kind: Kind;
  body: Record<string, unknown>;
  sessionId?: string;
  /** Abort the fetch after this many content chunks. */
  cancelAfter?: number;
}

/** One streamed chat completion, timed as chunks arrive. */
async function streamChat(o: ChatOptions): Promise<Result> {
  const cancel = o.cancelAfter !== undefined ? new AbortController() : undefined;
  const { signal, timeout } = signalFor(REQUEST_TIMEOUT_MS, cancel);
  const t0 = performance.now();
  let chunks = 0;
  try {
    const res = await fetch(`${child.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(o.sessionId ? { 'x-session-id': o.sessionId } : {}) },
      body: JSON.stringify({ ...o.body, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
    if (res.status !== 200) return httpFailure(o.kind, res.status, await res.text());
    const decoder = new TextDecoder();
    let buf = '';
    let first: number | undefined;
    let last: number | undefined;
    let usage: Usage | undefined;
    let streamError: string | undefined;
    let done = false;
    let text = '';
    read: for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      const now = performance.now();
      buf += decoder.decode(part, { stream: true });
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = frame
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (data === '') continue;
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data) as {
          choices?: { delta?: { content?: string; reasoning_content?: string }; finish_reason?: string | null }[];
          usage?: Usage;
          error?: { message?: string };
        };
        if (chunk.error) streamError = chunk.error.message ?? JSON.stringify(chunk.error);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta;
        const piece = (delta?.content ?? '') + (delta?.reasoning_content ?? '');
        if (piece !== '' || chunk.choices?.[0]?.finish_reason) {
          if (piece !== '') {
            first ??= now;
            text += delta?.content ?? '';
            chunks++;
          }
          last = now;
        }
        if (cancel && chunks >= o.cancelAfter!) {
          cancel.abort();
          break read;
        }
      }
    }
    if (cancel?.signal.aborted) return { kind: o.kind, outcome: 'cancelled', ttftMs: first !== undefined ? first - t0 : undefined };
    if (streamError !== undefined) return { kind: o.kind, outcome: 'server_error', status: 200, detail: `error frame in the stream: ${streamError.slice(0, 300)}` };
    if (!done || usage === undefined) return { kind: o.kind, outcome: 'bad_response', status: 200, detail: done ? 'no usage chunk' : 'the stream ended without [DONE]' };
    const decodeTps =
      first !== undefined && last !== undefined && usage.completion_tokens >= 4 && last > first ? ((usage.completion_tokens - 1) * 1000) / (last - first) : undefined;
    return {
      kind: o.kind,
      outcome: 'ok',
      status: 200,
      ttftMs: first !== undefined ? first - t0 : undefined,
      decodeTps,
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
      text,
    };
  } catch (err) {
    return failure(o.kind, err, timeout, cancel, chunks > 0 ? { detail: `after ${chunks} chunks` } : {});
  }
}

async function plainChat(o: ChatOptions): Promise<Result> {
  const { signal, timeout } = signalFor(REQUEST_TIMEOUT_MS);
  try {
    const res = await fetch(`${child.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(o.sessionId ? { 'x-session-id': o.sessionId } : {}) },
      body: JSON.stringify({ ...o.body, stream: false }),
      signal,
    });
    const text = await res.text();
    if (res.status !== 200) return httpFailure(o.kind, res.status, text);
    const body = JSON.parse(text) as { choices?: { message?: { content?: string | null } }[]; usage?: Usage };
    const n = typeof o.body.n === 'number' ? o.body.n : 1;
    if (body.choices?.length !== n || body.usage === undefined || typeof body.choices[0]?.message?.content !== 'string') {
      return { kind: o.kind, outcome: 'bad_response', status: 200, detail: text.slice(0, 300) };
    }
    return { kind: o.kind, outcome: 'ok', status: 200, promptTokens: body.usage.prompt_tokens, completionTokens: body.usage.completion_tokens };
  } catch (err) {
    return failure(o.kind, err, timeout);
  }
}

// ---------------------------------------------------------------------------
// The request mix.

/** mulberry32: the mix is the same for one SOAK_SEED. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = (
  'harbour morning tide gulls nets baker shutters bread market weather fishermen ropes lantern pier salt wind ' +
  'cobbles chapel bell cart apples cheese ferry island lighthouse keeper storm clouds sunlight river bridge mill ' +
  'children school teacher letters stamps post office train station clock platform travellers coats umbrellas'
).split(' ');

const SHORT_PROMPTS = [
  'Describe one morning in a harbour town, with its weather and its market.',
  'Write a short poem about a lighthouse keeper.',
  'List three things a traveller should pack for a rainy week.',
  'Explain, in plain words, why bread rises.',
  'Tell a two-sentence story about a lost umbrella.',
];

let model = '';

/** About `tokens` prompt tokens (these words are ~1.05 Gemma tokens each), with a unique start so no cache matches it. */
function longText(tokens: number, rand: () => number): string {
  const words = [`Document ${Math.floor(rand() * 1e9)}.`];
  for (let i = 0; i < Math.ceil(tokens / 1.05); i++) words.push(WORDS[Math.floor(rand() * WORDS.length)]!);
  return `${words.join(' ')}\n\nSummarise the document above in one sentence.`;
}

function maxTokens(rand: () => number): number {
  return Math.max(2, Math.floor(MAX_TOKENS / 2 + rand() * (MAX_TOKENS / 2 + 1)));
}

/** Sampling extras on some requests, so penalties, bias and stop strings run under load too. */
function extras(rand: () => number): Record<string, unknown> {
  const r = rand();
  if (r < 0.5) return {};
  if (r < 0.7) return { top_p: 0.9, top_k: 40 };
  if (r < 0.85) return { presence_penalty: 0.5, frequency_penalty: 0.3, logit_bias: { '1000': -5, '2000': 3 } };
  return { stop: ['\n\n', 'the end'], repetition_penalty: 1.1 };
}

function chatBody(messages: { role: string; content: string }[], rand: () => number, more: Record<string, unknown> = {}): Record<string, unknown> {
  return { model, messages, max_tokens: maxTokens(rand), temperature: 0.8, seed: Math.floor(rand() * 1e6), ...extras(rand), ...more };
}

/** Each must be refused with an OpenAI-shaped 4xx. */
const INVALID: { name: string; path?: string; method?: string; contentType?: string; body: () => string }[] = [
  { name: 'empty messages', body: () => JSON.stringify({ model, messages: [] }) },
  { name: 'negative max_tokens', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: -5 }) },
  { name: 'unknown field', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], frobnicate: 1 }) },
  { name: 'unknown model', body: () => JSON.stringify({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }) },
  { name: 'malformed JSON', body: () => '{"model": "x", "messages": [' },
  { name: 'text/plain body', contentType: 'text/plain', body: () => 'hello' },
  { name: 'image part', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }] }) },
  { name: 'temperature as a string', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], temperature: 'hot' }) },
  { name: 'top_logprobs over 20', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 50 }) },
  { name: 'bad prompt_cache_key', body: () => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], prompt_cache_key: '../etc/passwd' }) },
  { name: 'unknown session', path: '/v1/sessions/soak-no-such-session', method: 'GET', body: () => '' },
];

let invalidCounter = 0;

/** The invalid cases in turn, so a short run still covers them all. */
async function invalid(): Promise<Result> {
  const c = INVALID[invalidCounter++ % INVALID.length]!;
  const { signal, timeout } = signalFor(REQUEST_TIMEOUT_MS);
  try {
    const method = c.method ?? 'POST';
    const res = await fetch(`${child.url}${c.path ?? '/v1/chat/completions'}`, {
      method,
      headers: method === 'POST' ? { 'content-type': c.contentType ?? 'application/json' } : {},
      ...(method === 'POST' ? { body: c.body() } : {}),
      signal,
    });
    const text = await res.text();
    if (res.status >= 400 && res.status < 500) {
      const shapeOk = isErrorShape(text);
      return { kind: 'invalid', outcome: 'client_error', status: res.status, expected4xx: true, shapeOk, case: c.name, detail: shapeOk ? undefined : `${c.name}: ${text.slice(0, 200)}` };
    }
    const r = httpFailure('invalid', res.status, text);
    return { ...r, outcome: res.status < 400 ? 'bad_response' : r.outcome, case: c.name, detail: `${c.name} got ${res.status}: ${text.slice(0, 200)}` };
  } catch (err) {
    return failure('invalid', err, timeout);
  }
}

/** 2-3 streamed turns under one session id, each resending the whole history; sometimes a DELETE after. */
async function session(id: string, rand: () => number, deadline: number, record: (r: Result) => void): Promise<void> {
  const messages = [
    { role: 'system', content: 'You are a helpful writer.' },
    { role: 'user', content: SHORT_PROMPTS[Math.floor(rand() * SHORT_PROMPTS.length)]! },
  ];
  const turns = 2 + Math.floor(rand() * 2);
  for (let t = 0; t < turns; t++) {
    if (t > 0 && performance.now() > deadline) break;
    const r = await streamChat({ kind: 'session', body: chatBody(messages, rand), sessionId: id });
    r.followUp = t > 0;
    record(r);
    if (r.outcome !== 'ok') return;
    messages.push({ role: 'assistant', content: r.text ?? '' }, { role: 'user', content: 'Go on, and mention the evening too.' });
  }
  if (rand() < 0.3) {
    const { signal, timeout } = signalFor(REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(`${child.url}/v1/sessions/${id}`, { method: 'DELETE', signal });
      const text = await res.text();
      record(res.status < 300 ? { kind: 'session_delete', outcome: 'ok', status: res.status } : httpFailure('session_delete', res.status, text));
    } catch (err) {
      record(failure('session_delete', err, timeout));
    }
  }
}

const MIX: [Kind, number][] = [
  ['stream', 30],
  ['long', 10],
  ['cancel', 15],
  ['nonstream', 15],
  ['session', 20],
  ['invalid', 10],
];

function pick(rand: () => number): Kind {
  let r = rand() * MIX.reduce((s, [, w]) => s + w, 0);
  for (const [k, w] of MIX) if ((r -= w) < 0) return k;
  return 'stream';
}

let sessionCounter = 0;

async function runKind(kind: Kind, rand: () => number, deadline: number, record: (r: Result) => void): Promise<void> {
  const user = () => [{ role: 'user', content: SHORT_PROMPTS[Math.floor(rand() * SHORT_PROMPTS.length)]! }];
  switch (kind) {
    case 'stream':
      return record(await streamChat({ kind, body: chatBody(user(), rand) }));
    case 'long':
      return record(await streamChat({ kind, body: chatBody([{ role: 'user', content: longText(LONG_PROMPT_TOKENS, rand) }], rand) }));
    case 'cancel':
      return record(await streamChat({ kind, body: chatBody(user(), rand, { max_tokens: MAX_TOKENS }), cancelAfter: 1 + Math.floor(rand() * 4) }));
    case 'nonstream':
      return record(await plainChat({ kind, body: chatBody(user(), rand, rand() < 0.25 ? { n: 2 } : {}) }));
    case 'session':
      return session(`soak-${SEED}-${sessionCounter++}`, rand, deadline, record);
    default:
      return record(await invalid());
  }
}

// ---------------------------------------------------------------------------
// Metrics.

/** Gauges recorded over time (names without the `gemma_serve_` prefix in the report). */
const MEMORY_GAUGES = [
  'gemma_serve_gpu_memory_in_use_bytes',
  'gemma_serve_gpu_memory_allocated_bytes',
  'gemma_serve_memory_backend_total_bytes',
  'gemma_serve_memory_kv_cache_bytes',
  'gemma_serve_memory_transient_bytes',
  'gemma_serve_memory_weights_bytes',
  'process_resident_memory_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_external_memory_bytes',
];
/** Tensor bytes: these return to the same value at every idle point unless something leaks. */
const LEAK_CHECKED = [
  'gemma_serve_gpu_memory_in_use_bytes',
  'gemma_serve_memory_backend_total_bytes',
  'gemma_serve_memory_kv_cache_bytes',
  'gemma_serve_memory_transient_bytes',
];
const OTHER_GAUGES = ['gemma_serve_running_requests', 'gemma_serve_queue_depth', 'gemma_serve_slots_used', 'gemma_serve_generation_tokens_total'];

interface Sample {
  t_s: number;
  phase: string;
  values: Record<string, number>;
}

const samples: Sample[] = [];
let scrapeFailures = 0;
let backend = 'unknown';
const runStart = performance.now();
const short = (name: string) => name.replace(/^gemma_serve_/, '');

async function scrape(phase: string): Promise<Sample | undefined> {
  try {
    const { status, text } = await get('/metrics', 10_000);
    if (status !== 200) throw new Error(`HTTP ${status}`);
    const values: Record<string, number> = {};
    for (const name of [...MEMORY_GAUGES, ...OTHER_GAUGES]) {
      const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text);
      if (m) values[name] = Number(m[1]);
    }
    for (const m of text.matchAll(/^gemma_serve_evictions_total\{kind="(\w+)"\} (\S+)/gm)) values[`evictions_${m[1]}`] = Number(m[2]);
    backend = /gemma_serve_model_info\{[^}]*backend="([^"]+)"/.exec(text)?.[1] ?? backend;
    const s = { t_s: Math.round((performance.now() - runStart) / 100) / 10, phase, values };
    samples.push(s);
    return s;
  } catch {
    scrapeFailures++;
    return undefined;
  }
}

/** Scrapes until two consecutive samples show no running or queued request; undefined if that never happens in time. */
async function waitIdle(phase: string): Promise<Sample | undefined> {
  const t0 = performance.now();
  let idleOnce = false;
  while (performance.now() - t0 < IDLE_TIMEOUT_MS && !stopAll.signal.aborted) {
    const s = await scrape(`${phase} (waiting for idle)`);
    const idle = s !== undefined && s.values.gemma_serve_running_requests === 0 && s.values.gemma_serve_queue_depth === 0;
    if (idle && idleOnce) {
      s.phase = phase;
      return s;
    }
    idleOnce = idle;
    await sleep(500);
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The report.

function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const r1 = (x: number | null | undefined) => (x === null || x === undefined ? null : Math.round(x * 10) / 10);

const results: Result[] = [];
const warmupResults: Result[] = [];
const state = {
  phase: 'starting',
  readyMs: undefined as number | undefined,
  warmupS: undefined as number | undefined,
  soakWallS: undefined as number | undefined,
  start: undefined as Sample | undefined,
  afterWarmup: undefined as Sample | undefined,
  end: undefined as Sample | undefined,
  healthAtEnd: undefined as number | undefined,
  finalChat: undefined as Result | undefined,
  shutdown: undefined as { graceful: boolean; ms: number } | undefined,
  fatal: undefined as string | undefined,
};

function modelDescription(): Record<string, unknown> {
  const dir = process.env.MODEL_DIR;
  const out: Record<string, unknown> = { dir: dir ?? '(embedded default)', id: model || undefined, label: process.env.SOAK_MODEL_LABEL };
  if (dir) {
    try {
      const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      const t = (c.text_config as Record<string, unknown> | undefined) ?? c;
      Object.assign(out, { architecture: (c.architectures as string[] | undefined)?.[0], hidden_size: t.hidden_size, layers: t.num_hidden_layers, dtype: c.dtype ?? c.torch_dtype });
    } catch {
      // not readable: the dir alone
    }
  }
  return out;
}

function memoryReport(): Record<string, unknown> {
  const gauges: Record<string, unknown> = {};
  for (const name of MEMORY_GAUGES) {
    const vals = samples.map((s) => s.values[name]).filter((v): v is number => v !== undefined);
    if (vals.length === 0) continue;
    gauges[short(name)] = {
      start: state.start?.values[name] ?? null,
      after_warmup: state.afterWarmup?.values[name] ?? null,
      end: state.end?.values[name] ?? null,
      max: Math.max(...vals),
    };
  }
  const growth: Record<string, number> = {};
  const grew: string[] = [];
  if (state.afterWarmup && state.end) {
    for (const name of MEMORY_GAUGES) {
      const a = state.afterWarmup.values[name];
      const b = state.end.values[name];
      if (a === undefined || b === undefined) continue;
      growth[short(name)] = b - a;
      if (LEAK_CHECKED.includes(name) && b - a > LEAK_TOLERANCE_BYTES) grew.push(short(name));
    }
  }
  const series: Record<string, (number | null)[]> = { t_s: samples.map((s) => s.t_s) };
  for (const name of [...MEMORY_GAUGES, 'gemma_serve_running_requests']) {
    if (samples.some((s) => s.values[name] !== undefined)) series[short(name)] = samples.map((s) => s.values[name] ?? null);
  }
  return {
    gauges,
    leak_check: {
      compared: 'first idle point after warm-up vs the idle point after the load',
      checked: LEAK_CHECKED.map(short),
      tolerance_bytes: LEAK_TOLERANCE_BYTES,
      growth_bytes: growth,
      grew: state.afterWarmup && state.end ? grew.length > 0 : null,
      grown_gauges: grew,
      note: state.afterWarmup && state.end ? undefined : 'no idle point to compare (see failures)',
    },
    scrapes: samples.length,
    scrape_failures: scrapeFailures,
    series,
  };
}

function tally(rs: Result[]): Record<Outcome, number> {
  const out: Record<Outcome, number> = { ok: 0, cancelled: 0, client_error: 0, server_error: 0, failed_connection: 0, timeout: 0, bad_response: 0 };
  for (const r of rs) out[r.outcome]++;
  return out;
}

function buildReport(): { report: Record<string, unknown>; failures: string[] } {
  const byKind: Record<string, Record<Outcome, number>> = {};
  for (const k of new Set(results.map((r) => r.kind))) {
    byKind[k] = Object.fromEntries(Object.entries(tally(results.filter((r) => r.kind === k))).filter(([, n]) => n > 0)) as Record<Outcome, number>;
  }
  const invalidCases: Record<string, Record<string, number>> = {};
  for (const r of results) {
    if (r.case === undefined) continue;
    const c = (invalidCases[r.case] ??= {});
    c[String(r.status)] = (c[String(r.status)] ?? 0) + 1;
  }
  const evictions: Record<string, number> = {};
  for (const k of ['turn', 'token', 'slot']) {
    const a = state.afterWarmup?.values[`evictions_${k}`] ?? 0;
    const b = state.end?.values[`evictions_${k}`];
    if (b !== undefined) evictions[k] = b - a;
  }
  const okStreams = results.filter((r) => r.outcome === 'ok' && r.ttftMs !== undefined);
  const ttfts = okStreams.map((r) => r.ttftMs!);
  const shortTtfts = okStreams.filter((r) => r.kind !== 'long').map((r) => r.ttftMs!);
  const longTtfts = okStreams.filter((r) => r.kind === 'long').map((r) => r.ttftMs!);
  const tps = results.filter((r) => r.decodeTps !== undefined).map((r) => r.decodeTps!);
  const completionTokens = results.filter((r) => r.outcome === 'ok').reduce((n, r) => n + (r.completionTokens ?? 0), 0);
  const genA = state.afterWarmup?.values.gemma_serve_generation_tokens_total;
  const genB = state.end?.values.gemma_serve_generation_tokens_total;
  const followUps = results.filter((r) => r.followUp && r.outcome === 'ok').map((r) => r.cachedTokens ?? 0);
  const longPrompts = results.filter((r) => r.kind === 'long' && r.promptTokens !== undefined).map((r) => r.promptTokens!);
  const statuses: Record<string, number> = {};
  for (const r of results) if (r.outcome === 'client_error') statuses[r.status!] = (statuses[r.status!] ?? 0) + 1;
  const unexpected4xx = results.filter((r) => r.outcome === 'client_error' && !r.expected4xx);
  const badShape = results.filter((r) => r.outcome === 'client_error' && r.shapeOk === false);
  const notRefused = results.filter((r) => r.kind === 'invalid' && r.outcome === 'bad_response');
  const problems = results.filter((r) => r.detail !== undefined && r.outcome !== 'cancelled' && !(r.outcome === 'client_error' && r.expected4xx && r.shapeOk));
  const all = [...warmupResults, ...results];
  const counts = tally(all);

  const memory = memoryReport();
  const exit = child?.exit;
  const crashed = exit !== undefined && !child.killed && (!exit.expected || exit.code !== 0 || exit.signal !== null);

  const failures: string[] = [];
  if (state.fatal) failures.push(state.fatal);
  if (crashed) failures.push(exit.expected ? `the service exited uncleanly after SIGTERM (code ${exit.code}, signal ${exit.signal})` : `the service crashed during the run (code ${exit.code}, signal ${exit.signal})`);
  if (state.shutdown && !state.shutdown.graceful) failures.push(`the service did not exit within ${SHUTDOWN_WAIT_MS / 1000} s of SIGTERM (killed)`);
  if (counts.server_error > 0) failures.push(`${counts.server_error} server errors (5xx or an error frame in a stream)`);
  if (counts.timeout > 0) failures.push(`${counts.timeout} requests timed out`);
  if (counts.bad_response > 0) failures.push(`${counts.bad_response} malformed responses (or invalid requests accepted)`);
  if (badShape.length > 0) failures.push(`${badShape.length} 4xx answers not in OpenAI's error shape`);
  if (!crashed && counts.failed_connection > 0) failures.push(`${counts.failed_connection} failed connections`);
  if (state.phase === 'done' || state.phase === 'stopping') {
    if (state.healthAtEnd !== 200) failures.push(`/health at the end: ${state.healthAtEnd ?? 'no answer'}`);
    if (state.finalChat?.outcome !== 'ok') failures.push(`the last chat completion failed: ${state.finalChat?.outcome} ${state.finalChat?.detail ?? ''}`.trim());
    if (!state.afterWarmup || !state.end) failures.push(`the service was not idle within ${IDLE_TIMEOUT_MS / 1000} s ${state.afterWarmup ? 'after the load' : 'after warm-up'} (a request stuck, or a scrape failing)`);
  }
  const leak = memory.leak_check as { grew: boolean | null; grown_gauges: string[] };
  if (leak.grew) failures.push(`memory grew after warm-up: ${leak.grown_gauges.join(', ')}`);

  const report = {
    device: process.env.DEVICE_NAME ?? null,
    date: new Date().toISOString(),
    backend,
    model: modelDescription(),
    config: {
      seconds: SECONDS,
      concurrency: CONCURRENCY,
      max_tokens: MAX_TOKENS,
      long_prompt_tokens_target: LONG_PROMPT_TOKENS,
      request_timeout_s: REQUEST_TIMEOUT_MS / 1000,
      seed: SEED,
      service_env: Object.fromEntries(
        ['SLOTS', 'CACHE_CAPACITY', 'MAX_BATCH_SIZE', 'PREFILL_CHUNK', 'EVICTION_MODE', 'CPU_KERNELS', 'CPU_THREADS', 'MAX_QUEUE'].filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]),
      ),
    },
    phase_reached: state.phase,
    ready_s: r1(state.readyMs !== undefined ? state.readyMs / 1000 : undefined),
    warmup_s: state.warmupS ?? null,
    soak_wall_s: state.soakWallS ?? null,
    requests: { total: all.length, ...counts },
    soak_requests_by_kind: byKind,
    client_errors: { statuses, invalid_cases: invalidCases, expected_invalid: results.filter((r) => r.expected4xx).length, unexpected: unexpected4xx.length, not_openai_shaped: badShape.length },
    ttft_ms: { p50: r1(percentile(ttfts, 50)), p95: r1(percentile(ttfts, 95)), short_prompt_p50: r1(percentile(shortTtfts, 50)), long_prompt_p50: r1(percentile(longTtfts, 50)), long_prompt_p95: r1(percentile(longTtfts, 95)) },
    decode_tps_per_stream: { p50: r1(percentile(tps, 50)), p5: r1(percentile(tps, 5)), streams: tps.length },
    aggregate_tokens_per_s: {
      completed_requests: state.soakWallS ? r1(completionTokens / state.soakWallS) : null,
      server_generated: state.soakWallS && genA !== undefined && genB !== undefined ? r1((genB - genA) / state.soakWallS) : null,
    },
    long_prompt_tokens: { p50: percentile(longPrompts, 50), max: longPrompts.length ? Math.max(...longPrompts) : null, count: longPrompts.length },
    evictions_during_soak: evictions,
    session_follow_up_cached_tokens: { p50: percentile(followUps, 50), min: followUps.length ? Math.min(...followUps) : null, zero: followUps.filter((n) => n === 0).length, count: followUps.length },
    memory,
    alive_at_end: { health_status: state.healthAtEnd ?? null, last_chat: state.finalChat?.outcome ?? null },
    service_log: {
      error_lines: Object.fromEntries(child?.errors ?? []),
      warn_lines: Object.fromEntries(child?.warnings ?? []),
      first_errors: child?.errorSamples ?? [],
    },
    problems_sample: problems.slice(0, 8).map((r) => ({ kind: r.kind, outcome: r.outcome, status: r.status, detail: r.detail })),
    child_exit: exit ? { code: exit.code, signal: exit.signal, after_sigterm: exit.expected, shutdown_ms: state.shutdown?.ms ?? null } : null,
    crashed,
    stderr_tail: crashed || state.fatal ? child?.stderrTail ?? '' : undefined,
    stdout_tail: crashed || state.fatal ? tail(child?.stdoutTail ?? '') : undefined,
    failures,
    ok: failures.length === 0,
  };
  return { report, failures };
}

let printed = false;
function printReport(): number {
  if (printed) return 1;
  printed = true;
  const { report, failures } = buildReport();
  console.log(JSON.stringify(report));
  return failures.length === 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------

async function main(): Promise<number> {
  child = startChild();
  state.readyMs = await waitReady(child);
  const models = JSON.parse((await get('/v1/models')).text) as { data: { id: string }[] };
  model = models.data[0]!.id;
  state.start = await scrape('start');

  // Warm-up: one request of each kind, all at once, so first-call set-up and every shape's buffers exist before the baseline.
  state.phase = 'warm-up';
  const w0 = performance.now();
  const warmRand = rng(SEED ^ 0x5eed);
  const warmKinds: Kind[] = ['long', 'stream', 'nonstream', 'cancel', 'session', 'invalid', 'stream', 'nonstream'];
  await Promise.all(
    Array.from({ length: Math.max(CONCURRENCY, warmKinds.length) }, (_, i) => runKind(warmKinds[i % warmKinds.length]!, warmRand, Infinity, (r) => warmupResults.push(r))),
  );
  state.warmupS = r1((performance.now() - w0) / 1000) ?? undefined;
  state.afterWarmup = await waitIdle('after warm-up');

  // The load.
  state.phase = 'soak';
  const s0 = performance.now();
  const deadline = s0 + SECONDS * 1000;
  let sampling = true;
  const sampler = (async () => {
    while (sampling && !stopAll.signal.aborted) {
      await sleepUnlessStopped(METRICS_INTERVAL_MS);
      if (sampling && !stopAll.signal.aborted) await scrape('soak');
    }
  })();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, w) => {
      const rand = rng(SEED * 1000 + w + 1);
      while (performance.now() < deadline && !stopAll.signal.aborted) await runKind(pick(rand), rand, deadline, (r) => results.push(r));
    }),
  );
  state.soakWallS = r1((performance.now() - s0) / 1000) ?? undefined;
  sampling = false;
  await sampler;
  if (stopAll.signal.aborted) return printReport();

  // Idle, alive, stopped.
  state.phase = 'final checks';
  state.end = await waitIdle('end');
  state.healthAtEnd = await get('/health', 10_000).then((r) => r.status, () => undefined);
  state.finalChat = await plainChat({ kind: 'nonstream', body: { model, messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 8, temperature: 0 } });
  state.phase = 'stopping';
  state.shutdown = await stopChild(child);
  state.phase = 'done';
  return printReport();
}

const watchdog = setTimeout(() => {
  state.fatal = `watchdog: the run passed its bound of ${Math.round(WATCHDOG_MS / 1000)} s in phase '${state.phase}'`;
  stopAll.abort(new Error('watchdog'));
  if (child) child.killed = true;
  child?.proc.kill('SIGKILL');
  printReport();
  process.exit(2);
}, WATCHDOG_MS);

process.once('SIGINT', () => {
  child?.proc.kill('SIGKILL');
  process.exit(130);
});

main().then(
  (code) => {
    clearTimeout(watchdog);
    process.exit(code);
  },
  async (err: unknown) => {
    state.fatal = `${state.phase}: ${err instanceof Error ? err.message : String(err)}`;
    stopAll.abort(err);
    if (child && !child.exit) {
      child.killed = true;
      child.proc.kill('SIGKILL');
      await Promise.race([child.exited, sleep(5000)]);
    }
    printReport();
    process.exit(1);
  },
);
