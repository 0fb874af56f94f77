/**
 * Builders of OpenAI's response shapes from scheduler events: the
 * `chat.completion` object for plain requests and `chat.completion.chunk`s
 * for streams. Pure, so the shapes are tested without a server.
 */
import type { TokenLogprob } from '../src/engine/types.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatFinishReason,
  ChoiceLogprobs,
  CompletionUsage,
  TokenLogprobJson,
} from '../src/protocol/chat-types.js';
import type { GenerationEvent, GenerationUsage } from '../src/scheduler/types.js';

/** Fields every object of one completion shares. */
export interface CompletionMeta {
  id: string;
  created: number;
  model: string;
  /** stream_options.include_usage: chunks carry `usage: null` and a usage chunk ends the stream. */
  includeUsage: boolean;
}

export function toLogprobJson(lp: TokenLogprob): TokenLogprobJson {
  return {
    token: lp.token,
    logprob: lp.logprob,
    bytes: lp.bytes,
    top_logprobs: lp.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
  };
}

export function toUsageJson(u: GenerationUsage): CompletionUsage {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    ...(u.reasoningTokens === undefined ? {} : { completion_tokens_details: { reasoning_tokens: u.reasoningTokens } }),
    gemma_serve: { prompt_tokens_processed: u.promptTokensProcessed, evicted_tokens: u.evictedTokens },
  };
}

function chunk(meta: CompletionMeta, choices: ChatCompletionChunk['choices']): ChatCompletionChunk {
  const c: ChatCompletionChunk = { id: meta.id, object: 'chat.completion.chunk', created: meta.created, model: meta.model, choices };
  if (meta.includeUsage) c.usage = null;
  return c;
}

/** First chunk of a choice: the role, as OpenAI sends it. */
export function roleChunk(meta: CompletionMeta, choice: number): ChatCompletionChunk {
  return chunk(meta, [{ index: choice, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]);
}

export function tokenChunk(meta: CompletionMeta, choice: number, text: string, logprob?: TokenLogprob): ChatCompletionChunk {
  const logprobs: ChoiceLogprobs | null = logprob === undefined ? null : { content: [toLogprobJson(logprob)], refusal: null };
  return chunk(meta, [{ index: choice, delta: { content: text }, logprobs, finish_reason: null }]);
}

/** A piece of the model's thinking, as vLLM and llama.cpp's server stream it. */
export function reasoningChunk(meta: CompletionMeta, choice: number, text: string, logprob?: TokenLogprob): ChatCompletionChunk {
  const logprobs: ChoiceLogprobs | null = logprob === undefined ? null : { content: [toLogprobJson(logprob)], refusal: null };
  return chunk(meta, [{ index: choice, delta: { reasoning_content: text }, logprobs, finish_reason: null }]);
}

export function finishChunk(meta: CompletionMeta, choice: number, reason: ChatFinishReason): ChatCompletionChunk {
  return chunk(meta, [{ index: choice, delta: {}, logprobs: null, finish_reason: reason }]);
}

/** The include_usage chunk: no choices, the whole request's usage. */
export function usageChunk(meta: CompletionMeta, usage: GenerationUsage): ChatCompletionChunk {
  return { ...chunk(meta, []), usage: toUsageJson(usage) };
}

/** Gathers a whole non-streamed completion from its events. */
export class CompletionBuilder {
  private readonly texts: string[];
  /** Thinking per choice; undefined until a choice has some. */
  private readonly reasoning: (string | undefined)[];
  private readonly logprobs: (TokenLogprobJson[] | null)[];
  private readonly reasons: (ChatFinishReason | undefined)[];
  private usage: GenerationUsage | undefined;

  constructor(private readonly meta: CompletionMeta, n: number, wantLogprobs: boolean) {
    this.texts = Array.from({ length: n }, () => '');
    this.reasoning = Array.from({ length: n }, () => undefined);
    this.logprobs = Array.from({ length: n }, () => (wantLogprobs ? [] : null));
    this.reasons = Array.from({ length: n }, () => undefined);
  }

  add(ev: GenerationEvent): void {
    if (ev.type === 'token') {
      if (ev.reasoning) this.reasoning[ev.choice] = (this.reasoning[ev.choice] ?? '') + ev.text;
      else this.texts[ev.choice] += ev.text;
      if (ev.logprob !== undefined) this.logprobs[ev.choice]?.push(toLogprobJson(ev.logprob));
    } else if (ev.type === 'finish') {
      this.reasons[ev.choice] = ev.reason;
    } else {
      this.usage = ev.usage;
    }
  }

  /** The response; a choice without a finish event (should not happen) reports 'stop'. */
  build(): ChatCompletion {
    const u = this.usage ?? { promptTokens: 0, completionTokens: 0, cachedTokens: 0, evictedTokens: 0, promptTokensProcessed: 0 };
    return {
      id: this.meta.id,
      object: 'chat.completion',
      created: this.meta.created,
      model: this.meta.model,
      choices: this.texts.map((content, index) => ({
        index,
        message: {
          role: 'assistant',
          content,
          ...(this.reasoning[index] === undefined ? {} : { reasoning_content: this.reasoning[index] }),
          refusal: null,
        },
        logprobs: this.logprobs[index] === null ? null : { content: this.logprobs[index]!, refusal: null },
        finish_reason: this.reasons[index] ?? 'stop',
      })),
      usage: toUsageJson(u),
    };
  }
}
