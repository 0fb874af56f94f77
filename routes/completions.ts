/**
 * POST /v1/completions, OpenAI's legacy text completion API. Validated in the
 * chat route's three layers (schema, cross-field check, model and phase),
 * then each prompt goes to the scheduler as its own stateless request with a
 * raw prompt (no chat template, no session); their event streams are merged
 * into one, choice index = prompt index * n + j, and framed as JSON or SSE with
 * the chat route's machinery (first event awaited before any byte, pings,
 * disconnects, rate-limit settlement).
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import { QUOTE_MAX_CHARS } from '../src/errors.js';
import { toErrorReply } from '../src/http/error-handler.js';
import { ModelNotFoundError } from '../src/http/errors.js';
import { readyScheduler } from '../src/http/service.js';
import type { ErrorBody } from '../src/protocol/chat-types.js';
import { checkCompletionRequest, COMPLETION_DEFAULT_MAX_TOKENS, toCompletionSamplingParams } from '../src/protocol/completion-check.js';
import type { CompletionRequest } from '../src/protocol/completion-types.js';
import type { GenerationEvent, GenerationStream, GenerationUsage, RawPrompt } from '../src/scheduler/types.js';
import type { CompletionMeta } from './chat-format.js';
import { abortOnDisconnect } from './chat-completions.js';
import { ChatObserver } from './chat-observer.js';
import { settleWithin, sseFrames } from './chat-sse.js';
import { ChoiceTexts, completionChunkFormat, TextCompletionBuilder } from './completion-format.js';
import { errorResponses } from './schema-helpers.js';

/** Prompt tokens reserved before tokenizing: a quarter of the characters (OpenAI's rule of thumb) plus BOS, or the ids. */
const estimateTokens = (p: RawPrompt): number => ('text' in p ? Math.ceil(p.text.length / 4) + 1 : p.ids.length);

/**
 * One event stream over the requests of several prompts: choice c of request
 * k becomes k * n + c, and their usages are summed into one usage event once
 * every request has ended with one. Stopping early ends every request.
 */
export async function* mergeStreams(streams: AsyncIterable<GenerationEvent>[], n: number): AsyncGenerator<GenerationEvent> {
  const its = streams.map((s) => s[Symbol.asyncIterator]());
  type Step = { k: number; r?: IteratorResult<GenerationEvent>; err?: unknown };
  // A rejection is caught at once: a request that fails while the consumer has gone must not go unhandled.
  const next = (k: number): Promise<Step> => its[k]!.next().then((r) => ({ k, r }), (err: unknown) => ({ k, err }));
  const pending = new Map<number, Promise<Step>>(its.map((_, k) => [k, next(k)]));
  const total: GenerationUsage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0, evictedTokens: 0, promptTokensProcessed: 0 };
  let usages = 0;
  try {
    while (pending.size > 0) {
      const { k, r, err } = await Promise.race(pending.values());
      if (err !== undefined) throw err;
      if (r!.done === true) {
        pending.delete(k);
        continue;
      }
      pending.set(k, next(k));
      const ev = r!.value;
      if (ev.type !== 'usage') {
        yield { ...ev, choice: ev.choice + k * n };
        continue;
      }
      usages++;
      total.promptTokens += ev.usage.promptTokens;
      total.completionTokens += ev.usage.completionTokens;
      total.cachedTokens += ev.usage.cachedTokens;
      total.evictedTokens += ev.usage.evictedTokens;
      total.promptTokensProcessed += ev.usage.promptTokensProcessed;
    }
  } finally {
    for (const k of pending.keys()) void its[k]!.return?.().catch(() => undefined);
  }
  // Requests cancelled by the client end without usage: then the whole has none either.
  if (usages === streams.length) yield { type: 'usage', usage: total };
}

