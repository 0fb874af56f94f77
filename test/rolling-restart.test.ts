// Restart: a new engine sharing Redis continues a session it never saw, from its metadata, exactly as the original process would.
import t from 'tap';
import { Redis } from 'ioredis';
import { createSessionMeta, RedisSessionStore, ResilientSessionStore } from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import type { ChatTurn } from '../src/scheduler/types.js';
import { modelDir } from './helpers/fixtures.js';
import { chat, makeStack, scoped } from './helpers/stack.js';
import { testEngineOptions } from './helpers/engine-options.js';

const C = 96;
const PREFIX = `gemma-serve-test:restart-${process.pid}-${Date.now().toString(36)}:`;
const ID = `restart-${process.pid}`;
/** Where the slot manager and the store keep it. */
const SID = scoped(ID);
const load = () => Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 2, capacity: C }));

const raw = new Redis({ host: '127.0.0.1', port: 6379 });
t.teardown(async () => {
  const keys = await raw.keys(`${PREFIX}*`);
  if (keys.length) await raw.del(...keys);
  raw.disconnect();
});

t.test('a second engine continues a session from Redis and answers as the first would in recompute mode', async (t) => {
  // Process A: the session's first turns, long enough that the rolling cache evicted.
  const engineA = await load();
  const storeA = new RedisSessionStore({ ttlSeconds: 300, keyPrefix: PREFIX });
  const a = makeStack(engineA, { store: storeA, mode: 'recompute' });
  t.teardown(async () => {
    await a.scheduler.shutdown(1000);
    await storeA.close();
    engineA.dispose();
  });
  const history: ChatTurn[] = [{ role: 'system', content: 'You remember everything the user says.' }];
  for (let i = 0; i < 6; i++) {
    history.push({ role: 'user', content: `Message ${i}: my favourite number is ${i * 7} and my pet is called ${['Rex', 'Mia', 'Bo'][i % 3]}.` });
    const r = await chat(a, history, { maxTokens: 10 }, ID);
    t.ok(r.finish === 'length' || r.finish === 'stop', `turn ${i} answered (${r.finish})`);
    history.push({ role: 'assistant', content: r.text });
  }
  t.ok(a.evictions.length > 0, `A evicted ${a.evictions.length} times`);
  const stored = await storeA.get(SID);
  t.ok(stored, 'the session metadata is in Redis');
  t.ok(stored!.evicted > 0, `it records ${stored!.evicted} evicted tokens`);
  t.same(stored, a.slots.metaOf(SID), 'Redis holds what A has in its slot');
  t.ok(JSON.parse((await raw.get(`${PREFIX}session:${SID}`))!).keptIds.length > 0, 'under <prefix>session:<id>');

  // Process B: a new engine, slot manager and scheduler on the same Redis.
  const engineB = await load();
  const storeB = new RedisSessionStore({ ttlSeconds: 300, keyPrefix: PREFIX });
  const b = makeStack(engineB, { store: storeB, mode: 'recompute' });
  t.teardown(async () => {
    await b.scheduler.shutdown(1000);
    await storeB.close();
    engineB.dispose();
  });
  t.notOk(b.slots.isCached(SID), 'B has never seen the session');
  history.push({ role: 'user', content: 'What is my favourite number and what is my pet called?' });
  const fromB = await chat(b, history, { maxTokens: 16 }, ID);

  // A answers the same turn from its own slot (B's write to Redis does not touch A's slot).
  const fromA = await chat(a, history, { maxTokens: 16 }, ID);
  t.equal(fromB.text, fromA.text, `B's greedy reply equals A's: ${JSON.stringify(fromA.text)}`);
  t.equal(fromB.usage.completionTokens, fromA.usage.completionTokens, 'same number of tokens');
  t.equal(fromB.finish, fromA.finish, 'same finish reason');

  // B rebuilt the stored cache (sink + kept window) and went on from it: both processes now record the same session.
  t.equal(fromB.usage.cachedTokens, 0, 'B had nothing cached');
  const afterB = b.slots.metaOf(SID)!;
  const afterA = a.slots.metaOf(SID)!;
  t.equal(afterB.createdAt, stored!.createdAt, "B's session continues A's (same creation time)");
  t.equal(fromB.usage.promptTokensProcessed, fromB.usage.promptTokens - afterB.evicted, 'B prefilled every prompt token the rolling cache keeps');
  const state = (m: typeof afterA) => ({ sink: m.sinkIds, kept: m.keptIds, turns: m.turnStarts, evicted: m.evicted, history: m.historyHash, length: m.historyLength });
  t.same(state(afterB), state(afterA), 'A and B hold the same sink, kept window, turn starts, eviction count and history hash');
  t.ok(afterB.evicted > 0 && afterB.sinkIds.length > 4, `sink of ${afterB.sinkIds.length}, ${afterB.evicted} evicted`);
});

t.test('a store used the moment it is created reads what Redis holds (a restarted instance does not lose its sessions)', async (t) => {
  const meta = createSessionMeta({ id: 'early', model: 'gemma3-tiny', sinkIds: [2, 105, 2364, 107], now: 1000 });
  await raw.set(`${PREFIX}session:early`, JSON.stringify(meta));
  const store = new ResilientSessionStore({ redis: new RedisSessionStore({ ttlSeconds: 60, keyPrefix: PREFIX }) });
  t.teardown(() => store.close());
  t.same(await store.get('early'), meta, 'read from Redis, not from the empty in-memory mirror');
  t.equal(store.fallbacks, 0, 'no fallback');
  t.notOk(store.degraded, 'not degraded');
});
