import t from 'tap';
import {
  appendTokens,
  applyEviction,
  cacheLength,
  findTurnStarts,
  planEviction,
  planTurn,
  sinkLength,
  type SessionMeta,
} from '../src/cache/index.js';
import { BOS, SOT, EOT, NL, USER, MODEL, rng } from './helpers/chat-tokens.js';


const text = (r: () => number, n: number) => Array.from({ length: n }, () => 200 + Math.floor(r() * 9000));

t.test('an OpenAI-style client resending the whole history, 150 turns, C = 256', async (t) => {
  const r = rng(7);
  const capacity = 256;
  const headroom = 24;
  const minFree = 16;
  const system = [BOS, SOT, USER, NL, ...text(r, 10), NL, NL];
  const messages: number[][] = []; // templated turns after the system prompt
  let meta: SessionMeta | undefined;
  let cache: number[] = [];
  const problems: string[] = [];
  let reusedTotal = 0;
  let prefilledTotal = 0;
  let evictedTotal = 0;

  for (let i = 0; i < 150; i++) {
    const long = i % 40 === 39;
    const body = text(r, long ? 400 + Math.floor(r() * 100) : 4 + Math.floor(r() * 60));
    const userTurn = i === 0 ? [...body, EOT, NL] : [SOT, USER, NL, ...body, EOT, NL];
    messages.push(userTurn);
    const prompt = [...system, ...messages.flat(), SOT, MODEL, NL];

    // 1. Plan and apply to the simulated slot.
    const plan = planTurn(meta, prompt, {
      id: 's',
      model: 'm',
      capacity,
      headroom,
      minFree,
      sinkLen: sinkLength(prompt, { prefixIds: system }),
      now: i,
    });
    if (i > 0 && plan.reuse !== cache.length) problems.push(`turn ${i}: reused ${plan.reuse} of ${cache.length}`);
    cache = cache.slice(0, plan.reuse);
    cache = plan.eviction.keep.flatMap(([a, b]) => cache.slice(a, b));
    if (cache.join() !== plan.cacheIds.join()) problems.push(`turn ${i}: cacheIds differ from the evicted cache`);
    cache.push(...plan.prefill);
    reusedTotal += plan.reuse;
    prefilledTotal += plan.prefill.length;
    evictedTotal += plan.evicted;
    meta = plan.meta;
    if (cache.length + headroom > capacity) problems.push(`turn ${i}: no headroom (${cache.length})`);

    // 2. Generate the reply; the last sampled token (<end_of_turn>) is never fed back.
    const reply = text(r, 2 + Math.floor(r() * (i % 25 === 24 ? 300 : 50)));
    let protectFrom = plan.protectFrom;
    for (const tok of reply) {
      const ev = planEviction(
        { length: cache.length, sinkLen: meta.sinkIds.length, turnStarts: meta.turnStarts, protectFrom },
        1,
        capacity,
        minFree,
      );
      cache = ev.keep.flatMap(([a, b]) => cache.slice(a, b));
      meta = applyEviction(meta, ev, i);
      protectFrom = ev.protectFrom;
      cache.push(tok);
      meta = appendTokens(meta, [tok], i);
      evictedTotal += ev.evicted;
    }
    messages.push([SOT, MODEL, NL, ...reply, EOT, NL]);

    if (cache.length > capacity) problems.push(`turn ${i}: over capacity`);
    if (cache.slice(0, system.length).join() !== system.join()) problems.push(`turn ${i}: system prompt lost`);
    if ([...meta.sinkIds, ...meta.keptIds].join() !== cache.join()) problems.push(`turn ${i}: metadata differs`);
    if (findTurnStarts(cache).filter((p) => p >= meta!.sinkIds.length).join() !== meta.turnStarts.join()) {
      problems.push(`turn ${i}: turn starts differ`);
    }
    if (problems.length) break;
  }
  const total = system.length + messages.flat().length;
  t.same(problems, []);
  t.ok(total > 20 * capacity, `${total} tokens of conversation`);
  t.ok(reusedTotal > prefilledTotal, `reused ${reusedTotal}, prefilled ${prefilledTotal}, evicted ${evictedTotal}`);
  t.equal(cacheLength(meta!), cache.length);
});

t.test('planTurn: a diverging prompt reuses the common prefix; another model starts afresh', async (t) => {
  const sys = [BOS, SOT, USER, NL, 50, 51];
  const p1 = [...sys, 60, 61, EOT, NL, SOT, MODEL, NL];
  const first = planTurn(undefined, p1, { id: 'a', model: 'm', capacity: 64, headroom: 8, sinkLen: sys.length });
  t.equal(first.reuse, 0);
  t.same(first.prefill, p1);
  const meta = appendTokens(first.meta, [70, 71, 72]);
  const edited = [...sys, 60, 62, EOT, NL, SOT, MODEL, NL];
  const second = planTurn(meta, edited, { id: 'a', model: 'm', capacity: 64, headroom: 8, sinkLen: sys.length });
  t.equal(second.reuse, sys.length + 1);
  t.same(second.prefill, edited.slice(sys.length + 1));
  t.same([...second.meta.sinkIds, ...second.meta.keptIds], edited);
  const other = planTurn(meta, p1, { id: 'a', model: 'other', capacity: 64, headroom: 8, sinkLen: sys.length });
  t.equal(other.reuse, 0);
});
