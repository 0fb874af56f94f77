// Server-side sessions keep a reply without its thinking block. A Gemma 4
// model (make-model's tiny preset plus the Gemma 4 tokenizer files) behind the
// real stack (engine, slot manager, scheduler): after a turn whose reply
// thought, the session's cached ids hold no thinking marker, the next turn
// (the client resending content only) reuses the whole kept history, and after
// that turn the cache still holds no marker. With thinking off, the empty
// thought channel of the generation prompt is not kept either, so a resent
// conversation is matched to its session automatically. Gemma 3 is unchanged.
import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cacheLength } from '../src/cache/index.js';
import { Engine } from '../src/engine/engine.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../src/engine/types.js';
import { makeModel } from '../src/model/make-model.js';
import type { ChatTurn, GenerationUsage } from '../src/scheduler/types.js';
import { testEngineOptions } from './helpers/engine-options.js';
import { modelDir } from './helpers/fixtures.js';
import { makeStack, scoped, type Stack } from './helpers/stack.js';

const OPEN = 100;
const CLOSE = 101;
const THINK = { enable_thinking: true };

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'reasoning-session-'));
t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
await makeModel({ out: dir, arch: 'gemma4', preset: 'tiny' });
const engine = await Engine.load(testEngineOptions({ dir, backend: 'wasm', slots: 2, capacity: 512 }));
t.teardown(() => engine.dispose());

interface Reply {
  content: string;
  reasoning: string;
  /** Token strings (from logprobs), markers included. */
  tokens: string[];
  usage: GenerationUsage;
  sessionId?: string;
}

async function ask(s: Stack, messages: ChatTurn[], params: Partial<SamplingParams>, opts: { sessionId?: string; kwargs?: Record<string, unknown> } = {}): Promise<Reply> {
  const stream = s.scheduler.submit({
    requestId: `req-${Math.random().toString(36).slice(2)}`,
    ...(opts.sessionId ? { sessionId: opts.sessionId } : {}),
    ...(opts.kwargs ? { templateKwargs: opts.kwargs } : {}),
    messages,
    params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4, logprobs: true, ...params },
    n: 1,
    signal: new AbortController().signal,
  });
  const r: Reply = { content: '', reasoning: '', tokens: [], usage: undefined as unknown as GenerationUsage };
  for await (const ev of stream) {
    if (ev.type === 'token') {
      if (ev.reasoning) r.reasoning += ev.text;
      else r.content += ev.text;
      if (ev.logprob) r.tokens.push(ev.logprob.token);
    } else if (ev.type === 'usage') {
      r.usage = ev.usage;
    }
  }
  r.sessionId = stream.sessionId;
  return r;
}

const cachedIds = (s: Stack, name: string): number[] => {
  const meta = s.slots.metaOf(scoped(name))!;
  return [...meta.sinkIds, ...meta.keptIds];
};
const lcp = (a: number[], b: number[]) => {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
};

