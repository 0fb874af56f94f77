/**
 * Where session metadata lives while a session has no KV slot (or after a
 * restart): Redis when configured, memory otherwise. Only metadata (token ids
 * and hashes, see session-meta.ts), written after a turn succeeds or when a
 * session loses its slot.
 *
 * Redis key layout (`<prefix>` defaults to `gemma-serve:`), every key with the
 * configured TTL, refreshed on each write:
 *   <prefix>session:<id>                   string: the SessionMeta as JSON (ids are
 *                                          `<namespace>/<name>`, see namespace.ts)
 *   <prefix>prefix:<namespace>:<matchKey>  set of that namespace's session ids whose
 *                                          history contains that turn-start prefix
 *                                          (`<length>-<hash>`), for matching clients
 *                                          that resend the whole history; members are
 *                                          candidates only and always verified
 *
 * ResilientSessionStore (resilient-store.ts) keeps the service answering when
 * Redis is unreachable.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { GemmaServeError } from '../errors.js';
import { namespaceOf } from './namespace.js';
import { isSessionMeta, type SessionMeta } from './session-meta.js';

export interface SessionStore {
  get(id: string): Promise<SessionMeta | undefined>;
  /** Writes (replaces) a session's metadata and indexes its `matchKey`. */
  put(meta: SessionMeta): Promise<void>;
  delete(id: string): Promise<void>;
  /** Ids of the namespace's sessions indexed under any of these prefix keys (candidates; verify them). */
  findByPrefix(namespace: string, keys: string[]): Promise<string[]>;
  close(): Promise<void>;
}

/** pino-compatible logger subset. */
export interface CacheLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

/** A Redis operation failed (unreachable, timed out, or refused). */
export class SessionStoreError extends GemmaServeError {
  constructor(op: string, cause: unknown) {
    super(`session store ${op} failed: ${cause instanceof Error ? cause.message : String(cause)}; check that Redis is reachable`, {
      status: 503,
      code: 'session_store_unavailable',
    });
  }
}

/** The prefix index is per namespace: matching never crosses credentials. */
const indexKey = (namespace: string, matchKey: string): string => `${namespace}:${matchKey}`;

/** In-process store: a TTL'd LRU map plus the prefix index. */
export class MemorySessionStore implements SessionStore {
  private readonly entries = new Map<string, { meta: SessionMeta; expiresAt: number }>();
  private readonly index = new Map<string, Set<string>>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(opts: { ttlSeconds?: number; maxEntries?: number; now?: () => number } = {}) {
    this.ttlMs = (opts.ttlSeconds ?? 86_400) * 1000;
    this.maxEntries = opts.maxEntries ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  async get(id: string): Promise<SessionMeta | undefined> {
    return this.getSync(id);
  }

  getSync(id: string): SessionMeta | undefined {
    const e = this.entries.get(id);
    if (!e) return undefined;
    if (e.expiresAt <= this.now()) {
      this.deleteSync(id);
      return undefined;
    }
    return structuredClone(e.meta);
  }

  /** All live entries, oldest write first. */
  list(): SessionMeta[] {
    return [...this.entries.keys()].map((id) => this.getSync(id)).filter((m): m is SessionMeta => m !== undefined);
  }

  async put(meta: SessionMeta): Promise<void> {
    this.deleteSync(meta.id); // re-insert so Map order is least recently written first
    this.entries.set(meta.id, { meta: structuredClone(meta), expiresAt: this.now() + this.ttlMs });
    if (meta.matchKey !== undefined) {
      const key = indexKey(namespaceOf(meta.id), meta.matchKey);
      let set = this.index.get(key);
      if (!set) this.index.set(key, (set = new Set()));
      set.add(meta.id);
    }
    while (this.entries.size > this.maxEntries) this.deleteSync(this.entries.keys().next().value!);
  }

  async delete(id: string): Promise<void> {
    this.deleteSync(id);
  }

  private deleteSync(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    const key = e.meta.matchKey === undefined ? undefined : indexKey(namespaceOf(id), e.meta.matchKey);
    const set = key === undefined ? undefined : this.index.get(key);
    if (set) {
      set.delete(id);
      if (set.size === 0) this.index.delete(key!);
    }
  }

  async findByPrefix(namespace: string, keys: string[]): Promise<string[]> {
    const out = new Set<string>();
    for (const k of keys) for (const id of this.index.get(indexKey(namespace, k)) ?? []) out.add(id);
    return [...out];
  }

  async close(): Promise<void> {
    this.entries.clear();
    this.index.clear();
  }
}

/**
 * Client options that keep requests from hanging on a missing Redis: commands
 * fail at once while disconnected (no offline queue), time out quickly, are
 * retried at most once, and ioredis keeps reconnecting in the background.
 */
export const REDIS_CLIENT_DEFAULTS: RedisOptions = {
  enableOfflineQueue: false,
  connectTimeout: 1000,
  commandTimeout: 1000,
  maxRetriesPerRequest: 1,
  retryStrategy: (times: number) => Math.min(100 * times, 2000),
};

/** Longest a command waits for the client's first connection attempt (ioredis's own connectTimeout usually ends it first). */
const FIRST_CONNECT_WAIT_MS = 2000;

export interface RedisSessionStoreOptions {
  ttlSeconds: number;
  /** `redis://host:port/db`; ignored when `client` is given. */
  url?: string;
  /** Extra ioredis options, over REDIS_CLIENT_DEFAULTS. */
  redis?: RedisOptions;
  /** An existing client (not closed by `close()`). */
  client?: Redis;
  keyPrefix?: string;
}

export class RedisSessionStore implements SessionStore {
  readonly client: Redis;
  readonly keyPrefix: string;
  readonly ttlSeconds: number;
  private readonly ownsClient: boolean;
  /** Pending while the client's first connection attempt is in flight. */
  private firstAttempt: Promise<void> | undefined;

