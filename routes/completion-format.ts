/**
 * Builders of the legacy text completion shapes from scheduler events: the
 * `text_completion` object for plain requests and its chunks for streams
 * (payloads for chat-sse's `sseFrames`). Choice indices are the merged
 * stream's (prompt index * n + j). Pure, so the shapes are tested without a server.
 */
import type { FinishReason, TokenLogprob } from '../src/engine/types.js';
import type { CompletionLogprobs, TextCompletion, TextCompletionChunk } from '../src/protocol/completion-types.js';
import type { GenerationEvent, GenerationUsage } from '../src/scheduler/types.js';
import type { CompletionMeta } from './chat-format.js';
import { toUsageJson } from './chat-format.js';
import type { ChunkFormat } from './chat-sse.js';

type TokenEvent = Extract<GenerationEvent, { type: 'token' }>;

const EMPTY_USAGE: GenerationUsage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0, evictedTokens: 0, promptTokensProcessed: 0 };

/** The most likely alternatives as the legacy API writes them: text -> logprob, the likelier one kept where texts repeat. */
export function topLogprobsDict(lp: TokenLogprob): Record<string, number> {
  const out: Record<string, number> = Object.create(null) as Record<string, number>;
  for (const t of lp.top) if (!(t.token in out)) out[t.token] = t.logprob;
  return { ...out };
}

/**
 * Per choice: the text written so far (echoed prompt included), so each
 * token's `text_offset` is where its text starts.
 */
export class ChoiceTexts {
  private readonly lengths: number[];

  /** `echo[c]`: the prompt text choice c starts with ('' for none). */
  constructor(readonly echo: readonly string[]) {
    this.lengths = echo.map((e) => e.length);
  }

  /** Records a token's text; its logprobs entry (one token) when it has a logprob. */
  add(ev: TokenEvent): CompletionLogprobs | null {
    const offset = this.lengths[ev.choice] ?? 0;
    this.lengths[ev.choice] = offset + ev.text.length;
    const lp = ev.logprob;
    if (lp === undefined) return null;
    return { tokens: [lp.token], token_logprobs: [lp.logprob], top_logprobs: [topLogprobsDict(lp)], text_offset: [offset] };
  }
}

function chunk(meta: CompletionMeta, choices: TextCompletionChunk['choices']): TextCompletionChunk {
  const c: TextCompletionChunk = { id: meta.id, object: 'text_completion', created: meta.created, model: meta.model, choices };
  if (meta.includeUsage) c.usage = null;
  return c;
}

/** Text completion chunks: the echoed prompt first (when asked), a chunk per token, one per finish, the usage chunk. */
export function completionChunkFormat(meta: CompletionMeta, texts: ChoiceTexts): ChunkFormat {
  return {
    start: (c) => (texts.echo[c] ? [chunk(meta, [{ index: c, text: texts.echo[c]!, logprobs: null, finish_reason: null }])] : []),
    token: (ev: TokenEvent) => {
      const logprobs = texts.add(ev);
      // An empty piece without a logprob tells the client nothing (stop-string lookahead).
      if (ev.text === '' && logprobs === null) return undefined;
      return chunk(meta, [{ index: ev.choice, text: ev.text, logprobs, finish_reason: null }]);
    },
    finish: (c: number, reason: FinishReason) => chunk(meta, [{ index: c, text: '', logprobs: null, finish_reason: reason }]),
    usage: (u: GenerationUsage) => ({ ...chunk(meta, []), usage: toUsageJson(u) }),
  };
}

/** Gathers a whole non-streamed text completion from its events. */
export class TextCompletionBuilder {
  private readonly texts: string[];
  private readonly logprobs: (CompletionLogprobs | null)[];
  private readonly reasons: (FinishReason | undefined)[];
  private readonly offsets: ChoiceTexts;
  private usage: GenerationUsage | undefined;

  constructor(private readonly meta: CompletionMeta, echo: readonly string[], wantLogprobs: boolean) {
    this.texts = [...echo];
    this.offsets = new ChoiceTexts(echo);
    this.logprobs = echo.map(() => (wantLogprobs ? { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] } : null));
    this.reasons = echo.map(() => undefined);
  }

  add(ev: GenerationEvent): void {
    if (ev.type === 'token') {
      this.texts[ev.choice] += ev.text;
      const one = this.offsets.add(ev);
      const all = this.logprobs[ev.choice];
      if (one !== null && all != null) {
        all.tokens.push(...one.tokens);
        all.token_logprobs.push(...one.token_logprobs);
        all.top_logprobs.push(...one.top_logprobs);
        all.text_offset.push(...one.text_offset);
      }
    } else if (ev.type === 'finish') {
      this.reasons[ev.choice] = ev.reason;
    } else {
      this.usage = ev.usage;
    }
  }

  /** The response; a choice without a finish event (should not happen) reports 'stop'. */
  build(): TextCompletion {
    return {
      id: this.meta.id,
      object: 'text_completion',
      created: this.meta.created,
      model: this.meta.model,
      choices: this.texts.map((text, index) => ({
        index,
        text,
        logprobs: this.logprobs[index] ?? null,
        finish_reason: this.reasons[index] ?? 'stop',
      })),
      usage: toUsageJson(this.usage ?? EMPTY_USAGE),
    };
  }
}
