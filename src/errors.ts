/**
 * Base of every error the service raises on purpose. Each module defines named
 * subclasses; the HTTP layer maps `status`/`type`/`param`/`code` to OpenAI's
 * error body in one place.
 */
export class GemmaServeError extends Error {
  /** HTTP status the error maps to. */
  readonly status: number;
  /** OpenAI error `type`, e.g. `invalid_request_error`. */
  readonly type: string;
  /** The request field at fault, when there is one. */
  readonly param: string | null;
  /** A stable machine-readable code. */
  readonly code: string | null;

  constructor(
    message: string,
    opts: { status?: number; type?: string; param?: string | null; code?: string | null } = {},
  ) {
    super(message);
    this.name = new.target.name;
    this.status = opts.status ?? 500;
    this.type = opts.type ?? (this.status < 500 ? 'invalid_request_error' : 'server_error');
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
  }
}

/** A value supplied by a caller or a file is out of range or malformed. */
export class InvalidValueError extends GemmaServeError {
  constructor(message: string, param: string | null = null, code: string | null = 'invalid_value') {
    super(message, { status: 400, param, code });
  }
}

/** Longest slice of a client's value that a message or log line repeats. */
export const QUOTE_MAX_CHARS = 64;

/**
 * A client's value as an error message or log line may show it: strings and
 * scalars as JSON cut to a short prefix, containers by kind and size only, so
 * a 900 kB field or a deeply nested one is never echoed whole (nor stringified).
 */
export function quote(v: unknown): string {
  if (typeof v === 'string') {
    if (v.length <= QUOTE_MAX_CHARS) return JSON.stringify(v);
    return `${JSON.stringify(v.slice(0, QUOTE_MAX_CHARS))}… (${v.length} characters)`;
  }
  if (Array.isArray(v)) return `an array of ${v.length} items`;
  if (v !== null && typeof v === 'object') return 'an object';
  return String(v);
}
