/**
 * JSON schemas of the chat completion API. Each is registered once with
 * Fastify (`addSchema`, referenced as `$id#`), so the same object validates
 * requests, serialises responses and becomes a component of openapi.yaml.
 * Range checks live here; checks that need several fields or server limits
 * live in ./check.ts.
 */
import { CHAT_ROLES } from './chat-types.js';

const nullable = (type: string) => ({ type: [type, 'null'] });
const ref = (id: string) => ({ $ref: `${id}#` });

export const ContentPartSchema = {
  $id: 'ContentPart',
  description: 'A content part. Only `text` parts are supported; image, audio and file parts are rejected with 400.',
  type: 'object',
  required: ['type'],
  properties: {
    type: { type: 'string' },
    text: { type: 'string' },
  },
  additionalProperties: true,
} as const;

export const ChatMessageSchema = {
  $id: 'ChatMessage',
  type: 'object',
  required: ['role'],
  additionalProperties: false,
  properties: {
    role: { type: 'string', enum: [...CHAT_ROLES], description: '`developer` is treated as `system`, `tool` as `user`.' },
    content: {
      type: ['string', 'array', 'null'],
      items: ref('ContentPart'),
      description: 'A string or an array of text parts; null only on assistant messages.',
    },
    name: { type: 'string' },
    tool_calls: { type: 'array', description: 'Not supported: tools are rejected with 400.' },
    tool_call_id: { type: 'string' },
    refusal: nullable('string'),
    function_call: { description: 'Not supported.' },
  },
} as const;

const numberIn = (minimum: number, maximum: number, description?: string) => ({
  type: ['number', 'null'],
  minimum,
  maximum,
  ...(description === undefined ? {} : { description }),
});
const intAtLeast = (minimum: number, description?: string) => ({
  type: ['integer', 'null'],
  minimum,
  ...(description === undefined ? {} : { description }),
});
const unsupported = (what: string) => ({ description: `Not supported: ${what} is rejected with 400.` });

export const ChatCompletionRequestSchema = {
  $id: 'ChatCompletionRequest',
  type: 'object',
  required: ['model', 'messages'],
  additionalProperties: false,
  properties: {
    messages: { type: 'array', minItems: 1, items: ref('ChatMessage') },
    model: { type: 'string', minLength: 1 },
    frequency_penalty: numberIn(-2, 2),
    logit_bias: {
      type: ['object', 'null'],
      description: 'Token id -> bias added to its logit before sampling.',
      propertyNames: { pattern: '^[0-9]{1,9}$' },
      additionalProperties: { type: 'number', minimum: -100, maximum: 100 },
    },
    logprobs: nullable('boolean'),
    max_tokens: intAtLeast(1, 'Deprecated alias of max_completion_tokens; at most the server limit (MAX_TOKENS_LIMIT).'),
    max_completion_tokens: intAtLeast(1, 'At most the server limit (MAX_TOKENS_LIMIT).'),
    n: { type: ['integer', 'null'], minimum: 1, maximum: 128, description: 'At most the server batch size (MAX_BATCH_SIZE).' },
    presence_penalty: numberIn(-2, 2),
    seed: { type: ['integer', 'null'], minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
    stop: {
      type: ['string', 'array', 'null'],
      minLength: 1,
      maxItems: 16,
      items: { type: 'string', minLength: 1 },
      description: 'Up to 16 stop strings; the matched text is not returned.',
    },
    stream: nullable('boolean'),
    stream_options: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: { include_usage: { type: 'boolean' } },
    },
    temperature: numberIn(0, 2, '0 means greedy.'),
    top_logprobs: { type: ['integer', 'null'], minimum: 0, maximum: 20, description: 'Requires logprobs: true.' },
    top_p: numberIn(0, 1),
    user: {
      type: 'string',
      minLength: 1,
      maxLength: 256,
      description: 'Names the session when no x-session-id header is sent.',
    },
    store: { ...nullable('boolean'), description: 'Accepted and ignored.' },
    metadata: { type: ['object', 'null'], additionalProperties: { type: 'string' }, description: 'Accepted and ignored.' },
    service_tier: { ...nullable('string'), description: 'Accepted and ignored.' },
    parallel_tool_calls: { type: 'boolean', description: 'Accepted and ignored.' },
    prompt_cache_key: { type: 'string', description: 'Accepted and ignored (sessions are matched by prefix).' },
    safety_identifier: { type: 'string', description: 'Accepted and ignored.' },
    response_format: {
      type: 'object',
      required: ['type'],
      properties: { type: { type: 'string' } },
      description: 'Only {"type": "text"} is supported.',
    },
    tools: unsupported('tools'),
    tool_choice: unsupported('tool_choice'),
    functions: unsupported('functions'),
    function_call: unsupported('function_call'),
    modalities: { ...unsupported('any modality but text'), type: ['array', 'null'], items: { type: 'string' } },
    audio: unsupported('audio output'),
    prediction: unsupported('prediction'),
    web_search_options: unsupported('web search'),
    top_k: { type: ['integer', 'null'], minimum: -1, description: 'vLLM extension: 0 or -1 means off; at most the server cap (TOPK_CAP).' },
    min_p: numberIn(0, 1, 'vLLM extension: 0 means off.'),
    repetition_penalty: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 10, description: 'vLLM extension: 1 means off.' },
    stop_token_ids: {
      type: ['array', 'null'],
      maxItems: 64,
      items: { type: 'integer', minimum: 0 },
      description: 'vLLM extension: extra token ids that end generation.',
    },
  },
} as const;

