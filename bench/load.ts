/**
 * `npm run bench:load`: the service under 1, 4 and 16 concurrent streaming
 * chat sessions, as a client sees it (undici over loopback). Each session
 * sends a ~64-token first turn, then a follow-up turn that extends it (so it
 * reuses the session's cache). Reports time to first token and inter-token
 * latency (p50, p99) and aggregate generated tokens/s per level, with the
 * `270m` preset. Prints one JSON object.
 *
 * The service runs as a child process (`gemma-serve serve`), so the client's
 * timing is not held up by the engine's synchronous compute.
 *
 * Environment: BACKEND (default auto), BENCH_MAX_TOKENS (32), BENCH_TURNS (2),
 * BENCH_LEVELS (1,4,16), BENCH_BUDGET_S (540: levels that would start later are skipped).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { benchModelDir } from './model-dir.js';

const MAX_TOKENS = Number(process.env.BENCH_MAX_TOKENS ?? 32);
const TURNS = Number(process.env.BENCH_TURNS ?? 2);
const LEVELS = (process.env.BENCH_LEVELS ?? '1,4,16').split(',').map(Number);
const BUDGET_MS = Number(process.env.BENCH_BUDGET_S ?? 540) * 1000;
const SLOTS = 16;

// About 50 words of plain English: with the system prompt and the chat template, ~64 prompt tokens.
const FILLER =
  'The harbour town wakes slowly: fishing boats return with the tide, gulls argue over the nets, and the baker opens ' +
  'his shutters to the smell of bread. Describe one morning there, with its weather and its market.';

interface Started {
  url: string;
  child: ChildProcess;
  log: string[];
}

/** Starts `gemma-serve serve` and resolves with its URL once the 'ready' log line appears. */
async function startServer(modelDir: string): Promise<Started> {
  const cli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'serve'], {
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: '0',
      MODEL_DIR: modelDir,
      BACKEND: process.env.BACKEND ?? 'auto',
      SLOTS: String(SLOTS),
      MAX_BATCH_SIZE: String(SLOTS),
      CACHE_CAPACITY: '1024',
      MAX_QUEUE: '64',
      LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  const keep = (b: Buffer) => {
    log.push(...b.toString().split('\n').filter((l) => l !== ''));
    log.splice(0, Math.max(0, log.length - 40));
  };
  child.stderr!.on('data', keep);
  const url = await new Promise<string>((resolve, reject) => {
    let partial = '';
    child.stdout!.on('data', (b: Buffer) => {
      keep(b);
      partial += b.toString();
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        try {
          const rec = JSON.parse(line) as { msg?: string; url?: string };
          if (rec.msg === 'ready' && rec.url) resolve(rec.url);
        } catch {
          // not a log record
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`the service exited (${code}) before it was ready:\n${log.join('\n')}`)));
  });
  return { url, child, log };
}

interface TurnResult {
  ttftMs: number;
  gapsMs: number[];
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  finish: string;
}

