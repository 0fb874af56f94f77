/**
 * Cross-field checks of a text completion request, run after schema
 * validation, and its conversion to what the scheduler takes: one raw prompt
 * per choice set and the chat route's sampling parameters. Pure, so it is
 * tested without a server.
 */
import type { SamplingParams } from '../engine/types.js';
import type { RawPrompt } from '../scheduler/types.js';
import { checkSamplingTokenIds, type ChatLimits } from './check.js';
import type { CompletionRequest } from './completion-types.js';
import { toSamplingParams, type SamplingDefaults } from './convert.js';
import { InvalidValueError } from '../errors.js';
import { LimitExceededError, ParameterConflictError, UnsupportedFeatureError } from './errors.js';

/** OpenAI's default `max_tokens` for text completions. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16;

const present = (v: unknown): boolean => v !== undefined && v !== null;

/** A prompt list that mixes shapes, or a list of lists holding something other than token ids. */
export class PromptShapeError extends InvalidValueError {
  constructor(param: string, why: string) {
    super(
      `Invalid '${param}': ${why}. Send a string, a list of strings, a list of token ids, or a list of lists of token ids.`,
      param,
      'invalid_prompt',
    );
  }
}

/** The request's prompts, each one choice set, in order (the schema has checked the types of the parts). */
export function toRawPrompts(prompt: CompletionRequest['prompt']): RawPrompt[] {
  if (typeof prompt === 'string') return [{ text: prompt }];
  const first = prompt[0];
  if (typeof first === 'number') {
    prompt.forEach((x, i) => {
      if (typeof x !== 'number') throw new PromptShapeError(`prompt[${i}]`, 'a list of token ids holds something other than an integer');
    });
    return [{ ids: prompt as number[] }];
  }
  const kind = typeof first === 'string' ? 'string' : 'ids';
  return (prompt as (string | number[])[]).map((p, i) => {
    if (typeof p === 'string' && kind === 'string') return { text: p };
    if (Array.isArray(p) && kind === 'ids') return { ids: p };
    throw new PromptShapeError(`prompt[${i}]`, kind === 'string' ? 'a list of strings holds something else' : 'a list of token id lists holds something else');
  });
}

/** Throws the first problem found as a named 400 error; returns the prompts. */
export function checkCompletionRequest(req: CompletionRequest, limits: ChatLimits): RawPrompt[] {
  // Check 1: no fill-in-the-middle.
  if (present(req.suffix)) throw new UnsupportedFeatureError('suffix', 'this server completes a prompt, it does not insert text before a suffix');

  // Check 2: well-formed prompts, token ids in the vocabulary.
  const prompts = toRawPrompts(req.prompt);
  if (limits.vocabSize !== undefined) {
    const vocab = limits.vocabSize;
    prompts.forEach((p, i) => {
      if (!('ids' in p)) return;
      const at = typeof req.prompt[0] === 'number' ? 'prompt' : `prompt[${i}]`;
      p.ids.forEach((id, j) => {
        if (id >= vocab) throw new LimitExceededError(`${at}[${j}]`, id, vocab - 1, 'the model vocabulary');
      });
    });
  }

  // Check 3: every choice needs a batch row; best_of is n or nothing (no ranking server-side).
  const n = req.n ?? 1;
  if (present(req.best_of) && req.best_of !== n) {
    throw new ParameterConflictError('best_of', `'best_of' must equal 'n' (${n}) when given: this server returns every candidate it generates.`);
  }
  if (prompts.length === 1 && n > limits.maxN) throw new LimitExceededError('n', n, limits.maxN, 'MAX_BATCH_SIZE');
  if (prompts.length * n > limits.maxN) {
    throw new InvalidValueError(
      `Invalid 'n': ${prompts.length} prompts times n = ${n} is ${prompts.length * n} choices, more than this server allows ` +
        `(${limits.maxN}, set by MAX_BATCH_SIZE). Send fewer prompts or a smaller n.`,
      present(req.n) ? 'n' : 'prompt',
      'limit_exceeded',
    );
  }

  // Check 4: one token limit, within the server's.
  if (present(req.max_tokens) && req.max_tokens! > limits.maxTokensLimit) {
    throw new LimitExceededError('max_tokens', req.max_tokens!, limits.maxTokensLimit, 'MAX_TOKENS_LIMIT');
  }

  // Check 5: stream_options only with stream (as OpenAI).
  if (present(req.stream_options) && req.stream !== true) {
    throw new ParameterConflictError('stream_options', "The 'stream_options' parameter is only allowed when 'stream' is true.");
  }

  // Check 6: echo gives the prompt's text only, not its logprobs.
  if (req.echo === true && present(req.logprobs)) {
    throw new ParameterConflictError('logprobs', "'echo' together with 'logprobs' is not supported (prompt tokens have no logprobs here); send one of them.");
  }

  // Check 7: alternatives and top_k fit the device top-K.
  if (present(req.logprobs) && req.logprobs! > limits.topKCap) throw new LimitExceededError('logprobs', req.logprobs!, limits.topKCap, 'TOPK_CAP');
  if (present(req.top_k) && req.top_k! > limits.topKCap) throw new LimitExceededError('top_k', req.top_k!, limits.topKCap, 'TOPK_CAP');

  // Check 8: token ids of other fields exist in the vocabulary.
  if (limits.vocabSize !== undefined) checkSamplingTokenIds(req, limits.vocabSize);
  return prompts;
}

/** The chat route's conversion with the completion API's spellings: `logprobs` is the count of alternatives. */
export function toCompletionSamplingParams(req: CompletionRequest, defaults: SamplingDefaults): SamplingParams {
  const { logprobs, max_tokens, ...rest } = req;
  return toSamplingParams(
    { ...rest, logprobs: present(logprobs), top_logprobs: logprobs ?? null, max_tokens: max_tokens ?? null },
    defaults,
  );
}