export const TopLogprobSchema = {
  $id: 'TopLogprob',
  type: 'object',
  required: ['token', 'logprob', 'bytes'],
  properties: {
    token: { type: 'string' },
    logprob: { type: 'number' },
    bytes: { type: ['array', 'null'], items: { type: 'integer' } },
  },
} as const;

export const ChoiceLogprobsSchema = {
  $id: 'ChoiceLogprobs',
  type: 'object',
  required: ['content', 'refusal'],
  properties: {
    content: {
      type: ['array', 'null'],
      items: {
        type: 'object',
        required: ['token', 'logprob', 'bytes', 'top_logprobs'],
        properties: {
          token: { type: 'string' },
          logprob: { type: 'number' },
          bytes: { type: ['array', 'null'], items: { type: 'integer' } },
          top_logprobs: { type: 'array', items: ref('TopLogprob') },
        },
      },
    },
    refusal: { type: 'null' },
  },
} as const;

export const UsageSchema = {
  $id: 'CompletionUsage',
  type: 'object',
  required: ['prompt_tokens', 'completion_tokens', 'total_tokens', 'prompt_tokens_details', 'gemma_serve'],
  properties: {
    prompt_tokens: { type: 'integer' },
    completion_tokens: { type: 'integer' },
    total_tokens: { type: 'integer' },
    prompt_tokens_details: {
      type: 'object',
      required: ['cached_tokens'],
      properties: { cached_tokens: { type: 'integer', description: 'Prompt tokens reused from the session cache.' } },
    },
    gemma_serve: {
      type: 'object',
      description: 'gemma-serve extension: what the rolling KV cache did for this request.',
      required: ['prompt_tokens_processed', 'evicted_tokens'],
      properties: {
        prompt_tokens_processed: { type: 'integer', description: 'Prompt tokens actually prefilled.' },
        evicted_tokens: { type: 'integer', description: 'Tokens the rolling cache dropped during this request.' },
      },
    },
  },
} as const;

const finishReason = { type: 'string', enum: ['stop', 'length'] } as const;

export const ChatCompletionSchema = {
  $id: 'ChatCompletion',
  type: 'object',
  required: ['id', 'object', 'created', 'model', 'choices', 'usage'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['chat.completion'] },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: {
      type: 'array',
      items: {
        type: 'object',
        required: ['index', 'message', 'logprobs', 'finish_reason'],
        properties: {
          index: { type: 'integer' },
          message: {
            type: 'object',
            required: ['role', 'content', 'refusal'],
            properties: {
              role: { type: 'string', enum: ['assistant'] },
              content: { type: 'string' },
              refusal: { type: 'null' },
            },
          },
          logprobs: { anyOf: [ref('ChoiceLogprobs'), { type: 'null' }] },
          finish_reason: finishReason,
        },
      },
    },
    usage: ref('CompletionUsage'),
  },
} as const;

export const ChatCompletionChunkSchema = {
  $id: 'ChatCompletionChunk',
  description: 'One server-sent event `data:` payload of a streamed completion; the stream ends with `data: [DONE]`.',
  type: 'object',
  required: ['id', 'object', 'created', 'model', 'choices'],
  properties: {
    id: { type: 'string' },
    object: { type: 'string', enum: ['chat.completion.chunk'] },
    created: { type: 'integer' },
    model: { type: 'string' },
    choices: {
      type: 'array',
      items: {
        type: 'object',
        required: ['index', 'delta', 'logprobs', 'finish_reason'],
        properties: {
          index: { type: 'integer' },
          delta: {
            type: 'object',
            properties: {
              role: { type: 'string', enum: ['assistant'] },
              content: { type: 'string' },
              refusal: { type: 'null' },
            },
          },
          logprobs: { anyOf: [ref('ChoiceLogprobs'), { type: 'null' }] },
          finish_reason: { type: ['string', 'null'], enum: ['stop', 'length', null] },
        },
      },
    },
    usage: {
      anyOf: [ref('CompletionUsage'), { type: 'null' }],
      description: 'Only with stream_options.include_usage: null on every chunk but the last, which has no choices.',
    },
  },
} as const;

/** Every shared chat schema, in dependency order for `addSchema`. */
export const CHAT_SCHEMAS = [
  ContentPartSchema,
  ChatMessageSchema,
  ChatCompletionRequestSchema,
  TopLogprobSchema,
  ChoiceLogprobsSchema,
  UsageSchema,
  ChatCompletionSchema,
  ChatCompletionChunkSchema,
] as const;
