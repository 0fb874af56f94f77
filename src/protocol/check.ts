/**
 * Cross-field checks of a chat completion request, run after schema
 * validation: what a schema cannot say (one field depends on another or on a
 * server limit) and what deserves a clearer message than a schema error
 * (unsupported content and features). Pure, so it is tested without a server.
 */
import { InvalidValueError, quote } from '../errors.js';
import { checkJsonSchema } from '../engine/grammar/json-schema.js';
import { CHAT_TEMPLATE_KWARGS_MAX_DEPTH } from './chat-schemas.js';
import { CHAT_ROLES, type ChatCompletionRequest, type ContentPart } from './chat-types.js';
import {
  EmptyMessagesError,
  LimitExceededError,
  MissingParameterError,
  ParameterConflictError,
  TemplateKwargsError,
  UnknownRoleError,
  UnsupportedContentError,
  UnsupportedFeatureError,
} from './errors.js';

/** Server limits the checks compare against (from config and the loaded model). */
export interface ChatLimits {
  maxTokensLimit: number;
  /** Largest `n` (a choice takes a batch row). */
  maxN: number;
  topKCap: number;
  /** Vocabulary size for token-id checks; undefined skips them (model not loaded yet). */
  vocabSize?: number;
  /** Characters of text in one message, its parts added up (MAX_MESSAGE_CHARS; a string is bounded by the schema). */
  messageChars?: number;
  /** Bytes of chat_template_kwargs as JSON (MAX_CHAT_TEMPLATE_KWARGS_BYTES); undefined: no size check. */
  chatTemplateKwargsBytes?: number;
  /** Largest string length bound in a response schema (GRAMMAR_MAX_STRING_LENGTH); undefined: no bound allowed. */
  grammarMaxStringLength?: number;
}

const NON_TEXT_PARTS: Record<string, string> = {
  image_url: 'image content is not supported',
  input_image: 'image content is not supported',
  image: 'image content is not supported',
  input_audio: 'audio content is not supported',
  audio: 'audio content is not supported',
  file: 'file content is not supported',
  input_file: 'file content is not supported',
};

const present = (v: unknown): boolean => v !== undefined && v !== null;

/** Throws the first problem found as a named 400 error. */
export function checkChatRequest(req: ChatCompletionRequest, limits: ChatLimits): void {
  // Check 1: there is a conversation.
  if (!Array.isArray(req.messages)) throw new MissingParameterError('messages');
  if (req.messages.length === 0) throw new EmptyMessagesError();

  // Check 2: every message has a known role and text content.
  req.messages.forEach((m, i) => {
    const at = `messages[${i}]`;
    if (!(CHAT_ROLES as readonly string[]).includes(m.role)) throw new UnknownRoleError(`${at}.role`, m.role, CHAT_ROLES);
    if (present(m.tool_calls) && (m.tool_calls as unknown[]).length > 0) {
      throw new UnsupportedFeatureError(`${at}.tool_calls`, 'tools are not supported by this server');
    }
    if (present(m.function_call)) throw new UnsupportedFeatureError(`${at}.function_call`, 'function calling is not supported by this server');
    if (!present(m.content)) {
      if (m.role !== 'assistant') throw new MissingParameterError(`${at}.content`);
      return;
    }
    if (Array.isArray(m.content)) {
      m.content.forEach((p, j) => checkPart(p, `${at}.content[${j}]`));
      const chars = m.content.reduce((n, p) => n + (p.text?.length ?? 0), 0);
      if (limits.messageChars !== undefined && chars > limits.messageChars) {
        throw new LimitExceededError(`${at}.content`, chars, limits.messageChars, 'MAX_MESSAGE_CHARS');
      }
    }
  });

  // Check 3: no tools or function calling (an empty tools array is harmless).
  for (const name of ['tools', 'functions'] as const) {
    const v = req[name];
    if (present(v) && !(Array.isArray(v) && v.length === 0)) throw new UnsupportedFeatureError(name, 'tools are not supported by this server');
  }
  if (present(req.tool_choice)) throw new UnsupportedFeatureError('tool_choice', 'tools are not supported by this server');
  if (present(req.function_call)) throw new UnsupportedFeatureError('function_call', 'function calling is not supported by this server');

  // Check 4: text in, text out.
  if (present(req.response_format)) checkResponseFormat(req.response_format!, limits.grammarMaxStringLength ?? 0);
  if (present(req.modalities) && req.modalities!.some((m) => m !== 'text')) {
    throw new UnsupportedFeatureError('modalities', 'only text output is supported');
  }
  for (const name of ['audio', 'prediction', 'web_search_options'] as const) {
    if (present(req[name])) throw new UnsupportedFeatureError(name, 'this server generates plain text only');
  }

  // Check 5: each choice needs a batch row.
  if (present(req.n) && req.n! > limits.maxN) throw new LimitExceededError('n', req.n!, limits.maxN, 'MAX_BATCH_SIZE');

  // Check 6: one token limit, within the server's.
  if (present(req.max_tokens) && present(req.max_completion_tokens) && req.max_tokens !== req.max_completion_tokens) {
    throw new ParameterConflictError('max_tokens',
      "'max_tokens' and 'max_completion_tokens' differ; send only 'max_completion_tokens' (max_tokens is its deprecated alias).");
  }
  for (const name of ['max_completion_tokens', 'max_tokens'] as const) {
    const v = req[name];
    if (present(v) && v! > limits.maxTokensLimit) throw new LimitExceededError(name, v!, limits.maxTokensLimit, 'MAX_TOKENS_LIMIT');
  }

  // Check 7: stream_options only with stream (as OpenAI).
  if (present(req.stream_options) && req.stream !== true) {
    throw new ParameterConflictError('stream_options', "The 'stream_options' parameter is only allowed when 'stream' is true.");
  }

  // Check 8: top_logprobs needs logprobs and fits the device top-K.
  if (present(req.top_logprobs) && req.top_logprobs! > 0 && req.logprobs !== true) {
    throw new ParameterConflictError('top_logprobs', "'top_logprobs' requires 'logprobs' to be true.");
  }
  if (present(req.top_logprobs) && req.top_logprobs! > limits.topKCap) {
    throw new LimitExceededError('top_logprobs', req.top_logprobs!, limits.topKCap, 'TOPK_CAP');
  }

  // Check 9: top_k fits the device top-K.
  if (present(req.top_k) && req.top_k! > limits.topKCap) throw new LimitExceededError('top_k', req.top_k!, limits.topKCap, 'TOPK_CAP');

  // Check 10: chat_template_kwargs is plain JSON data, not too deep, not too large.
  if (present(req.chat_template_kwargs)) checkTemplateKwargs(req.chat_template_kwargs, limits.chatTemplateKwargsBytes);

  // Check 11: token ids exist in the vocabulary.
  if (limits.vocabSize !== undefined) checkSamplingTokenIds(req, limits.vocabSize);
}

