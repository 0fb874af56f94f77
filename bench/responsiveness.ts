/**
 * `npm run bench:responsiveness`: does the service keep answering while it
 * works? It starts `gemma-serve serve` as a child process (the embedded
 * default model and the default backend, which is the native CPU path on
 * machines with AVX and FMA; RESP_PRESET=270m for the benchmark model), then
 * measures, from outside over loopback:
 *
 * - `/health` latency, probed every RESP_PROBE_MS (10) on one keep-alive
 *   connection: the worst and p99 of the probes as sent, and p99 corrected for
 *   coordinated omission (a probe that took V ms stands also for the probes
 *   that would have been sent every 10 ms meanwhile: V-10, V-20, ...);
 * - a second stream's inter-token gaps: a streamed greedy chat completion
 *   (end-of-turn tokens biased away so it keeps going; restarted if it ends)
 *   running the whole time;
 *
 * while (a) four 1 MB prompts arrive at once and (b) an 8,000-token prompt is
 * prefilled, each from the moment the load is sent until its answers are
 * complete. For reference, from a quiet run: the median decode step (the
 * median gap of one stream alone) and the time of one prefill chunk
 * (PREFILL_CHUNK tokens: the 8,000-token prompt's time to first token, less a
 * short prompt's, over the number of chunks it was prefilled in), and of its
 * last chunk, the longest, since it attends over the whole prompt (the
 * prompt's time to first token less that of the prompt one chunk shorter).
 * The worst gap is judged against one decode step plus the longest chunk.
 *
 * The cache is made large enough to hold the 8,000-token prompt
 * (CACHE_CAPACITY 8448), so it is prefilled whole; of each 1 MB prompt the
 * cache keeps its last ~8,000 tokens. Prints one JSON object, with what runs
 * the linear layers (from the start-up log) and the machine's load average at
 * the start and the end (the figures are only as quiet as the machine). Every
 * wait is bounded (RESP_SCENARIO_TIMEOUT_S, 300) and the service is stopped at
 * the end.
 *
 * Environment: RESP_PRESET (unset: the embedded default model), RESP_PROBE_MS
 * (10), RESP_LONG_PROMPT_TOKENS (8000), RESP_BIG_PROMPT_CHARS (1000000),
 * RESP_BIG_PROMPTS (4), RESP_SCENARIO_TIMEOUT_S (300), BACKEND, CPU_KERNELS,
 * CPU_THREADS (passed to the service as they are).
 */
import { cpus, loadavg } from 'node:os';
import { Agent, request } from 'undici';
import { benchModelDir } from './model-dir.js';
import type { PresetName } from '../src/model/make-model.js';
import { ms1, percentile, rssBytes, sleep, startServiceChild, type ServiceChild } from './service-child.js';

function num(name: string, dflt: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return v;
}

const PROBE_MS = num('RESP_PROBE_MS', 10);
const LONG_PROMPT_TOKENS = Math.floor(num('RESP_LONG_PROMPT_TOKENS', 8000));
const BIG_PROMPT_CHARS = Math.floor(num('RESP_BIG_PROMPT_CHARS', 1_000_000));
const BIG_PROMPTS = Math.floor(num('RESP_BIG_PROMPTS', 4));
const SCENARIO_TIMEOUT_MS = num('RESP_SCENARIO_TIMEOUT_S', 300) * 1000;
const CACHE_CAPACITY = Math.max(1024, LONG_PROMPT_TOKENS + 448);
const PREFILL_CHUNK = 256;
/** Gemma's <eos> and <end_of_turn>, biased away so the second stream does not stop on its own. */
const KEEP_GOING = { '1': -100, '106': -100 };

const WORDS = (
  'the of and to in is was for on with as by at from that this it be are or an have not but which one all were when there can more ' +
  'river mountain harbour market weather morning evening town city valley forest bread boat tide gull net baker shutter smell ' +
  'story history season winter summer autumn spring light shadow stone bridge road field garden window door table letter number ' +
  'quickly slowly quietly brightly carefully never always often sometimes together apart above below between within without'
).split(' ');

