import t from 'tap';
import { availableParallelism, tmpdir } from 'node:os';
import { ConfigError, DEFAULT_MODEL_ID, describeConfig, loadConfig } from '../config/index.js';
import { engineOptions } from '../src/engine/options.js';

t.test('defaults', async (t) => {
  const c = loadConfig({});
  t.match(c, {
    server: { host: '127.0.0.1', port: 8080, apiKeys: [], bodyLimitBytes: 1048576, shutdownGraceMs: 10000, logLevel: 'info' },
    model: { id: DEFAULT_MODEL_ID, backend: 'auto' },
    cache: { slots: 8, capacity: 1024, evictionMode: 'shift', sessionTtlSeconds: 86400 },
    scheduler: { maxBatchSize: 8, maxQueue: 64, prefillChunk: 256 },
    sampling: { topKCap: 64, maxTokensLimit: 4096, defaultMaxTokens: 256 },
  });
  t.equal(c.model.dir, undefined);
  t.equal(c.cache.redisUrl, undefined);
  t.equal(c.model.cpuThreads, availableParallelism(), 'one thread per core');
  t.equal(c.model.cpuKernels, 'auto');
  t.equal(loadConfig({ CPU_THREADS: '1' }).model.cpuThreads, 1);
  t.equal(loadConfig({ CPU_KERNELS: 'TFJS' }).model.cpuKernels, 'tfjs');
  t.equal(c.model.cacheDir, tmpdir(), 'the default model is kept in the OS temp dir');
  t.equal(loadConfig({ GEMMA_SERVE_CACHE_DIR: '/var/cache/gemma' }).model.cacheDir, '/var/cache/gemma');
  t.equal(loadConfig({ GEMMA_SERVE_CACHE_DIR: '' }).model.cacheDir, tmpdir(), 'empty means unset');
  t.match(describeConfig(c), { model: { cacheDir: tmpdir() } }, 'logged at start');
});

t.test("engine options carry config's defaults; the engine has none of its own", async (t) => {
  t.same(engineOptions(loadConfig({})), {
    dir: undefined,
    id: DEFAULT_MODEL_ID,
    backend: 'auto',
    cpuKernels: 'auto',
    cpuThreads: availableParallelism(),
    cacheDir: tmpdir(),
    slots: 8,
    capacity: 1024,
    maxBatchSize: 8,
    prefillChunk: 256,
    topKCap: 64,
    grammarCacheSize: 64,
    grammarMaxStringLength: 32,
  });
  const env = {
    MODEL_DIR: '/m/gemma-3-270m-it', BACKEND: 'wasm', CPU_KERNELS: 'tfjs', CPU_THREADS: '3', GEMMA_SERVE_CACHE_DIR: '/c',
    SLOTS: '6', CACHE_CAPACITY: '512', MAX_BATCH_SIZE: '5', PREFILL_CHUNK: '128', TOPK_CAP: '32', GRAMMAR_CACHE_SIZE: '7',
  };
  t.same(engineOptions(loadConfig(env)), {
    dir: '/m/gemma-3-270m-it', id: 'gemma-3-270m-it', backend: 'wasm', cpuKernels: 'tfjs', cpuThreads: 3, cacheDir: '/c',
    slots: 6, capacity: 512, maxBatchSize: 5, prefillChunk: 128, topKCap: 32, grammarCacheSize: 7, grammarMaxStringLength: 32,
  }, 'each from its variable');

  const o = engineOptions(loadConfig({}), { dir: '/fixtures/gemma3-tiny', slots: 2, capacity: 96, cpuKernels: undefined });
  t.match(o, { dir: '/fixtures/gemma3-tiny', id: 'gemma3-tiny', slots: 2, capacity: 96, cpuKernels: 'auto', topKCap: 64 }, 'overrides on top; undefined ones count as unset');
  t.equal(o.maxBatchSize, 2, 'the batch size stays within overridden slots, as MAX_BATCH_SIZE does');
  t.equal(engineOptions(loadConfig({}), { dir: '/x/y', id: 'mine' }).id, 'mine');
  t.equal(engineOptions(loadConfig({ MODEL_ID: 'served-as' })).id, 'served-as');
});

