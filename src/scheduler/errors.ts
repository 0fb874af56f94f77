/** Errors the scheduler throws before a request's first event; the HTTP layer maps them by status. */
import { GemmaServeError } from '../errors.js';

/** The wait queue is at MAX_QUEUE: the client should retry later. */
export class QueueFullError extends GemmaServeError {
  /** Seconds the client should wait (sent as Retry-After). */
  readonly retryAfter: number;
  constructor(maxQueue: number, retryAfter = 1) {
    super(`The server is busy: ${maxQueue} requests are already waiting. Retry after ${retryAfter} s, or raise MAX_QUEUE.`, {
      status: 429,
      type: 'rate_limit_error',
      code: 'queue_full',
    });
    this.retryAfter = retryAfter;
  }
}

/** The service received SIGTERM and admits nothing new. */
export class ShuttingDownError extends GemmaServeError {
  readonly retryAfter = 5;
  constructor(message = 'The server is shutting down and accepts no new requests; retry on another instance.') {
    super(message, {
      status: 503,
      type: 'server_error',
      code: 'shutting_down',
    });
  }
}
