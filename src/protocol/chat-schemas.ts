/**
 * JSON schemas of the chat completion API. Each is registered once with
 * Fastify (`addSchema`, referenced as `$id#`), so the same object validates
 * requests, serialises responses and becomes a component of openapi.yaml.
 * Range checks live here; checks that need several fields or server limits
 * live in ./check.ts. The request schemas are built from the server's
 * configured limits, so validation and openapi.yaml state the same numbers.
 */
import { CHAT_ROLES } from './chat-types.js';

/** Request bounds from config (`limits`): each one a schema keyword, so violations are 400s naming the field. */
export interface ProtocolLimits {
  /** Messages in one request (MAX_MESSAGES). */
  messages: number;
  /** Characters of one message's text (MAX_MESSAGE_CHARS). */
  messageChars: number;
  /** Entries in logit_bias (MAX_LOGIT_BIAS). */
  logitBias: number;
  /** Entries in stop (MAX_STOP_STRINGS). */
  stopStrings: number;
  /** Bytes of chat_template_kwargs as JSON (MAX_CHAT_TEMPLATE_KWARGS_BYTES). */
  chatTemplateKwargsBytes: number;
}

/** Deepest nesting of objects and arrays inside chat_template_kwargs (the object itself is depth 1). */
export const CHAT_TEMPLATE_KWARGS_MAX_DEPTH = 8;

/**
 * A session name (x-session-id, prompt_cache_key): letters, digits and a few
 * URL-safe marks, so it can appear in /v1/sessions/:id as it is.
 */
export const SESSION_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:@+=~-]{0,255}$';

export const nullable = (type: string) => ({ type: [type, 'null'] });
const ref = (id: string) => ({ $ref: `${id}#` });

const contentPartSchema = (limits: ProtocolLimits) => ({
  $id: 'ContentPart',
  description: 'A content part. Only `text` parts are supported; image, audio and file parts are rejected with 400.',
  type: 'object',
  required: ['type'],
  properties: {
    type: { type: 'string', maxLength: 64 },
    text: { type: 'string', maxLength: limits.messageChars },
  },
  additionalProperties: true,
} as const);

const chatMessageSchema = (limits: ProtocolLimits) => ({
  $id: 'ChatMessage',
  type: 'object',
  required: ['role'],
  additionalProperties: false,
  properties: {
    role: { type: 'string', enum: [...CHAT_ROLES], description: '`developer` is treated as `system`, `tool` as `user`.' },
    content: {
      type: ['string', 'array', 'null'],
      maxLength: limits.messageChars,
      maxItems: 1024,
      items: ref('ContentPart'),
      description: `A string or an array of text parts, at most ${limits.messageChars} characters (MAX_MESSAGE_CHARS); null only on assistant messages.`,
    },
    name: { type: 'string', maxLength: 256 },
    tool_calls: { type: 'array', description: 'Not supported: tools are rejected with 400.' },
    tool_call_id: { type: 'string', maxLength: 256 },
    refusal: nullable('string'),
    function_call: { description: 'Not supported.' },
    reasoning_content: {
      ...nullable('string'),
      maxLength: limits.messageChars,
      description: 'On assistant messages: accepted and ignored. A reply\'s thinking is not part of the history the next turn renders.',
    },
  },
} as const);

