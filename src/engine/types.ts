/** Types shared across the engine boundary: what a caller asks for and what comes back per token. */

/** Per-request sampling and stopping parameters, already validated. */
export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 0 means off. */
  topK: number;
  /** 1 means off. */
  topP: number;
  /** 0 means off. */
  minP: number;
  /** Seed of the request's own random stream; absent means a random seed. */
  seed?: number;
  /** OpenAI-style additive penalties (0 = off). */
  presencePenalty: number;
  frequencyPenalty: number;
  /** HF/vLLM-style multiplicative penalty (1 = off). */
  repetitionPenalty: number;
  /** token id -> additive bias, applied before everything else. */
  logitBias: Record<number, number>;
  /** Return the chosen token's logprob. */
  logprobs: boolean;
  /** Number of alternatives per position (0..20). */
  topLogprobs: number;
  /** Largest number of tokens to generate. */
  maxTokens: number;
  /** Stop strings, matched on decoded text, never emitted. */
  stop: string[];
  /** Extra token ids that end generation (EOS and <end_of_turn> are always included). */
  stopTokenIds: number[];
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: {},
  logprobs: false,
  topLogprobs: 0,
  maxTokens: 256,
  stop: [],
  stopTokenIds: [],
};

/**
 * What crosses from the device for one row of one step: the K best candidates,
 * sorted descending. `logits` are after logit bias and penalties but before
 * temperature; `logsumexp` is over the whole vocabulary of those logits (so
 * `logits - logsumexp` are the logprobs reported to clients), and
 * `scaledLogsumexp` is over the whole vocabulary of `logits / temperature`
 * (equal to `logsumexp` when temperature is 0 or 1), so sampling can use exact
 * full-vocabulary probabilities of the K candidates.
 */
export interface TopK {
  ids: Int32Array;
  logits: Float32Array;
  logsumexp: number;
  scaledLogsumexp: number;
}

export type FinishReason = 'stop' | 'length';

export interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

export interface TokenLogprob extends TopLogprob {
  top: TopLogprob[];
}
