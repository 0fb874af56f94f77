/**
 * POST /tokenize and /detokenize in vLLM's shape: a prompt (plain text) or
 * chat messages (rendered by the chat template, as /v1/chat/completions
 * renders them) in, token ids out; ids in, text out. Registered with the
 * chat schemas, so one object validates, serializes and documents each.
 */
import type { ProtocolLimits } from './chat-schemas.js';

export interface TokenizeRequest {
  model?: string;
  prompt?: string;
  messages?: Array<Record<string, unknown>>;
  add_special_tokens?: boolean;
  add_generation_prompt?: boolean;
  chat_template_kwargs?: Record<string, unknown>;
  return_token_strs?: boolean;
}

export interface DetokenizeRequest {
  model?: string;
  tokens: number[];
}

export const tokenizeSchemas = (limits: ProtocolLimits) => [
  {
    $id: 'TokenizeRequest',
    type: 'object',
    additionalProperties: false,
    description: 'Exactly one of `prompt` and `messages`.',
    properties: {
      model: { type: 'string', minLength: 1, maxLength: 256 },
      prompt: { type: 'string', maxLength: limits.messageChars, description: `Plain text; control strings such as <start_of_turn> count as the characters they are. At most ${limits.messageChars} characters (MAX_MESSAGE_CHARS).` },
      messages: { type: 'array', minItems: 1, maxItems: limits.messages, items: { $ref: 'ChatMessage#' }, description: 'A conversation, rendered by the chat template.' },
      add_special_tokens: { type: 'boolean', description: 'With `prompt`: the leading <bos> (default true). With `messages` the template writes it.' },
      add_generation_prompt: { type: 'boolean', description: 'With `messages`: end with the model turn that a completion starts (default true).' },
      chat_template_kwargs: { type: 'object', description: 'With `messages`: extra chat-template variables.' },
      return_token_strs: { type: 'boolean', description: 'Also return each token as its vocabulary string.' },
    },
  },
  {
    $id: 'TokenizeResponse',
    type: 'object',
    required: ['count', 'max_model_len', 'tokens'],
    properties: {
      count: { type: 'integer' },
      max_model_len: { type: 'integer', description: 'Tokens a session keeps in its KV cache (CACHE_CAPACITY); longer conversations roll.' },
      tokens: { type: 'array', items: { type: 'integer' } },
      token_strs: { type: 'array', items: { type: 'string' } },
    },
  },
  {
    $id: 'DetokenizeRequest',
    type: 'object',
    required: ['tokens'],
    additionalProperties: false,
    properties: {
      model: { type: 'string', minLength: 1, maxLength: 256 },
      tokens: { type: 'array', maxItems: limits.messageChars, items: { type: 'integer', minimum: 0 }, description: 'Token ids; special tokens are kept in the text.' },
    },
  },
  {
    $id: 'DetokenizeResponse',
    type: 'object',
    required: ['prompt'],
    properties: { prompt: { type: 'string' } },
  },
];
