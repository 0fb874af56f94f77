/**
 * The one place errors become responses: every failure, from schema
 * validation to a scheduler refusal, leaves as OpenAI's
 * `{"error": {"message", "type", "param", "code"}}` with its status code.
 * Streams that already sent headers report errors in-band instead (see
 * routes/chat-sse.ts), using `toErrorBody` from here.
 */
import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify';
import { GemmaServeError, quote } from '../errors.js';
import type { ErrorBody } from '../protocol/chat-types.js';
import {
  BadUrlError,
  BodyTooLargeError,
  InvalidJsonError,
  MethodNotAllowedError,
  RouteNotFoundError,
  UnsupportedMediaTypeError,
  UriTooLongError,
} from './errors.js';
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
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return new InvalidJsonError(clip(err.message));
    case 'FST_ERR_CTP_EMPTY_JSON_BODY': return new InvalidJsonError('the body is empty');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new UnsupportedMediaTypeError(req.headers['content-type']);
    default: break;
  }
  // JSON.parse failures surface as SyntaxError with statusCode 400.
  if (err instanceof SyntaxError && err.statusCode === 400) return new InvalidJsonError(clip(err.message));
  const status = err.statusCode ?? 500;
  if (status >= 400 && status < 500) return new GemmaServeError(clip(err.message), { status, code: err.code ?? null });
  return undefined;
}

/** A parser's or framework's message may quote the client's input: keep a short prefix. */
const clip = (message: string): string => (message.length <= 200 ? message : `${message.slice(0, 200)}…`);

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
    if (err instanceof MethodNotAllowedError) void reply.header('allow', err.allow.join(', '));
    return reply.code(r.status).type('application/json; charset=utf-8').send(r.body);
  });
  app.setNotFoundHandler(async (req) => {
    const allow = allowedMethods(app, req.url);
    if (allow.length > 0) throw new MethodNotAllowedError(req.method, req.url, allow);
    throw new RouteNotFoundError(req.method, req.url);
  });
}, { name: 'gemma-error-handler' });

const METHODS: HTTPMethods[] = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

/** Methods some route serves at this URL (for 405 and its Allow header). */
function allowedMethods(app: FastifyInstance, url: string): string[] {
  const path = url.split('?')[0]!;
  return METHODS.filter((method) => app.findRoute({ method, url: path }) !== null);
}

/**
 * Fastify's `frameworkErrors`: URLs the router cannot take (a bad
 * percent-escape, a path segment over maxParamLength), answered in OpenAI's
 * shape like every other error.
 */
export function frameworkErrors(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const e = err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? new UriTooLongError() : new BadUrlError(req.raw.url ?? '');
  req.log.info({ status: e.status, code: e.code }, e.message);
  void reply.code(e.status).type('application/json; charset=utf-8').send(toErrorBody(e));
}

/**
 * Node's `clientError`: requests the HTTP parser rejects before Fastify sees
 * them (headers or request line too large: 431; anything malformed: 400;
 * a request timeout: 408). Written straight to the socket, in OpenAI's shape.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, message] = err.code === 'HPE_HEADER_OVERFLOW'
    ? [431, 'headers_too_large', 'The request line and headers are larger than this server accepts. Send shorter headers and URL.']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'request_timeout', 'The request took too long to arrive.']
      : [400, 'malformed_request', `The HTTP request could not be parsed (${quote(err.code ?? 'unknown')}).`];
  answerRaw(socket, status, code, message);
}

/** An OpenAI-shaped error written straight to a socket Fastify never saw, which is then closed. */
function answerRaw(socket: Socket, status: number, code: string, message: string, extra = ''): void {
  const body = JSON.stringify({ error: { message, type: 'invalid_request_error', param: null, code } });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${extra}Content-Type: application/json; charset=utf-8\r\n`
      + `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

/**
 * Requests Node's HTTP server answers itself, before Fastify: CONNECT (which
 * it would close without a word) and an `Expect` other than 100-continue
 * (an empty 417). Both get an OpenAI-shaped error instead.
 */
export function answerProtocolRequests(server: Server): void {
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    answerRaw(socket, 405, 'method_not_allowed', 'CONNECT is not supported by this server.', 'Allow: GET, HEAD, POST, DELETE\r\n');
  });
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify({
      error: { message: `Expect: ${quote(String(req.headers.expect ?? ''))} is not supported; only 100-continue is.`, type: 'invalid_request_error', param: null, code: 'expectation_failed' },
    });
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
    res.end(body);
  });
}
