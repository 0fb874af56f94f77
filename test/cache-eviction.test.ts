import t from 'tap';
import {
  applyEviction,
  appendTokens,
  cacheLength,
  computeReuse,
  createSessionMeta,
  EvictionImpossibleError,
  findTurnStarts,
  lastClosedTurnStart,
  planEviction,
  planPrompt,
  sessionFromPrompt,
  sinkLength,
} from '../src/cache/index.js';
import { BOS, SOT, EOT, NL, USER, MODEL, rng } from './helpers/chat-tokens.js';



function text(r: () => number, n: number): number[] {
  return Array.from({ length: n }, () => 200 + Math.floor(r() * 9000));
}

/** `<start_of_turn>role\n ... <end_of_turn>\n` */
function turn(role: number, body: number[]): number[] {
  return [SOT, role, NL, ...body, EOT, NL];
}

t.test('planEviction: nothing to do when it fits', async (t) => {
  const p = planEviction({ length: 30, sinkLen: 4, turnStarts: [4, 10], protectFrom: 10 }, 10, 40);
  t.same(p, { keep: [[0, 30]], evicted: 0, kind: 'none', length: 30, turnStarts: [4, 10], protectFrom: 10 });
});

t.test('planEviction: oldest whole turns go, sink and newest stay', async (t) => {
  const s = { length: 40, sinkLen: 4, turnStarts: [4, 10, 20, 30], protectFrom: 30 };
  const p = planEviction(s, 5, 40);
  t.equal(p.kind, 'turn');
  t.same(p.keep, [[0, 4], [10, 40]]);
  t.equal(p.evicted, 6);
  t.same(p.turnStarts, [4, 14, 24]);
  t.equal(p.protectFrom, 24);
  t.ok(p.length + 5 <= 40);

  const amortized = planEviction(s, 5, 40, 12);
  t.same(amortized.keep, [[0, 4], [20, 40]], 'minFree evicts more whole turns');
  t.equal(amortized.evicted, 16);

  const bounded = planEviction(s, 5, 40, 100);
  t.same(bounded.keep, [[0, 4], [30, 40]], 'minFree never reaches into the protected turn');
  t.equal(bounded.kind, 'turn');
});

t.test('planEviction: remainder of a cut turn counts as the oldest segment', async (t) => {
  const p = planEviction({ length: 40, sinkLen: 4, turnStarts: [12, 25], protectFrom: 25 }, 2, 40);
  t.same(p.keep, [[0, 4], [12, 40]]);
  t.equal(p.kind, 'turn');
});

t.test('planEviction: token-level fallback inside a turn longer than the room', async (t) => {
  const p = planEviction({ length: 40, sinkLen: 4, turnStarts: [4, 10], protectFrom: 10 }, 5, 30);
  t.equal(p.kind, 'token');
  t.equal(p.evicted, 15);
  t.same(p.keep, [[0, 4], [19, 40]]);
  t.same(p.turnStarts, [], 'the cut turn has no start left');
  t.equal(p.protectFrom, 4);
  t.equal(p.length + 5, 30);
});

t.test('planEviction: impossible requests throw a named error', async (t) => {
  t.throws(() => planEviction({ length: 10, sinkLen: 8, turnStarts: [], protectFrom: 8 }, 9, 16), EvictionImpossibleError);
  const p = planEviction({ length: 16, sinkLen: 8, turnStarts: [], protectFrom: 8 }, 8, 16);
  t.same(p.keep, [[0, 8]], 'exactly the room after the sink is possible');
});

t.test('findTurnStarts, lastClosedTurnStart, sinkLength', async (t) => {
  const ids = [BOS, ...turn(USER, [7, 8]), SOT, MODEL, NL];
  t.same(findTurnStarts(ids), [1, 8]);
  t.equal(lastClosedTurnStart(ids), 1, 'the user turn, not the open generation prompt');
  t.equal(lastClosedTurnStart([BOS, 5, 6]), undefined);
  t.equal(sinkLength(ids), 4, 'at least 4 tokens');
  const sys = [BOS, SOT, USER, NL, 50, 51, 52, 53, 54, NL, NL];
  t.equal(sinkLength([...sys, 9, 9, EOT], { prefixIds: sys }), sys.length, 'covers the system prompt');
  t.equal(sinkLength([...sys, 9], { prefixIds: sys, max: 6 }), 6);
  t.equal(sinkLength([BOS, 3]), 2, 'never longer than the prompt');
});

