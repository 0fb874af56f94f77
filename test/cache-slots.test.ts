import t from 'tap';
import { Redis } from 'ioredis';
import {
  OPEN_NAMESPACE,
  appendTokens,
  computeReuse,
  MemorySessionStore,
  planPrompt,
  RedisSessionStore,
  SessionBusyError,
  sessionFromPrompt,
  SlotManager,
  SlotsBusyError,
  type SessionMeta,
  type SessionStore,
} from '../src/cache/index.js';
import { BOS, SOT, EOT, NL, USER, MODEL } from './helpers/chat-tokens.js';

const PREFIX = `gemma-serve-test:${process.pid}-${Date.now().toString(36)}-slots:`;
const SYSTEM = [BOS, SOT, USER, NL, 900, 901, 902, NL, NL];

const userTurn = (body: number[]) => [SOT, USER, NL, ...body, EOT, NL];
const genPrompt = [SOT, MODEL, NL];

/** The first prompt of a conversation (system prompt folded into the first user turn, as Gemma's template does). */
function firstPrompt(first: number[]): number[] {
  return [...SYSTEM, ...first, EOT, NL, ...genPrompt];
}

/** What the scheduler records after a fresh prompt and its reply. */
function afterTurn(id: string, prompt: number[], reply: number[]): SessionMeta {
  const plan = planPrompt(prompt, SYSTEM.length, 4096, 256);
  return appendTokens(sessionFromPrompt({ id, model: 'm', promptIds: prompt, plan }), reply);
}

/** The next request of an OpenAI-style client: the whole history again plus a new user turn. */
function resend(prompt: number[], reply: number[], next: number[]): number[] {
  return [...prompt, ...reply, EOT, NL, ...userTurn(next), ...genPrompt];
}

