/**
 * Which session owns which KV slot. The engine holds S slots of K/V tensors;
 * this class decides who gets one, and keeps each slot's SessionMeta (what its
 * cache holds) so that a request can tell what it may reuse.
 *
 * A session is busy from `acquire` until `release`. When no slot is free, the
 * least recently used idle session gives its slot up; its metadata goes to the
 * store first, so its next request comes back as `restored` (the engine
 * rebuilds the cache by prefilling `sinkIds` then `keptIds`). When every slot
 * is busy, `acquire` throws SlotsBusyError (429) at once, or, given `waitMs`,
 * waits that long for a release first (FIFO).
 */
import { GemmaServeError } from '../errors.js';
import { GEMMA3_TURN_MARKERS, type TurnMarkers } from './eviction.js';
import { namespaceOf } from './namespace.js';
import { cacheLength, computeReuse, promptPrefixKeys, type SessionMeta } from './session-meta.js';
import type { CacheLogger, SessionStore } from './session-store.js';

export class SlotsBusyError extends GemmaServeError {
  constructor(slots: number) {
    super(`all ${slots} KV cache slots are busy; retry shortly, or raise the slot count`, {
      status: 429,
      type: 'rate_limit_error',
      code: 'slots_busy',
    });
  }
}

/** Two requests for the same session at once: its cache can only serve one. */
export class SessionBusyError extends GemmaServeError {
  constructor(id: string) {
    super(`session ${JSON.stringify(id)} is answering another request; wait for it to finish`, {
      status: 429,
      type: 'rate_limit_error',
      code: 'session_busy',
    });
  }
}

export class UnknownSessionError extends GemmaServeError {
  constructor(id: string) {
    super(`session ${JSON.stringify(id)} holds no slot; acquire it first`, { status: 500, code: 'unknown_session' });
  }
}

/**
 * `cached`: the slot still holds this session's cache (`meta` says what);
 * `restored`: metadata came from the store, the slot must be rebuilt from it;
 * `new`: nothing known, the slot's previous contents must be discarded.
 */
export type AcquireState = 'cached' | 'restored' | 'new';

export interface Acquired {
  slot: number;
  state: AcquireState;
  meta?: SessionMeta;
  /** Session whose slot this was, when one had to give it up. */
  reclaimedFrom?: string;
}

export interface SlotManagerOptions {
  slots: number;
  store: SessionStore;
  /** Stored sessions of another model are treated as unknown. */
  model?: string;
  logger?: CacheLogger;
  now?: () => number;
  /**
   * Automatic matching forgives this many trailing cached tokens that a
   * resent history spells differently (the chat template trims replies, and
   * re-tokenized text may differ at its end). Default 32.
   */
  matchSlack?: number;
  /** The vocabulary's turn markers: prompts are matched by their turn-start prefixes (default Gemma 3's). */
  turnMarkers?: TurnMarkers;
}

/** `<start_of_turn>model\n` (Gemma 4: `<|turn>model\n`): the reply starts this many tokens after its turn start. */
const REPLY_HEADER = 3;

interface Slot {
  sessionId?: string;
  meta?: SessionMeta;
  busy: boolean;
  lastUsedAt: number;
}

export class SlotManager {
  readonly size: number;
  private readonly slots: Slot[];
  private readonly bySession = new Map<string, number>();
  private readonly store: SessionStore;
  private readonly model?: string;
  private readonly logger?: CacheLogger;
  private readonly now: () => number;
  /** Writes of reclaimed sessions, so that a quick re-acquire reads them back. */
  private readonly pendingWrites = new Map<string, Promise<void>>();
  private readonly waiters: (() => void)[] = [];
  private readonly matchSlack: number;
  readonly turnMarkers: Readonly<TurnMarkers>;

  constructor(opts: SlotManagerOptions) {
    if (!Number.isInteger(opts.slots) || opts.slots < 1) throw new RangeError(`slots must be >= 1, got ${opts.slots}`);
    this.size = opts.slots;
    this.slots = Array.from({ length: opts.slots }, () => ({ busy: false, lastUsedAt: 0 }));
    this.store = opts.store;
    this.model = opts.model;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.matchSlack = opts.matchSlack ?? 32;
    this.turnMarkers = opts.turnMarkers ?? GEMMA3_TURN_MARKERS;
  }

