/**
 * JSON schemas of the legacy text completion API (`POST /v1/completions`),
 * registered once like the chat schemas (./chat-schemas.ts) so the same
 * objects validate, serialise and become components of openapi.yaml. Usage
 * is the chat API's `CompletionUsage`. Cross-field checks (prompt shapes,
 * best_of, echo with logprobs, server limits) live in ./completion-check.ts.
 */
import type { ProtocolLimits } from './chat-schemas.js';

/** Most alternatives `logprobs` may ask for, as OpenAI allows. */
export const MAX_COMPLETION_LOGPROBS = 5;

const nullable = (type: string) => ({ type: [type, 'null'] });
const numberIn = (minimum: number, maximum: number, description?: string) => ({
  type: ['number', 'null'],
  minimum,
  maximum,
  ...(description === undefined ? {} : { description }),
});

const completionRequestSchema = (limits: ProtocolLimits) => ({
  $id: 'CompletionRequest',
  type: 'object',
  required: ['model', 'prompt'],
  additionalProperties: false,
  properties: {
    model: { type: 'string', minLength: 1, maxLength: 256 },
    prompt: {
      type: ['string', 'array'],
      minLength: 1,
      maxLength: limits.messageChars,
      minItems: 1,
      maxItems: limits.messageChars,
      items: {
        type: ['string', 'integer', 'array'],
        minLength: 1,
        maxLength: limits.messageChars,
        minimum: 0,
        minItems: 1,
        maxItems: limits.messageChars,
        items: { type: 'integer', minimum: 0 },
      },
      description:
        'A string, a list of strings, a list of token ids, or a list of lists of token ids; each prompt gets its own `n` choices ' +
        '(choice index = prompt index * n + j), at most MAX_BATCH_SIZE choices in all. Text is raw (no chat template), encoded after BOS, ' +
        `control strings as their characters; at most ${limits.messageChars} characters a prompt (MAX_MESSAGE_CHARS). ` +
        'A prompt must fit the context with room for max_tokens (at most a quarter of it).',
    },
    best_of: { type: ['integer', 'null'], minimum: 1, maximum: 128, description: 'Accepted only when equal to `n` (or absent).' },
    echo: { ...nullable('boolean'), description: 'Prepend the prompt to each choice\'s text (not together with logprobs).' },
    frequency_penalty: numberIn(-2, 2),
    logit_bias: {
      type: ['object', 'null'],
      description: `Token id -> bias added to its logit before sampling; at most ${limits.logitBias} entries (MAX_LOGIT_BIAS).`,
      maxProperties: limits.logitBias,
      propertyNames: { pattern: '^[0-9]{1,9}$' },
      additionalProperties: { type: 'number', minimum: -100, maximum: 100 },
    },
    logprobs: {
      type: ['integer', 'null'],
      minimum: 0,
      maximum: MAX_COMPLETION_LOGPROBS,
      description: 'Log probabilities of the chosen tokens and of this many most likely alternatives at each position.',
    },
    max_tokens: { type: ['integer', 'null'], minimum: 1, description: 'Default 16; at most the server limit (MAX_TOKENS_LIMIT).' },
    n: { type: ['integer', 'null'], minimum: 1, maximum: 128, description: 'Choices per prompt; prompts times n at most MAX_BATCH_SIZE.' },
    presence_penalty: numberIn(-2, 2),
    seed: { type: ['integer', 'null'], minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
    stop: {
      type: ['string', 'array', 'null'],
      minLength: 1,
      maxLength: 1024,
      maxItems: limits.stopStrings,
      items: { type: 'string', minLength: 1, maxLength: 1024 },
      description: `Up to ${limits.stopStrings} stop strings (MAX_STOP_STRINGS); the matched text is not returned.`,
    },
    stream: nullable('boolean'),
    stream_options: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: { include_usage: { type: 'boolean' } },
    },
    suffix: { ...nullable('string'), description: 'Not supported: a suffix is rejected with 400.' },
    temperature: numberIn(0, 2, '0 means greedy.'),
    top_p: { type: ['number', 'null'], minimum: 0, exclusiveMinimum: 0, maximum: 1, description: 'Greater than 0 (1 means off).' },
    user: { type: 'string', minLength: 1, maxLength: 256, description: 'An end-user label for logs.' },
    top_k: { type: ['integer', 'null'], minimum: -1, description: 'vLLM extension: 0 or -1 means off; at most the server cap (TOPK_CAP).' },
    min_p: numberIn(0, 1, 'vLLM extension: 0 means off.'),
    repetition_penalty: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 2, description: 'vLLM extension: 1 means off.' },
    stop_token_ids: {
      type: ['array', 'null'],
      maxItems: 64,
      items: { type: 'integer', minimum: 0 },
      description: 'vLLM extension: extra token ids that end generation.',
    },
  },
} as const);

export const CompletionLogprobsSchema = {
  $id: 'CompletionLogprobs',
  description: 'Legacy logprobs: parallel lists over the choice\'s tokens (in a chunk, over its tokens).',
  type: 'object',
  required: ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'],
  properties: {
    tokens: { type: 'array', items: { type: 'string' } },
    token_logprobs: { type: 'array', items: { type: 'number' } },
    top_logprobs: {
      type: 'array',
      items: { type: 'object', additionalProperties: { type: 'number' }, description: 'The most likely tokens\' text -> logprob.' },
    },
    text_offset: { type: 'array', items: { type: 'integer' }, description: 'Where each token\'s text starts in the choice\'s text.' },
  },
} as const;

const choiceSchema = (finishReason: object) => ({
  type: 'object',
  required: ['index', 'text', 'logprobs', 'finish_reason'],
  properties: {
    index: { type: 'integer', description: 'prompt index * n + choice of that prompt.' },
    text: { type: 'string' },
    logprobs: { anyOf: [{ $ref: 'CompletionLogprobs#' }, { type: 'null' }] },
    finish_reason: finishReason,
  },
});

export const TextCompletionSchema = {
  $id: 'TextCompletion',
  type: 'object',
  required: ['id', 'object', 'created', 'model', 'choices', 'usage'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['text_completion'] },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: { type: 'array', items: choiceSchema({ type: 'string', enum: ['stop', 'length'] }) },
    usage: { $ref: 'CompletionUsage#' },
  },
} as const;

export const TextCompletionChunkSchema = {
  $id: 'TextCompletionChunk',
  description: 'One server-sent event `data:` payload of a streamed text completion; the stream ends with `data: [DONE]`.',
  type: 'object',
  required: ['id', 'object', 'created', 'model', 'choices'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['text_completion'] },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: { type: 'array', items: choiceSchema({ type: ['string', 'null'], enum: ['stop', 'length', null] }) },
    usage: {
      anyOf: [{ $ref: 'CompletionUsage#' }, { type: 'null' }],
      description: 'Only with stream_options.include_usage: null on every chunk but the last, which has no choices.',
    },
  },
} as const;

/** The text completion schemas, in dependency order for `addSchema` (after the chat schemas: usage is theirs). */
export const completionSchemas = (limits: ProtocolLimits) => [
  completionRequestSchema(limits),
  CompletionLogprobsSchema,
  TextCompletionSchema,
  TextCompletionChunkSchema,
] as const;
