/**
 * Eviction planning for rolling KV caches: pure functions over cache positions.
 *
 * A session's cache holds the sink (BOS, the system prompt, at least 4 tokens)
 * followed by a window of the most recent tokens. When something must fit that
 * doesn't, the oldest whole turns after the sink go first; only when that can't
 * free enough (one turn longer than the room) do we cut tokens out of the oldest
 * part after the sink (StreamingLLM). The turn being answered/generated is
 * protected from whole-turn eviction. Because eviction always removes the
 * oldest tokens after the sink, the evicted tokens of a session are one
 * contiguous block of its logical history: `sink + evicted + kept`.
 *
 * Plans are in cache positions; the engine applies them to its K/V tensors and
 * renumbers the kept tokens contiguously.
 */
import { GemmaServeError } from '../errors.js';

/** Gemma 3's `<start_of_turn>` / `<end_of_turn>` ids: the defaults where no tokenizer is involved. */
export const START_OF_TURN_ID = 105;
export const END_OF_TURN_ID = 106;

/**
 * The ids of a vocabulary's turn markers (Gemma 2/3 `<start_of_turn>` /
 * `<end_of_turn>`, Gemma 4 `<|turn>` / `<turn|>`): turn-aware eviction and
 * prefix keys split at them. The loaded tokenizer reports its own
 * (GemmaTokenizer.turnMarkers); GEMMA3_TURN_MARKERS is the default.
 */
export interface TurnMarkers {
  startOfTurn: number;
  endOfTurn: number;
}

export const GEMMA3_TURN_MARKERS: Readonly<TurnMarkers> = Object.freeze({ startOfTurn: START_OF_TURN_ID, endOfTurn: END_OF_TURN_ID });
/** StreamingLLM's finding: a handful of initial tokens act as attention sinks. */
export const MIN_SINK = 4;

/** Half-open range `[start, end)` of cache (or prompt) positions. */
export type Range = [start: number, end: number];

/** What the planner needs to know about a cache. */
export interface CacheLayout {
  /** Tokens in the cache. */
  length: number;
  /** Leading tokens never evicted. */
  sinkLen: number;
  /** Cache positions of `<start_of_turn>` tokens after the sink, ascending. */
  turnStarts: number[];
  /** Start of the turn being prefilled/generated: whole-turn eviction stops here. */
  protectFrom: number;
}

export interface EvictionPlan {
  /** Ranges to keep, ascending; everything else is dropped and the rest renumbered from 0. */
  keep: Range[];
  /** Tokens dropped (all from `[sinkLen, sinkLen + evicted)`). */
  evicted: number;
  /** `turn`: whole turns only; `token`: the cut lands inside a turn. */
  kind: 'none' | 'turn' | 'token';
  /** Cache length after the plan is applied. */
  length: number;
  /** Turn starts after the plan, in the new cache positions. */
  turnStarts: number[];
  /** `protectFrom` in the new cache positions. */
  protectFrom: number;
}

/** Asked to make room that no eviction can make; callers cap chunk sizes below `capacity - sinkLen`. */
export class EvictionImpossibleError extends GemmaServeError {
  constructor(need: number, capacity: number, sinkLen: number) {
    super(
      `cannot make room for ${need} tokens: cache capacity ${capacity} minus the ${sinkLen}-token sink leaves ` +
        `${capacity - sinkLen}; use smaller prefill chunks or headroom, a shorter system prompt, or a larger cache capacity`,
      { status: 500, code: 'eviction_impossible' },
    );
  }
}

