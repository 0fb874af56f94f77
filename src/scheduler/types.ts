/**
 * The contract between the HTTP routes and the scheduler. Routes translate
 * OpenAI requests into a `GenerationRequest` (internal types only) and turn the
 * event stream back into JSON or SSE; the scheduler owns admission, batching,
 * cancellation and sessions. Anything implementing `Scheduler` can sit behind
 * the routes, which is how the HTTP tests run without an engine.
 */
import type { FinishReason, SamplingParams, TokenLogprob } from '../engine/types.js';
import type { GrammarSpec } from '../engine/grammar/grammars.js';

/** One conversational turn after protocol normalisation (roles Gemma's chat template knows). */
export interface ChatTurn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** A text completion's prompt: text, or token ids ready to prefill. */
export type RawPrompt = { text: string } | { ids: number[] };

export interface GenerationRequest {
  /** The HTTP request id, for logs: a client's x-request-id when sane, so not guaranteed unique (do not key maps on it). */
  requestId: string;
  /** Named session (x-session-id header or `prompt_cache_key`); absent means match by prefix or start a new one. */
  sessionId?: string;
  /**
   * The credential's namespace (a hash of the API key): sessions are created,
   * named and matched within it only. Absent: the shared namespace used when keys are off.
   */
  namespace?: string;
  /** Whole conversation as the client sent it, normalised; the scheduler reuses what a session caches. */
  messages: ChatTurn[];
  /**
   * A raw prompt (text completions) in place of `messages`, which is then ignored:
   * no chat template and no session (nothing is matched, kept or named). Text is
   * encoded with BOS first and control strings as their characters; ids are
   * taken as they are. Either must leave room in the context for the reply.
   */
  prompt?: RawPrompt;
  /** Extra chat-template variables (OpenAI-compatible `chat_template_kwargs`, e.g. `enable_thinking`). */
  templateKwargs?: Record<string, unknown>;
  params: SamplingParams;
  /** Structured output: the grammar every choice follows (compiled before admission). */
  grammar?: GrammarSpec;
  /** Number of independent choices to sample (OpenAI `n`). */
  n: number;
  /** Aborted when the client disconnects: the request leaves the batch at the next step. */
  signal: AbortSignal;
}

export interface GenerationUsage {
  /** Tokens in the full templated prompt. */
  promptTokens: number;
  /** Tokens generated, summed over choices. */
  completionTokens: number;
  /** Prompt tokens found in the session's cache and not prefilled again. */
  cachedTokens: number;
  /** Tokens the rolling cache dropped while serving this request (prompt or generation). */
  evictedTokens: number;
  /** Prompt tokens actually run through prefill (includes recomputed ones). */
  promptTokensProcessed: number;
  /**
   * Generated tokens inside thinking blocks (markers included), summed over
   * choices; part of `completionTokens`. Only for models with thinking markers.
   */
  reasoningTokens?: number;
}

/**
 * Events in the order a client sees them: per choice, `token`s then exactly one
 * `finish`; after every choice finished, one `usage`, then the stream ends.
 * A `token` may carry empty text (stop-string lookahead) with a logprob.
 */
export type GenerationEvent =
  | {
      type: 'token';
      choice: number;
      text: string;
      logprob?: TokenLogprob;
      /** The text is the model's thinking (`reasoning_content`), not its answer. */
      reasoning?: true;
    }
  | { type: 'finish'; choice: number; reason: FinishReason }
  | { type: 'usage'; usage: GenerationUsage };

/**
 * Iterating drives the request. Errors before the first event (queue full,
 * shutting down, bad session) are thrown by `submit` or by the first `next()`,
 * so routes can still answer with an HTTP status; a later throw ends the stream.
 * Breaking out of the iteration (`return()`) cancels the request like an abort.
 */
export interface GenerationStream extends AsyncIterable<GenerationEvent> {
  /** Session the request was bound to, known once the first event arrived. */
  readonly sessionId?: string;
  /** A raw prompt's text (ids decoded, control tokens left out), for echoing it; undefined for conversations. */
  readonly promptText?: string;
}

export interface SchedulerStats {
  /** Requests admitted but waiting for a batch row. */
  queueDepth: number;
  /** Requests holding a batch row (prefilling or decoding). */
  running: number;
  /** Rows in the most recent decode step. */
  batchSize: number;
}

/** What GET /v1/sessions/:id shows: the slot manager's view of one conversation. */
export interface SessionInfo {
  /** The session's name as its client knows it. */
  id: string;
  /** True while the session owns a KV slot (otherwise only metadata is stored). */
  resident: boolean;
  slot: number | null;
  /** Tokens currently held in the session's cache (sink plus kept window). */
  cachedTokens: number;
  keptTurns: number;
  evictedTokens: number;
  /** Epoch milliseconds. */
  createdAt: number;
  lastUsedAt: number;
}

export interface Scheduler {
  submit(req: GenerationRequest): GenerationStream;
  stats(): SchedulerStats;
  /** Undefined when the namespace has no session of that name (memory or store). */
  session(name: string, namespace?: string): Promise<SessionInfo | undefined>;
  /** Frees the slot and the stored metadata; false when unknown in the namespace. Waits for a running request on it to end. */
  deleteSession(name: string, namespace?: string): Promise<boolean>;
  /** Stop admitting, let running requests finish for up to graceMs, cancel the rest, flush session metadata. */
  shutdown(graceMs: number): Promise<void>;
}
