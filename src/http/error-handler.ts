/**
 * The one place errors become responses: every failure, from schema
 * validation to a scheduler refusal, leaves as OpenAI's
 * `{"error": {"message", "type", "param", "code"}}` with its status code.
 * Streams that already sent headers report errors in-band instead (see
 * routes/chat-sse.ts), using `toErrorBody` from here.
 */
import fp from 'fastify-plugin';
import type { FastifyError, FastifyRequest } from 'fastify';
import { GemmaServeError } from '../errors.js';
import type { ErrorBody } from '../protocol/chat-types.js';
import { BodyTooLargeError, InvalidJsonError, RouteNotFoundError, UnsupportedMediaTypeError } from './errors.js';
import { translateValidation } from './validation.js';

/** Fastify's own errors that are the client's fault, mapped to named errors. */
function fromFastify(err: FastifyError, req: FastifyRequest, bodyLimit: number): GemmaServeError | undefined {
  if (err.validation !== undefined) {
    const ctx = err.validationContext ?? 'body';
    const data = ctx === 'body' ? req.body : ctx === 'params' ? req.params : ctx === 'querystring' ? req.query : req.headers;
    return translateValidation(err.validation, data, ctx);
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return new BodyTooLargeError(bodyLimit);
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return new InvalidJsonError(err.message);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY': return new InvalidJsonError('the body is empty');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new UnsupportedMediaTypeError(req.headers['content-type']);
    default: break;
  }
  // JSON.parse failures surface as SyntaxError with statusCode 400.
  if (err instanceof SyntaxError && err.statusCode === 400) return new InvalidJsonError(err.message);
  const status = err.statusCode ?? 500;
  if (status >= 400 && status < 500) return new GemmaServeError(err.message, { status, code: err.code ?? null });
  return undefined;
}

export interface ErrorReply {
  status: number;
  body: ErrorBody;
  retryAfter?: number;
}

/** Status, body and Retry-After for any thrown value; unexpected errors become an opaque 500. */
export function toErrorReply(err: unknown, req: FastifyRequest, bodyLimit: number): ErrorReply {
  let e: GemmaServeError | undefined;
  if (err instanceof GemmaServeError) e = err;
  else if (err instanceof Error) e = fromFastify(err as FastifyError, req, bodyLimit);
  if (e === undefined) {
    return {
      status: 500,
      body: { error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: 'internal_error' } },
    };
  }
  const retryAfter = (e as { retryAfter?: unknown }).retryAfter;
  return {
    status: e.status,
    body: toErrorBody(e),
    ...(typeof retryAfter === 'number' ? { retryAfter } : {}),
  };
}

export function toErrorBody(e: GemmaServeError): ErrorBody {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

export const errorHandlerPlugin = fp<{ bodyLimit: number }>(async (app, opts) => {
  app.setErrorHandler(async (err, req, reply) => {
    const r = toErrorReply(err, req, opts.bodyLimit);
    if (r.status >= 500) req.log.error({ err }, 'request failed');
    else req.log.info({ status: r.status, code: r.body.error.code, param: r.body.error.param }, r.body.error.message);
    if (r.retryAfter !== undefined) void reply.header('retry-after', String(r.retryAfter));
    return reply.code(r.status).type('application/json; charset=utf-8').send(r.body);
  });
  app.setNotFoundHandler(async (req) => {
    throw new RouteNotFoundError(req.method, req.url);
  });
}, { name: 'gemma-error-handler' });