const redis = new Redis();
t.teardown(async () => {
  const keys = await redis.keys(`${PREFIX}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

const stores: [string, () => Promise<SessionStore>][] = [
  ['memory', async () => new MemorySessionStore({ ttlSeconds: 60 })],
  [
    'redis',
    async () => {
      const s = new RedisSessionStore({ ttlSeconds: 60, keyPrefix: `${PREFIX}${Math.random().toString(36).slice(2)}:` });
      await s.ready();
      return s;
    },
  ],
];

for (const [name, makeStore] of stores) {
  t.test(`slot pressure (${name} store): LRU idle session gives its slot up and comes back restored`, async (t) => {
    const store = await makeStore();
    t.teardown(() => store.close());
    let clock = 0;
    const slots = new SlotManager({ slots: 2, store, model: 'm', now: () => ++clock });
    const metas = new Map<string, SessionMeta>();
    for (const id of ['a', 'b']) {
      const got = await slots.acquire(id);
      t.equal(got.state, 'new');
      const m = afterTurn(id, firstPrompt([id.charCodeAt(0)]), [400, 401]);
      metas.set(id, m);
      await slots.update(id, m);
      slots.release(id);
    }
    t.equal(slots.usedSlots(), 2);
    const c = await slots.acquire('c');
    t.equal(c.state, 'new');
    t.equal(c.reclaimedFrom, 'a', 'least recently used');
    t.equal(slots.sessionOf(c.slot), 'c');
    t.notOk(slots.isCached('a'));
    t.same(await store.get('a'), metas.get('a'), 'metadata of the reclaimed session is in the store');
    slots.release('c');

    const a = await slots.acquire('a');
    t.equal(a.state, 'restored');
    t.equal(a.reclaimedFrom, 'b');
    t.same(a.meta?.sinkIds, metas.get('a')!.sinkIds);
    t.same(a.meta?.keptIds, metas.get('a')!.keptIds, 'same ids to rebuild from');
    t.same(slots.metaOf('a'), metas.get('a'));
    slots.release('a');

    const again = await slots.acquire('a');
    t.equal(again.state, 'cached');
    slots.release('a');
    const owners = [0, 1].map((s) => slots.sessionOf(s));
    t.equal(new Set(owners).size, 2, 'no session in two slots');
  });
}

t.test('every slot busy: SlotsBusyError, or wait for a release', async (t) => {
  const slots = new SlotManager({ slots: 2, store: new MemorySessionStore() });
  const [x, y] = await Promise.all([slots.acquire('x'), slots.acquire('y')]);
  t.not(x.slot, y.slot, 'concurrent acquires get different slots');
  t.equal(slots.busySlots(), 2);
  await t.rejects(slots.acquire('z'), SlotsBusyError);
  await t.rejects(slots.acquire('x'), SessionBusyError, 'one request per session at a time');
  await t.rejects(slots.acquire('z', { waitMs: 30 }), SlotsBusyError, 'gives up after waitMs');
  setTimeout(() => slots.release('y'), 20);
  const z = await slots.acquire('z', { waitMs: 2000 });
  t.equal(z.slot, y.slot);
  t.equal(z.reclaimedFrom, 'y');
  await t.rejects(slots.delete('x'), SessionBusyError, 'a busy session cannot be deleted');
  slots.release('x');
  t.equal(await slots.delete('x'), true);
  t.equal(await slots.delete('x'), false);
  t.equal(slots.usedSlots(), 1);
});

t.test('automatic matching of clients that resend the whole history', async (t) => {
  const store = new RedisSessionStore({ ttlSeconds: 60, keyPrefix: `${PREFIX}match:` });
  await store.ready();
  t.teardown(() => store.close());
  let clock = 0;
  const slots = new SlotManager({ slots: 2, store, model: 'm', now: () => ++clock });

  const pA = firstPrompt([10, 11, 12]);
  const rA = [500, 501, 502];
  const pB = firstPrompt([10, 11, 12]); // same first question, another conversation
  const rB = [600, 601];
  for (const [id, p, r] of [['A', pA, rA], ['B', pB, rB]] as const) {
    t.equal(await slots.matchPrefix(p, OPEN_NAMESPACE), undefined, 'a first prompt matches nothing');
    await slots.acquire(id);
    await slots.update(id, afterTurn(id, [...p], [...r]));
    slots.release(id);
  }

  const nextA = resend(pA, rA, [20, 21]);
  const nextB = resend(pB, rB, [30]);
  t.equal(await slots.matchPrefix(nextA, OPEN_NAMESPACE), 'A', "A's resent history matches A");
  t.equal(await slots.matchPrefix(nextB, OPEN_NAMESPACE), 'B', "B's resent history matches B, not A");
  t.equal(await slots.matchPrefix(resend(firstPrompt([99]), rA, [20]), OPEN_NAMESPACE), undefined, 'another conversation matches nothing');
  t.equal(await slots.matchPrefix(pA, OPEN_NAMESPACE), undefined, 'a repeated first prompt does not take over A');

  const trimmed = [...pA, ...rA.slice(0, -1), EOT, NL, ...userTurn([20]), ...genPrompt];
  t.equal(await slots.matchPrefix(trimmed, OPEN_NAMESPACE), 'A', 'a reply the template trimmed at its end still matches');

  const reuse = computeReuse(slots.metaOf('A')!, nextA)!;
  t.equal(reuse.reuse, pA.length + rA.length, 'all of A is reusable');
  t.same(reuse.suffix, nextA.slice(pA.length + rA.length), 'only the new suffix is prefilled');

  await slots.acquire('B');
  t.equal(await slots.matchPrefix(nextB, OPEN_NAMESPACE), undefined, 'busy sessions are not matched');
  slots.release('B');

  // A loses its slot; its history still matches through the store, and it comes back restored.
  await slots.acquire('C');
  slots.release('C');
  await slots.acquire('D');
  slots.release('D');
  t.notOk(slots.isCached('A'));
  t.equal(await slots.matchPrefix(nextA, OPEN_NAMESPACE), 'A');
  t.equal((await slots.acquire('A')).state, 'restored');
  slots.release('A');

  // A long reply that a same-opening conversation shares only at its start is not taken over.
  const pL = firstPrompt([77]);
  const rL = Array.from({ length: 100 }, (_, i) => 1000 + i);
  await slots.acquire('L');
  await slots.update('L', afterTurn('L', pL, rL));
  slots.release('L');
  t.equal(await slots.matchPrefix(resend(pL, rL, [1]), OPEN_NAMESPACE), 'L');
  t.equal(await slots.matchPrefix(resend(pL, [...rL.slice(0, 10), 5, 5], [1]), OPEN_NAMESPACE), undefined, 'diverging early: no match');

  // Another process sharing the store matches and restores it too.
  const other = new SlotManager({ slots: 1, store, model: 'm' });
  t.equal(await other.matchPrefix(nextB, OPEN_NAMESPACE), 'B');
  const got = await other.acquire('B');
  t.equal(got.state, 'restored');
  t.same(computeReuse(got.meta!, nextB)?.suffix, nextB.slice(pB.length + rB.length));
  const otherModel = new SlotManager({ slots: 1, store, model: 'another-model' });
  t.equal(await otherModel.matchPrefix(nextB, OPEN_NAMESPACE), undefined, 'never across models');
});
