// Reasoning end to end with the official openai client: a real service on
// loopback serving a generated Gemma 4 model (make-model's tiny preset with the
// Gemma 4 tokenizer files, vocabulary 262,144), thinking switched on with
// chat_template_kwargs {enable_thinking: true} (the prompt ends at the model's
// turn header, as Gemma 4's template renders it). Random weights do not think
// on their own, so the markers are made likely with logit_bias (+13 on
// `<|channel>` 100, +11 on `<channel|>` 101, against a flat distribution over
// 262,144 tokens) and frequency_penalty (so a marker does not repeat forever),
// and the test tries seeds until a reply opens a block, thinks, closes it and
// answers. What each delta must be is read off the stream's own logprobs (its
// tokens, markers included), so the checks do not depend on which seed works.
import t from 'tap';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { request } from 'undici';
import { makeModel } from '../src/model/make-model.js';
import { GemmaTokenizer } from '../src/model/tokenizer.js';
import { startService } from '../src/service.js';

const MODEL = 'gemma4-think';
const dir = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'reasoning-e2e-')), MODEL);
await makeModel({ out: dir, arch: 'gemma4', preset: 'tiny' });
t.teardown(() => fsp.rm(path.dirname(dir), { recursive: true, force: true }));
const tok = await GemmaTokenizer.fromModelDir(dir);

const svc = await startService(
  { HOST: '127.0.0.1', PORT: '0', MODEL_DIR: dir, BACKEND: 'wasm', SLOTS: '2', CACHE_CAPACITY: '256', LOG_LEVEL: 'silent', MAX_CHAT_TEMPLATE_KWARGS_BYTES: '256' },
  { handleSignals: false },
);
t.teardown(() => svc.stop());

