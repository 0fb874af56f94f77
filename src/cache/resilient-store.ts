/**
 * Redis with an in-memory fallback, so that a Redis outage never fails a
 * request: every write also goes to a bounded memory mirror; while Redis is
 * unreachable reads and writes are served from the mirror (one warning per
 * outage, every fallback counted), and once ioredis has reconnected the
 * sessions written or deleted during the outage are replayed to Redis and the
 * rest of the mirror is written back where missing (a restarted Redis may have
 * come back empty).
 */
import {
  MemorySessionStore,
  type CacheLogger,
  type RedisSessionStore,
  type SessionStore,
} from './session-store.js';
import type { SessionMeta } from './session-meta.js';

/** Writes in flight at once while replaying to Redis. */
const FLUSH_BATCH = 64;

export type StoreOp = 'get' | 'put' | 'delete' | 'findByPrefix';

export interface ResilientSessionStoreOptions {
  redis: RedisSessionStore;
  /** The mirror; defaults to a MemorySessionStore with Redis's TTL. */
  memory?: MemorySessionStore;
  logger?: CacheLogger;
  /** Called on every operation served from memory because Redis failed (e.g. a prom-client counter's inc). */
  onFallback?: (op: StoreOp) => void;
}

export class ResilientSessionStore implements SessionStore {
  readonly redis: RedisSessionStore;
  readonly memory: MemorySessionStore;
  /** Operations served from memory because Redis failed, since start. */
  fallbacks = 0;
  /** Outages seen since start. */
  outages = 0;
  private down = false;
  private readonly dirty = new Set<string>();
  private readonly deleted = new Set<string>();
  private flushing: Promise<number> | undefined;
  private readonly logger?: CacheLogger;
  private readonly onFallback?: (op: StoreOp) => void;
  private readonly onReady = () => void this.flush();

  constructor(opts: ResilientSessionStoreOptions) {
    this.redis = opts.redis;
    this.memory = opts.memory ?? new MemorySessionStore({ ttlSeconds: opts.redis.ttlSeconds });
    this.logger = opts.logger;
    this.onFallback = opts.onFallback;
    this.redis.client.on('ready', this.onReady);
  }

  /** True while Redis is known to be unreachable. */
  get degraded(): boolean {
    return this.down;
  }

  /** Sessions waiting to be written to (or deleted from) Redis. */
  get pending(): number {
    return this.dirty.size + this.deleted.size;
  }

  async get(id: string): Promise<SessionMeta | undefined> {
    if (this.dirty.has(id)) return this.memory.get(id);
    if (this.deleted.has(id)) return undefined;
    try {
      const meta = await this.redis.get(id);
      this.up();
      // A Redis that restarted empty lacks what the mirror still has until the replay is done.
      return meta ?? this.memory.get(id);
    } catch (err) {
      this.fail('get', err);
      return this.memory.get(id);
    }
  }

  async put(meta: SessionMeta): Promise<void> {
    await this.memory.put(meta);
    this.deleted.delete(meta.id);
    try {
      await this.redis.put(meta);
      this.dirty.delete(meta.id);
      this.up();
    } catch (err) {
      this.dirty.add(meta.id);
      this.fail('put', err);
    }
  }

  async delete(id: string): Promise<void> {
    await this.memory.delete(id);
    this.dirty.delete(id);
    try {
      await this.redis.delete(id);
      this.deleted.delete(id);
      this.up();
    } catch (err) {
      this.deleted.add(id);
      this.fail('delete', err);
    }
  }

  async findByPrefix(namespace: string, keys: string[]): Promise<string[]> {
    const local = await this.memory.findByPrefix(namespace, keys);
    try {
      const remote = await this.redis.findByPrefix(namespace, keys);
      this.up();
      return [...new Set([...local, ...remote])].filter((id) => !this.deleted.has(id));
    } catch (err) {
      this.fail('findByPrefix', err);
      return local;
    }
  }

  /**
   * Replays the outage's writes and deletes to Redis and restores mirrored
   * sessions that Redis lacks. Returns the number of sessions written; runs
   * by itself on every (re)connect.
   */
  flush(): Promise<number> {
    this.flushing ??= this.doFlush().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  private async doFlush(): Promise<number> {
    let written = 0;
    try {
      for (const id of [...this.deleted]) {
        await this.redis.delete(id);
        this.deleted.delete(id);
      }
      const ids = this.memory.list().map((m) => m.id);
      for (let i = 0; i < ids.length; i += FLUSH_BATCH) {
        await Promise.all(
          ids.slice(i, i + FLUSH_BATCH).map(async (id) => {
            const meta = this.memory.getSync(id); // the latest, should a put have raced the flush
            if (!meta) return;
            const isDirty = this.dirty.has(meta.id);
            await this.redis.put(meta, { onlyIfAbsent: !isDirty });
            if (isDirty) this.dirty.delete(meta.id);
            written++;
          }),
        );
      }
      this.up();
    } catch (err) {
      this.fail('put', err, false);
    }
    return written;
  }

  async close(): Promise<void> {
    this.redis.client.off('ready', this.onReady);
    await this.flushing;
    await this.redis.close();
    await this.memory.close();
  }

  private fail(op: StoreOp, err: unknown, count = true): void {
    if (count) {
      this.fallbacks++;
      this.onFallback?.(op);
    }
    if (!this.down) {
      this.down = true;
      this.outages++;
      this.logger?.warn({ err, op }, 'session store: Redis unavailable, serving session metadata from memory');
    }
  }

  private up(): void {
    if (!this.down) return;
    this.down = false;
    this.logger?.info({ pending: this.pending }, 'session store: Redis is back, writing session metadata again');
    if (this.pending > 0) void this.flush();
  }
}
