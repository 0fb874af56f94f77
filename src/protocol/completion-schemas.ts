/**
 * JSON schemas of the legacy text completion API (`POST /v1/completions`),
 * registered once like the chat schemas (./chat-schemas.ts) so the same
 * objects validate, serialise and become components of openapi.yaml. Usage
 * is the chat API's `CompletionUsage`. Cross-field checks (prompt shapes,
 * best_of, echo with logprobs, server limits) live in ./completion-check.ts.
 */
import { nullable, samplingProperties, type ProtocolLimits } from './chat-schemas.js';

/** Most alternatives `logprobs` may ask for, as OpenAI allows. */
export const MAX_COMPLETION_LOGPROBS = 5;


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
    ...samplingProperties(limits),
    echo: { ...nullable('boolean'), description: 'Prepend the prompt to each choice\'s text (not together with logprobs).' },
    logprobs: {
      type: ['integer', 'null'],
      minimum: 0,
      maximum: MAX_COMPLETION_LOGPROBS,
      description: 'Log probabilities of the chosen tokens and of this many most likely alternatives at each position.',
    },
    max_tokens: { type: ['integer', 'null'], minimum: 1, description: 'Default 16; at most the server limit (MAX_TOKENS_LIMIT).' },
    n: { type: ['integer', 'null'], minimum: 1, maximum: 128, description: 'Choices per prompt; prompts times n at most MAX_BATCH_SIZE.' },
    suffix: { ...nullable('string'), description: 'Not supported: a suffix is rejected with 400.' },
    user: { type: 'string', minLength: 1, maxLength: 256, description: 'An end-user label for logs.' },
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
