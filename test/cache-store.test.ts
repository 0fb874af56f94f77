import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import pino from 'pino';
import {
  OPEN_NAMESPACE,
  appendTokens,
  createSessionMeta,
  MemorySessionStore,
  RedisSessionStore,
  ResilientSessionStore,
  type CacheLogger,
  type SessionMeta,
} from '../src/cache/index.js';
import { freePort } from './helpers/free-port.js';

const PREFIX = `gemma-serve-test:${process.pid}-${Date.now().toString(36)}:`;

function meta(id: string, extra: number[] = []): SessionMeta {
  const m = createSessionMeta({ id, model: 'test-model', sinkIds: [2, 105, 2364, 108], now: 1000 });
  return appendTokens(m, [300, 301, 106, 108, 105, 4368, 108, ...extra], 1001);
}

function recordingLogger() {
  const lines: { level: string; msg?: string }[] = [];
  const logger: CacheLogger = {
    info: (_o, msg) => lines.push({ level: 'info', msg }),
    warn: (_o, msg) => lines.push({ level: 'warn', msg }),
  };
  return { lines, logger };
}

async function until(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

t.test('memory store: roundtrip, TTL, LRU bound, prefix index', async (t) => {
  let now = 0;
  const store = new MemorySessionStore({ ttlSeconds: 10, maxEntries: 2, now: () => now });
  const a = meta('a');
  await store.put(a);
  t.same(await store.get('a'), a);
  t.not(await store.get('a'), a, 'returns copies');
  t.ok(a.matchKey);
  t.same(await store.findByPrefix(OPEN_NAMESPACE, [a.matchKey!]), ['a']);
  now = 11_000;
  t.equal(await store.get('a'), undefined, 'expired');
  t.same(await store.findByPrefix(OPEN_NAMESPACE, [a.matchKey!]), []);
  await store.put(meta('a'));
  await store.put(meta('b'));
  await store.put(meta('c'));
  t.equal(store.size, 2);
  t.equal(await store.get('a'), undefined, 'least recently written goes first');
  await store.delete('b');
  t.same(await store.findByPrefix(OPEN_NAMESPACE, [a.matchKey!]), ['c']);
});

t.test('redis store: roundtrip, key layout, TTL, delete', async (t) => {
  const store = new RedisSessionStore({ ttlSeconds: 120, keyPrefix: PREFIX });
  const raw = new Redis({ lazyConnect: false });
  t.teardown(async () => {
    const keys = await raw.keys(`${PREFIX}*`);
    if (keys.length) await raw.del(...keys);
    raw.disconnect();
    await store.close();
  });
  await store.ready();
  const a = meta('conv-a', [555]);
  await store.put(a);
  t.same(await store.get('conv-a'), a);
  t.equal(await store.get('missing'), undefined);
  const key = `${PREFIX}session:conv-a`;
  t.equal(store.sessionKey('conv-a'), key);
  t.same(JSON.parse((await raw.get(key))!), a, 'JSON under <prefix>session:<id>');
  const ttl = await raw.ttl(key);
  t.ok(ttl > 100 && ttl <= 120, `TTL set (${ttl}s)`);
  const idx = `${PREFIX}prefix:${OPEN_NAMESPACE}:${a.matchKey}`;
  t.same(await raw.smembers(idx), ['conv-a'], 'indexed under <prefix>prefix:<namespace>:<matchKey>');
  const idxTtl = await raw.ttl(idx);
  t.ok(idxTtl > 100 && idxTtl <= 120, 'index TTL set');
  t.same(await store.findByPrefix(OPEN_NAMESPACE, ['0-0000000000000000', a.matchKey!]), ['conv-a']);
  await store.delete('conv-a');
  t.equal(await raw.exists(key), 0);
  t.same(await raw.smembers(idx), []);
});

t.test('resilient store: Redis unreachable, every request still answered quickly', async (t) => {
  const port = await freePort();
  const { lines, logger } = recordingLogger();
  const fallbackOps: string[] = [];
  const store = new ResilientSessionStore({
    redis: new RedisSessionStore({ ttlSeconds: 60, keyPrefix: PREFIX, redis: { port, host: '127.0.0.1' } }),
    logger,
    onFallback: (op) => fallbackOps.push(op),
  });
  t.teardown(() => store.close());
  const start = Date.now();
  const a = meta('down-a');
  await store.put(a);
  t.same(await store.get('down-a'), a);
  t.same(await store.findByPrefix(OPEN_NAMESPACE, [a.matchKey!]), ['down-a']);
  await store.put(meta('down-b'));
  await store.delete('down-b');
  t.equal(await store.get('down-b'), undefined);
  const elapsed = Date.now() - start;
  t.ok(elapsed < 1000, `answered in ${elapsed} ms`);
  t.ok(store.degraded);
  t.ok(store.fallbacks >= 4, `fallbacks counted (${store.fallbacks})`);
  t.equal(fallbackOps.length, store.fallbacks, 'callback called per fallback');
  t.equal(lines.filter((l) => l.level === 'warn').length, 1, 'one warning per outage');
  // A pino logger fits the logger interface.
  const quiet = new ResilientSessionStore({
    redis: new RedisSessionStore({ ttlSeconds: 60, redis: { port, host: '127.0.0.1' } }),
    logger: pino({ level: 'silent' }),
  });
  await quiet.put(meta('x'));
  await quiet.close();
});

t.test('resilient store: Redis stops mid-conversation, comes back, metadata written again', async (t) => {
  const port = await freePort();
  let server: ChildProcess | undefined;
  const startServer = async () => {
    server = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--daemonize', 'no'], {
      stdio: 'ignore',
    });
    const probe = new Redis({ port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    probe.on('error', () => {});
    const ok = await until(async () => {
      try {
        await probe.connect();
        return (await probe.ping()) === 'PONG';
      } catch {
        return false;
      }
    }, 5000);
    probe.disconnect();
    if (!ok) throw new Error(`redis-server did not start on ${port}`);
  };
  const stopServer = async () => {
    const s = server!;
    s.kill('SIGTERM');
    if (s.exitCode === null) await once(s, 'exit');
  };
  t.teardown(() => {
    if (server && server.exitCode === null) server.kill('SIGKILL');
  });

  await startServer();
  const { lines, logger } = recordingLogger();
  const store = new ResilientSessionStore({
    redis: new RedisSessionStore({
      ttlSeconds: 60,
      keyPrefix: PREFIX,
      redis: { port, host: '127.0.0.1', retryStrategy: () => 50 },
    }),
    logger,
  });
  t.teardown(() => store.close());
  await store.redis.ready();

  const check = new Redis({ port, lazyConnect: true, retryStrategy: () => 50 });
  check.on('error', () => {});
  t.teardown(() => check.disconnect());
  await check.connect();

  const a1 = meta('live-a', [1]);
  await store.put(a1);
  t.ok(await check.exists(`${PREFIX}session:live-a`), 'written while up');
  t.notOk(store.degraded);

  await stopServer();
  const start = Date.now();
  const a2 = meta('live-a', [1, 2]); // the conversation went on
  const b = meta('live-b', [7]);
  await store.put(a2);
  await store.put(b);
  t.same(await store.get('live-a'), a2, 'served from memory');
  t.same(await store.get('live-b'), b);
  t.ok(Date.now() - start < 1000, 'no request waited on the dead Redis');
  t.ok(store.degraded);
  t.equal(lines.filter((l) => l.level === 'warn').length, 1);
  t.equal(store.pending, 2);

  await startServer(); // comes back empty (no persistence)
  const restored = await until(async () => {
    try {
      const [ra, rb] = await Promise.all([check.get(`${PREFIX}session:live-a`), check.get(`${PREFIX}session:live-b`)]);
      return ra !== null && rb !== null;
    } catch {
      return false;
    }
  }, 8000);
  t.ok(restored, 'metadata written again after Redis returned');
  t.same(JSON.parse((await check.get(`${PREFIX}session:live-a`))!), a2, 'the newest version');
  t.equal(a2.matchKey, b.matchKey);
  t.same((await check.smembers(`${PREFIX}prefix:${OPEN_NAMESPACE}:${b.matchKey}`)).sort(), ['live-a', 'live-b'], 'prefix index rebuilt');
  t.ok(await until(async () => !store.degraded && store.pending === 0, 2000), 'healthy, nothing pending');
  t.ok(lines.some((l) => l.level === 'info' && /back/.test(l.msg ?? '')), 'recovery logged');
  t.same(await store.get('live-b'), b, 'read from Redis again');
  await stopServer();
});
