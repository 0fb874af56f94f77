/**
 * Service configuration: every setting comes from one environment variable with
 * a default, is parsed and range-checked once at start, and is grouped by the
 * layer that uses it. Settings that fix tensor shapes (slots, cache capacity)
 * live apart from per-request limits (max tokens), so it is clear which ones
 * need a restart to mean anything.
 *
 * An empty variable counts as unset, so compose files can pass `${VAR:-}`.
 */
import { availableParallelism, tmpdir } from 'node:os';
import { basename, resolve } from 'node:path';
import { GemmaServeError } from '../src/errors.js';

/** A configuration variable holds a value the service cannot use. */
export class ConfigError extends GemmaServeError {
  /** The environment variable at fault. */
  readonly variable: string;
  constructor(variable: string, value: string, allowed: string) {
    super(`Invalid ${variable}=${JSON.stringify(value)}: expected ${allowed}.`, {
      status: 500,
      param: variable,
      code: 'invalid_config',
    });
    this.variable = variable;
  }
}

// The values a setting may take are defined here, once; the modules that use
// them (engine/backend.ts, engine/choose-path.ts, scheduler/session-turns.ts)
// import and re-export these types.
export const BACKENDS = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKENDS)[number];
/** What runs the linear layers on wasm and cpu. */
export const CPU_KERNELS = ['auto', 'native', 'tfjs'] as const;
export type KernelChoice = (typeof CPU_KERNELS)[number];
export const EVICTION_MODES = ['shift', 'recompute'] as const;
export type EvictionMode = (typeof EVICTION_MODES)[number];
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Model id used when no MODEL_DIR is given (the embedded default model). */
export const DEFAULT_MODEL_ID = 'gemma-serve-default';

/** The model id when MODEL_ID is unset: the directory's name, or DEFAULT_MODEL_ID for the embedded model. */
export function defaultModelId(dir: string | undefined): string {
  return dir === undefined ? DEFAULT_MODEL_ID : basename(resolve(dir));
}