function checkCount(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${v}`);
}

/**
 * Plans the eviction that makes `need` more tokens fit into `capacity`,
 * freeing at least `minFree` when eviction happens at all (so evictions are
 * amortized instead of happening every step). Guarantees
 * `plan.length + need <= capacity`, keeps `[0, sinkLen)` and the newest tokens.
 */
export function planEviction(s: CacheLayout, need: number, capacity: number, minFree = 0): EvictionPlan {
  checkCount('length', s.length);
  checkCount('sinkLen', s.sinkLen);
  checkCount('need', need);
  checkCount('capacity', capacity);
  checkCount('minFree', minFree);
  if (need > capacity - s.sinkLen) throw new EvictionImpossibleError(need, capacity, s.sinkLen);
  const sink = Math.min(s.sinkLen, s.length);
  const protect = Math.min(Math.max(s.protectFrom, sink), s.length);
  const required = s.length + need - capacity;
  if (required <= 0) {
    return {
      keep: s.length > 0 ? [[0, s.length]] : [],
      evicted: 0,
      kind: 'none',
      length: s.length,
      turnStarts: s.turnStarts.filter((t) => t >= sink && t < s.length),
      protectFrom: protect,
    };
  }
  const goal = Math.max(required, minFree);

  // 1. Whole segments, oldest first: [sink, first turn start) is the remainder
  //    of a turn cut earlier (or the part of the first turn after the sink).
  const boundaries = s.turnStarts.filter((t) => t > sink && t < protect);
  boundaries.push(protect);
  let cut = sink;
  for (const b of boundaries) {
    if (cut - sink >= goal) break;
    cut = b;
  }
  let kind: EvictionPlan['kind'] = 'turn';
  // 2. Not enough even with every unprotected turn gone: cut tokens (StreamingLLM).
  if (cut - sink < required) {
    kind = 'token';
    cut = sink + Math.min(goal, s.length - sink);
  }
  const evicted = cut - sink;
  const keep: Range[] = [];
  if (sink > 0) keep.push([0, sink]);
  if (cut < s.length) keep.push([cut, s.length]);
  return {
    keep,
    evicted,
    kind,
    length: s.length - evicted,
    turnStarts: s.turnStarts.filter((t) => t >= cut && t < s.length).map((t) => t - evicted),
    protectFrom: Math.max(sink, protect - evicted),
  };
}

/** Indices of `<start_of_turn>` tokens. */
export function findTurnStarts(ids: ArrayLike<number>, startOfTurnId = START_OF_TURN_ID): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) if (ids[i] === startOfTurnId) out.push(i);
  return out;
}

/**
 * Start of the turn to protect in a chat-templated prompt: the last turn that
 * is closed by `<end_of_turn>` (the user's message when the prompt ends with
 * the generation prompt `<start_of_turn>model\n`), else the last turn start.
 */
export function lastClosedTurnStart(
  ids: ArrayLike<number>,
  startOfTurnId = START_OF_TURN_ID,
  endOfTurnId = END_OF_TURN_ID,
): number | undefined {
  let lastStart: number | undefined;
  let closedStart: number | undefined;
  let open: number | undefined;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] === startOfTurnId) {
      open = i;
      lastStart = i;
    } else if (ids[i] === endOfTurnId && open !== undefined) {
      closedStart = open;
      open = undefined;
    }
  }
  return closedStart ?? lastStart;
}

/**
 * Length of the sink of a prompt: at least `min` tokens, covering the common
 * prefix with `prefixIds` (the templated prompt up to the end of the system
 * prompt; Gemma's template puts the system prompt at the head of the first
 * user turn), at most `max`, never more than the prompt.
 */
export function sinkLength(
  ids: ArrayLike<number>,
  opts: { prefixIds?: ArrayLike<number>; min?: number; max?: number } = {},
): number {
  const min = opts.min ?? MIN_SINK;
  let common = 0;
  if (opts.prefixIds) {
    const n = Math.min(ids.length, opts.prefixIds.length);
    while (common < n && ids[common] === opts.prefixIds[common]) common++;
  }
  return Math.min(Math.max(min, common), opts.max ?? Infinity, ids.length);
}

export interface PromptPlan {
  /** Prompt ids to prefill: the sink then the newest tokens. */
  ids: number[];
  /** Prompt tokens left out, all from `[sinkLen, sinkLen + dropped)`. */
  dropped: number;
  sinkLen: number;
  kind: EvictionPlan['kind'];
  /** Ranges of the prompt that are kept. */
  keep: Range[];
  /** Turn starts after the sink, in cache positions. */
  turnStarts: number[];
  /** Start of the protected turn, in cache positions. */
  protectFrom: number;
}

/**
 * Fits a prompt into `capacity - headroom` tokens: the sink plus the most
 * recent whole turns that fit, or, when even the protected (newest closed)
 * turn doesn't fit, the most recent tokens. A prompt that fits is kept whole.
 */
export function planPrompt(
  promptIds: ArrayLike<number>,
  sinkLen: number,
  capacity: number,
  headroom: number,
  opts: { protectFrom?: number; startOfTurnId?: number; endOfTurnId?: number } = {},
): PromptPlan {
  const sink = Math.min(sinkLen, promptIds.length);
  const turnStarts = findTurnStarts(promptIds, opts.startOfTurnId).filter((t) => t >= sink);
  const protectFrom =
    opts.protectFrom ?? lastClosedTurnStart(promptIds, opts.startOfTurnId, opts.endOfTurnId) ?? sink;
  const plan = planEviction({ length: promptIds.length, sinkLen: sink, turnStarts, protectFrom }, headroom, capacity);
  const ids: number[] = [];
  for (const [a, b] of plan.keep) for (let i = a; i < b; i++) ids.push(promptIds[i]!);
  return {
    ids,
    dropped: plan.evicted,
    sinkLen: sink,
    kind: plan.kind,
    keep: plan.keep,
    turnStarts: plan.turnStarts,
    protectFrom: plan.protectFrom,
  };
}
