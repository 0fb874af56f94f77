/**
 * Errors for sampling parameters that fail validation. `param` is always the
 * OpenAI request field name, so the HTTP layer can report it as is.
 */
import { GemmaServeError, InvalidValueError, quote } from '../errors.js';

/** Base of every sampling-parameter error. */
export class InvalidSamplingParamError extends InvalidValueError {
  constructor(message: string, param: string) {
    super(message, param, 'invalid_value');
  }
}

/** A numeric field is outside its allowed range, or not an integer where one is required. */
export class SamplingRangeError extends InvalidSamplingParamError {
  constructor(param: string, value: unknown, allowed: string) {
    super(`${param} must be ${allowed}; got ${formatValue(value)}.`, param);
  }
}

/** `top_logprobs` was asked for without `logprobs: true`. */
export class TopLogprobsWithoutLogprobsError extends InvalidSamplingParamError {
  constructor(topLogprobs: number) {
    super(`top_logprobs (${topLogprobs}) requires logprobs to be true; set "logprobs": true or drop top_logprobs.`, 'top_logprobs');
  }
}

/** A `logit_bias` entry names a token outside the vocabulary or biases it outside [-100, 100]. */
export class LogitBiasError extends InvalidSamplingParamError {
  constructor(detail: string) {
    super(`logit_bias ${detail}`, 'logit_bias');
  }
}

/** `stop` has too many entries or an empty one. */
export class StopSequenceError extends InvalidSamplingParamError {
  constructor(detail: string) {
    super(`stop ${detail}`, 'stop');
  }
}

function formatValue(v: unknown): string {
  return quote(v);
}

/** The device returned no candidates for a row: a bug upstream of sampling, not a caller error. */
export class NoCandidatesError extends GemmaServeError {
  constructor() {
    super('sampling got an empty top-K row; the decode step must return at least one candidate per row.', {
      status: 500,
      code: 'no_candidates',
    });
  }
}
