/**
 * Binds a request to a session and its KV slot, and keeps the slot's cache
 * and the session's metadata in step while the request runs:
 *
 * 1. resolve the session (named, matched by prompt prefix, or new) and take a slot;
 * 2. plan the turn (src/cache): reuse, evict, prefill; apply it to the slot
 *    (truncate, then shift-compact or rebuild);
 * 3. while generating, make room when the cache is full (evict the oldest
 *    whole turns, never the current one);
 * 4. afterwards, record what the cache holds and give the slot back. A
 *    reply's thinking block (Gemma 4) is not kept: the next turn's prompt
 *    renders the reply without it, so the cache keeps the history only up to
 *    the block and the next turn prefills the answer as the template renders it.
 */
import { randomUUID } from 'node:crypto';
import type { EvictionMode } from '../../config/index.js';
import {
  appendTokens,
  applyEviction,
  cacheLength,
  GEMMA3_TURN_MARKERS,
  OPEN_NAMESPACE,
  planEviction,
  scopedId,
  planTurn,
  sinkLength,
  truncateMeta,
  type SessionMeta,
  type SlotManager,
  type TurnMarkers,
} from '../cache/index.js';
import type { Engine } from '../engine/engine.js';
import type { Sequence } from '../engine/sampler.js';
import type { ChatMessage } from '../model/tokenizer.js';

/** The modes are config's EVICTION_MODES (EVICTION_MODE). */
export type { EvictionMode };

export interface SessionTurnOptions {
  mode: EvictionMode;
  /** Most tokens kept free after a prompt for the reply (capped at a quarter of the cache). */
  headroom?: number;
  /** Least tokens an eviction frees, so it does not recur every step. */
  minFree?: number;
  /** Called once per eviction with its kind and size. */
  onEvict?: (kind: 'turn' | 'token', tokens: number) => void;
  /** Called when a session had to give its slot up to another one. */
  onSlotReclaimed?: (sessionId: string) => void;
}

/** One request's hold on a slot. */
export interface Binding {
  sessionId: string;
  /** Whether the session is kept after the request (ephemeral bindings serve extra choices). */
  persistent: boolean;
  slot: number;
  /** Ids the sequence starts from: cached prefix then what to prefill. */
  promptIds: number[];
  /** Leading `promptIds` already in the slot. */
  reuse: number;
  /** Tokens dropped by the rolling cache for this request so far. */
  evicted: number;
  /** Session metadata for what the cache holds, up to `fed` tokens ago. */
  meta: SessionMeta;
  /** Generated tokens already recorded in `meta`. */
  recorded: number;
  protectFrom: number;
}

export class SessionTurns {
  private readonly capacity: number;
  /** The loaded tokenizer's turn markers: where turns start and end in its ids. */
  private readonly markers: Readonly<TurnMarkers>;

  constructor(
    private readonly engine: Engine,
    readonly slots: SlotManager,
    private readonly opts: SessionTurnOptions,
  ) {
    this.capacity = engine.capacity;
    this.markers = engine.tokenizer.turnMarkers ?? GEMMA3_TURN_MARKERS;
  }

  /**
   * The scoped id a request runs under: its own name, a conversation of the
   * same namespace that it extends, or a new one.
   */
  async resolve(named: string | undefined, promptIds: number[], namespace: string = OPEN_NAMESPACE): Promise<string> {
    if (named) return scopedId(namespace, named);
    return (await this.slots.matchPrefix(promptIds, namespace)) ?? scopedId(namespace, `sess-${randomUUID()}`);
  }

  /** Takes the session's slot and brings its cache to the state the prompt needs. */
  async bind(
    sessionId: string,
    messages: ChatMessage[],
    promptIds: number[],
    maxTokens: number,
    persistent = true,
    templateKwargs?: Record<string, unknown>,
  ): Promise<Binding> {
    const acquired = await this.slots.acquire(sessionId);
    if (acquired.reclaimedFrom) this.opts.onSlotReclaimed?.(acquired.reclaimedFrom);
    try {
      const C = this.capacity;
      const plan = planTurn(acquired.meta, promptIds, {
        id: sessionId,
        model: this.engine.modelId,
        capacity: C,
        headroom: Math.max(1, Math.min(maxTokens, this.opts.headroom ?? Infinity, Math.floor(C / 4))),
        minFree: this.minFree(),
        sinkLen: sinkLength(promptIds, { prefixIds: this.systemPrefix(messages, templateKwargs), max: Math.floor(C / 2) }),
        turnMarkers: this.markers,
      });
      const engine = this.engine;
      // Reported whether the slot is resident or rebuilt: a restored session or an over-long prompt drops tokens too.
      if (plan.kind !== 'none') this.opts.onEvict?.(plan.kind, plan.evicted);
      let reuse = 0;
      const resident = acquired.state === 'cached' && acquired.meta !== undefined && engine.slotLength(acquired.slot) === cacheLength(acquired.meta);
      if (resident && plan.reuse > 0 && engine.canTruncate(acquired.slot, plan.reuse)) {
        await engine.truncateSlot(acquired.slot, plan.reuse);
        if (plan.eviction.kind !== 'none' && this.opts.mode === 'shift') await engine.compactSlot(acquired.slot, plan.eviction.keep);
        reuse = plan.eviction.kind !== 'none' && this.opts.mode === 'recompute' ? 0 : plan.cacheIds.length;
      }
      // A slot that is not resident, or whose eviction is recomputed, is rebuilt from the kept ids.
      if (reuse === 0) await engine.resetSlot(acquired.slot);
      return {
        sessionId,
        persistent,
        slot: acquired.slot,
        promptIds: [...plan.cacheIds, ...plan.prefill],
        reuse,
        evicted: plan.evicted,
        meta: plan.meta,
        recorded: 0,
        protectFrom: plan.protectFrom,
      };
    } catch (err) {
      this.slots.release(sessionId);
      throw err;
    }
  }