/** One streamed turn; times are taken as chunks arrive. */
async function streamTurn(dispatcher: Agent, url: string, model: string, session: string, messages: { role: string; content: string }[]): Promise<TurnResult & { text: string }> {
  const t0 = performance.now();
  const res = await request(`${url}/v1/chat/completions`, {
    dispatcher,
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-session-id': session },
    body: JSON.stringify({
      model, messages, max_tokens: MAX_TOKENS, temperature: 0.8, seed: 1, stream: true, stream_options: { include_usage: true },
    }),
  });
  if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${await res.body.text()}`);
  let first: number | undefined;
  let last = 0;
  const gaps: number[] = [];
  let text = '';
  let usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined;
  let finish = '';
  let buf = '';
  for await (const part of res.body) {
    const now = performance.now();
    buf += part.toString();
    let cut: number;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const data = buf.slice(6, cut);
      buf = buf.slice(cut + 2);
      if (data === '[DONE]') continue;
      const chunk = JSON.parse(data) as {
        choices: { delta: { content?: string }; finish_reason: string | null }[];
        usage?: typeof usage;
        error?: { message: string };
      };
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const c = chunk.choices[0];
      if (c?.finish_reason) finish = c.finish_reason;
      if (!c?.delta.content) continue;
      text += c.delta.content;
      if (first === undefined) first = now;
      else gaps.push(now - last);
      last = now;
    }
  }
  if (first === undefined || usage === undefined) throw new Error('the stream carried no tokens or no usage');
  return {
    ttftMs: first - t0,
    gapsMs: gaps,
    promptTokens: usage.prompt_tokens,
    completionTokens: usage.completion_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    finish,
    text,
  };
}

/** One chat session: TURNS turns, each extending the conversation. */
async function session(dispatcher: Agent, url: string, model: string, id: string, index: number): Promise<TurnResult[]> {
  const messages = [
    { role: 'system', content: 'You are a helpful writer.' },
    { role: 'user', content: `Story ${index}. ${FILLER}` },
  ];
  const out: TurnResult[] = [];
  for (let turn = 0; turn < TURNS; turn++) {
    const r = await streamTurn(dispatcher, url, model, id, messages);
    out.push(r);
    messages.push({ role: 'assistant', content: r.text }, { role: 'user', content: 'Go on, and mention the evening too.' });
  }
  return out;
}

function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const ms = (x: number | null) => (x === null ? null : Math.round(x * 10) / 10);

async function main(): Promise<void> {
  const started = performance.now();
  const dir = await benchModelDir();
  const server = await startServer(dir);
  const dispatcher = new Agent({ connections: SLOTS * 2, keepAliveTimeout: 60_000 });
  try {
    const model = ((await (await request(`${server.url}/v1/models`, { dispatcher })).body.json()) as { data: { id: string }[] }).data[0]!.id;
    const metrics = await (await request(`${server.url}/metrics`, { dispatcher })).body.text();
    const backend = /gemma_serve_model_info\{[^}]*backend="([^"]+)"/.exec(metrics)?.[1] ?? 'unknown';
    // Warm-up: first calls pay for kernel set-up that no later request sees.
    await session(dispatcher, server.url, model, 'warmup', -1);

    const levels: Record<string, unknown> = {};
    for (const c of LEVELS) {
      if (performance.now() - started > BUDGET_MS) {
        levels[`c${c}`] = { skipped: 'time budget spent (BENCH_BUDGET_S)' };
        continue;
      }
      const t0 = performance.now();
      const runs = await Promise.all(Array.from({ length: c }, (_, i) => session(dispatcher, server.url, model, `load-c${c}-s${i}`, i)));
      const wallMs = performance.now() - t0;
      const turns = runs.flat();
      const tokens = turns.reduce((n, r) => n + r.completionTokens, 0);
      const followUps = runs.flatMap((r) => r.slice(1));
      const finishes: Record<string, number> = {};
      for (const r of turns) finishes[r.finish] = (finishes[r.finish] ?? 0) + 1;
      levels[`c${c}`] = {
        sessions: c,
        requests: turns.length,
        ttft_ms: { p50: ms(percentile(turns.map((r) => r.ttftMs), 50)), p99: ms(percentile(turns.map((r) => r.ttftMs), 99)) },
        ttft_first_turn_ms_p50: ms(percentile(runs.map((r) => r[0]!.ttftMs), 50)),
        ttft_follow_up_ms_p50: ms(percentile(followUps.map((r) => r.ttftMs), 50)),
        itl_ms: { p50: ms(percentile(turns.flatMap((r) => r.gapsMs), 50)), p99: ms(percentile(turns.flatMap((r) => r.gapsMs), 99)) },
        tokens_per_s: Math.round((tokens * 1000 * 100) / wallMs) / 100,
        completion_tokens: tokens,
        first_turn_prompt_tokens: runs[0]![0]!.promptTokens,
        follow_up_cached_tokens_min: followUps.length ? Math.min(...followUps.map((r) => r.cachedTokens)) : null,
        finish_reasons: finishes,
        wall_s: Math.round(wallMs / 100) / 10,
      };
    }
    console.log(
      JSON.stringify({
        model: '270m preset (Gemma 3 270M shape, random weights, float32 compute)',
        backend,
        cpus: cpus().length,
        config: { slots: SLOTS, max_batch_size: SLOTS, cache_capacity: 1024, max_tokens: MAX_TOKENS, turns_per_session: TURNS, sampling: 'temperature 0.8, seed 1' },
        levels,
        total_s: Math.round((performance.now() - started) / 100) / 10,
      }),
    );
  } finally {
    await dispatcher.close();
    const exited = new Promise((r) => server.child.once('exit', r));
    server.child.kill('SIGTERM');
    await exited;
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