t.test('planPrompt: sink plus the newest whole turns that fit', async (t) => {
  const r = rng(1);
  const sink = [BOS, SOT, USER, NL, ...text(r, 6)];
  const turns: number[][] = [];
  for (let i = 0; i < 12; i++) turns.push(turn(i % 2 ? MODEL : USER, text(r, 10 + Math.floor(r() * 30))));
  const prompt = [...sink, EOT, NL, ...turns.flat(), SOT, MODEL, NL];
  const capacity = 128;
  const headroom = 16;
  const plan = planPrompt(prompt, sink.length, capacity, headroom);
  t.equal(plan.kind, 'turn');
  t.ok(plan.ids.length + headroom <= capacity);
  t.equal(plan.ids.length + plan.dropped, prompt.length);
  t.same(plan.ids.slice(0, sink.length), sink, 'sink kept');
  t.same(plan.ids.slice(sink.length), prompt.slice(sink.length + plan.dropped), 'the rest is the newest suffix');
  t.equal(plan.ids[sink.length], SOT, 'kept part starts at a turn boundary');
  // Adding the next older turn would not have fit.
  const starts = findTurnStarts(prompt).filter((s) => s > sink.length && s < sink.length + plan.dropped);
  const prev = starts[starts.length - 1] ?? sink.length;
  t.ok(sink.length + prompt.length - prev + headroom > capacity, 'as many whole turns as fit');
  t.same(plan.turnStarts, findTurnStarts(plan.ids).filter((s) => s >= sink.length));

  const fits = planPrompt(prompt.slice(0, 60), sink.length, capacity, headroom);
  t.equal(fits.dropped, 0);
  t.equal(fits.kind, 'none');
});

t.test('planPrompt: token-level fallback inside an over-long newest turn', async (t) => {
  const r = rng(2);
  const sink = [BOS, SOT, USER, NL];
  const prompt = [...sink, ...text(r, 5), EOT, NL, ...turn(MODEL, text(r, 20)), ...turn(USER, text(r, 500)), SOT, MODEL, NL];
  const plan = planPrompt(prompt, 4, 256, 32);
  t.equal(plan.kind, 'token');
  t.equal(plan.ids.length, 256 - 32);
  t.same(plan.ids.slice(0, 4), sink);
  t.same(plan.ids.slice(-3), [SOT, MODEL, NL], 'generation prompt kept');
  t.same(plan.ids.slice(4), prompt.slice(prompt.length - (256 - 32 - 4)));
  t.throws(() => planPrompt(prompt, 4, 256, 253), EvictionImpossibleError);
});