/** Deterministic prose of about `chars` characters. */
function prose(chars: number, seed: number): string {
  let s = seed >>> 0 || 1;
  const out: string[] = [];
  let n = 0;
  let k = 0;
  while (n < chars) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    let w = WORDS[(s >>> 8) % WORDS.length]!;
    if (++k % 14 === 0) w += '.';
    out.push(w);
    n += w.length + 1;
  }
  return out.join(' ').slice(0, chars);
}

let svc: ServiceChild | undefined;
let base = '';
let model = 'gemma-serve-default';
const dispatcher = new Agent({ connections: 64, keepAliveTimeout: 60_000, headersTimeout: SCENARIO_TIMEOUT_MS, bodyTimeout: SCENARIO_TIMEOUT_MS });
const probeAgent = new Agent({ connections: 1, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: SCENARIO_TIMEOUT_MS, bodyTimeout: SCENARIO_TIMEOUT_MS });

async function metrics(): Promise<string> {
  return (await request(`${base}/metrics`, { dispatcher })).body.text();
}

function metric(text: string, name: string): number | null {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

interface ChatOutcome {
  status: number;
  promptTokens?: number;
  ms: number;
  ttftMs?: number;
  error?: string;
}

/** A chat completion, streamed; resolves when the answer is complete. */
async function chat(content: string, maxTokens: number, signal?: AbortSignal): Promise<ChatOutcome> {
  const t0 = performance.now();
  try {
    const res = await request(`${base}/v1/chat/completions`, {
      dispatcher,
      method: 'POST',
      signal,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model, messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true },
      }),
    });
    if (res.statusCode !== 200) return { status: res.statusCode, ms: performance.now() - t0, error: (await res.body.text()).slice(0, 300) };
    let ttft: number | undefined;
    let text = '';
    for await (const part of res.body) {
      ttft ??= performance.now() - t0;
      text += part.toString();
    }
    const usage = /"prompt_tokens":(\d+)/.exec(text);
    return { status: 200, ms: performance.now() - t0, ttftMs: ttft, promptTokens: usage ? Number(usage[1]) : undefined };
  } catch (err) {
    return { status: 0, ms: performance.now() - t0, error: err instanceof Error ? err.message : String(err) };
  }
}