export interface Config {
  /** HTTP listener and request hygiene. */
  server: {
    host: string;
    port: number;
    /** Accepted bearer tokens; empty means no authentication. */
    apiKeys: string[];
    /** With API keys set: /metrics needs a key too (it is public by default, as in vLLM). */
    metricsAuth: boolean;
    bodyLimitBytes: number;
    /** How long SIGTERM waits for running requests before cancelling them. */
    shutdownGraceMs: number;
    logLevel: LogLevel;
    /** A request's line and headers must arrive within this (Node's headersTimeout; 408 after). */
    headersTimeoutMs: number;
    /** The whole request, body included, must arrive within this (Node's requestTimeout; 408 after). Not the response. */
    requestTimeoutMs: number;
    /** An idle keep-alive socket is closed after this. */
    keepAliveTimeoutMs: number;
    /** Open sockets beyond this are closed at accept (Node's maxConnections); 0 = unlimited. */
    maxConnections: number;
    /** Open sockets from one client address beyond this are closed at accept; 0 = unlimited. */
    maxConnectionsPerAddress: number;
    /** Browser origins allowed cross-origin requests (exact `scheme://host[:port]`), or ['*'] for any; empty = CORS off. */
    corsOrigins: string[];
    /** How long a browser may cache a preflight's answer, in seconds. */
    corsMaxAgeSeconds: number;
    /** A streamed request waiting for its first token sends `: ping` this often; 0 = never. */
    ssePingMs: number;
  };
  /** Per-credential limits (per API key, or per client address when keys are off); 0 = unlimited. */
  rateLimit: {
    requestsPerWindow: number;
    /** Prompt tokens (estimated at admission) + max_tokens reserved, corrected to actual usage at the end. */
    tokensPerWindow: number;
    /** The window both limits count in (a minute unless tests shorten it). */
    windowMs: number;
  };
  /** Which weights to load and where they run. */
  model: {
    /** Hugging Face model directory; undefined means the embedded default model. */
    dir?: string;
    /** Name clients put in `model` and see in /v1/models. */
    id: string;
    backend: BackendChoice;
    /** On wasm and cpu: what runs the linear layers (native AVX/FMA kernels where built, or tfjs's matmuls). */
    cpuKernels: KernelChoice;
    /** Threads for the linear layers on wasm and cpu (tfjs on wasm: 2 splits each weight by columns with a worker thread). */
    cpuThreads: number;
    /** Where the embedded default model is built, once per machine (GEMMA_SERVE_CACHE_DIR; the benchmarks keep theirs there too). */
    cacheDir: string;
  };
  /** Shapes of the KV pool and where session metadata lives (fixed at start). */
  cache: {
    /** Number of KV slots (live session caches). */
    slots: number;
    /** Global-layer KV capacity per session, in tokens. */
    capacity: number;
    evictionMode: EvictionMode;
    /** Redis connection URL; undefined means an in-memory session store. */
    redisUrl?: string;
    sessionTtlSeconds: number;
  };
  /** Admission and batching. */
  scheduler: {
    maxBatchSize: number;
    /** Requests waiting for a batch row beyond this are refused with 429. */
    maxQueue: number;
    /** Prompt tokens prefilled per scheduler step, interleaved with decode steps. */
    prefillChunk: number;
    /** Chat requests arriving while this many wait are refused with 503 before their body is read; 0 = off. */
    shedQueueDepth: number;
    /** Worker threads that tokenize large prompts off the main thread; 0 = all on the main thread. */
    tokenizerWorkers: number;
    /** Conversations with at least this many characters of message text are tokenized by a worker. */
    tokenizerWorkerMinChars: number;
    /** The tokenizer workers' nice value (Linux): how far below the serving and compute threads they run. */
    tokenizerWorkerNice: number;
  };
  /** Bounds on what one request may send; each is checked before any work is done. */
  limits: {
    /** Deepest nesting of arrays and objects in a JSON body. */
    jsonDepth: number;
    /** Messages in one chat request. */
    messages: number;
    /** Characters of text in one message. */
    messageChars: number;
    /** Entries in `logit_bias`. */
    logitBias: number;
    /** Entries in `stop`. */
    stopStrings: number;
    /** Bytes of `chat_template_kwargs` as JSON. */
    chatTemplateKwargsBytes: number;
  };
  /** Per-request limits and defaults. */
  sampling: {
    /** Largest K taken from the device per step (bounds top_k and top_logprobs). */
    topKCap: number;
    maxTokensLimit: number;
    defaultMaxTokens: number;
    /** Compiled structured-output grammars kept, by schema. */
    grammarCacheSize: number;
    /** Largest minLength/maxLength a structured-output schema may set (each unit of a bound costs compile time). */
    grammarMaxStringLength: number;
  };
}

type Env = Record<string, string | undefined>;

/** Reads variables, treating '' as unset, and parses them with named failures. */
class EnvReader {
  constructor(private readonly env: Env) {}

  raw(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  }

  string(name: string, dflt: string): string {
    return this.raw(name) ?? dflt;
  }

  int(name: string, dflt: number, min: number, max: number = Number.MAX_SAFE_INTEGER, why = ''): number {
    const v = this.raw(name);
    if (v === undefined) return dflt;
    const allowed = `an integer from ${min} to ${max}${why}`;
    if (!/^[+-]?\d+$/.test(v)) throw new ConfigError(name, v, allowed);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new ConfigError(name, v, allowed);
    return n;
  }

  bool(name: string, dflt: boolean): boolean {
    const v = this.raw(name);
    if (v === undefined) return dflt;
    const lower = v.toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(lower)) return true;
    if (['false', '0', 'no', 'off'].includes(lower)) return false;
    throw new ConfigError(name, v, 'true or false');
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], dflt: T): T {
    const v = this.raw(name);
    if (v === undefined) return dflt;
    const lower = v.toLowerCase();
    if (!(allowed as readonly string[]).includes(lower)) throw new ConfigError(name, v, `one of ${allowed.join(', ')}`);
    return lower as T;
  }
}

