// Turn markers come from the loaded tokenizer, not from Gemma 3's ids: a
// tokenizer whose `<start_of_turn>` / `<end_of_turn>` have other ids (here 7
// and 8, swapped with `<unused1>` / `<unused2>`) gets its turns evicted whole
// at its own boundaries and its prompts keyed at its own turn starts, through
// the planner, the slot manager and a real engine's stack.
import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  GEMMA3_TURN_MARKERS,
  MemorySessionStore,
  OPEN_NAMESPACE,
  SlotManager,
  planTurn,
  promptPrefixKeys,
  scopedId,
  type TurnMarkers,
} from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import { defaultTokenizerFiles, GemmaTokenizer } from '../src/model/tokenizer.js';
import { testEngineOptions } from './helpers/engine-options.js';
import { FIXTURES } from './helpers/fixtures.js';
import { chat, makeStack, scoped } from './helpers/stack.js';

const SOT = 7;
const EOT = 8;
const MARKERS: TurnMarkers = { startOfTurn: SOT, endOfTurn: EOT };

/** A model directory: the tiny Gemma 3 fixture's weights, a tokenizer with the turn markers at 7 / 8. */
async function swappedModelDir(): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'turn-markers-'));
  const src = path.join(FIXTURES, 'gemma3-tiny');
  for (const f of await fsp.readdir(src)) if (f !== 'reference.json') await fsp.symlink(path.join(src, f), path.join(dir, f));
  const files = defaultTokenizerFiles();
  const tj = JSON.parse(await fsp.readFile(files.tokenizerJson, 'utf8')) as {
    added_tokens: { id: number; content: string }[];
    model: { vocab: Record<string, number> };
  };
  const swap: [string, string][] = [['<start_of_turn>', '<unused1>'], ['<end_of_turn>', '<unused2>']];
  for (const [a, b] of swap) {
    const ia = tj.model.vocab[a]!;
    const ib = tj.model.vocab[b]!;
    tj.model.vocab[a] = ib;
    tj.model.vocab[b] = ia;
    for (const at of tj.added_tokens) {
      if (at.content === a) at.content = b;
      else if (at.content === b) at.content = a;
    }
  }
  await fsp.writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
  await fsp.copyFile(files.tokenizerConfig, path.join(dir, 'tokenizer_config.json'));
  return dir;
}

const dir = await swappedModelDir();
t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
const tok = await GemmaTokenizer.fromModelDir(dir);

const history = (turns: number) => {
  const m: { role: 'system' | 'user' | 'assistant'; content: string }[] = [{ role: 'system', content: 'Be brief.' }];
  for (let i = 0; i < turns; i++) {
    m.push({ role: 'user', content: `Question ${i}: what about rivers and owls and bread?` });
    m.push({ role: 'assistant', content: `Answer ${i}: they are fine, thank you.` });
  }
  m.push({ role: 'user', content: 'And now?' });
  return m;
};

t.test('the tokenizer reports its own turn-marker ids', async (t) => {
  t.same(tok.turnMarkers, MARKERS);
  t.equal(tok.startOfTurnId, SOT);
  t.equal(tok.endOfTurnId, EOT);
  const ids = tok.encodeChat(history(1));
  t.ok(ids.includes(SOT) && ids.includes(EOT), 'the template renders the markers at their ids');
  t.notOk(ids.includes(105) || ids.includes(106), 'and never Gemma 3 ids');
  const gemma3 = await GemmaTokenizer.fromDefault();
  t.same(gemma3.turnMarkers, GEMMA3_TURN_MARKERS, 'Gemma 3 keeps 105/106');
});

