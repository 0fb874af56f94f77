// Slot pressure: four sessions taking turns on two slots, each rebuilt from Redis when its turn comes, none seeing another's tokens.
import t from 'tap';
import { Redis } from 'ioredis';
import { MemorySessionStore, RedisSessionStore } from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import type { ChatTurn } from '../src/scheduler/types.js';
import { modelDir } from './helpers/fixtures.js';
import { chat, makeStack, scoped, type Stack } from './helpers/stack.js';
import { testEngineOptions } from './helpers/engine-options.js';

const C = 96;
const ROUNDS = 5;
const PREFIX = `gemma-serve-test:pressure-${process.pid}-${Date.now().toString(36)}:`;
const NAMES = ['alpha', 'bravo', 'charlie', 'delta'];
const PETS = ['cat', 'dog', 'parrot', 'goldfish'];

const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 2, capacity: C }));
const raw = new Redis({ host: '127.0.0.1', port: 6379 });
t.teardown(async () => {
  const keys = await raw.keys(`${PREFIX}*`);
  if (keys.length) await raw.del(...keys);
  raw.disconnect();
  engine.dispose();
});

function system(s: number): string {
  return `You are the assistant of ${NAMES[s]}, who owns a ${PETS[s]}.`;
}

function userMessage(s: number, round: number): string {
  return `${NAMES[s]} says, round ${round}: my ${PETS[s]} ate ${round + s * 3} biscuits today.`;
}

interface Turn {
  text: string;
  finish: string;
  cachedTokens: number;
}

/** One session's turn: its whole history resent under its name, the reply appended. */
async function turn(s: Stack, id: string, history: ChatTurn[], session: number, round: number): Promise<Turn> {
  history.push({ role: 'user', content: userMessage(session, round) });
  const r = await chat(s, history, { maxTokens: 10 }, id);
  history.push({ role: 'assistant', content: r.text });
  return { text: r.text, finish: r.finish, cachedTokens: r.usage.cachedTokens };
}

t.test('four sessions round-robin on two slots answer as each would alone', async (t) => {
  const store = new RedisSessionStore({ ttlSeconds: 300, keyPrefix: PREFIX });
  t.teardown(() => store.close());
  const shared = makeStack(engine, { store, mode: 'recompute' });
  const ids = NAMES.map((n) => `pressure-${process.pid}-${n}`);
  const histories: ChatTurn[][] = NAMES.map((_, s) => [{ role: 'system', content: system(s) }]);
  const pressured: Turn[][] = NAMES.map(() => []);
  for (let round = 0; round < ROUNDS; round++) {
    for (let s = 0; s < NAMES.length; s++) {
      pressured[s].push(await turn(shared, ids[s], histories[s], s, round));
      t.ok(shared.slots.usedSlots() <= 2, 'never more live caches than slots');
    }
  }
  await shared.scheduler.shutdown(1000);

  const finishes = pressured.flat().map((r) => r.finish);
  t.ok(finishes.every((f) => f === 'length' || f === 'stop'), `all ${finishes.length} turns answered`);
  // With four sessions cycling through two slots, every session lost its slot before each of its later turns.
  const rebuilt = pressured.flatMap((turns) => turns.slice(1)).filter((r) => r.cachedTokens === 0).length;
  t.equal(rebuilt, NAMES.length * (ROUNDS - 1), 'every later turn was rebuilt from the store (no cached tokens)');
  t.ok(shared.evictions.length > 0, `the rolling cache evicted too (${shared.evictions.length} times)`);

  for (let s = 0; s < NAMES.length; s++) {
    const stored = await store.get(scoped(ids[s]!));
    t.ok(stored, `${NAMES[s]}'s metadata is in Redis`);
    const text = engine.tokenizer.decode([...stored!.sinkIds, ...stored!.keptIds]);
    const others = NAMES.filter((n, o) => o !== s && (text.includes(n) || text.includes(PETS[o])));
    t.same(others, [], `${NAMES[s]}'s cache mentions no other session`);
    t.ok(text.includes(NAMES[s]) && text.includes(PETS[s]), `${NAMES[s]}'s cache holds its own system prompt`);
  }

  // The same conversations, one at a time on a fresh stack with nothing else competing for slots.
  for (let s = 0; s < NAMES.length; s++) {
    const alone = makeStack(engine, { store: new MemorySessionStore(), mode: 'recompute' });
    const history: ChatTurn[] = [{ role: 'system', content: system(s) }];
    const replies: Turn[] = [];
    for (let round = 0; round < ROUNDS; round++) replies.push(await turn(alone, `alone-${NAMES[s]}`, history, s, round));
    await alone.scheduler.shutdown(1000);
    t.same(
      pressured[s].map((r) => r.text),
      replies.map((r) => r.text),
      `${NAMES[s]}: the ${ROUNDS} replies under slot pressure equal those of the conversation run alone`,
    );
    t.ok(replies.slice(1).some((r) => r.cachedTokens > 0), `${NAMES[s]} alone kept its cache between turns`);
  }
});
