// Redis stops mid-conversation: requests keep succeeding from the in-memory mirror, and metadata is written again once Redis is back.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { RedisSessionStore, ResilientSessionStore, type SessionMeta } from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import type { ChatTurn } from '../src/scheduler/types.js';
import { modelDir } from './helpers/fixtures.js';
import { chat, makeStack, scoped } from './helpers/stack.js';
import { freePort } from './helpers/free-port.js';
import { testEngineOptions } from './helpers/engine-options.js';

async function until(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond().catch(() => false)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond().catch(() => false);
}

const port = await freePort();
let server: ChildProcess | undefined;

/** Our own redis-server (no persistence), so stopping it disturbs nobody else. */
async function startRedis(): Promise<void> {
  server = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const probe = new Redis({ port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  probe.on('error', () => {});
  const up = await until(async () => {
    if (probe.status !== 'ready') await probe.connect();
    return (await probe.ping()) === 'PONG';
  }, 5000);
  probe.disconnect();
  if (!up) throw new Error(`redis-server did not start on port ${port}`);
}

async function killRedis(): Promise<void> {
  const s = server!;
  s.kill('SIGKILL');
  if (s.exitCode === null && s.signalCode === null) await once(s, 'exit');
}

t.teardown(() => {
  if (server && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
});

t.test('a conversation goes on through a Redis outage and its metadata reaches Redis again', async (t) => {
  await startRedis();
  const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 1, capacity: 96 }));
  t.teardown(() => engine.dispose());
  const store = new ResilientSessionStore({
    redis: new RedisSessionStore({ ttlSeconds: 300, redis: { port, host: '127.0.0.1', retryStrategy: () => 50 } }),
  });
  t.teardown(() => store.close());
  const s = makeStack(engine, { store });
  t.teardown(() => s.scheduler.shutdown(1000));
  const check = new Redis({ port, lazyConnect: true, retryStrategy: () => 50 });
  check.on('error', () => {});
  t.teardown(() => check.disconnect());
  await check.connect();

  const id = `outage-${process.pid}`;
  const other = `outage-other-${process.pid}`;
  const key = (sid: string) => `gemma-serve:session:${scoped(sid)}`;
  const inRedis = async (sid: string): Promise<SessionMeta | undefined> => {
    const raw = await check.get(key(sid));
    return raw === null ? undefined : (JSON.parse(raw) as SessionMeta);
  };
  const history: ChatTurn[] = [{ role: 'system', content: 'You keep a diary for the user.' }];
  const say = async (content: string, sid = id, h = history) => {
    h.push({ role: 'user', content });
    const r = await chat(s, h, { maxTokens: 8 }, sid);
    h.push({ role: 'assistant', content: r.text });
    return r;
  };

  for (let i = 0; i < 3; i++) await say(`Day ${i}: it rained and I read a book.`);
  t.equal((await inRedis(id))?.historyLength, s.slots.metaOf(scoped(id))!.historyLength, 'while Redis is up each turn is written to it');
  t.notOk(store.degraded, 'not degraded');

  await killRedis();
  const during: string[] = [];
  const otherHistory: ChatTurn[] = [{ role: 'system', content: 'You plan trips.' }];
  for (let i = 3; i < 7; i++) {
    const started = Date.now();
    const r = await say(`Day ${i}: the power went out at ${i} pm.`);
    during.push(r.finish);
    t.ok(Date.now() - started < 3000, `turn ${i} answered in ${Date.now() - started} ms`);
    // Another session takes the only slot, so the next turn of this one is rebuilt from the store: from memory now.
    const o = await say(`Plan ${i}: a walk by the sea.`, other, otherHistory);
    during.push(o.finish);
  }
  t.ok(during.every((f) => f === 'length' || f === 'stop'), `all ${during.length} requests during the outage answered`);
  t.ok(store.degraded, 'the store knows Redis is down');
  t.ok(store.fallbacks > 0, `${store.fallbacks} operations served from memory`);
  const latest = await store.memory.get(scoped(id));
  t.ok(latest && latest.historyLength > 0, 'the in-memory mirror holds the session');
  t.ok(latest!.evicted > 0, `the session evicted ${latest!.evicted} tokens along the way`);

  await startRedis(); // back, empty
  const back = await until(async () => (await inRedis(id))?.historyHash === latest!.historyHash, 8000);
  t.ok(back, 'the latest metadata was written to Redis again once it returned');
  t.same(await inRedis(id), latest, 'exactly the latest version');
  t.ok(await inRedis(other), 'the other session too');
  t.ok(await until(async () => !store.degraded && store.pending === 0, 3000), 'healthy, nothing pending');

  const after = await say('Day 7: the lights are back.');
  t.ok(after.finish === 'length' || after.finish === 'stop', 'the conversation goes on');
  t.equal((await inRedis(id))?.historyHash, s.slots.metaOf(scoped(id))!.historyHash, 'and its new turn is in Redis');
  t.equal((await inRedis(id))?.historyLength, after.usage.promptTokens + after.usage.completionTokens - 1, 'the stored history is the whole conversation so far');
  await killRedis();
});