  /** Gives `sessionId` a slot and marks it busy. */
  async acquire(sessionId: string, opts: { waitMs?: number } = {}): Promise<Acquired> {
    const own = this.bySession.get(sessionId);
    if (own !== undefined) {
      const s = this.slots[own]!;
      if (s.busy) throw new SessionBusyError(sessionId);
      s.busy = true;
      s.lastUsedAt = this.now();
      return { slot: own, state: s.meta ? 'cached' : 'new', meta: s.meta };
    }
    const slot = this.pickSlot();
    if (slot === undefined) {
      if (!opts.waitMs) throw new SlotsBusyError(this.size);
      const deadline = this.now() + opts.waitMs;
      if (!(await this.waitForRelease(opts.waitMs))) throw new SlotsBusyError(this.size);
      return this.acquire(sessionId, { waitMs: Math.max(1, deadline - this.now()) });
    }
    // Claim the slot before any await so concurrent acquires never share it.
    const s = this.slots[slot]!;
    const victim = s.sessionId !== undefined ? { id: s.sessionId, meta: s.meta } : undefined;
    if (victim) this.bySession.delete(victim.id);
    Object.assign(s, { sessionId, meta: undefined, busy: true, lastUsedAt: this.now() });
    this.bySession.set(sessionId, slot);

    if (victim?.meta) {
      const write = this.safely('put', () => this.store.put(victim.meta!)).finally(() => {
        if (this.pendingWrites.get(victim.id) === write) this.pendingWrites.delete(victim.id);
      });
      this.pendingWrites.set(victim.id, write);
      await write;
    }
    await this.pendingWrites.get(sessionId);
    const stored = await this.safely('get', () => this.store.get(sessionId));
    const usable = stored && (this.model === undefined || stored.model === this.model) ? stored : undefined;
    if (this.bySession.get(sessionId) === slot && usable) s.meta = usable;
    return { slot, state: usable ? 'restored' : 'new', meta: usable, reclaimedFrom: victim?.id };
  }

  /** The request is done with the session; its cache stays in the slot. */
  release(sessionId: string): void {
    const s = this.slotFor(sessionId);
    s.busy = false;
    s.lastUsedAt = this.now();
    this.wakeOne();
  }

  markBusy(sessionId: string): void {
    this.slotFor(sessionId).busy = true;
  }

  /** Records what the slot now holds (after a turn succeeded) and writes it to the store. */
  async update(sessionId: string, meta: SessionMeta): Promise<void> {
    if (meta.id !== sessionId) throw new RangeError(`metadata of ${meta.id} given for session ${sessionId}`);
    const s = this.slotFor(sessionId);
    s.meta = meta;
    s.lastUsedAt = this.now();
    await this.safely('put', () => this.store.put(meta));
  }

  /** Forgets a session: frees its slot and removes it from the store. A busy session throws SessionBusyError. */
  async delete(sessionId: string): Promise<boolean> {
    const slot = this.bySession.get(sessionId);
    if (slot !== undefined) {
      if (this.slots[slot]!.busy) throw new SessionBusyError(sessionId);
      this.bySession.delete(sessionId);
      Object.assign(this.slots[slot]!, { sessionId: undefined, meta: undefined, busy: false });
      this.wakeOne();
    }
    const stored = await this.safely('get', () => this.store.get(sessionId));
    await this.safely('delete', () => this.store.delete(sessionId));
    return slot !== undefined || stored !== undefined;
  }

  usedSlots(): number {
    return this.bySession.size;
  }

  busySlots(): number {
    return this.slots.filter((s) => s.busy).length;
  }

  isCached(sessionId: string): boolean {
    return this.bySession.has(sessionId);
  }

  isBusy(sessionId: string): boolean {
    const slot = this.bySession.get(sessionId);
    return slot !== undefined && this.slots[slot]!.busy;
  }