const client = new OpenAI({ baseURL: `${svc.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const question: ChatCompletionMessageParam[] = [{ role: 'user', content: 'Why is the sky blue?' }];
const BIAS = { '100': 13, '101': 11 };
const THINK = { enable_thinking: true };
const MAX = 32;

/** vLLM's and llama.cpp's delta field, absent from the SDK's types. */
type Delta = ChatCompletionChunk.Choice.Delta & { reasoning_content?: string };

interface Streamed {
  chunks: ChatCompletionChunk[];
  reasoning: string;
  content: string;
  /** Per token (one logprob entry each), the side its text went to and the token. */
  steps: { token: string; side: 'reasoning' | 'content' | 'none' }[];
  order: ('reasoning' | 'content')[];
}

async function stream(seed: number, extra: Record<string, unknown> = {}): Promise<Streamed> {
  const s = await client.chat.completions.create({
    model: MODEL,
    messages: question,
    stream: true,
    stream_options: { include_usage: true },
    temperature: 1,
    seed,
    max_tokens: MAX,
    logit_bias: BIAS,
    frequency_penalty: 2,
    logprobs: true,
    chat_template_kwargs: THINK,
    ...extra,
  } as OpenAI.ChatCompletionCreateParamsStreaming);
  const out: Streamed = { chunks: [], reasoning: '', content: '', steps: [], order: [] };
  for await (const c of s) {
    out.chunks.push(c);
    const choice = c.choices[0];
    if (!choice) continue;
    const d = choice.delta as Delta;
    const side = d.reasoning_content !== undefined ? 'reasoning' : d.content !== undefined && d.role === undefined ? 'content' : 'none';
    if (d.reasoning_content) {
      out.reasoning += d.reasoning_content;
      out.order.push('reasoning');
    }
    if (d.content && d.role === undefined) {
      out.content += d.content;
      out.order.push('content');
    }
    for (const lp of choice.logprobs?.content ?? []) out.steps.push({ token: lp.token, side });
  }
  return out;
}

/** What the splitter must make of these tokens: the side of each token's text (markers by their own token). */
function expectedSides(steps: Streamed['steps']): ('reasoning' | 'content')[] {
  let inside = false;
  return steps.map((s) => {
    if (s.token === '<|channel>') inside = true;
    else if (s.token === '<channel|>') inside = false;
    return inside ? 'reasoning' : 'content';
  });
}

let chosen: { seed: number; run: Streamed } | undefined;

t.test('a streamed reply that thinks: delta.reasoning_content, then delta.content', async (t) => {
  const isMarker = (s: { token: string }) => s.token === '<|channel>' || s.token === '<channel|>';
  let open = -1;
  let close = -1;
  let next = -1;
  for (let seed = 1; seed <= 24 && !chosen; seed++) {
    const run = await stream(seed);
    open = run.steps.findIndex((s) => s.token === '<|channel>');
    close = run.steps.findIndex((s, i) => i > open && s.token === '<channel|>');
    // A block with some thinking in it, closed, then answer text before any other block.
    const reopen = run.steps.findIndex((s, i) => i > close && s.token === '<|channel>');
    const after = run.steps.slice(close + 1, reopen < 0 ? undefined : reopen);
    if (open >= 0 && close > open + 1 && run.steps.slice(open + 1, close).some((s) => !isMarker(s)) && after.some((s) => !isMarker(s))) {
      chosen = { seed, run };
      next = reopen < 0 ? run.steps.length : reopen;
    }
  }
  t.ok(chosen, 'some seed opens a block, thinks, closes it and answers');
  if (!chosen) return;
  const { run } = chosen;
  t.ok(run.reasoning.length > 0, 'reasoning arrived');
  t.ok(run.content.length > 0, 'content arrived');
  t.ok(run.steps.slice(open + 1, close).every((s) => s.side !== 'content'), 'no content delta inside the block');
  t.ok(run.steps.slice(open + 1, close).some((s) => s.side === 'reasoning'), 'the block streams as reasoning_content');
  t.ok(run.steps.slice(close + 1, next).some((s) => s.side === 'content'), 'then the answer as content');
  // Every token's text went to the side its position says.
  const want = expectedSides(run.steps);
  const wrong = run.steps.filter((s, i) => s.side !== 'none' && s.side !== want[i]);
  t.same(wrong, [], 'each delta on the side the token ids put it');
  t.notMatch(run.reasoning + run.content, /<\|channel>|<channel\|>/, 'markers never appear as text');
  const finish = run.chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0]?.finish_reason;
  t.equal(finish, 'length', 'finish_reason as without reasoning');
  const usage = run.chunks.at(-1)!.usage as OpenAI.CompletionUsage;
  // Tokens of blocks: <|channel>, what follows it, and the <channel|> that closes it.
  const inBlock = want.filter((s, i) => s === 'reasoning' || (run.steps[i]!.token === '<channel|>' && want[i - 1] === 'reasoning')).length;
  t.equal(usage.completion_tokens, MAX, 'completion tokens count the thinking');
  t.equal(usage.completion_tokens_details?.reasoning_tokens, inBlock, 'reasoning_tokens: the tokens of the blocks, markers included');
});

t.test('the same request unstreamed: message.reasoning_content and content', async (t) => {
  if (!chosen) return t.skip('no seed found');
  const r = await client.chat.completions.create({
    model: MODEL, messages: question, temperature: 1, seed: chosen.seed, max_tokens: MAX, logit_bias: BIAS, frequency_penalty: 2, chat_template_kwargs: THINK,
  } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const message = r.choices[0]!.message as OpenAI.ChatCompletionMessage & { reasoning_content?: string };
  t.equal(message.reasoning_content, chosen.run.reasoning, 'same reasoning as streamed');
  t.equal(message.content, chosen.run.content, 'same content as streamed, without the thinking');
  t.equal(r.choices[0]!.finish_reason, 'length');
  t.equal(r.usage?.completion_tokens_details?.reasoning_tokens, (chosen.run.chunks.at(-1)!.usage as OpenAI.CompletionUsage).completion_tokens_details?.reasoning_tokens);

  // The client sends the whole message back (reasoning_content included): accepted, and not part of the prompt.
  const next = [...question, { ...message }, { role: 'user', content: 'And at sunset?' }] as ChatCompletionMessageParam[];
  const r2 = await client.chat.completions.create({ model: MODEL, messages: next, max_tokens: 2, temperature: 0, chat_template_kwargs: THINK } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const prompt = tok.encodeChat([
    { role: 'user', content: 'Why is the sky blue?' },
    { role: 'assistant', content: message.content ?? '' },
    { role: 'user', content: 'And at sunset?' },
  ], { templateKwargs: THINK });
  t.equal(r2.usage?.prompt_tokens, prompt.length, 'the prompt renders the reply without its thinking');
});

t.test('a block the model never closes is reasoning to the end', async (t) => {
  let found = false;
  for (let seed = 1; seed <= 24 && !found; seed++) {
    const run = await stream(seed, { logit_bias: { '100': 13 }, max_tokens: 16 });
    const open = run.steps.findIndex((s) => s.token === '<|channel>');
    if (open < 0 || open > 12 || run.steps.some((s) => s.token === '<channel|>')) continue;
    found = true;
    t.ok(run.reasoning.length > 0, 'reasoning arrived');
    const firstReasoning = run.order.indexOf('reasoning');
    t.ok(run.order.slice(firstReasoning).every((o) => o === 'reasoning'), 'after the block opened, nothing but reasoning');
    t.ok(run.steps.slice(open + 1).every((s) => s.side !== 'content'), 'no content after <|channel>');
    t.equal(run.chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0]?.finish_reason, 'length');
    const usage = run.chunks.at(-1)!.usage as OpenAI.CompletionUsage;
    t.equal(usage.completion_tokens_details?.reasoning_tokens, 16 - open, 'every token from <|channel> on was thinking');
  }
  t.ok(found, 'some seed opens a block and never closes it');
});

t.test('chat_template_kwargs reach the template (enable_thinking)', async (t) => {
  const off = await client.chat.completions.create({ model: MODEL, messages: question, max_tokens: 1, temperature: 0 });
  const on = await client.chat.completions.create({
    model: MODEL, messages: question, max_tokens: 1, temperature: 0, chat_template_kwargs: { enable_thinking: true, unknown_key: ['kept'] },
  } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const msgs = [{ role: 'user', content: 'Why is the sky blue?' }];
  t.equal(off.usage?.prompt_tokens, tok.encodeChat(msgs).length);
  t.equal(on.usage?.prompt_tokens, tok.encodeChat(msgs, { templateKwargs: { enable_thinking: true } }).length, 'rendered with <|think|> and an open generation prompt');
  t.not(on.usage?.prompt_tokens, off.usage?.prompt_tokens);
});

t.test('bad chat_template_kwargs are 400s in OpenAI\'s error shape', async (t) => {
  const post = async (kwargs: unknown) => {
    const res = await request(`${svc.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: question, max_tokens: 1, chat_template_kwargs: kwargs }),
    });
    return { status: res.statusCode, body: (await res.body.json()) as { error: { message: string; type: string; param: string | null; code: string | null } } };
  };
  let deep: unknown = 1;
  for (let i = 0; i < 9; i++) deep = { d: deep };
  const tooDeep = await post(deep);
  t.equal(tooDeep.status, 400);
  t.equal(tooDeep.body.error.param, 'chat_template_kwargs');
  t.equal(tooDeep.body.error.type, 'invalid_request_error');
  t.match(tooDeep.body.error.message, /nested more than 8 deep/);
  const big = await post({ text: 'x'.repeat(300) });
  t.equal(big.status, 400);
  t.equal(big.body.error.code, 'limit_exceeded');
  t.match(big.body.error.message, /MAX_CHAT_TEMPLATE_KWARGS_BYTES/);
  const notObject = await post(['enable_thinking']);
  t.equal(notObject.status, 400, 'an array is not an object');
  t.ok(notObject.body.error.message.length > 0);
  t.equal((await request(`${svc.url}/health`)).statusCode, 200, 'the server is up');
});