t.test('values, derived model id, empty means unset', async (t) => {
  const c = loadConfig({
    PORT: '9000', MODEL_DIR: '/models/gemma-3-270m-it/', BACKEND: 'WASM', API_KEYS: ' a, ,b ', REDIS_URL: 'redis://:pw@r:6379/0', SLOTS: '4', MAX_BATCH_SIZE: '', LOG_LEVEL: 'debug',
  });
  t.equal(c.server.port, 9000);
  t.equal(c.model.dir, '/models/gemma-3-270m-it');
  t.equal(c.model.id, 'gemma-3-270m-it');
  t.equal(c.model.backend, 'wasm');
  t.same(c.server.apiKeys, ['a', 'b']);
  t.equal(c.scheduler.maxBatchSize, 4, 'default batch size shrinks to SLOTS');
  const d = JSON.stringify(describeConfig(c));
  t.notMatch(d, /"a"|pw@/, 'keys and Redis password redacted');
  t.match(d, /2 key/);
  t.equal(loadConfig({ MODEL_DIR: '/m/x', MODEL_ID: 'mine' }).model.id, 'mine');
});

const bad: [Record<string, string>, string, RegExp][] = [
  [{ PORT: '70000' }, 'PORT', /0 to 65535/],
  [{ PORT: '80.5' }, 'PORT', /integer/],
  [{ SLOTS: '0' }, 'SLOTS', /1 to/],
  [{ BACKEND: 'gpu' }, 'BACKEND', /auto, tensorflow, webgpu, wasm, cpu/],
  [{ EVICTION_MODE: 'drop' }, 'EVICTION_MODE', /shift, recompute/],
  [{ SLOTS: '4', MAX_BATCH_SIZE: '8' }, 'MAX_BATCH_SIZE', /at most SLOTS/],
  [{ MAX_TOKENS_LIMIT: '100', DEFAULT_MAX_TOKENS: '200' }, 'DEFAULT_MAX_TOKENS', /MAX_TOKENS_LIMIT/],
  [{ REDIS_URL: 'http://x' }, 'REDIS_URL', /redis:\/\//],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL', /trace/],
  [{ MODEL_ID: 'has space' }, 'MODEL_ID', /model id/],
  [{ BODY_LIMIT_BYTES: '10' }, 'BODY_LIMIT_BYTES', /1024/],
  [{ CPU_THREADS: '0' }, 'CPU_THREADS', /1 to 256/],
  [{ CPU_KERNELS: 'avx' }, 'CPU_KERNELS', /auto, native, tfjs/],
];

t.test('bad values throw ConfigError naming the variable', async (t) => {
  for (const [env, variable, allowed] of bad) {
    let err: unknown;
    try {
      loadConfig(env);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof ConfigError, `${variable}: ConfigError`);
    t.equal((err as ConfigError).variable, variable);
    t.match((err as ConfigError).message, allowed);
    t.match((err as ConfigError).message, variable);
  }
});

t.test('timeouts, connection limits, rate limits and shedding: defaults and bounds', async (t) => {
  const c = loadConfig({});
  t.match(c.server, {
    headersTimeoutMs: 10000, requestTimeoutMs: 30000, keepAliveTimeoutMs: 72000,
    maxConnections: 4096, maxConnectionsPerAddress: 256, ssePingMs: 5000,
  });
  t.same(c.rateLimit, { requestsPerWindow: 0, tokensPerWindow: 0, windowMs: 60000 }, 'rate limits off by default');
  t.equal(c.scheduler.shedQueueDepth, 0, 'shedding off by default');
  t.equal(loadConfig({ REQUEST_TIMEOUT_MS: '5000' }).server.headersTimeoutMs, 5000, 'the headers timeout follows a shorter request timeout');
  t.throws(() => loadConfig({ REQUEST_TIMEOUT_MS: '5000', HEADERS_TIMEOUT_MS: '6000' }), { variable: 'HEADERS_TIMEOUT_MS' });
  t.throws(() => loadConfig({ MAX_QUEUE: '8', SHED_QUEUE_DEPTH: '9' }), { variable: 'SHED_QUEUE_DEPTH' });
  t.throws(() => loadConfig({ RATE_LIMIT_RPM: '-1' }), { variable: 'RATE_LIMIT_RPM' });
  t.throws(() => loadConfig({ RATE_LIMIT_WINDOW_MS: '10' }), { variable: 'RATE_LIMIT_WINDOW_MS' });
  t.throws(() => loadConfig({ REQUEST_TIMEOUT_MS: '0' }), ConfigError, 'a request timeout is always on');
});
