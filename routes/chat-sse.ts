/**
 * The SSE body of a streamed completion, framed as OpenAI frames it:
 * `data: {chunk}\n\n` per event, role chunks first, a finish chunk per
 * choice, the usage chunk when asked for, then `data: [DONE]\n\n`. An error
 * after the headers went out is sent as `data: {"error": {...}}\n\n` and the
 * stream ends without [DONE] (the openai SDK raises it as an APIError).
 *
 * While the first event is still to come (the request waits in the queue or
 * prefills) the stream sends an SSE comment, `: ping`, every SSE_PING_MS, so
 * proxies with idle timeouts keep it open; clients ignore comments.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { ErrorBody } from '../src/protocol/chat-types.js';
import type { FinishReason } from '../src/engine/types.js';
import type { GenerationEvent, GenerationUsage } from '../src/scheduler/types.js';
import { type CompletionMeta, finishChunk, reasoningChunk, roleChunk, tokenChunk, usageChunk } from './chat-format.js';
import type { ChatObserver } from './chat-observer.js';

const frame = (obj: unknown): string => `data: ${JSON.stringify(obj)}\n\n`;
export const PING = ': ping\n\n';

const TIMED_OUT = Symbol('timed out');

/** `p`'s value if it settles within `ms` (a rejection is thrown), else undefined: it is still pending. */
export async function settleWithin<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => (timer = setTimeout(resolve, ms, TIMED_OUT)));
  try {
    const v = await Promise.race([p, timeout]);
    return v === TIMED_OUT ? undefined : (v as T);
  } finally {
    clearTimeout(timer);
  }
}

/** Yields a ping every `ms` until `p` settles; returns its value (or throws its error). */
async function* pingUntil<T>(p: Promise<T>, ms: number): AsyncGenerator<string, T> {
  for (;;) {
    const v = await settleWithin(p, ms);
    if (v !== undefined) return v;
    yield PING;
  }
}

type TokenEvent = Extract<GenerationEvent, { type: 'token' }>;

/** How events become `data:` payloads; the default makes chat.completion.chunks (other APIs bring their own). */
export interface ChunkFormat {
  /** Payloads for one choice before its first token (chat: the role). */
  start(choice: number): unknown[];
  /** A token's payload; undefined sends nothing. */
  token(ev: TokenEvent): unknown;
  finish(choice: number, reason: FinishReason): unknown;
  usage(usage: GenerationUsage): unknown;
}

/** chat.completion.chunk payloads. */
export function chatChunkFormat(meta: CompletionMeta): ChunkFormat {
  return {
    start: (c) => [roleChunk(meta, c)],
    // An empty delta without a logprob tells the client nothing (stop-string lookahead).
    // Thinking goes out as delta.reasoning_content, the answer as delta.content.
    token: (ev) => ev.text === '' && ev.logprob === undefined
      ? undefined
      : ev.reasoning ? reasoningChunk(meta, ev.choice, ev.text, ev.logprob) : tokenChunk(meta, ev.choice, ev.text, ev.logprob),
    finish: (c, reason) => finishChunk(meta, c, reason),
    usage: (u) => usageChunk(meta, u),
  };
}

export interface SseSource {
  meta: CompletionMeta;
  /** The payloads' shape; default chatChunkFormat(meta). */
  format?: ChunkFormat;
  n: number;
  /**
   * The first event: awaited already when it came within one ping interval (so
   * early failures became HTTP errors), else still pending, pinged for meanwhile.
   */
  first: IteratorResult<GenerationEvent> | Promise<IteratorResult<GenerationEvent>>;
  /** Interval of `: ping` comments while the first event is pending. */
  pingMs: number;
  events: AsyncIterator<GenerationEvent>;
  observer: ChatObserver;
  /** Aborted when the client went away; aborting it cancels the request upstream. */
  abort: AbortController;
  errorBody: (err: unknown) => ErrorBody;
  log: FastifyBaseLogger;
}

export async function* sseFrames(src: SseSource): AsyncGenerator<string> {
  const { meta, events, observer } = src;
  const format = src.format ?? chatChunkFormat(meta);
  let ended = false;
  try {
    try {
      let r = src.first instanceof Promise ? yield* pingUntil(src.first, src.pingMs) : src.first;
      for (let c = 0; c < src.n; c++) for (const p of format.start(c)) yield frame(p);
      while (r.done !== true) {
        const ev = r.value;
        observer.event(ev);
        if (ev.type === 'token') {
          const p = format.token(ev);
          if (p !== undefined) yield frame(p);
        } else if (ev.type === 'finish') {
          yield frame(format.finish(ev.choice, ev.reason));
        } else if (meta.includeUsage) {
          yield frame(format.usage(ev.usage));
        }
        r = await events.next();
      }
    } catch (err) {
      ended = true;
      observer.end('error');
      src.log.error({ err }, 'stream failed after headers were sent');
      yield frame(src.errorBody(err));
      return;
    }
    ended = true;
    // The scheduler ends a cancelled request's events early, without finish events.
    if (src.abort.signal.aborted) {
      observer.end('cancelled');
      return;
    }
    observer.end('ok');
    yield 'data: [DONE]\n\n';
  } finally {
    // Reached without `ended` only when the consumer stopped early: the client disconnected.
    if (!ended) {
      observer.end('cancelled');
      src.abort.abort();
      void events.return?.().catch(() => undefined);
    }
  }
}