  constructor(opts: RedisSessionStoreOptions) {
    this.ttlSeconds = opts.ttlSeconds;
    this.keyPrefix = opts.keyPrefix ?? 'gemma-serve:';
    this.ownsClient = opts.client === undefined;
    if (opts.client) this.client = opts.client;
    else {
      const o = { ...REDIS_CLIENT_DEFAULTS, ...opts.redis };
      this.client = opts.url ? new Redis(opts.url, o) : new Redis(o);
      // Connection errors surface through the failing commands; without a
      // listener ioredis would print every reconnect attempt.
      this.client.on('error', () => {});
    }
    // Without an offline queue, commands sent before the first connection is
    // up fail, and a freshly started instance would take its stored sessions
    // for unknown ones (and overwrite them). So commands wait for that first
    // attempt, however it ends; later outages still fail fast.
    if (this.client.status === 'connecting' || this.client.status === 'connect') {
      this.firstAttempt = new Promise<void>((resolve) => {
        const events = ['ready', 'error', 'close', 'end'] as const;
        const settle = () => {
          for (const e of events) this.client.off(e, settle);
          clearTimeout(timer);
          this.firstAttempt = undefined;
          resolve();
        };
        const timer = setTimeout(settle, FIRST_CONNECT_WAIT_MS);
        timer.unref();
        for (const e of events) this.client.on(e, settle);
      });
    }
  }

  sessionKey(id: string): string {
    return `${this.keyPrefix}session:${id}`;
  }

  prefixIndexKey(namespace: string, matchKey: string): string {
    return `${this.keyPrefix}prefix:${indexKey(namespace, matchKey)}`;
  }

  /** Resolves once connected, or rejects after `timeoutMs`. */
  async ready(timeoutMs = 2000): Promise<void> {
    if (this.client.status === 'ready') return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(new SessionStoreError('connect', new Error(`not ready after ${timeoutMs} ms`)));
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('ready', onReady);
    });
  }

  async get(id: string): Promise<SessionMeta | undefined> {
    const raw = await this.run('get', () => this.client.get(this.sessionKey(id)));
    if (raw === null) return undefined;
    const meta: unknown = JSON.parse(raw);
    return isSessionMeta(meta) ? meta : undefined;
  }

  async put(meta: SessionMeta, opts: { onlyIfAbsent?: boolean } = {}): Promise<void> {
    const m = this.client.multi();
    if (opts.onlyIfAbsent) m.set(this.sessionKey(meta.id), JSON.stringify(meta), 'EX', this.ttlSeconds, 'NX');
    else m.set(this.sessionKey(meta.id), JSON.stringify(meta), 'EX', this.ttlSeconds);
    if (meta.matchKey !== undefined) {
      const k = this.prefixIndexKey(namespaceOf(meta.id), meta.matchKey);
      m.sadd(k, meta.id).expire(k, this.ttlSeconds);
    }
    await this.exec('put', m);
  }

  async delete(id: string): Promise<void> {
    const meta = await this.get(id);
    const m = this.client.multi().del(this.sessionKey(id));
    if (meta?.matchKey !== undefined) m.srem(this.prefixIndexKey(namespaceOf(id), meta.matchKey), id);
    await this.exec('delete', m);
  }

  async findByPrefix(namespace: string, keys: string[]): Promise<string[]> {
    if (keys.length === 0) return [];
    const p = this.client.pipeline();
    for (const k of keys) p.smembers(this.prefixIndexKey(namespace, k));
    const results = await this.exec('findByPrefix', p);
    const out = new Set<string>();
    for (const r of results) for (const id of r as string[]) out.add(id);
    return [...out];
  }

  async close(): Promise<void> {
    if (!this.ownsClient) return;
    if (this.client.status === 'ready') await this.client.quit().catch(() => this.client.disconnect());
    else this.client.disconnect();
  }

  private async run<T>(op: string, f: () => Promise<T>): Promise<T> {
    if (this.firstAttempt) await this.firstAttempt;
    try {
      return await f();
    } catch (err) {
      throw new SessionStoreError(op, err);
    }
  }

  private async exec(op: string, batch: { exec(): Promise<[Error | null, unknown][] | null> }): Promise<unknown[]> {
    const res = await this.run(op, () => batch.exec());
    if (res === null) throw new SessionStoreError(op, new Error('transaction aborted'));
    return res.map(([err, v]) => {
      if (err) throw new SessionStoreError(op, err);
      return v;
    });
  }
}
