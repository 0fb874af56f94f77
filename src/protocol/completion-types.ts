/**
 * OpenAI's legacy text completion types (`POST /v1/completions`), ordered as
 * OpenAI documents them, plus the vLLM sampling extensions the chat request
 * takes too. They mirror ./completion-schemas.ts; a request of this type has
 * passed that schema.
 */
import type { ChatFinishReason, CompletionUsage } from './chat-types.js';

/** A string, strings, token ids, or lists of token ids: each prompt is its own set of `n` choices. */
export type CompletionPrompt = string | string[] | number[] | number[][];

export interface CompletionRequest {
  model: string;
  prompt: CompletionPrompt;
  /** Accepted when it equals `n` (candidates are not ranked server-side). */
  best_of?: number | null;
  /** Prepend each prompt's text to its choices. */
  echo?: boolean | null;
  frequency_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  /** Log probabilities of the chosen tokens and of this many most likely ones (0..5). */
  logprobs?: number | null;
  max_tokens?: number | null;
  n?: number | null;
  presence_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  /** Not supported (no fill-in-the-middle): refused with 400. */
  suffix?: string | null;
  temperature?: number | null;
  top_p?: number | null;
  /** An end-user label for logs. */
  user?: string;
  // vLLM extensions.
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  stop_token_ids?: number[] | null;
}

/** Legacy logprobs: parallel lists over a choice's tokens. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  /** Per token: the most likely tokens' text -> logprob (as many as `logprobs` asked for). */
  top_logprobs: Record<string, number>[];
  /** Per token: where its text starts in the choice's text. */
  text_offset: number[];
}

export interface CompletionChoice {
  index: number;
  text: string;
  logprobs: CompletionLogprobs | null;
  finish_reason: ChatFinishReason | null;
}

export interface TextCompletion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: (CompletionChoice & { finish_reason: ChatFinishReason })[];
  usage: CompletionUsage;
}

export interface TextCompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: CompletionChoice[];
  /** Present (null until the last chunk) only when stream_options.include_usage is true. */
  usage?: CompletionUsage | null;
}
