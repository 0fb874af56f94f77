/**
 * POST /v1/chat/completions. Validation happens in three layers before the
 * scheduler is touched: the JSON schema (types, ranges, unknown fields), the
 * cross-field check (limits, unsupported features), then the model name and
 * the service phase. The scheduler gets internal types only; its first event
 * is awaited before any byte is sent, so refusals (429, 503) keep their status.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { QUOTE_MAX_CHARS } from '../src/errors.js';
import { toErrorReply } from '../src/http/error-handler.js';
import { InvalidSessionIdError, ModelNotFoundError } from '../src/http/errors.js';
import { SESSION_NAME_PATTERN } from '../src/protocol/chat-schemas.js';
import { readyScheduler } from '../src/http/service.js';
import type { ChatCompletionRequest, ErrorBody } from '../src/protocol/chat-types.js';
import { checkChatRequest } from '../src/protocol/check.js';
import { toChatTurns, toGrammarSpec, toSamplingParams } from '../src/protocol/convert.js';
import type { GenerationEvent } from '../src/scheduler/types.js';
import { type CompletionMeta, CompletionBuilder } from './chat-format.js';
import { ChatObserver } from './chat-observer.js';
import { estimatePromptTokens } from '../src/http/token-budget.js';
import { settleWithin, sseFrames } from './chat-sse.js';
import { errorResponses } from './schema-helpers.js';

const SESSION_NAME_RE = new RegExp(SESSION_NAME_PATTERN);

/**
 * The session a request names: the x-session-id header, else OpenAI's
 * `prompt_cache_key` (validated by the schema). `user` is an end-user label
 * as OpenAI means it, not a conversation.
 */
function sessionIdOf(req: FastifyRequest, body: ChatCompletionRequest): string | undefined {
  const header = req.headers['x-session-id'];
  if (header !== undefined) {
    if (typeof header !== 'string' || !SESSION_NAME_RE.test(header)) throw new InvalidSessionIdError();
    return header;
  }
  return body.prompt_cache_key ?? undefined;
}

/** An AbortController aborted when the client closes the connection before the response finished. */
export function abortOnDisconnect(reply: FastifyReply): AbortController {
  const ac = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac;
}

