/**
 * What a session's KV cache holds, as plain data (no tensors): enough to verify
 * a new prompt against it, to rebuild the cache by prefilling `sinkIds` then
 * `keptIds`, and to match clients that resend the whole history.
 *
 * Logical history = sink + evicted block + kept window (eviction only ever
 * removes the oldest tokens after the sink). The evicted block is known only by
 * `evictedHash`, the hash of the logical prefix up to the kept window, from
 * which every longer prefix hash can be recomputed. All updates return a copy.
 */
import { findTurnStarts, START_OF_TURN_ID, type EvictionPlan, type PromptPlan } from './eviction.js';
import { hashTokens, prefixKey, TokenHasher, type TokenHash } from './hash.js';

export interface SessionMeta {
  id: string;
  /** Model the cache was computed with; a session never moves to another model. */
  model: string;
  /** Cache positions `[0, sinkIds.length)`, never evicted. */
  sinkIds: number[];
  /** The kept window, at cache positions `sinkIds.length ...`. */
  keptIds: number[];
  /** Cache positions of `<start_of_turn>` in the kept window, ascending. */
  turnStarts: number[];
  /** Logical tokens evicted so far (also the position offset of the kept window). */
  evicted: number;
  /** Hash of the whole logical history. */
  historyHash: TokenHash;
  historyLength: number;
  /** Hash of the logical prefix `sink + evicted block`. */
  evictedHash: TokenHash;
  /**
   * `prefixKey(i, hash(history[0:i]))` for the last `<start_of_turn>` at logical
   * index i past the sink: a client resending this conversation sends this prefix.
   */
  matchKey?: string;
  createdAt: number;
  updatedAt: number;
  lastUsedAt: number;
}

/** A session whose cache holds only `sinkIds`. */
export function createSessionMeta(init: { id: string; model: string; sinkIds: number[]; now?: number }): SessionMeta {
  const now = init.now ?? Date.now();
  const h = hashTokens(init.sinkIds);
  return {
    id: init.id,
    model: init.model,
    sinkIds: [...init.sinkIds],
    keptIds: [],
    turnStarts: [],
    evicted: 0,
    historyHash: h,
    historyLength: init.sinkIds.length,
    evictedHash: h,
    createdAt: now,
    updatedAt: now,
    lastUsedAt: now,
  };
}

/** The session a fresh prompt starts, once `plan.ids` (from planPrompt) are prefilled. */
export function sessionFromPrompt(init: {
  id: string;
  model: string;
  promptIds: ArrayLike<number>;
  plan: PromptPlan;
  now?: number;
  /** The vocabulary's turn-start id (default Gemma 3's). */
  startOfTurnId?: number;
}): SessionMeta {
  const now = init.now ?? Date.now();
  const ids = Array.from(init.promptIds);
  const { sinkLen, dropped } = init.plan;
  const sot = init.startOfTurnId ?? START_OF_TURN_ID;
  let meta = createSessionMeta({ id: init.id, model: init.model, sinkIds: ids.slice(0, sinkLen), now });
  if (dropped > 0) meta = skipTokens(meta, ids.slice(sinkLen, sinkLen + dropped), now, sot);
  return appendTokens(meta, ids.slice(sinkLen + dropped), now, sot);
}

/** Tokens in the cache. */
export function cacheLength(meta: SessionMeta): number {
  return meta.sinkIds.length + meta.keptIds.length;
}

/** Hashes `ids` onto the history, noting the last turn start for `matchKey`. */
function extendHistory(meta: SessionMeta, ids: ArrayLike<number>, startOfTurnId: number) {
  const hasher = new TokenHasher(meta.historyHash);
  let matchKey = meta.matchKey;
  for (let i = 0; i < ids.length; i++) {
    const pos = meta.historyLength + i;
    if (ids[i] === startOfTurnId && pos >= meta.sinkIds.length) matchKey = prefixKey(pos, hasher.digest());
    hasher.push(ids[i]!);
  }
  return { historyHash: hasher.digest(), historyLength: meta.historyLength + ids.length, matchKey };
}

/** Records tokens appended to the cache (prefilled prompt or generated). */
export function appendTokens(
  meta: SessionMeta,
  ids: ArrayLike<number>,
  now = Date.now(),
  startOfTurnId = START_OF_TURN_ID,
): SessionMeta {
  const base = cacheLength(meta);
  return {
    ...meta,
    ...extendHistory(meta, ids, startOfTurnId),
    keptIds: [...meta.keptIds, ...Array.from(ids)],
    turnStarts: [...meta.turnStarts, ...findTurnStarts(ids, startOfTurnId).map((t) => t + base)],
    updatedAt: now,
  };
}

/**
 * Records logical tokens that never enter the cache (a prompt's dropped
 * middle). Only valid while the kept window is empty, so that the evicted
 * tokens stay one block.
 */
