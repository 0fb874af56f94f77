/**
 * Sampling over one row's top-K candidates, in plain JavaScript.
 *
 * The device reduces each row's logits to the K best candidates (sorted
 * descending, pre-temperature) plus two full-vocabulary log-normalizers (see
 * `TopK`). Everything here works on those arrays: choosing a token, reporting
 * logprobs, and deciding how many candidates a request needs. Filters follow
 * Hugging Face's order (temperature, top_k, top_p, min_p); each keeps a prefix
 * of the sorted candidates, so the result is the shortest of those prefixes.
 */
import type { SamplingParams, TokenLogprob, TopK, TopLogprob } from './types.js';
import type { Rng } from './rng.js';
import { quote } from '../errors.js';
import {
  LogitBiasError,
  NoCandidatesError,
  SamplingRangeError,
  StopSequenceError,
  TopLogprobsWithoutLogprobsError,
} from './sampling-errors.js';

/** Most alternatives a request may ask for per position (OpenAI's limit). */
export const MAX_TOP_LOGPROBS = 20;
/** Logprob reported for impossible tokens (-inf is not JSON); OpenAI uses the same floor. */
export const LOGPROB_FLOOR = -9999;
/** Slack on the top_p and min_p comparisons: candidate logits are float32. */
const TOLERANCE = 1e-6;

/** True when the request always takes the best candidate. */
export function isGreedy(p: Pick<SamplingParams, 'temperature' | 'topK'>): boolean {
  return p.temperature === 0 || p.topK === 1;
}

/**
 * How many candidates the device must return for this request: enough to
 * sample from and to report `topLogprobs` alternatives, never more than `cap`
 * (the engine's configured top-K). With top_k off, top_p/min_p/plain sampling
 * use the whole cap; the tail beyond it is treated as zero probability.
 */
export function requiredK(p: SamplingParams, cap: number): number {
  let k: number;
  if (isGreedy(p)) k = Math.max(1, p.topLogprobs);
  else if (p.topK > 0) k = Math.max(p.topK, p.topLogprobs);
  else k = cap;
  return Math.max(1, Math.min(cap, k));
}

/**
 * Relative sampling weights of the candidates that survive top_k, top_p and
 * min_p, at the request's temperature: `w[i] = exp((logit[i] - logit[0]) / T)`,
 * so `w[0] = 1`. Its length is the number of candidates kept (at least 1).
 * Not meaningful for greedy requests.
 */
export function candidateWeights(top: TopK, p: SamplingParams): Float64Array {
  const n = top.ids.length;
  const t = p.temperature;
  const l0 = top.logits[0]!;
  const k = p.topK > 0 ? Math.min(p.topK, n) : n;
  const w = new Float64Array(k);
  let sum = 0;
  for (let i = 0; i < k; i++) {
    const x = Math.exp((top.logits[i]! - l0) / t);
    w[i] = x > 0 ? x : 0; // NaN and masked (-inf) logits get no mass
    sum += w[i]!;
  }
  let kept = k;
  if (p.topP < 1) {
    // top_p acts on the distribution left after top_k: renormalized over the k
    // candidates when top_k is on, else the exact full-vocabulary one.
    let scale = 1 / sum;
    if (!(p.topK > 0)) {
      const p0 = Math.exp(l0 / t - top.scaledLogsumexp);
      if (p0 > 0 && p0 <= 1 + TOLERANCE) scale = p0;
    }
    let cum = 0;
    let m = 0;
    while (m < kept) {
      cum += w[m]! * scale;
      m++;
      if (cum >= p.topP - TOLERANCE) break;
    }
    kept = m;
  }
  if (p.minP > 0) {
    // Weights are probabilities relative to the most likely candidate.
    const threshold = p.minP * (1 - TOLERANCE);
    let m = 1;
    while (m < kept && w[m]! >= threshold) m++;
    kept = m;
  }
  return kept === k ? w : w.subarray(0, kept);
}

/**
 * Choose the next token of one row. Returns an index into `top.ids` /
 * `top.logits` (the token id is `top.ids[index]`); the chosen token is always
 * one of the candidates. Greedy requests take index 0 and draw nothing from
 * `rng`; all others draw exactly one number (none when there is a single
 * candidate), so a seeded request replays.
 */
export function pickToken(top: TopK, p: SamplingParams, rng: Rng): number {
  const n = top.ids.length;
  if (n === 0) throw new NoCandidatesError();
  if (isGreedy(p) || n === 1) return 0;
  if (!(top.logits[0]! > -Infinity)) return 0; // every candidate masked: nothing to weigh
  const w = candidateWeights(top, p);
  let total = 0;
  for (let i = 0; i < w.length; i++) total += w[i]!;
  const u = rng.next() * total;
  let cum = 0;
  let last = 0;
  for (let i = 0; i < w.length; i++) {
    if (w[i]! <= 0) continue;
    cum += w[i]!;
    last = i;
    if (u < cum) return i;
  }
  return last; // rounding left u at the very top
}