export const completionsRoute: FastifyPluginAsync = async (app) => {
  const { config, service, metrics } = app.gemma;

  app.post<{ Body: CompletionRequest }>('/completions', {
    schema: {
      summary: 'Create a text completion (legacy API; streamed as server-sent events when `stream` is true).',
      body: { $ref: 'CompletionRequest#' },
      response: {
        200: {
          description: 'The completion, or its chunks as `text/event-stream` when streaming.',
          content: {
            'application/json': { schema: { $ref: 'TextCompletion#' } },
            'text/event-stream': { schema: { $ref: 'TextCompletionChunk#' } },
          },
        },
        ...errorResponses(400, 401, 404, 413, 415, 429, 503),
      },
    },
    config: { shed: true },
  }, async (req, reply) => {
    const body = req.body;
    // 1. Cross-field checks against server limits (the schema already ran).
    const prompts = checkCompletionRequest(body, {
      maxTokensLimit: config.sampling.maxTokensLimit,
      maxN: config.scheduler.maxBatchSize,
      topKCap: config.sampling.topKCap,
      vocabSize: service.model?.vocabSize,
    });
    // 2. The one model this server serves.
    if (body.model !== config.model.id) throw new ModelNotFoundError(body.model, config.model.id);
    if (body.user !== undefined) req.log = req.log.child({ user: body.user.slice(0, QUOTE_MAX_CHARS) });
    // 3. Loaded and not draining.
    const scheduler = readyScheduler(service);

    const n = body.n ?? 1;
    const choices = prompts.length * n;
    const params = toCompletionSamplingParams(body, {
      maxTokens: Math.min(COMPLETION_DEFAULT_MAX_TOKENS, config.sampling.maxTokensLimit),
      ...service.model?.samplingDefaults,
    });
    // 4. Tokens per window: prompts (estimated) + max_tokens per choice now, corrected to the usage at the end.
    const promptEstimate = prompts.reduce((sum, p) => sum + estimateTokens(p), 0);
    const reservation = await app.rateLimiter.reserveTokens(req, reply, promptEstimate + params.maxTokens * choices);
    const observer = new ChatObserver(metrics, choices, (usage, tokenEvents) => reservation.settle(
      usage !== undefined ? usage.promptTokens + usage.completionTokens : tokenEvents > 0 ? promptEstimate + tokenEvents : 0,
    ));

    // 5. One stateless request per prompt; a refusal of any cancels those already queued.
    const abort = abortOnDisconnect(reply);
    const streams: GenerationStream[] = [];
    try {
      for (const prompt of prompts) {
        streams.push(scheduler.submit({ requestId: req.id, namespace: req.namespace, messages: [], prompt, params, n, signal: abort.signal }));
      }
    } catch (err) {
      abort.abort();
      observer.end('error');
      throw err;
    }
    const echo = prompts.flatMap((p, k) => {
      const text = body.echo === true ? ('text' in p ? p.text : streams[k]!.promptText ?? '') : '';
      return Array.from({ length: n }, () => text);
    });
    const events = mergeStreams(streams, n);
    const meta: CompletionMeta = {
      id: `cmpl-${randomUUID().replace(/-/g, '')}`,
      created: Math.floor(Date.now() / 1000),
      model: config.model.id,
      includeUsage: body.stream === true && body.stream_options?.include_usage === true,
    };

    // 6. Wait for the first event, as the chat route does: failures up to here are ordinary HTTP errors.
    const pingMs = body.stream === true ? config.server.ssePingMs : 0;
    let first: IteratorResult<GenerationEvent> | Promise<IteratorResult<GenerationEvent>>;
    try {
      const next = events.next();
      first = pingMs > 0 ? ((await settleWithin(next, pingMs)) ?? next) : await next;
    } catch (err) {
      observer.end(abort.signal.aborted ? 'cancelled' : 'error');
      throw err;
    }

    // 7a. Streaming: text_completion chunks over the chat route's SSE framing.
    if (body.stream === true) {
      const errorBody = (err: unknown): ErrorBody => toErrorReply(err, req, config.server.bodyLimitBytes).body;
      const format = completionChunkFormat(meta, new ChoiceTexts(echo));
      const frames = sseFrames({ meta, format, n: choices, first, pingMs, events, observer, abort, errorBody, log: req.log });
      void reply
        .header('content-type', 'text/event-stream; charset=utf-8')
        .header('cache-control', 'no-cache')
        .header('x-accel-buffering', 'no');
      return reply.send(Readable.from(frames, { objectMode: false, encoding: 'utf8' }));
    }

    // 7b. Whole response (never pinged, so `first` is settled).
    const builder = new TextCompletionBuilder(meta, echo, body.logprobs !== undefined && body.logprobs !== null);
    try {
      for (let r = await first; r.done !== true; r = await events.next()) {
        observer.event(r.value);
        builder.add(r.value);
      }
    } catch (err) {
      observer.end(abort.signal.aborted ? 'cancelled' : 'error');
      throw err;
    }
    observer.end(abort.signal.aborted ? 'cancelled' : 'ok');
    return builder.build();
  });
};