  slotOf(sessionId: string): number | undefined {
    return this.bySession.get(sessionId);
  }

  sessionOf(slot: number): string | undefined {
    return this.slots[slot]?.sessionId;
  }

  /** What the session's slot holds, when it holds a slot. */
  metaOf(sessionId: string): SessionMeta | undefined {
    const slot = this.bySession.get(sessionId);
    return slot === undefined ? undefined : this.slots[slot]!.meta;
  }

  /** The session's metadata, from its slot or from the store. */
  async lookup(sessionId: string): Promise<SessionMeta | undefined> {
    return this.metaOf(sessionId) ?? (await this.safely('get', () => this.store.get(sessionId))) ?? undefined;
  }

  /**
   * The session, cached or stored, that this prompt continues: the prompt is
   * longer than the session's history, agrees with it up to the session's
   * last turn start (found by prefix hash) and into its last reply, and
   * reuses all of its cache but at most `matchSlack` trailing tokens. So a
   * conversation that merely starts like another one never takes it over.
   * Busy sessions and other namespaces' sessions are skipped. Among
   * candidates the most reusable wins, cached ones (no rebuild) before
   * stored ones.
   */
  async matchPrefix(promptIds: ArrayLike<number>, namespace: string): Promise<string | undefined> {
    const keys = promptPrefixKeys(promptIds, this.turnMarkers.startOfTurn);
    if (keys.length === 0) return undefined;
    const keySet = new Set(keys);
    const candidates = new Set<string>();
    for (const s of this.slots) {
      if (s.sessionId && namespaceOf(s.sessionId) === namespace && s.meta?.matchKey && keySet.has(s.meta.matchKey)) candidates.add(s.sessionId);
    }
    for (const id of (await this.safely('findByPrefix', () => this.store.findByPrefix(namespace, keys))) ?? []) {
      if (namespaceOf(id) === namespace) candidates.add(id);
    }

    let best: { id: string; score: number } | undefined;
    for (const id of candidates) {
      if (this.isBusy(id)) continue;
      const cached = this.isCached(id);
      const meta = cached ? this.metaOf(id) : await this.safely('get', () => this.store.get(id));
      if (!meta || (this.model !== undefined && meta.model !== this.model)) continue;
      if (promptIds.length <= meta.historyLength) continue;
      const r = computeReuse(meta, promptIds);
      if (!r || !this.continues(meta, r.reuse)) continue;
      const score = r.reuse * 2 + (cached ? 1 : 0);
      if (!best || score > best.score) best = { id, score };
    }
    return best?.id;
  }

  private continues(meta: SessionMeta, reuse: number): boolean {
    const len = cacheLength(meta);
    if (reuse < len - this.matchSlack) return false;
    const lastTurn = meta.matchKey === undefined ? -1 : Number(meta.matchKey.split('-')[0]) - meta.evicted;
    const replyStart = lastTurn + REPLY_HEADER;
    if (lastTurn >= meta.sinkIds.length && len > replyStart) return reuse > replyStart;
    return true;
  }

  private pickSlot(): number | undefined {
    let lru: number | undefined;
    for (let i = 0; i < this.slots.length; i++) {
      const s = this.slots[i]!;
      if (s.sessionId === undefined) return i;
      if (!s.busy && (lru === undefined || s.lastUsedAt < this.slots[lru]!.lastUsedAt)) lru = i;
    }
    return lru;
  }

  private slotFor(sessionId: string): Slot {
    const slot = this.bySession.get(sessionId);
    if (slot === undefined) throw new UnknownSessionError(sessionId);
    return this.slots[slot]!;
  }

  private waitForRelease(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(wake);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(false);
      }, ms);
      this.waiters.push(wake);
    });
  }

  private wakeOne(): void {
    this.waiters.shift()?.();
  }

  /** Store failures cost reuse, never the request: log and carry on. */
  private async safely<T>(op: string, f: () => Promise<T>): Promise<T | undefined> {
    try {
      return await f();
    } catch (err) {
      this.logger?.warn({ err, op }, 'session store operation failed; continuing without it');
      return undefined;
    }
  }
}
