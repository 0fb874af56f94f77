/**
 * Starts the service: config -> HTTP listener (answering 503 while the model
 * loads) -> engine -> session store, slot manager, scheduler -> ready.
 * SIGTERM/SIGINT drain it: stop admitting, let running requests finish within
 * the grace period, cancel the rest, close the store, exit 0.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { describeConfig, loadConfig, type Config } from '../config/index.js';
import {
  MemorySessionStore,
  RedisSessionStore,
  ResilientSessionStore,
  type SessionStore,
} from './cache/index.js';
import { Engine, engineOptions } from './engine/engine.js';
import type { ServiceState } from './http/service.js';
import { Metrics } from './metrics.js';
import { TokenizerPool } from './model/tokenizer-pool.js';
import type { SamplingDefaults } from './protocol/convert.js';
import { buildStack } from './scheduler/stack.js';
import { buildApp, closeApp } from './server.js';

export interface RunningService {
  url: string;
  state: ServiceState;
  engine: Engine;
  stop(): Promise<void>;
}

/** Session metadata store: Redis with an in-memory fallback when REDIS_URL is set, memory alone otherwise. */
function makeStore(config: Config, log: Logger, metrics: Metrics): SessionStore {
  const ttlSeconds = config.cache.sessionTtlSeconds;
  const memory = new MemorySessionStore({ ttlSeconds });
  if (!config.cache.redisUrl) return memory;
  return new ResilientSessionStore({
    redis: new RedisSessionStore({ url: config.cache.redisUrl, ttlSeconds }),
    memory,
    logger: log.child({ component: 'session-store' }),
    onFallback: (op) => metrics.recordStoreFallback(op),
  });
}

/** Sampling defaults a model ships in generation_config.json (used when a request leaves them out). */
async function generationDefaults(dir: string): Promise<Omit<SamplingDefaults, 'maxTokens'>> {
  try {
    const g = JSON.parse(await readFile(join(dir, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
    const num = (k: string) => (typeof g[k] === 'number' ? (g[k] as number) : undefined);
    if (g.do_sample === false) return { temperature: 0 };
    return { temperature: num('temperature'), topK: num('top_k'), topP: num('top_p'), minP: num('min_p'), repetitionPenalty: num('repetition_penalty') };
  } catch {
    return {};
  }
}

/** Starts listening at once, then loads the model; resolves when the service is ready. */
export async function startService(env: Record<string, string | undefined> = process.env, opts: { handleSignals?: boolean } = {}): Promise<RunningService> {
  const config = loadConfig(env);
  const log = pino({ level: config.server.logLevel, base: { service: 'gemma-serve' } });
  log.info({ config: describeConfig(config) }, 'configuration');
  const metrics = new Metrics();
  const state: ServiceState = { phase: 'loading' };
  const app = await buildApp({ config, service: state, metrics, logger: log });
  const url = await app.listen({ host: config.server.host, port: config.server.port });

  let engine: Engine;
  try {
    engine = await Engine.load(engineOptions(config));
  } catch (err) {
    state.phase = 'failed';
    log.fatal({ err }, 'model failed to load');
    await closeApp(app);
    throw err;
  }
  log.info(
    { model: engine.modelId, dir: engine.modelDir, backend: engine.backend.name, reason: engine.backend.reason, linear: engine.linearKernels, loadMs: Math.round(engine.loadMs) },
    'model loaded',
  );

  const store = makeStore(config, log, metrics);
  // Large prompts are tokenized on worker threads (loading in the background; a request that needs one meanwhile waits).
  const tokenizerPool = new TokenizerPool(engine.tokenizer, {
    workers: config.scheduler.tokenizerWorkers,
    minChars: config.scheduler.tokenizerWorkerMinChars,
    nice: config.scheduler.tokenizerWorkerNice,
    log: log.child({ component: 'tokenizer-pool' }),
  });
  const { slots, scheduler } = buildStack(engine, {
    store,
    logger: log.child({ component: 'slots' }),
    turns: {
      mode: config.cache.evictionMode,
      onEvict: (kind) => metrics.recordEviction(kind),
      onSlotReclaimed: () => metrics.recordEviction('slot', 1),
    },
    scheduler: {
      maxBatch: config.scheduler.maxBatchSize,
      maxQueue: config.scheduler.maxQueue,
      prefillChunk: config.scheduler.prefillChunk,
      encoder: tokenizerPool,
      requestLimits: { maxStopStrings: config.limits.stopStrings, maxLogitBias: config.limits.logitBias },
    },
    // The scheduler is the one clock of the latency histograms: TTFT counts from submit (queueing included).
    observer: {
      step: (rows) => metrics.observeStep(rows),
      firstToken: (ms) => metrics.observeFirstToken(ms),
      interToken: (ms) => metrics.observeInterToken(ms),
    },
  });
  metrics.modelInfo.set({ model: engine.modelId, backend: engine.backend.name }, 1);
  metrics.onScrape(() => {
    metrics.setMemory(engine.memory());
    metrics.setSlots(engine.slots, slots.usedSlots());
    // Resident sessions only: counting stored ones would scan Redis on every scrape.
    metrics.sessions.set(slots.usedSlots());
  });
  state.model = { created: Math.floor(Date.now() / 1000), vocabSize: engine.config.vocabSize, samplingDefaults: await generationDefaults(engine.modelDir) };
  state.scheduler = scheduler;
  const tok = engine.tokenizer;
  state.tokens = {
    maxModelLen: engine.capacity,
    vocabSize: engine.config.vocabSize,
    bosId: engine.config.bosId,
    encodeChat: (messages, opts) => tokenizerPool.accepts(messages) ? tokenizerPool.encodeChat(messages, opts) : Promise.resolve(tok.encodeChat(messages, opts)),
    encodeText: (text) => tokenizerPool.encodeText(text),
    decode: (ids) => tokenizerPool.decode(ids, { skipSpecialTokens: false }),
    tokenText: (id) => tok.tokenText(id),
  };
  state.phase = 'ready';
  log.info({ url }, 'ready');

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      state.phase = 'draining';
      log.info({ graceMs: config.server.shutdownGraceMs }, 'draining');
      await scheduler.shutdown(config.server.shutdownGraceMs);
      await tokenizerPool.close();
      await store.close();
      await closeApp(app);
      engine.dispose();
      log.info('stopped');
    })());
  if (opts.handleSignals !== false) {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        stop().then(
          () => process.exit(0),
          (err) => {
            log.error({ err }, 'shutdown failed');
            process.exit(1);
          },
        );
      });
    }
  }
  return { url, state, engine, stop };
}
