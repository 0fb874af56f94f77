/** Errors the scheduler throws before a request's first event; the HTTP layer maps them by status. */
import { GemmaServeError, InvalidValueError } from '../errors.js';

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

/** The prompt encodes to a token the model has no embedding for (its tokenizer is larger than its vocabulary). */
export class TokenOutsideVocabularyError extends InvalidValueError {
  constructor(id: number, vocabSize: number, param: 'messages' | 'prompt' = 'messages') {
    super(
      `The ${param === 'prompt' ? 'prompt' : 'conversation'} encodes to token id ${id}, outside this model's vocabulary of ${vocabSize} tokens ` +
        "(the model's tokenizer is larger than its embedding); use text this model can represent.",
      param,
      'token_outside_vocabulary',
    );
  }
}

/**
 * A raw prompt (text completions) that does not fit the context with room for
 * its reply. Conversations are fitted by the rolling cache instead; a raw
 * prompt is never cut silently.
 */
export class PromptTooLongError extends InvalidValueError {
  constructor(tokens: number, room: number, capacity: number, atLeast = false) {
    super(
      `The prompt has ${atLeast ? 'at least ' : ''}${tokens} tokens; with room for ${room} completion tokens (max_tokens, at most a quarter of the context) ` +
        `it may have at most ${capacity - room} of this model's ${capacity}-token context (CACHE_CAPACITY). Shorten the prompt or lower max_tokens.`,
      'prompt',
      'context_length_exceeded',
    );
  }
}

/** A raw prompt with no tokens at all. */
export class EmptyPromptError extends InvalidValueError {
  constructor() {
    super("Invalid 'prompt': it is empty. Send at least one character or token id.", 'prompt', 'empty_prompt');
  }
}