const MODEL_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/** Builds and validates the configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const r = new EnvReader(env);

  const host = r.string('HOST', '127.0.0.1');
  const port = r.int('PORT', 8080, 0, 65535);

  const dirRaw = r.raw('MODEL_DIR');
  const dir = dirRaw === undefined ? undefined : resolve(dirRaw);
  const id = r.string('MODEL_ID', defaultModelId(dir));
  if (!MODEL_ID_RE.test(id)) {
    const variable = r.raw('MODEL_ID') === undefined ? 'MODEL_DIR' : 'MODEL_ID';
    throw new ConfigError(variable, r.raw(variable) ?? id,
      'a model id of 1-128 letters, digits or . _ : / - (set MODEL_ID when the directory name is not one)');
  }
  const backend = r.oneOf('BACKEND', BACKENDS, 'auto');
  const cpuKernels = r.oneOf('CPU_KERNELS', CPU_KERNELS, 'auto');
  const cpuThreads = r.int('CPU_THREADS', defaultCpuThreads(), 1, 256);
  const cacheDir = r.string('GEMMA_SERVE_CACHE_DIR', tmpdir());

  const slots = r.int('SLOTS', 8, 1, 4096);
  const capacity = r.int('CACHE_CAPACITY', 1024, 16, 1 << 20);
  const evictionMode = r.oneOf('EVICTION_MODE', EVICTION_MODES, 'shift');
  const redisUrl = r.raw('REDIS_URL');
  if (redisUrl !== undefined && !isRedisUrl(redisUrl)) {
    throw new ConfigError('REDIS_URL', redisUrl, 'a redis:// or rediss:// URL, or unset for the in-memory store');
  }
  const sessionTtlSeconds = r.int('SESSION_TTL_SECONDS', 86400, 1);

  // A batch row needs a KV slot, so more rows than slots could never fill.
  const maxBatchSize = r.int('MAX_BATCH_SIZE', Math.min(8, slots), 1, slots, ' (at most SLOTS)');
  const maxQueue = r.int('MAX_QUEUE', 64, 0);
  const prefillChunk = r.int('PREFILL_CHUNK', 256, 1, 1 << 16);
  // Shedding only means something below MAX_QUEUE, where the queue itself would refuse with 429.
  const tokenizerWorkers = r.int('TOKENIZER_WORKERS', 1, 0, 64);
  const tokenizerWorkerMinChars = r.int('TOKENIZER_WORKER_MIN_CHARS', 4096, 0, 1 << 30);
  const tokenizerWorkerNice = r.int('TOKENIZER_WORKER_NICE', 5, 0, 19);
  const shedQueueDepth = r.int('SHED_QUEUE_DEPTH', 0, 0, Math.max(0, maxQueue), ' (at most MAX_QUEUE; 0 = off)');

  const topKCap = r.int('TOPK_CAP', 64, 1, 4096);
  const grammarCacheSize = r.int('GRAMMAR_CACHE_SIZE', 64, 1, 100_000);
  const grammarMaxStringLength = r.int('GRAMMAR_MAX_STRING_LENGTH', 32, 0, 4096);
  const maxTokensLimit = r.int('MAX_TOKENS_LIMIT', 4096, 1, 1 << 24);
  const defaultMaxTokens = r.int('DEFAULT_MAX_TOKENS', Math.min(256, maxTokensLimit), 1, maxTokensLimit,
    ' (at most MAX_TOKENS_LIMIT)');

  const apiKeys = (r.raw('API_KEYS') ?? '').split(',').map((k) => k.trim()).filter((k) => k !== '');
  const corsOrigins = (r.raw('CORS_ORIGINS') ?? '').split(',').map((o) => o.trim().replace(/\/$/, '')).filter((o) => o !== '');
  for (const o of corsOrigins) {
    if (o !== '*' && !/^https?:\/\/[^/\s?#]+$/.test(o)) throw new ConfigError('CORS_ORIGINS', o, 'a comma-separated list of origins such as https://app.example.com, or *');
  }
  if (corsOrigins.includes('*') && corsOrigins.length > 1) throw new ConfigError('CORS_ORIGINS', corsOrigins.join(','), '* alone, or a list of origins');
  const corsMaxAgeSeconds = r.int('CORS_MAX_AGE', 600, 0, 86_400);
  const metricsAuth = r.bool('METRICS_AUTH', false);
  const bodyLimitBytes = r.int('BODY_LIMIT_BYTES', 1 << 20, 1024, 1 << 30);

  const limits = {
    jsonDepth: r.int('MAX_JSON_DEPTH', 32, 4, 1000),
    messages: r.int('MAX_MESSAGES', 1024, 1, 1 << 20),
    messageChars: r.int('MAX_MESSAGE_CHARS', 1 << 20, 1, 1 << 30),
    logitBias: r.int('MAX_LOGIT_BIAS', 300, 0, 1 << 20),
    stopStrings: r.int('MAX_STOP_STRINGS', 16, 0, 1024),
    chatTemplateKwargsBytes: r.int('MAX_CHAT_TEMPLATE_KWARGS_BYTES', 16384, 2, 1 << 20),
  };
  const shutdownGraceMs = r.int('SHUTDOWN_GRACE_MS', 10000, 0, 3_600_000);
  const logLevel = r.oneOf('LOG_LEVEL', LOG_LEVELS, 'info');
  const connections = {
    requestTimeoutMs: r.int('REQUEST_TIMEOUT_MS', 30_000, 100, 3_600_000),
    keepAliveTimeoutMs: r.int('KEEP_ALIVE_TIMEOUT_MS', 72_000, 100, 3_600_000),
    maxConnections: r.int('MAX_CONNECTIONS', 4096, 0, 1 << 20),
    maxConnectionsPerAddress: r.int('MAX_CONNECTIONS_PER_ADDRESS', 256, 0, 1 << 20),
    ssePingMs: r.int('SSE_PING_MS', 5000, 0, 600_000),
  };
  // Node refuses a headers timeout longer than the request timeout it is part of.
  const headersTimeoutMs = r.int('HEADERS_TIMEOUT_MS', Math.min(10_000, connections.requestTimeoutMs), 100,
    connections.requestTimeoutMs, ' (at most REQUEST_TIMEOUT_MS)');
  const rateLimit = {
    requestsPerWindow: r.int('RATE_LIMIT_RPM', 0, 0),
    tokensPerWindow: r.int('RATE_LIMIT_TPM', 0, 0),
    windowMs: r.int('RATE_LIMIT_WINDOW_MS', 60_000, 100, 86_400_000),
  };

  return {
    server: { host, port, apiKeys, metricsAuth, bodyLimitBytes, shutdownGraceMs, logLevel, headersTimeoutMs, corsOrigins, corsMaxAgeSeconds, ...connections },
    rateLimit,
    model: { dir, id, backend, cpuKernels, cpuThreads, cacheDir },
    cache: { slots, capacity, evictionMode, redisUrl, sessionTtlSeconds },
    scheduler: { maxBatchSize, maxQueue, prefillChunk, shedQueueDepth, tokenizerWorkers, tokenizerWorkerMinChars, tokenizerWorkerNice },
    limits,
    sampling: { topKCap, maxTokensLimit, defaultMaxTokens, grammarCacheSize, grammarMaxStringLength },
  };
}

/** One thread per core. */
export function defaultCpuThreads(): number {
  return availableParallelism();
}

function isRedisUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'redis:' || u.protocol === 'rediss:';
  } catch {
    return false;
  }
}

/** The configuration as it should appear in the start-up log: secrets replaced. */
export function describeConfig(config: Config): Record<string, unknown> {
  let redisUrl = config.cache.redisUrl;
  if (redisUrl !== undefined) {
    const u = new URL(redisUrl);
    if (u.password !== '') u.password = 'REDACTED';
    redisUrl = u.toString();
  }
  return {
    server: { ...config.server, apiKeys: `${config.server.apiKeys.length} key(s)` },
    model: { ...config.model, dir: config.model.dir ?? '(embedded default model)' },
    cache: { ...config.cache, redisUrl: redisUrl ?? '(in-memory session store)' },
    scheduler: { ...config.scheduler },
    rateLimit: { ...config.rateLimit },
    limits: { ...config.limits },
    sampling: { ...config.sampling },
  };
}