/** The token ids of `logit_bias` and `stop_token_ids` (chat and text completions alike) exist in the vocabulary. */
export function checkSamplingTokenIds(req: { logit_bias?: Record<string, number> | null; stop_token_ids?: number[] | null }, vocab: number): void {
  for (const key of Object.keys(req.logit_bias ?? {})) {
    if (Number(key) >= vocab) throw new LimitExceededError(`logit_bias.${key}`, Number(key), vocab - 1, 'the model vocabulary');
  }
  (req.stop_token_ids ?? []).forEach((id, i) => {
    if (id >= vocab) throw new LimitExceededError(`stop_token_ids[${i}]`, id, vocab - 1, 'the model vocabulary');
  });
}

/**
 * Template variables must be what JSON can carry (a template may print or
 * iterate them): plain objects, arrays, strings, finite numbers, booleans,
 * null; at most CHAT_TEMPLATE_KWARGS_MAX_DEPTH deep and `maxBytes` as JSON.
 */
export function checkTemplateKwargs(kwargs: unknown, maxBytes?: number): void {
  if (typeof kwargs !== 'object' || kwargs === null || Array.isArray(kwargs)) throw new TemplateKwargsError('expected an object');
  const walk = (v: unknown, depth: number, path: string): void => {
    if (v === null || typeof v === 'string' || typeof v === 'boolean') return;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new TemplateKwargsError(`${path} is not a finite number`);
      return;
    }
    if (typeof v !== 'object') throw new TemplateKwargsError(`${path} is not JSON-serializable (${typeof v})`);
    if (depth > CHAT_TEMPLATE_KWARGS_MAX_DEPTH) throw new TemplateKwargsError(`nested more than ${CHAT_TEMPLATE_KWARGS_MAX_DEPTH} deep at ${path}`);
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, depth + 1, `${path}[${i}]`));
      return;
    }
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) throw new TemplateKwargsError(`${path} is not a plain JSON object`);
    for (const [k, x] of Object.entries(v)) walk(x, depth + 1, `${path}.${k.slice(0, 64)}`);
  };
  walk(kwargs, 1, 'chat_template_kwargs');
  if (maxBytes !== undefined) {
    const bytes = Buffer.byteLength(JSON.stringify(kwargs), 'utf8');
    if (bytes > maxBytes) throw new LimitExceededError('chat_template_kwargs', bytes, maxBytes, 'MAX_CHAT_TEMPLATE_KWARGS_BYTES');
  }
}

function checkPart(p: ContentPart, at: string): void {
  if (p.type === 'text') {
    if (typeof p.text !== 'string') throw new UnsupportedContentError(`${at}.text`, 'a text part needs a string "text"');
    return;
  }
  const why = NON_TEXT_PARTS[p.type];
  if (why !== undefined) throw new UnsupportedContentError(`${at}.type`, why);
  throw new UnsupportedContentError(`${at}.type`, `unknown content part type ${quote(p.type)}`);
}

/** A response format: text, json_object, or json_schema with a name and a schema the grammar engine enforces. */
function checkResponseFormat(format: NonNullable<ChatCompletionRequest['response_format']>, maxStringLength: number): void {
  if (format.type === 'text' || format.type === 'json_object') return;
  if (format.type !== 'json_schema') {
    throw new UnsupportedFeatureError('response_format.type', `the supported types are 'text', 'json_object' and 'json_schema', not ${quote(format.type)}`);
  }
  const js = format.json_schema;
  if (!present(js)) throw new MissingParameterError('response_format.json_schema');
  if (!present(js!.name)) throw new MissingParameterError('response_format.json_schema.name');
  if (!/^[a-zA-Z0-9_-]{1,64}$/.test(js!.name!)) {
    throw new InvalidValueError(`Invalid 'response_format.json_schema.name': ${quote(js!.name)}. Use 1 to 64 of a-z, A-Z, 0-9, underscores and dashes.`, 'response_format.json_schema.name');
  }
  if (!present(js!.schema)) throw new MissingParameterError('response_format.json_schema.schema');
  checkJsonSchema(js!.schema, 'response_format.json_schema.schema', { maxStringLength });
}