export const chatCompletionsRoute: FastifyPluginAsync = async (app) => {
  const { config, service, metrics } = app.gemma;

  app.post<{ Body: ChatCompletionRequest }>('/chat/completions', {
    schema: {
      summary: 'Create a chat completion (streamed as server-sent events when `stream` is true).',
      body: { $ref: 'ChatCompletionRequest#' },
      headers: {
        type: 'object',
        properties: {
          'x-session-id': {
            type: 'string',
            pattern: SESSION_NAME_PATTERN,
            description: 'Names the conversation whose KV cache to use (takes precedence over prompt_cache_key); sessions belong to the API key that made them.',
          },
        },
      },
      response: {
        200: {
          description: 'The completion, or its chunks as `text/event-stream` when streaming.',
          content: {
            'application/json': { schema: { $ref: 'ChatCompletion#' } },
            'text/event-stream': { schema: { $ref: 'ChatCompletionChunk#' } },
          },
        },
        ...errorResponses(400, 401, 404, 413, 415, 429, 503),
      },
    },
    config: { shed: true },
  }, async (req, reply) => {
    const body = req.body;
    // 1. Cross-field checks against server limits (the schema already ran).
    checkChatRequest(body, {
      maxTokensLimit: config.sampling.maxTokensLimit,
      maxN: config.scheduler.maxBatchSize,
      topKCap: config.sampling.topKCap,
      vocabSize: service.model?.vocabSize,
      messageChars: config.limits.messageChars,
      grammarMaxStringLength: config.sampling.grammarMaxStringLength,
      chatTemplateKwargsBytes: config.limits.chatTemplateKwargsBytes,
    });
    // 2. The one model this server serves.
    if (body.model !== config.model.id) throw new ModelNotFoundError(body.model, config.model.id);
    const sessionId = sessionIdOf(req, body);
    // Header-named sessions are already bound to the request logger (see buildApp).
    if (sessionId !== undefined && req.headers['x-session-id'] === undefined) req.log = req.log.child({ sessionId });
    if (body.user !== undefined) req.log = req.log.child({ user: body.user.slice(0, QUOTE_MAX_CHARS) });
    // 3. Loaded and not draining.
    const scheduler = readyScheduler(service);

    const n = body.n ?? 1;
    const messages = toChatTurns(body.messages);
    const params = toSamplingParams(body, { maxTokens: config.sampling.defaultMaxTokens, ...service.model?.samplingDefaults });
    const grammar = toGrammarSpec(body);
    // 4. Tokens per window: prompt (estimated) + max_tokens per choice now, corrected to the usage at the end.
    const promptEstimate = estimatePromptTokens(messages);
    const reservation = await app.rateLimiter.reserveTokens(req, reply, promptEstimate + params.maxTokens * n);
    // A request that ended before its first token is charged nothing; one cut short, what it got.
    const observer = new ChatObserver(metrics, n, (usage, tokenEvents) => reservation.settle(
      usage !== undefined ? usage.promptTokens + usage.completionTokens : tokenEvents > 0 ? promptEstimate + tokenEvents : 0,
    ));

    const abort = abortOnDisconnect(reply);
    let stream;
    try {
      stream = scheduler.submit({
        requestId: req.id,
        ...(sessionId === undefined ? {} : { sessionId }),
        namespace: req.namespace,
        messages,
        ...(body.chat_template_kwargs ? { templateKwargs: body.chat_template_kwargs } : {}),
        params,
        ...(grammar ? { grammar } : {}),
        n,
        signal: abort.signal,
      });
    } catch (err) {
      observer.end('error');
      throw err;
    }
    const events = stream[Symbol.asyncIterator]();
    const meta: CompletionMeta = {
      id: `chatcmpl-${randomUUID().replace(/-/g, '')}`,
      created: Math.floor(Date.now() / 1000),
      model: config.model.id,
      includeUsage: body.stream === true && body.stream_options?.include_usage === true,
    };

    // 5. Wait for the first event: failures up to here are ordinary HTTP errors. A stream
    // waits one ping interval at most; after that its SSE body starts and pings while it waits.
    const pingMs = body.stream === true ? config.server.ssePingMs : 0;
    let first: IteratorResult<GenerationEvent> | Promise<IteratorResult<GenerationEvent>>;
    try {
      const next = events.next();
      first = pingMs > 0 ? ((await settleWithin(next, pingMs)) ?? next) : await next;
    } catch (err) {
      observer.end(abort.signal.aborted ? 'cancelled' : 'error');
      throw err;
    }
    // Known once admitted; a stream that starts while still queued can only name the session it asked for.
    const boundSession = stream.sessionId ?? (first instanceof Promise ? sessionId : undefined);
    if (boundSession !== undefined) void reply.header('x-session-id', boundSession);

    // 6a. Streaming: SSE frames pulled from the scheduler as the socket drains.
    if (body.stream === true) {
      const errorBody = (err: unknown): ErrorBody => toErrorReply(err, req, config.server.bodyLimitBytes).body;
      const frames = sseFrames({ meta, n, first, pingMs, events, observer, abort, errorBody, log: req.log });
      void reply
        .header('content-type', 'text/event-stream; charset=utf-8')
        .header('cache-control', 'no-cache')
        .header('x-accel-buffering', 'no');
      return reply.send(Readable.from(frames, { objectMode: false, encoding: 'utf8' }));
    }

    // 6b. Whole response (never pinged, so `first` is settled).
    const builder = new CompletionBuilder(meta, n, body.logprobs === true);
    try {
      for (let r = await first; r.done !== true; r = await events.next()) {
        observer.event(r.value);
        builder.add(r.value);
      }
    } catch (err) {
      observer.end(abort.signal.aborted ? 'cancelled' : 'error');
      throw err;
    }
    // A client that went away ends its events early; nobody reads this reply.
    observer.end(abort.signal.aborted ? 'cancelled' : 'ok');
    return builder.build();
  });
};