export const numberIn = (minimum: number, maximum: number, description?: string) => ({
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

/**
 * The sampling fields /v1/chat/completions and /v1/completions share, with the
 * same names, ranges and limits (the vLLM extensions included).
 */
export const samplingProperties = (limits: ProtocolLimits) => ({
    frequency_penalty: numberIn(-2, 2),
    logit_bias: {
      type: ['object', 'null'],
      description: `Token id -> bias added to its logit before sampling; at most ${limits.logitBias} entries (MAX_LOGIT_BIAS).`,
      maxProperties: limits.logitBias,
      propertyNames: { pattern: '^[0-9]{1,9}$' },
      additionalProperties: { type: 'number', minimum: -100, maximum: 100 },
    },
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
    temperature: numberIn(0, 2, '0 means greedy.'),
    top_p: { type: ['number', 'null'], minimum: 0, exclusiveMinimum: 0, maximum: 1, description: 'Greater than 0 (1 means off).' },
    top_k: { type: ['integer', 'null'], minimum: -1, description: 'vLLM extension: 0 or -1 means off; at most the server cap (TOPK_CAP).' },
    min_p: numberIn(0, 1, 'vLLM extension: 0 means off.'),
    repetition_penalty: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 2, description: 'vLLM extension: 1 means off.' },
    stop_token_ids: {
      type: ['array', 'null'],
      maxItems: 64,
      items: { type: 'integer', minimum: 0 },
      description: 'vLLM extension: extra token ids that end generation.',
    },
});

const chatCompletionRequestSchema = (limits: ProtocolLimits) => ({
  $id: 'ChatCompletionRequest',
  type: 'object',
  required: ['model', 'messages'],
  additionalProperties: false,
  properties: {
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: limits.messages,
      items: ref('ChatMessage'),
      description: `At most ${limits.messages} messages (MAX_MESSAGES).`,
    },
    model: { type: 'string', minLength: 1, maxLength: 256 },
    ...samplingProperties(limits),
    logprobs: nullable('boolean'),
    max_tokens: intAtLeast(1, 'Deprecated alias of max_completion_tokens; at most the server limit (MAX_TOKENS_LIMIT).'),
    max_completion_tokens: intAtLeast(1, 'At most the server limit (MAX_TOKENS_LIMIT).'),
    n: { type: ['integer', 'null'], minimum: 1, maximum: 128, description: 'At most the server batch size (MAX_BATCH_SIZE).' },
    top_logprobs: { type: ['integer', 'null'], minimum: 0, maximum: 20, description: 'Requires logprobs: true.' },
    user: {
      type: 'string',
      minLength: 1,
      maxLength: 256,
      description: 'An end-user label for logs; it does not name a session (use x-session-id or prompt_cache_key).',
    },
    store: { ...nullable('boolean'), description: 'Accepted and ignored.' },
    metadata: {
      type: ['object', 'null'],
      maxProperties: 16,
      propertyNames: { maxLength: 64 },
      additionalProperties: { type: 'string', maxLength: 512 },
      description: 'Accepted and ignored.',
    },
    service_tier: { ...nullable('string'), maxLength: 64, description: 'Accepted and ignored.' },
    parallel_tool_calls: { type: 'boolean', description: 'Accepted and ignored.' },
    prompt_cache_key: {
      type: 'string',
      pattern: SESSION_NAME_PATTERN,
      description: 'Names the session (its KV cache) when no x-session-id header is sent: 1-256 letters, digits or . _ : @ + = ~ -, starting with a letter or digit.',
    },
    safety_identifier: { type: 'string', maxLength: 256, description: 'Accepted and ignored.' },
    response_format: {
      type: 'object',
      required: ['type'],
      properties: {
        type: { type: 'string', maxLength: 64, description: '`text`, `json_object` (any JSON object) or `json_schema`.' },
        json_schema: {
          type: 'object',
          properties: {
            name: { type: 'string', maxLength: 64, description: 'a-z, A-Z, 0-9, underscores and dashes.' },
            description: { type: 'string' },
            schema: { type: 'object', description: 'The JSON Schema the output follows (constrained decoding).' },
            strict: { type: ['boolean', 'null'] },
          },
        },
      },
      description: 'Structured outputs: the output is generated under a grammar of the format, so it parses (and validates against the schema) whenever finish_reason is stop.',
    },
    tools: unsupported('tools'),
    tool_choice: unsupported('tool_choice'),
    functions: unsupported('functions'),
    function_call: unsupported('function_call'),
    modalities: { ...unsupported('any modality but text'), type: ['array', 'null'], items: { type: 'string' } },
    audio: unsupported('audio output'),
    prediction: unsupported('prediction'),
    web_search_options: unsupported('web search'),
    chat_template_kwargs: {
      type: ['object', 'null'],
      maxProperties: 64,
      propertyNames: { maxLength: 256 },
      description:
        'vLLM extension: extra variables for the chat template, e.g. {"enable_thinking": true} for Gemma 4. Every key is passed on ' +
        '(`messages`, `add_generation_prompt`, `bos_token` and `eos_token` stay the server\'s); strings are rendered as text. ' +
        `At most ${limits.chatTemplateKwargsBytes} bytes as JSON (MAX_CHAT_TEMPLATE_KWARGS_BYTES), nested at most ${CHAT_TEMPLATE_KWARGS_MAX_DEPTH} deep.`,
    },
  },
} as const);

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
    completion_tokens_details: {
      type: 'object',
      description: 'Only for models that think (Gemma 4): how many completion tokens were thinking.',
      required: ['reasoning_tokens'],
      properties: { reasoning_tokens: { type: 'integer', description: 'Tokens of thinking blocks (markers included), part of completion_tokens.' } },
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
              reasoning_content: {
                type: 'string',
                description: 'Only for models that think (Gemma 4), when the reply has a thinking block: its text, left out of `content`.',
              },
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
              reasoning_content: { type: 'string', description: 'Thinking (Gemma 4), streamed before the content deltas.' },
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
export const chatSchemas = (limits: ProtocolLimits) => [
  contentPartSchema(limits),
  chatMessageSchema(limits),
  chatCompletionRequestSchema(limits),
  TopLogprobSchema,
  ChoiceLogprobsSchema,
  UsageSchema,
  ChatCompletionSchema,
  ChatCompletionChunkSchema,
] as const;
