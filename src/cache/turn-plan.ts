/**
 * One request's cache plan, from what the slot holds and the new prompt: how
 * much of the cache to reuse, what to evict, what to prefill, and the metadata
 * afterwards. Reused cache, evicted cache and the new suffix are planned as
 * one sequence, so a suffix longer than the cache drops its own oldest turns
 * the same way (sink plus the newest turns that fit).
 */
import {
  findTurnStarts,
  GEMMA3_TURN_MARKERS,
  lastClosedTurnStart,
  planEviction,
  planPrompt,
  type EvictionPlan,
  type Range,
  type TurnMarkers,
} from './eviction.js';
import {
  appendTokens,
  applyEviction,
  computeReuse,
  sessionFromPrompt,
  skipTokens,
  truncateMeta,
  type SessionMeta,
} from './session-meta.js';

export interface TurnPlan {
  /** Cache positions `[0, reuse)` stay; the slot's tokens after them are discarded first. 0: start afresh. */
  reuse: number;
  /** Then this eviction over the `reuse` tokens kept (renumber the rest from the sink on). */
  eviction: EvictionPlan;
  /** What the cache holds after the eviction: what `recompute` mode, or a restored slot, prefills first. */
  cacheIds: number[];
  /** Then these prompt ids are prefilled. */
  prefill: number[];
  /** Cached tokens evicted plus prompt tokens left out, for usage reporting. */
  evicted: number;
  /** How `evicted` was chosen: whole turns, or tokens cut inside one; 'none' when nothing was dropped. */
  kind: EvictionPlan['kind'];
  /** Start of the protected turn in the cache once `prefill` is in; pass it to planEviction while generating. */
  protectFrom: number;
  /** Session metadata once `prefill` is in. */
  meta: SessionMeta;
}

export interface TurnPlanOptions {
  id: string;
  model: string;
  /** Cache capacity C of the global layers. */
  capacity: number;
  /** Room to leave after the prompt (tokens the reply can take before the next eviction). */
  headroom: number;
  /** Evict at least this much when evicting at all. */
  minFree?: number;
  /** Sink length for a session started afresh (see sinkLength). */
  sinkLen: number;
  /** The vocabulary's turn markers (default Gemma 3's): turns are evicted whole between them. */
  turnMarkers?: TurnMarkers;
  now?: number;
}

/** Plans a request for a session whose cache holds `meta` (undefined: nothing usable). */
export function planTurn(meta: SessionMeta | undefined, promptIds: ArrayLike<number>, o: TurnPlanOptions): TurnPlan {
  const now = o.now ?? Date.now();
  const { startOfTurn, endOfTurn } = o.turnMarkers ?? GEMMA3_TURN_MARKERS;
  const r = meta && meta.model === o.model ? computeReuse(meta, promptIds) : undefined;
  if (!r) {
    const p = planPrompt(promptIds, o.sinkLen, o.capacity, o.headroom, { startOfTurnId: startOfTurn, endOfTurnId: endOfTurn });
    return {
      reuse: 0,
      eviction: { keep: [], evicted: 0, kind: 'none', length: 0, turnStarts: [], protectFrom: 0 },
      cacheIds: [],
      prefill: p.ids,
      evicted: p.dropped,
      kind: p.dropped > 0 ? p.kind : 'none',
      protectFrom: p.protectFrom,
      meta: { ...sessionFromPrompt({ id: o.id, model: o.model, promptIds, plan: p, now, startOfTurnId: startOfTurn }), lastUsedAt: now },
    };
  }
  const m = truncateMeta(meta!, r.reuse, now, startOfTurn);
  const sink = m.sinkIds.length;
  const L = r.reuse;
  const suffixTurns = findTurnStarts(r.suffix, startOfTurn).map((t) => t + L);
  const closed = lastClosedTurnStart(r.suffix, startOfTurn, endOfTurn);
  const whole = planEviction(
    {
      length: L + r.suffix.length,
      sinkLen: sink,
      turnStarts: [...m.turnStarts, ...suffixTurns],
      protectFrom: closed === undefined ? L : L + closed,
    },
    o.headroom,
    o.capacity,
    o.minFree ?? 0,
  );
  const cut = sink + whole.evicted;
  const fromCache = Math.min(cut, L) - sink;
  const fromSuffix = Math.max(0, cut - L);
  const keep: Range[] = [];
  if (sink > 0) keep.push([0, sink]);
  if (sink + fromCache < L) keep.push([sink + fromCache, L]);
  const eviction: EvictionPlan = {
    keep: fromCache > 0 ? keep : L > 0 ? [[0, L]] : [],
    evicted: fromCache,
    kind: fromCache > 0 ? whole.kind : 'none',
    length: L - fromCache,
    turnStarts: m.turnStarts.filter((t) => t >= sink + fromCache).map((t) => t - fromCache),
    protectFrom: Math.min(whole.protectFrom, L - fromCache),
  };
  let next = applyEviction(m, eviction, now);
  const cacheIds = [...next.sinkIds, ...next.keptIds];
  if (fromSuffix > 0) next = skipTokens(next, r.suffix.slice(0, fromSuffix), now, startOfTurn);
  const prefill = r.suffix.slice(fromSuffix);
  next = { ...appendTokens(next, prefill, now, startOfTurn), lastUsedAt: now };
  return {
    reuse: L,
    eviction,
    cacheIds,
    prefill,
    evicted: whole.evicted,
    kind: whole.evicted > 0 ? whole.kind : 'none',
    protectFrom: whole.protectFrom,
    meta: next,
  };
}