t.test('the planner evicts whole turns at the tokenizer boundaries', async (t) => {
  const ids = tok.encodeChat(history(6));
  const starts = ids.flatMap((id, i) => (id === SOT ? [i] : []));
  const capacity = Math.floor(ids.length * 0.6);
  const o = { id: 's', model: 'm', capacity, headroom: 8, sinkLen: 8 };
  const plan = planTurn(undefined, ids, { ...o, turnMarkers: MARKERS });
  t.equal(plan.kind, 'turn', 'whole turns dropped');
  t.ok(plan.evicted > 0);
  const keptFrom = 8 + plan.evicted;
  t.ok(starts.includes(keptFrom), 'the kept part starts at a turn start');
  t.equal(plan.prefill[8], SOT, 'right after the sink comes a turn marker');
  t.same(plan.meta.turnStarts.map((p) => plan.prefill[p]), plan.meta.turnStarts.map(() => SOT), 'recorded turn starts are the markers');
  t.ok(plan.meta.turnStarts.length > 0);
  // With Gemma 3's ids the same prompt has no turns to evict: only tokens can go.
  const blind = planTurn(undefined, ids, o);
  t.equal(blind.kind, 'token', 'Gemma 3 ids see no turns here');
  t.same(blind.meta.turnStarts, []);
});

t.test('prefix keys split at the tokenizer turn starts', async (t) => {
  const ids = tok.encodeChat(history(2));
  const starts = ids.flatMap((id, i) => (id === SOT && i > 0 ? [i] : []));
  const keys = promptPrefixKeys(ids, SOT);
  t.same(keys.map((k) => Number(k.split('-')[0])), [...starts].reverse(), 'one key per turn start, longest first');
  t.same(promptPrefixKeys(ids), [], 'Gemma 3 ids find no turn starts here');

  // A slot manager told the markers matches a resent conversation to its session.
  const slots = new SlotManager({ slots: 1, store: new MemorySessionStore(), model: 'm', turnMarkers: MARKERS });
  const first = tok.encodeChat(history(1));
  const id = scopedId(OPEN_NAMESPACE, 'conv');
  const plan = planTurn(undefined, first, { id, model: 'm', capacity: 4096, headroom: 8, sinkLen: 4, turnMarkers: MARKERS });
  await slots.acquire(id);
  await slots.update(id, plan.meta);
  slots.release(id);
  const next = [...first, ...tok.encodeText('Answer 1: yes.'), EOT, ...tok.encodeText('\n'), SOT, ...tok.encodeText('user\nMore?')];
  t.equal(await slots.matchPrefix(next, OPEN_NAMESPACE), id, 'matched by its own turn starts');
  const blind = new SlotManager({ slots: 1, store: new MemorySessionStore(), model: 'm' });
  await blind.acquire(id);
  await blind.update(id, plan.meta);
  blind.release(id);
  t.equal(await blind.matchPrefix(next, OPEN_NAMESPACE), undefined, 'Gemma 3 ids key nothing');
});

t.test('a real engine with this tokenizer: sessions evict whole turns at its markers', async (t) => {
  const C = 96;
  const engine = await Engine.load(testEngineOptions({ dir, backend: 'wasm', slots: 1, capacity: C }));
  t.teardown(() => engine.dispose());
  t.same(engine.tokenizer.turnMarkers, MARKERS);
  const s = makeStack(engine);
  t.teardown(() => s.scheduler.shutdown(1000));
  t.same(s.slots.turnMarkers, MARKERS, 'the stack passes the markers to the slot manager');
  const messages: { role: 'system' | 'user' | 'assistant'; content: string }[] = [{ role: 'system', content: 'Be brief.' }];
  for (let i = 0; i < 8; i++) {
    messages.push({ role: 'user', content: `Turn ${i}: tell me one thing about rivers.` });
    const r = await chat(s, messages, { maxTokens: 4 }, 'named');
    messages.push({ role: 'assistant', content: r.text });
    const meta = s.slots.metaOf(scoped('named'))!;
    const cache = [...meta.sinkIds, ...meta.keptIds];
    t.ok(meta.turnStarts.every((p) => cache[p] === SOT), `turn ${i}: every recorded turn start is a marker`);
    t.notOk(cache.includes(105), `turn ${i}: no Gemma 3 marker in the cache`);
  }
  t.ok(s.evictions.length > 0, 'the conversation outgrew the cache');
  t.ok(s.evictions.some((e) => e.kind === 'turn'), 'whole turns were evicted');
  const meta = s.slots.metaOf(scoped('named'))!;
  t.equal(meta.keptIds[0], SOT, 'the kept window starts at a turn boundary');
});
