/**
 * OpenAI chat completion types for text chat, ordered as OpenAI documents
 * them, plus the vLLM sampling extensions and gemma-serve's usage extension.
 * They mirror the JSON schemas in ./chat-schemas.ts, which Fastify validates
 * against; a request of this type has passed that schema.
 */

export const CHAT_ROLES = ['system', 'developer', 'user', 'assistant', 'tool'] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];

/** A content part; only `text` is supported, others are named in the 400 that rejects them. */
export interface ContentPart {
  type: string;
  text?: string;
  [other: string]: unknown;
}

export interface ChatCompletionMessageParam {
  role: ChatRole;
  /** A string or text parts; null only for assistant messages. */
  content?: string | ContentPart[] | null;
  /** Participant name (accepted, not used by Gemma's template). */
  name?: string;
  /** Present on assistant messages that called tools: rejected (tools are not supported). */
  tool_calls?: unknown[];
  /** On tool messages: accepted, the content is what the model sees. */
  tool_call_id?: string;
  refusal?: string | null;
  /** Deprecated function calling: rejected. */
  function_call?: unknown;
  /** On assistant messages: accepted and ignored (thinking is not part of the history). */
  reasoning_content?: string | null;
}

export interface ChatCompletionRequest {
  messages: ChatCompletionMessageParam[];
  model: string;
  frequency_penalty?: number | null;
  /** token id (as a string key) -> bias in [-100, 100]. */
  logit_bias?: Record<string, number> | null;
  logprobs?: boolean | null;
  /** Deprecated by OpenAI in favour of max_completion_tokens; both are accepted. */
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  n?: number | null;
  presence_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  temperature?: number | null;
  top_logprobs?: number | null;
  top_p?: number | null;
  /** Also names the session when no x-session-id header is sent. */
  user?: string;
  // Accepted and ignored (no effect on a self-hosted text model).
  store?: boolean | null;
  metadata?: Record<string, string> | null;
  service_tier?: string | null;
  parallel_tool_calls?: boolean;
  prompt_cache_key?: string;
  safety_identifier?: string;
  /** Only `{type: "text"}` is supported. */
  response_format?: { type: string; json_schema?: { name?: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null }; [other: string]: unknown };
  // Not supported; listed so the 400 can say so instead of "unrecognized argument".
  tools?: unknown[];
  tool_choice?: unknown;
  functions?: unknown[];
  function_call?: unknown;
  modalities?: string[] | null;
  audio?: unknown;
  prediction?: unknown;
  web_search_options?: unknown;
  // vLLM extensions.
  /** 0 or -1 = off. */
  top_k?: number | null;
  min_p?: number | null;
  /** Multiplicative (HF/vLLM), 1 = off. */
  repetition_penalty?: number | null;
  stop_token_ids?: number[] | null;
  /** Extra chat-template variables (e.g. `{ enable_thinking: true }` for Gemma 4); all keys are passed on. */
  chat_template_kwargs?: Record<string, unknown> | null;
}

export type ChatFinishReason = 'stop' | 'length';

export interface TopLogprobJson {
  token: string;
  logprob: number;
  bytes: number[] | null;
}

export interface TokenLogprobJson extends TopLogprobJson {
  top_logprobs: TopLogprobJson[];
}

export interface ChoiceLogprobs {
  content: TokenLogprobJson[] | null;
  refusal: null;
}

/** gemma-serve's usage extension: what the rolling cache did for this request. */
export interface GemmaServeUsage {
  /** Prompt tokens run through prefill (prompt_tokens minus cached ones, plus any recomputed). */
  prompt_tokens_processed: number;
  /** Tokens dropped from the session's cache by the rolling-cache policy during this request. */
  evicted_tokens: number;
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  /** Only for models that think (Gemma 4). */
  completion_tokens_details?: { reasoning_tokens: number };
  gemma_serve: GemmaServeUsage;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    /** `reasoning_content`: the reply's thinking (models that think, when the reply has a thinking block). */
    message: { role: 'assistant'; content: string; reasoning_content?: string; refusal: null };
    logprobs: ChoiceLogprobs | null;
    finish_reason: ChatFinishReason;
  }[];
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string; refusal?: null };
    logprobs: ChoiceLogprobs | null;
    finish_reason: ChatFinishReason | null;
  }[];
  /** Present (null until the last chunk) only when stream_options.include_usage is true. */
  usage?: CompletionUsage | null;
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
