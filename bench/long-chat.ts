/**
 * `npm run bench:long-chat`: one conversation through the scheduler, the
 * client resending the whole history every turn, until it is at least 16
 * times the cache capacity C long, with the `270m` preset (or `-- --arch
 * gemma4 --preset e2b`, see model-dir.ts). After every turn
 * it records the conversation's length so far, the mean decode latency of
 * that turn's reply (time between its tokens), and the backend's bytes; once
 * the cache is full the last two must stay flat. Prints one JSON object.
 *
 * Environment: the service's BACKEND (auto), EVICTION_MODE (shift),
 * CPU_KERNELS and CPU_THREADS (as the service; the tfjs graph on wasm stays
 * on one thread), and BENCH_CACHE (C, 512), BENCH_MULTIPLE (16),
 * BENCH_USER_WORDS (words per user turn, 100), BENCH_REPLY_TOKENS (24).
 */
import * as tf from '@tensorflow/tfjs-core';
import { loadConfig } from '../config/index.js';
import { MemorySessionStore } from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { buildStack } from '../src/scheduler/stack.js';
import type { ChatTurn, GenerationUsage } from '../src/scheduler/types.js';
import { benchEngineOptions, benchModelArgs, benchModelDir } from './model-dir.js';

const C = Number(process.env.BENCH_CACHE ?? 512);
const MULTIPLE = Number(process.env.BENCH_MULTIPLE ?? 16);
const USER_WORDS = Number(process.env.BENCH_USER_WORDS ?? 100);
const REPLY_TOKENS = Number(process.env.BENCH_REPLY_TOKENS ?? 24);
const MODE = loadConfig(process.env).cache.evictionMode;

const WORDS = ('river mountain lantern harbor violet copper meadow thunder pocket whisper garden silver orchard candle ' +
  'station feather marble winter cobalt journey anchor maple signal velvet compass ember canyon ribbon').split(' ');

/** A user turn of `n` words, different every turn. */
function userText(turn: number, n: number): string {
  let s = turn * 7919 + 17;
  const words = Array.from({ length: n }, () => WORDS[(s = (s * 1103515245 + 12345) % 2 ** 31) % WORDS.length]);
  return `Turn ${turn}: ${words.join(' ')}. What do you make of that?`;
}

interface Point {
  tokens: number;
  ms_per_token: number;
  backend_bytes: number;
  /** The process's resident bytes (the native path's weights and scratch live outside the backend). */
  rss_bytes: number;
}

async function main(): Promise<void> {
  const model = benchModelArgs();
  const dir = await benchModelDir(model.preset, 'BF16', model.arch);
  const engine = await Engine.load(benchEngineOptions(dir, { slots: 1, capacity: C, maxBatchSize: 1, prefillChunk: 256, graphThreads: 1 }));
  const evictions: Record<string, number> = { turn: 0, token: 0 };
  let gaps: number[] = [];
  const { scheduler } = buildStack(engine, {
    store: new MemorySessionStore(),
    turns: { mode: MODE, onEvict: (kind) => (evictions[kind] += 1) },
    scheduler: { maxBatch: 1, maxQueue: 4, prefillChunk: 256 },
    observer: { interToken: (ms) => gaps.push(ms) },
  });

  const history: ChatTurn[] = [{ role: 'system', content: 'You are a thoughtful assistant who answers every message in a few words.' }];
  const points: Point[] = [];
  const t0 = performance.now();
  let evicted = 0;
  let full: { turn: number; tokens: number } | undefined;
  for (let turn = 0; points.length === 0 || points[points.length - 1].tokens < MULTIPLE * C; turn++) {
    history.push({ role: 'user', content: userText(turn, USER_WORDS) });
    gaps = [];
    const stream = scheduler.submit({
      requestId: `long-chat-${turn}`,
      sessionId: 'long-chat',
      messages: history,
      // No stop tokens, so every reply is REPLY_TOKENS long.
      params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: REPLY_TOKENS, logitBias: { 1: -100, 106: -100 } },
      n: 1,
      signal: new AbortController().signal,
    });
    let text = '';
    let usage: GenerationUsage | undefined;
    for await (const e of stream) {
      if (e.type === 'token') text += e.text;
      else if (e.type === 'usage') usage = e.usage;
    }
    history.push({ role: 'assistant', content: text });
    evicted += usage!.evictedTokens;
    const tokens = usage!.promptTokens + usage!.completionTokens;
    if (!full && usage!.evictedTokens > 0) full = { turn, tokens };
    const point = { tokens, ms_per_token: round(gaps.reduce((a, b) => a + b, 0) / gaps.length), backend_bytes: tf.memory().numBytes, rss_bytes: process.memoryUsage().rss };
    points.push(point);
    console.error(`turn ${turn}: ${JSON.stringify(point)} cache ${engine.slotLength(0)}/${C}, ${Math.round((performance.now() - t0) / 1000)} s`);
  }
  await scheduler.shutdown(1000);

  const after = points.filter((p) => full && p.tokens > full.tokens);
  const spread = (xs: number[]) => (xs.length ? { min: Math.min(...xs), max: Math.max(...xs) } : undefined);
  console.log(
    JSON.stringify({
      cache_length: C,
      points,
      model: model.label,
      backend: engine.backend.name,
      eviction_mode: MODE,
      turns: points.length,
      reply_tokens: REPLY_TOKENS,
      evictions,
      evicted_tokens: evicted,
      cache_full_from_tokens: full?.tokens,
      once_full: {
        ms_per_token: spread(after.map((p) => p.ms_per_token)),
        backend_bytes: spread(after.map((p) => p.backend_bytes)),
        rss_bytes: spread(after.map((p) => p.rss_bytes)),
      },
      wall_s: Math.round((performance.now() - t0) / 1000),
    }),
  );
  engine.dispose();
}

const round = (x: number) => Math.round(x * 100) / 100;

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