/** Time to the first content token of a streamed request (the prefill's end as the client sees it). */
async function timeToFirstToken(content: string): Promise<{ ttftMs: number; promptTokens: number }> {
  const t0 = performance.now();
  const res = await request(`${base}/v1/chat/completions`, {
    dispatcher,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content }], max_tokens: 1, temperature: 0, stream: true, stream_options: { include_usage: true }, logit_bias: KEEP_GOING }),
  });
  if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${await res.body.text()}`);
  let ttft: number | undefined;
  let text = '';
  for await (const part of res.body) {
    const s = part.toString();
    if (ttft === undefined && s.includes('"content":"')) ttft = performance.now() - t0;
    text += s;
  }
  const m = /"prompt_tokens":(\d+)/.exec(text);
  if (ttft === undefined || !m) throw new Error(`no token or no usage in: ${text.slice(0, 300)}`);
  return { ttftMs: ttft, promptTokens: Number(m[1]) };
}

// ---------------------------------------------------------------------------
// The probe and the second stream, both running until stopped.

interface Probe {
  sentAt: number;
  ms: number;
  status: number;
}

function startProber(): { stop: () => Promise<Probe[]> } {
  const probes: Probe[] = [];
  let running = true;
  const loop = (async () => {
    let next = performance.now();
    while (running) {
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait);
      const sentAt = performance.now();
      let status = 0;
      try {
        const res = await request(`${base}/health`, { dispatcher: probeAgent });
        await res.body.dump();
        status = res.statusCode;
      } catch {
        status = 0;
      }
      probes.push({ sentAt, ms: performance.now() - sentAt, status });
      next += PROBE_MS;
      if (next < performance.now()) next = performance.now();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return probes;
    },
  };
}

interface Token {
  at: number;
  stream: number;
}

/** Streams greedy completions one after another; every content chunk's arrival is recorded. */
function startSecondStream(): { tokens: Token[]; stop: () => Promise<void>; errors: string[] } {
  const tokens: Token[] = [];
  const errors: string[] = [];
  const abort = new AbortController();
  const loop = (async () => {
    for (let stream = 0; !abort.signal.aborted; stream++) {
      try {
        const res = await request(`${base}/v1/chat/completions`, {
          dispatcher,
          method: 'POST',
          signal: abort.signal,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model, messages: [{ role: 'user', content: 'Describe a harbour town over one whole day, hour by hour.' }],
            max_tokens: 2048, temperature: 0, stream: true, logit_bias: KEEP_GOING,
          }),
        });
        if (res.statusCode !== 200) {
          errors.push(`HTTP ${res.statusCode}: ${(await res.body.text()).slice(0, 200)}`);
          await sleep(100);
          continue;
        }
        let buf = '';
        for await (const part of res.body) {
          const now = performance.now();
          buf += part.toString();
          let cut: number;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const frame = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            if (frame.includes('"content":"') && !frame.includes('"content":""')) tokens.push({ at: now, stream });
          }
        }
      } catch (err) {
        if (!abort.signal.aborted) errors.push(err instanceof Error ? err.message : String(err));
      }
    }
  })();
  return {
    tokens,
    errors,
    stop: async () => {
      abort.abort();
      await loop;
    },
  };
}

/** Gaps between consecutive tokens of one stream whose later token falls in [from, to]. */
function gapsIn(tokens: Token[], from: number, to: number): number[] {
  const gaps: number[] = [];
  for (let i = 1; i < tokens.length; i++) {
    const a = tokens[i - 1]!;
    const b = tokens[i]!;
    if (a.stream === b.stream && b.at >= from && b.at <= to) gaps.push(b.at - a.at);
  }
  return gaps;
}

/** Probe latencies with coordinated omission corrected: a V ms probe also stands for V-interval, V-2*interval, ... */
function corrected(ms: number[]): number[] {
  const out: number[] = [];
  for (const v of ms) for (let x = v; x > 0 && (x === v || x >= PROBE_MS); x -= PROBE_MS) out.push(x);
  return out;
}

function summarise(xs: number[]) {
  return { count: xs.length, p50_ms: ms1(percentile(xs, 50)), p99_ms: ms1(percentile(xs, 99)), worst_ms: ms1(xs.length ? Math.max(...xs) : null) };
}

/** Runs `load` with the prober and the second stream going; reports what they saw while the load ran. */
async function scenario(name: string, load: () => Promise<ChatOutcome[]>) {
  const prober = startProber();
  const second = startSecondStream();
  // The second stream is decoding before the load comes.
  const t0 = performance.now();
  while (second.tokens.length < 8 && performance.now() - t0 < 60_000) await sleep(20);
  await sleep(300);
  const from = performance.now();
  const timeout = sleep(SCENARIO_TIMEOUT_MS).then(() => 'timeout' as const);
  const outcome = await Promise.race([load(), timeout]);
  const to = performance.now();
  await sleep(200);
  await second.stop();
  const probes = (await prober.stop()).filter((p) => p.sentAt >= from && p.sentAt <= to);
  const probeMs = probes.map((p) => p.ms);
  const gaps = gapsIn(second.tokens, from, to);
  return {
    name,
    load_s: Math.round((to - from) / 100) / 10,
    timed_out: outcome === 'timeout',
    requests: outcome === 'timeout' ? null : outcome.map((o) => ({ status: o.status, prompt_tokens: o.promptTokens ?? null, s: Math.round(o.ms / 100) / 10, error: o.error })),
    health: {
      ...summarise(probeMs),
      p99_corrected_ms: ms1(percentile(corrected(probeMs), 99)),
      non_200: probes.filter((p) => p.status !== 200).length,
    },
    second_stream: { gaps: summarise(gaps), tokens_during_load: gaps.length, errors: second.errors.slice(0, 3) },
  };
}

async function main(): Promise<void> {
  const started = performance.now();
  const preset = process.env.RESP_PRESET as PresetName | undefined;
  const modelDir = preset ? await benchModelDir(preset) : undefined;
  svc = await startServiceChild({
    MODEL_DIR: modelDir,
    API_KEYS: undefined,
    REDIS_URL: undefined,
    CACHE_CAPACITY: String(CACHE_CAPACITY),
    PREFILL_CHUNK: String(PREFILL_CHUNK),
    SLOTS: '8',
    MAX_TOKENS_LIMIT: '4096',
    LOG_LEVEL: 'info',
  }, 600_000);
  base = svc.url;
  model = ((await (await request(`${base}/v1/models`, { dispatcher })).body.json()) as { data: { id: string }[] }).data[0]!.id;
  const m0 = await metrics();
  const backend = /gemma_serve_model_info\{[^}]*backend="([^"]+)"/.exec(m0)?.[1] ?? 'unknown';
  // The start-up log says what runs the linear layers (the native kernels, or the tfjs graph).
  const linear = svc.logTail().map((l) => /"linear":"([^"]*)"/.exec(l)?.[1]).find((x) => x !== undefined) ?? 'unknown';
  const loadBefore = loadavg()[0]!;

  // Warm-up: first calls set up kernels and buffers.
  await chat('Hello there.', 8);
  await timeToFirstToken(prose(4000, 99));

  // The 8,000-token prompt: scaled from one measured try.
  let longText = prose(LONG_PROMPT_TOKENS * 5, 7);
  const tryLong = await timeToFirstToken(longText);
  longText = prose(Math.round((longText.length * LONG_PROMPT_TOKENS) / tryLong.promptTokens), 7);

  // Quiet reference: one stream alone (decode steps), and prefill chunks (long prompt vs short prompt).
  const quiet = startSecondStream();
  const q0 = performance.now();
  while (quiet.tokens.length < 120 && performance.now() - q0 < 60_000) await sleep(20);
  await quiet.stop();
  const decodeGaps = gapsIn(quiet.tokens, q0, performance.now()).slice(5);
  const shortRuns: number[] = [];
  const longRuns: { ttftMs: number; promptTokens: number; prefilled: number }[] = [];
  for (let i = 0; i < 3; i++) {
    shortRuns.push((await timeToFirstToken(`Hello ${i}.`)).ttftMs);
    const before = metric(await metrics(), 'gemma_serve_prefill_tokens_total') ?? 0;
    const r = await timeToFirstToken(`${i} ${longText}`);
    const after = metric(await metrics(), 'gemma_serve_prefill_tokens_total') ?? 0;
    longRuns.push({ ...r, prefilled: after - before });
  }
  // The prompt's last chunk attends over the whole prompt, so it is its longest: a prompt one chunk shorter, the difference.
  const lastChunkRuns: number[] = [];
  const shorter = longText.slice(0, Math.round(longText.length * (1 - PREFILL_CHUNK / longRuns[0]!.promptTokens)));
  for (let i = 0; i < 3; i++) {
    const full = await timeToFirstToken(`${i + 3} ${longText}`);
    const cut = await timeToFirstToken(`${i + 3} ${shorter}`);
    lastChunkRuns.push(((full.ttftMs - cut.ttftMs) * PREFILL_CHUNK) / Math.max(1, full.promptTokens - cut.promptTokens));
  }
  const lastChunkMs = percentile(lastChunkRuns, 50)!;
  const longSorted = [...longRuns].sort((a, b) => a.ttftMs - b.ttftMs);
  const longMedian = longSorted[1]!;
  const shortMedian = percentile(shortRuns, 50)!;
  const chunks = Math.ceil(longMedian.prefilled / PREFILL_CHUNK);
  const prefillChunkMs = (longMedian.ttftMs - shortMedian) / chunks;
  const prefillChunkMinMs = (longSorted[0]!.ttftMs - Math.min(...shortRuns)) / Math.ceil(longSorted[0]!.prefilled / PREFILL_CHUNK);
  const decodeStepMs = percentile(decodeGaps, 50)!;

  // The loads.
  const bigPrompts = Array.from({ length: BIG_PROMPTS }, (_, i) => prose(BIG_PROMPT_CHARS, 1000 + i));
  const a = await scenario(`${BIG_PROMPTS} prompts of ${BIG_PROMPT_CHARS} characters at once`, () => Promise.all(bigPrompts.map((p) => chat(p, 1))));
  const b = await scenario(`one ${longMedian.promptTokens}-token prompt prefilled`, async () => [await chat(`9 ${longText}`, 1)]);

  const rss = rssBytes(svc.proc.pid);
  const stop = await svc.stop();
  const budgetMs = decodeStepMs + Math.max(prefillChunkMs, lastChunkMs);
  const judge = (s: typeof a) => ({
    health_p99_under_50ms: s.health.p99_ms !== null && s.health.p99_ms < 50,
    worst_gap_within_one_step_plus_one_chunk: s.second_stream.gaps.worst_ms !== null && s.second_stream.gaps.worst_ms <= budgetMs,
  });
  console.log(
    JSON.stringify({
      date: new Date().toISOString(),
      cpus: cpus().length,
      cpu_model: cpus()[0]?.model ?? null,
      model: preset ? `${preset} preset (random weights)` : 'embedded default model',
      backend,
      linear,
      cpu_kernels: process.env.CPU_KERNELS ?? 'auto',
      load_average_1m: { start: Math.round(loadBefore * 100) / 100, end: Math.round(loadavg()[0]! * 100) / 100 },
      config: { cache_capacity: CACHE_CAPACITY, prefill_chunk: PREFILL_CHUNK, slots: 8, probe_interval_ms: PROBE_MS, big_prompt_chars: BIG_PROMPT_CHARS, big_prompts: BIG_PROMPTS },
      quiet: {
        decode_step_ms_p50: ms1(decodeStepMs),
        decode_gaps: summarise(decodeGaps),
        prefill_chunk_ms: ms1(prefillChunkMs),
        prefill_chunk_ms_best_of_3: ms1(prefillChunkMinMs),
        last_prefill_chunk_ms: ms1(lastChunkMs),
        long_prompt_tokens: longMedian.promptTokens,
        long_prompt_prefilled_tokens: longMedian.prefilled,
        long_prompt_ttft_ms: ms1(longMedian.ttftMs),
        short_prompt_ttft_ms: ms1(shortMedian),
      },
      scenarios: { a_big_prompts: a, b_long_prefill: b },
      target: { health_p99_ms: 50, worst_gap_ms: ms1(budgetMs), note: 'worst gap of the second stream at most one decode step plus one prefill chunk, the longest (the prompt\'s last), from the quiet figures' },
      meets_target: { a_big_prompts: judge(a), b_long_prefill: judge(b) },
      service_rss_mb_at_end: rss === null ? null : Math.round(rss / 2 ** 20),
      service_stopped_gracefully: stop.graceful,
      total_s: Math.round((performance.now() - started) / 100) / 10,
    }),
  );
}

const watchdog = setTimeout(() => {
  console.error('bench:responsiveness: watchdog (the run passed 30 minutes)');
  svc?.proc.kill('SIGKILL');
  process.exit(2);
}, 30 * 60_000);
watchdog.unref();

main().then(
  async () => {
    await Promise.all([dispatcher.close(), probeAgent.close()]).catch(() => undefined);
    process.exit(0);
  },
  async (err: unknown) => {
    console.error(err);
    if (svc && !svc.exit) await svc.stop(5000);
    process.exit(1);
  },
);
