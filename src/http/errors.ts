/** Errors raised by the HTTP layer itself; each maps to one status in the error handler. */
import { GemmaServeError, InvalidValueError, quote } from '../errors.js';

/** A request failed JSON-schema validation; the message names the field. */
export class SchemaValidationError extends InvalidValueError {}

/** The body is not parseable JSON, or empty. */
export class InvalidJsonError extends InvalidValueError {
  constructor(detail: string) {
    super(`We could not parse the JSON body of your request (${detail}). Send a JSON object with Content-Type: application/json.`, null, 'invalid_json');
  }
}

export class UnsupportedMediaTypeError extends GemmaServeError {
  constructor(contentType: string | undefined) {
    super(`Unsupported Content-Type ${quote(contentType ?? '')}: send application/json.`, { status: 415, code: 'unsupported_media_type' });
  }
}

export class BodyTooLargeError extends GemmaServeError {
  constructor(limit: number) {
    super(`The request body is larger than this server accepts (${limit} bytes, set by BODY_LIMIT_BYTES). Shorten the request.`, {
      status: 413,
      code: 'request_too_large',
    });
  }
}

/** Missing or wrong bearer token while API_KEYS is set. */
export class UnauthorizedError extends GemmaServeError {
  constructor(missing: boolean) {
    super(
      missing
        ? "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY)."
        : 'Incorrect API key provided. Use one of the keys configured in API_KEYS.',
      { status: 401, code: 'invalid_api_key' },
    );
  }
}

export class ModelNotFoundError extends GemmaServeError {
  constructor(model: string, served: string) {
    super(`The model ${quote(model)} does not exist. This server serves \`${served}\` (GET /v1/models lists it).`, {
      status: 404,
      param: 'model',
      code: 'model_not_found',
    });
  }
}

export class SessionNotFoundError extends GemmaServeError {
  constructor(id: string) {
    super(`No session with id ${quote(id)} for this API key: it never existed, was deleted, or expired (SESSION_TTL_SECONDS).`, {
      status: 404,
      param: 'id',
      code: 'session_not_found',
    });
  }
}

export class RouteNotFoundError extends GemmaServeError {
  constructor(method: string, url: string) {
    super(`Invalid URL (${method} ${quote(url)}).`, { status: 404, code: 'unknown_url' });
  }
}

/** x-session-id is not a usable session id. */
export class InvalidSessionIdError extends InvalidValueError {
  constructor() {
    super("Invalid 'x-session-id' header: use 1-256 letters, digits or . _ : @ + = ~ -, starting with a letter or digit.", 'x-session-id', 'invalid_session_id');
  }
}

/** The model is still loading; /ready answers 503 until it is ready. */
export class ModelLoadingError extends GemmaServeError {
  readonly retryAfter = 5;
  constructor() {
    super('The model is still loading; retry shortly (GET /ready returns 200 once it is ready).', {
      status: 503,
      type: 'server_error',
      code: 'model_loading',
    });
  }
}

/** Loading failed: the instance stays up to report it but serves nothing. */
export class ModelUnavailableError extends GemmaServeError {
  constructor() {
    super('The model failed to load; see the server log.', { status: 503, type: 'server_error', code: 'model_unavailable' });
  }
}

/** A JSON body nested deeper than MAX_JSON_DEPTH (refused before it is parsed). */
export class JsonTooDeepError extends InvalidValueError {
  constructor(limit: number) {
    super(`The JSON body is nested more than ${limit} levels deep (MAX_JSON_DEPTH). Flatten the request.`, null, 'json_too_deep');
  }
}

/** The path exists, but not for this method. */
export class MethodNotAllowedError extends GemmaServeError {
  readonly allow: string[];
  constructor(method: string, url: string, allow: string[]) {
    super(`Method ${quote(method)} is not allowed on ${quote(url)}; use ${allow.join(' or ')}.`, { status: 405, code: 'method_not_allowed' });
    this.allow = allow;
  }
}

/** A path segment (a session id, a model name) longer than the router accepts. */
export class UriTooLongError extends GemmaServeError {
  constructor() {
    super('The request URL has a path segment that is too long. Session ids and model names are at most 256 characters.', {
      status: 414,
      code: 'uri_too_long',
    });
  }
}

/** The URL does not decode (a malformed percent-escape). */
export class BadUrlError extends InvalidValueError {
  constructor(url: string) {
    super(`The request URL ${quote(url)} is malformed (an invalid percent-escape).`, null, 'invalid_url');
  }
}

/** What a rate limit counts, as OpenAI names it in the error's `type`. */
export type RateLimitKind = 'requests' | 'tokens';

/**
 * A per-credential limit (RATE_LIMIT_RPM or RATE_LIMIT_TPM) is used up. Shaped
 * as OpenAI sends it: 429, `type` "requests" or "tokens", code "rate_limit_exceeded".
 */
export class RateLimitError extends GemmaServeError {
  /** Whole seconds until the window resets (Retry-After). */
  readonly retryAfter: number;
  constructor(kind: RateLimitKind, limit: number, used: number, requested: number, resetMs: number) {
    const variable = kind === 'requests' ? 'RATE_LIMIT_RPM' : 'RATE_LIMIT_TPM';
    const wait = `${(resetMs / 1000).toFixed(resetMs < 10_000 ? 1 : 0)}s`;
    const tooBig = kind === 'tokens' && requested > limit
      ? ' This request alone asks for more than the limit: lower max_tokens or shorten the messages.'
      : '';
    super(`Rate limit reached on ${kind} per window (${variable}): Limit ${limit}, Used ${used}, Requested ${requested}. Please try again in ${wait}.${tooBig}`, {
      status: 429,
      type: kind,
      code: 'rate_limit_exceeded',
    });
    this.retryAfter = Math.max(1, Math.ceil(resetMs / 1000));
  }
}

/** Load shedding: the scheduler's queue is at SHED_QUEUE_DEPTH, so new chat requests are refused at once. */
export class OverloadedError extends GemmaServeError {
  readonly retryAfter: number;
  constructor(depth: number, retryAfter = 1) {
    super(`The server is overloaded (${depth} requests waiting, SHED_QUEUE_DEPTH); retry after ${retryAfter} s.`, {
      status: 503,
      type: 'server_error',
      code: 'server_overloaded',
    });
    this.retryAfter = retryAfter;
  }
}