t.test('200-turn conversation: bounded, sink intact, bookkeeping matches the cache', async (t) => {
  const r = rng(42);
  const capacity = 256;
  const minFree = 16;
  const chunk = 32;
  const sinkIds = [BOS, SOT, USER, NL, ...text(r, 8), NL, NL];
  const history: number[] = [...sinkIds]; // the logical conversation
  let cache: number[] = [...sinkIds]; // what the engine's slot holds
  let meta = createSessionMeta({ id: 's', model: 'm', sinkIds, now: 0 });
  const kinds = { none: 0, turn: 0, token: 0 };
  let checks = 0;
  const violations: string[] = [];

  const evictFor = (need: number, protectFrom: number): number => {
    const plan = planEviction(
      { length: cache.length, sinkLen: sinkIds.length, turnStarts: meta.turnStarts, protectFrom },
      need,
      capacity,
      minFree,
    );
    kinds[plan.kind]++;
    cache = plan.keep.flatMap(([a, b]) => cache.slice(a, b));
    meta = applyEviction(meta, plan, 0);
    if (plan.kind === 'turn' && protectFrom < cache.length + plan.evicted && cache[plan.protectFrom] !== SOT) {
      violations.push('whole-turn eviction cut into the protected turn');
    }
    if (cache.length + need > capacity) violations.push('no room made');
    return plan.protectFrom;
  };
  const append = (ids: number[]) => {
    cache.push(...ids);
    history.push(...ids);
    meta = appendTokens(meta, ids, 0);
  };

  for (let i = 0; i < 200; i++) {
    // The user's turn (sometimes longer than the whole cache) plus the generation prompt, prefilled in chunks.
    const long = i % 37 === 36;
    const user = [...turn(USER, text(r, long ? 300 + Math.floor(r() * 200) : 5 + Math.floor(r() * 80))), SOT, MODEL, NL];
    let protectFrom = cache.length;
    for (let k = 0; k < user.length; k += chunk) {
      const part = user.slice(k, k + chunk);
      protectFrom = evictFor(part.length, protectFrom);
      append(part);
    }
    // The reply, one token at a time.
    const replyLen = 3 + Math.floor(r() * (i % 50 === 49 ? 400 : 60));
    for (let k = 0; k < replyLen; k++) {
      protectFrom = evictFor(1, protectFrom);
      append(k === replyLen - 1 ? [EOT] : text(r, 1));
    }
    evictFor(1, protectFrom);
    append([NL]);

    t.ok(cache.length <= capacity);
    if (
      cache.slice(0, sinkIds.length).join() !== sinkIds.join() ||
      [...meta.sinkIds, ...meta.keptIds].join() !== cache.join() ||
      meta.turnStarts.some((p) => cache[p] !== SOT) ||
      findTurnStarts(cache).filter((p) => p >= sinkIds.length).join() !== meta.turnStarts.join() ||
      meta.historyLength !== history.length ||
      cache.join() !== [...sinkIds, ...history.slice(sinkIds.length + meta.evicted)].join()
    ) {
      t.fail(`bookkeeping diverged at turn ${i}`);
      break;
    }
    // A client resending the whole history plus a new turn reuses the whole cache.
    const next = [...history, ...turn(USER, [7, 7]), SOT, MODEL, NL];
    const reuse = computeReuse(meta, next);
    t.same(reuse?.reuse, cacheLength(meta));
    t.equal(reuse?.suffix.length, 10);
    checks++;
  }
  t.equal(checks, 200);
  t.same(violations, [], 'room always made, protected turn never cut by whole-turn eviction');
  t.ok(history.length > 20 * capacity, `conversation of ${history.length} tokens, > 20 x C`);
  t.ok(kinds.turn > 0 && kinds.token > 0, `both eviction kinds happened: ${JSON.stringify(kinds)}`);
});

t.test('sessionFromPrompt records a dropped middle', async (t) => {
  const r = rng(3);
  const sink = [BOS, SOT, USER, NL];
  const prompt = [...sink, ...text(r, 3), EOT, NL, ...turn(MODEL, text(r, 50)), ...turn(USER, text(r, 30)), SOT, MODEL, NL];
  const plan = planPrompt(prompt, 4, 64, 8);
  const meta = sessionFromPrompt({ id: 'a', model: 'm', promptIds: prompt, plan, now: 1 });
  t.same([...meta.sinkIds, ...meta.keptIds], plan.ids);
  t.equal(meta.evicted, plan.dropped);
  t.same(meta.turnStarts, plan.turnStarts);
  t.equal(meta.historyLength, prompt.length);
  const next = [...prompt, 9, 9, EOT, NL, ...turn(USER, [5]), SOT, MODEL, NL];
  t.same(computeReuse(meta, next), { reuse: plan.ids.length, suffix: next.slice(prompt.length) });
  const edited = [...prompt];
  edited[10] = 1234; // inside the dropped block
  t.equal(computeReuse(meta, [...edited, 1]), undefined, 'a changed evicted middle is detected by hash');
});
