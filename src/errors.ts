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