export function skipTokens(
  meta: SessionMeta,
  ids: ArrayLike<number>,
  now = Date.now(),
  startOfTurnId = START_OF_TURN_ID,
): SessionMeta {
  if (meta.keptIds.length > 0) throw new RangeError('skipTokens needs an empty kept window; evict it first');
  const ext = extendHistory(meta, ids, startOfTurnId);
  return { ...meta, ...ext, evicted: meta.evicted + ids.length, evictedHash: ext.historyHash, updatedAt: now };
}

/** Records an eviction plan from `planEviction` over this session's cache. */
export function applyEviction(meta: SessionMeta, plan: EvictionPlan, now = Date.now()): SessionMeta {
  if (plan.evicted === 0) return meta;
  const sink = meta.sinkIds.length;
  const len = cacheLength(meta);
  if (plan.length !== len - plan.evicted || plan.evicted > meta.keptIds.length) {
    throw new RangeError(`eviction plan for a ${plan.length + plan.evicted}-token cache applied to ${len} tokens`);
  }
  return {
    ...meta,
    keptIds: meta.keptIds.slice(plan.evicted),
    turnStarts: meta.turnStarts.filter((t) => t >= sink + plan.evicted).map((t) => t - plan.evicted),
    evicted: meta.evicted + plan.evicted,
    evictedHash: hashTokens(meta.keptIds, 0, plan.evicted, meta.evictedHash),
    updatedAt: now,
  };
}

/** Drops the cache tail from position `length` on (a prompt diverged there). */
export function truncateMeta(
  meta: SessionMeta,
  length: number,
  now = Date.now(),
  startOfTurnId = START_OF_TURN_ID,
): SessionMeta {
  const sink = meta.sinkIds.length;
  if (length < sink || length > cacheLength(meta)) {
    throw new RangeError(`cannot truncate a ${cacheLength(meta)}-token cache with a ${sink}-token sink to ${length}`);
  }
  if (length === cacheLength(meta)) return meta;
  const keptIds = meta.keptIds.slice(0, length - sink);
  const base: SessionMeta = {
    ...meta,
    keptIds: [],
    turnStarts: [],
    historyHash: meta.evictedHash,
    historyLength: sink + meta.evicted,
    matchKey: undefined,
  };
  if (meta.matchKey !== undefined && Number(meta.matchKey.split('-')[0]) < sink + meta.evicted) {
    base.matchKey = meta.matchKey; // the last turn start lies in the evicted block, still a prefix
  }
  return appendTokens(base, keptIds, now, startOfTurnId);
}

export interface Reuse {
  /** Cache positions `[0, reuse)` that hold exactly what the prompt needs there. */
  reuse: number;
  /** Ids to prefill after them. Never empty. */
  suffix: number[];
}

/**
 * How much of the session's cache a prompt can reuse: the prompt must start
 * with the sink and the evicted block (checked by hash), then the longest
 * common prefix of the kept window counts. Undefined when the prompt doesn't
 * continue this session at all. When the prompt adds nothing, the last cached
 * token is handed back for prefill so that there are logits to sample from.
 */
export function computeReuse(meta: SessionMeta, promptIds: ArrayLike<number>): Reuse | undefined {
  const sink = meta.sinkIds.length;
  const base = sink + meta.evicted;
  if (promptIds.length < base) return undefined;
  for (let i = 0; i < sink; i++) if (promptIds[i] !== meta.sinkIds[i]) return undefined;
  if (hashTokens(promptIds, 0, base) !== meta.evictedHash) return undefined;
  const n = Math.min(meta.keptIds.length, promptIds.length - base);
  let lcp = 0;
  while (lcp < n && promptIds[base + lcp] === meta.keptIds[lcp]) lcp++;
  if (base + lcp === promptIds.length) {
    if (lcp === 0) return undefined;
    lcp--;
  }
  return { reuse: sink + lcp, suffix: Array.from(promptIds).slice(base + lcp) };
}

/** Keys of every turn-start prefix of a prompt, longest first (what `matchKey` is compared with). */
export function promptPrefixKeys(promptIds: ArrayLike<number>, startOfTurnId = START_OF_TURN_ID): string[] {
  const keys: string[] = [];
  const hasher = new TokenHasher();
  for (let i = 0; i < promptIds.length; i++) {
    if (promptIds[i] === startOfTurnId && i > 0) keys.push(prefixKey(i, hasher.digest()));
    hasher.push(promptIds[i]!);
  }
  return keys.reverse();
}

/** Loose shape check for metadata read back from a store. */
export function isSessionMeta(v: unknown): v is SessionMeta {
  if (typeof v !== 'object' || v === null) return false;
  const m = v as Record<string, unknown>;
  const nums = (a: unknown) => Array.isArray(a) && a.every((x) => Number.isInteger(x));
  return (
    typeof m.id === 'string' &&
    typeof m.model === 'string' &&
    nums(m.sinkIds) &&
    nums(m.keptIds) &&
    nums(m.turnStarts) &&
    Number.isInteger(m.evicted) &&
    typeof m.historyHash === 'string' &&
    Number.isInteger(m.historyLength) &&
    typeof m.evictedHash === 'string' &&
    typeof m.updatedAt === 'number'
  );
}
