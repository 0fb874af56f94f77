/**
 * The SSE body of a streamed completion, framed as OpenAI frames it:
 * `data: {chunk}\n\n` per event, role chunks first, a finish chunk per
 * choice, the usage chunk when asked for, then `data: [DONE]\n\n`. An error
 * after the headers went out is sent as `data: {"error": {...}}\n\n` and the
 * stream ends without [DONE] (the openai SDK raises it as an APIError).
 */
import type { FastifyBaseLogger } from 'fastify';
import type { ErrorBody } from '../src/protocol/chat-types.js';
import type { GenerationEvent } from '../src/scheduler/types.js';
import { type CompletionMeta, finishChunk, reasoningChunk, roleChunk, tokenChunk, usageChunk } from './chat-format.js';
import type { ChatObserver } from './chat-observer.js';

const frame = (obj: unknown): string => `data: ${JSON.stringify(obj)}\n\n`;

export interface SseSource {
  meta: CompletionMeta;
  n: number;
  /** The first event, already awaited so that early failures became HTTP errors. */
  first: IteratorResult<GenerationEvent>;
  events: AsyncIterator<GenerationEvent>;
  observer: ChatObserver;
  /** Aborted when the client went away; aborting it cancels the request upstream. */
  abort: AbortController;
  errorBody: (err: unknown) => ErrorBody;
  log: FastifyBaseLogger;
}

export async function* sseFrames(src: SseSource): AsyncGenerator<string> {
  const { meta, events, observer } = src;
  let ended = false;
  try {
    for (let c = 0; c < src.n; c++) yield frame(roleChunk(meta, c));
    let r = src.first;
    try {
      while (r.done !== true) {
        const ev = r.value;
        observer.event(ev);
        if (ev.type === 'token') {
          // An empty delta without a logprob tells the client nothing (stop-string lookahead).
          // Thinking goes out as delta.reasoning_content, the answer as delta.content.
          if (ev.text !== '' || ev.logprob !== undefined) {
            yield frame(ev.reasoning ? reasoningChunk(meta, ev.choice, ev.text, ev.logprob) : tokenChunk(meta, ev.choice, ev.text, ev.logprob));
          }
        } else if (ev.type === 'finish') {
          yield frame(finishChunk(meta, ev.choice, ev.reason));
        } else if (meta.includeUsage) {
          yield frame(usageChunk(meta, ev.usage));
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
