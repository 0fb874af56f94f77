import t from 'tap';
import { availableParallelism } from 'node:os';
import { ConfigError, DEFAULT_MODEL_ID, describeConfig, loadConfig } from '../config/index.js';

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