  /**
   * Before `needed` generated tokens are written, evicts the oldest whole
   * turns (or tokens) so that they fit (the scheduler calls it before each
   * decode step). Rebuilds the slot in `recompute` mode, re-rotates the kept
   * keys in `shift` mode.
   */
  async makeRoom(b: Binding, seq: Sequence, needed: number): Promise<void> {
    const length = this.engine.slotLength(b.slot);
    // Prompts are planned to fit (planTurn); only generation needs room made.
    if (length + needed <= this.capacity || !seq.prefillDone) return;
    this.sync(b, seq);
    const plan = planEviction(
      { length, sinkLen: b.meta.sinkIds.length, turnStarts: b.meta.turnStarts, protectFrom: b.protectFrom },
      needed,
      this.capacity,
      this.minFree(),
    );
    if (plan.kind === 'none') return;
    b.meta = applyEviction(b.meta, plan);
    b.protectFrom = plan.protectFrom;
    b.evicted += plan.evicted;
    this.opts.onEvict?.(plan.kind, plan.evicted);
    if (this.opts.mode === 'shift') {
      await this.engine.compactSlot(b.slot, plan.keep);
      return;
    }
    await this.engine.rebuildSlot(b.slot, [...b.meta.sinkIds, ...b.meta.keptIds]);
  }

  /** Records what the request left in the cache and gives the slot back. */
  async finish(b: Binding, seq: Sequence | undefined, ok: boolean): Promise<void> {
    try {
      if (!b.persistent) {
        await this.engine.resetSlot(b.slot);
        await this.slots.delete(b.sessionId).catch(() => false);
        return;
      }
      if (ok && seq) {
        this.sync(b, seq);
        if (cacheLength(b.meta) === this.engine.slotLength(b.slot)) {
          await this.dropThinking(b);
          await this.slots.update(b.sessionId, b.meta);
        }
      } else {
        // A failed or cancelled turn leaves no trustworthy cache: start the slot over next time.
        await this.engine.resetSlot(b.slot);
      }
    } finally {
      this.slots.release(b.sessionId);
    }
  }

  /**
   * Cuts the cache back to where the last turn's thinking block starts (a
   * block the model wrote, or the empty one Gemma 4's generation prompt
   * closes when thinking is off): the next turn renders the reply without it
   * (Gemma 4's template and guidance drop thoughts from the history), so
   * keeping it would make that prompt diverge inside the reply. Only for
   * vocabularies with thinking markers; the slot is truncated (or reset, to
   * be rebuilt from the metadata, where it cannot be).
   */
  private async dropThinking(b: Binding): Promise<void> {
    const markers = this.engine.tokenizer.reasoningMarkers;
    if (!markers) return;
    const meta = b.meta;
    const sink = meta.sinkIds.length;
    // The reply's turn header: the last turn start before the generated tokens.
    const promptEnd = Math.max(sink, cacheLength(meta) - b.recorded);
    let header = promptEnd;
    for (let i = meta.turnStarts.length - 1; i >= 0; i--) {
      if (meta.turnStarts[i]! < promptEnd) {
        header = meta.turnStarts[i]!;
        break;
      }
    }
    const at = meta.keptIds.indexOf(markers.start, header - sink);
    if (at < 0) return;
    const length = sink + at;
    b.meta = truncateMeta(meta, length, Date.now(), this.markers.startOfTurn);
    b.recorded = Math.max(0, b.recorded - (cacheLength(meta) - length));
    if (this.engine.canTruncate(b.slot, length)) await this.engine.truncateSlot(b.slot, length);
    else await this.engine.resetSlot(b.slot);
  }

  /** Brings `b.meta` up to the tokens the sequence has written to the cache. */
  private sync(b: Binding, seq: Sequence): void {
    const inCache = this.engine.slotLength(b.slot);
    const known = cacheLength(b.meta);
    if (inCache <= known) return;
    // Prefilled prompt tokens are in meta already; generated ones fed to the model follow.
    const written = seq.generated.slice(b.recorded, b.recorded + inCache - known);
    b.recorded += written.length;
    b.meta = appendTokens(b.meta, written, Date.now(), this.markers.startOfTurn);
  }

  private minFree(): number {
    return this.opts.minFree ?? Math.max(1, Math.floor(this.capacity / 8));
  }

  /**
   * Template-rendered ids up to the end of the system prompt (Gemma puts it
   * inside the first user turn), encoded as encodeChat encodes it: control
   * strings in the system prompt are text.
   */
  private systemPrefix(messages: ChatMessage[], templateKwargs?: Record<string, unknown>): number[] | undefined {
    const first = messages[0];
    if (!first || first.role !== 'system') return undefined;
    try {
      return this.engine.tokenizer.encodeChatPrefix([first, { role: 'user', content: '' }], 0, { addGenerationPrompt: false, templateKwargs });
    } catch {
      return undefined;
    }
  }
}