t.test('a named session: the thinking is not kept, the next turn reuses the rest', async (t) => {
  const s = makeStack(engine);
  t.teardown(() => s.scheduler.shutdown(1000));
  const q1: ChatTurn[] = [{ role: 'user', content: 'Why is the sky blue?' }];
  let first: Reply | undefined;
  let name = '';
  for (let seed = 1; seed <= 24 && !first; seed++) {
    name = `think-${seed}`;
    const r = await ask(s, q1, { temperature: 1, seed, maxTokens: 24, logitBias: { [OPEN]: 13, [CLOSE]: 11 }, frequencyPenalty: 2 }, { sessionId: name, kwargs: THINK });
    const open = r.tokens.indexOf('<|channel>');
    if (open >= 0 && r.tokens.indexOf('<channel|>', open) > open + 1 && r.reasoning !== '') first = r;
  }
  t.ok(first, 'some seed thinks (a closed block)');
  if (!first) return;
  t.ok(first.usage.reasoningTokens! > 0);

  const cache1 = cachedIds(s, name);
  t.notOk(cache1.includes(OPEN) || cache1.includes(CLOSE), 'after the reply, the cached ids hold no thinking marker');
  const meta1 = s.slots.metaOf(scoped(name))!;
  t.equal(engine.slotLength(s.slots.slotOf(scoped(name))!), cacheLength(meta1), 'the slot holds what its metadata says');

  // The client sends back the content only (what the template would render anyway).
  const history: ChatTurn[] = [...q1, { role: 'assistant', content: first.content }, { role: 'user', content: 'And at sunset?' }];
  const prompt1 = engine.tokenizer.encodeChat(q1, { templateKwargs: THINK });
  const prompt2 = engine.tokenizer.encodeChat(history, { templateKwargs: THINK });
  t.same(cache1.slice(0, prompt1.length), prompt1, 'kept: the prompt through the reply\'s turn header...');
  t.equal(cache1.length - prompt1.length, first.tokens.indexOf('<|channel>'), '...and the reply only up to where its thinking began');
  t.same(prompt2.slice(0, prompt1.length), prompt1, 'the next prompt starts with the same header');
  const second = await ask(s, history, {}, { sessionId: name, kwargs: THINK });
  t.equal(second.usage.cachedTokens, lcp(cache1, prompt2), 'the kept history is reused as far as the resent one agrees');
  t.ok(second.usage.cachedTokens >= prompt1.length, 'nothing up to the reply is prefilled again');
  const cache2 = cachedIds(s, name);
  t.notOk(cache2.includes(OPEN) || cache2.includes(CLOSE), 'after the next turn, the cached ids still hold no thinking marker');
  t.same(cache2.slice(0, prompt2.length - 3), prompt2.slice(0, prompt2.length - 3), 'the cache is the rendered history');
});

t.test('thinking off: the empty thought channel is not kept, a resent conversation is matched automatically', async (t) => {
  const s = makeStack(engine);
  t.teardown(() => s.scheduler.shutdown(1000));
  const q1: ChatTurn[] = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Name a colour.' }];
  const prompt1 = engine.tokenizer.encodeChat(q1);
  t.same(prompt1.slice(-4), [OPEN, ...engine.tokenizer.encodeText('thought\n'), CLOSE], 'the generation prompt closes an empty thought channel');
  const first = await ask(s, q1, { maxTokens: 4 });
  t.equal(first.reasoning, '');
  t.equal(first.usage.reasoningTokens, 0, 'no thinking generated');
  const name = first.sessionId!;
  const cache1 = cachedIds(s, name);
  t.notOk(cache1.includes(OPEN) || cache1.includes(CLOSE), 'the prompt\'s empty thought channel is not kept');
  t.same(cache1, prompt1.slice(0, prompt1.length - 4), 'the cache ends at the reply\'s turn header');

  const history: ChatTurn[] = [...q1, { role: 'assistant', content: first.content }, { role: 'user', content: 'Another?' }];
  const second = await ask(s, history, { maxTokens: 4 });
  t.equal(second.sessionId, name, 'matched to the same session by prefix');
  t.equal(second.usage.cachedTokens, cache1.length, 'everything it kept is reused');
  const cache2 = cachedIds(s, name);
  t.notOk(cache2.includes(OPEN) || cache2.includes(CLOSE));
});

t.test('Gemma 3: no reasoning, usage and history as before', async (t) => {
  const g3 = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 1, capacity: 256 }));
  t.teardown(() => g3.dispose());
  t.equal(g3.tokenizer.reasoningMarkers, undefined);
  const s = makeStack(g3);
  t.teardown(() => s.scheduler.shutdown(1000));
  const q: ChatTurn[] = [{ role: 'user', content: 'Hi' }];
  const r = await ask(s, q, { maxTokens: 6, logitBias: { [OPEN]: 100 } }, { sessionId: 'g3' });
  t.equal(r.reasoning, '', 'no reasoning events');
  t.equal(r.usage.reasoningTokens, undefined, 'no reasoning count in usage');
  t.same(r.tokens, Array(6).fill('<unused94>'), 'id 100 is plain <unused94> in Gemma 3');
  const prompt = g3.tokenizer.encodeChat(q);
  t.same(cachedIds(s, 'g3').slice(0, prompt.length), prompt, 'the prompt is kept');
  t.equal(cachedIds(s, 'g3').length, prompt.length + 5, 'and the whole reply fed back so far (the last token is never fed), as before');
});