/** What logprob reporting needs from a tokenizer. */
export interface TokenPieces {
  /** Vocabulary string of a token (used only for tokens without bytes, e.g. special ones). */
  tokenText(id: number): string;
  /** Raw UTF-8 bytes the token stands for (byte-fallback `<0xNN>` is that single byte). */
  tokenBytes(id: number): Uint8Array;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * One token as OpenAI reports it: `token` is the token's own text; a token
 * whose bytes are not valid UTF-8 on their own (part of a character) is shown
 * as `bytes:\xNN...`, as OpenAI does; `bytes` are always the raw bytes.
 */
export function describeToken(tok: TokenPieces, id: number, logprob: number): TopLogprob {
  const raw = tok.tokenBytes(id);
  const bytes = Array.from(raw);
  let token: string;
  if (raw.length === 0) {
    token = tok.tokenText(id);
  } else {
    try {
      token = strictUtf8.decode(raw);
    } catch {
      token = 'bytes:' + bytes.map((b) => '\\x' + b.toString(16).padStart(2, '0')).join('');
    }
  }
  return { token, logprob: clampLogprob(logprob), bytes };
}

function clampLogprob(x: number): number {
  return x > LOGPROB_FLOOR ? x : LOGPROB_FLOOR;
}

/**
 * The chosen token's logprob entry: `logprob = logit - logsumexp` (the model's
 * distribution before temperature and truncation, as OpenAI and vLLM report
 * it), with the first `topLogprobs` candidates as alternatives.
 */
export function tokenLogprob(top: TopK, index: number, topLogprobs: number, tok: TokenPieces): TokenLogprob {
  if (!(index >= 0 && index < top.ids.length)) {
    throw new RangeError(`chosen index ${index} is outside the ${top.ids.length} candidates`);
  }
  const chosen = describeToken(tok, top.ids[index]!, top.logits[index]! - top.logsumexp);
  const n = Math.min(topLogprobs, top.ids.length);
  const alternatives: TopLogprob[] = [];
  for (let i = 0; i < n; i++) alternatives.push(describeToken(tok, top.ids[i]!, top.logits[i]! - top.logsumexp));
  return { ...chosen, top: alternatives };
}

/** Server limits that bound a request's sampling parameters. */
export interface SamplingLimits {
  vocabSize: number;
  /** Largest max_tokens accepted. */
  maxTokensLimit: number;
  /** The engine's top-K cap: the largest top_k (and top_logprobs) it can serve. */
  topKCap: number;
  /** Most `stop` strings (MAX_STOP_STRINGS); each costs a text match per generated token. Absent: no limit. */
  maxStopStrings?: number;
  /** Most `logit_bias` entries (MAX_LOGIT_BIAS); each is applied to every step's logits. Absent: no limit. */
  maxLogitBias?: number;
}

function checkRange(param: string, v: number, lo: number, hi: number, loOpen = false, allowed?: string): void {
  const ok = typeof v === 'number' && (loOpen ? v > lo : v >= lo) && v <= hi;
  if (!ok) throw new SamplingRangeError(param, v, allowed ?? `a number in ${loOpen ? '(' : '['}${lo}, ${hi}]`);
}

function checkInt(param: string, v: number, lo: number, hi: number, allowed?: string): void {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new SamplingRangeError(param, v, allowed ?? `an integer in [${lo}, ${hi}]`);
  }
}

/**
 * Check a request's sampling parameters against OpenAI's ranges and this
 * server's limits. Throws a subclass of `InvalidSamplingParamError` whose
 * `param` is the OpenAI field name. top_k accepts -1 and 0 as "off" (vLLM).
 */
export function validateSamplingParams(p: SamplingParams, limits: SamplingLimits): void {
  checkRange('temperature', p.temperature, 0, 2);
  checkRange('top_p', p.topP, 0, 1, true);
  const kCap = Math.min(limits.topKCap, limits.vocabSize);
  checkInt('top_k', p.topK, -1, kCap, `an integer in [1, ${kCap}], or 0 or -1 to turn it off`);
  checkRange('min_p', p.minP, 0, 1);
  checkRange('presence_penalty', p.presencePenalty, -2, 2);
  checkRange('frequency_penalty', p.frequencyPenalty, -2, 2);
  checkRange('repetition_penalty', p.repetitionPenalty, 0, 2, true);
  if (p.seed !== undefined) checkInt('seed', p.seed, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, 'a safe integer');
  const lpCap = Math.min(MAX_TOP_LOGPROBS, limits.topKCap);
  checkInt('top_logprobs', p.topLogprobs, 0, lpCap);
  if (p.topLogprobs > 0 && !p.logprobs) throw new TopLogprobsWithoutLogprobsError(p.topLogprobs);
  checkInt('max_tokens', p.maxTokens, 1, limits.maxTokensLimit);

  const biased = Object.keys(p.logitBias).length;
  if (limits.maxLogitBias !== undefined && biased > limits.maxLogitBias) {
    throw new LogitBiasError(`accepts at most ${limits.maxLogitBias} entries (MAX_LOGIT_BIAS); got ${biased}.`);
  }
  for (const [key, bias] of Object.entries(p.logitBias)) {
    const id = Number(key);
    if (!/^\d+$/.test(key) || !Number.isInteger(id) || id >= limits.vocabSize) {
      throw new LogitBiasError(`keys must be token ids, integers in [0, ${limits.vocabSize}); got ${quote(key)}.`);
    }
    if (typeof bias !== 'number' || !(bias >= -100 && bias <= 100)) {
      throw new LogitBiasError(`values must be numbers in [-100, 100]; token ${key} has ${String(bias)}.`);
    }
  }

  if (limits.maxStopStrings !== undefined && p.stop.length > limits.maxStopStrings) {
    throw new StopSequenceError(`accepts at most ${limits.maxStopStrings} strings (MAX_STOP_STRINGS); got ${p.stop.length}.`);
  }
  p.stop.forEach((s, i) => {
    if (typeof s !== 'string' || s.length === 0) {
      throw new StopSequenceError(`entries must be non-empty strings; entry ${i} is ${quote(s)}.`);
    }
  });
  p.stopTokenIds.forEach((id) => checkInt('stop_token_ids', id, 0, limits.vocabSize - 1));
}
