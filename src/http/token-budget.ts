/**
 * Tokens-per-window accounting (RATE_LIMIT_TPM). @fastify/rate-limit counts
 * one unit per request and cannot take a reservation back, so tokens have
 * their own small store: a fixed window per credential, aligned to multiples
 * of the window length, to which a request adds its reservation (prompt
 * estimate + max_tokens) when admitted, and which it corrects by the
 * difference to its actual usage when it ends. A correction goes to the
 * window the reservation was made in, and is dropped once that window is
 * over (its count is gone with it).
 *
 * Redis keeps the counts when REDIS_URL is set (instances share them), a Map
 * otherwise. Both check and add in one step, so concurrent requests cannot
 * pass the limit together.
 */
import type { Redis } from 'ioredis';
import type { ChatTurn } from '../scheduler/types.js';

/** The state of one credential's window after a reservation attempt. */
export interface Reservation {
  ok: boolean;
  /** Tokens counted in the window (including this reservation when ok). */
  used: number;
  /** Milliseconds until the window ends. */
  resetMs: number;
  /** Which window it was counted in (pass to `adjust`). */
  window: number;
}

export interface TokenBudgetStore {
  /** Adds `amount` to `key`'s current window unless the window would pass `limit`. */
  reserve(key: string, amount: number, limit: number): Promise<Reservation>;
  /** Adds `delta` (negative to give tokens back) to `window`, if it is still the open one. */
  adjust(key: string, window: number, delta: number): Promise<void>;
}

/** Window index and time left in it. */
function windowAt(now: number, windowMs: number): { window: number; resetMs: number } {
  const window = Math.floor(now / windowMs);
  return { window, resetMs: (window + 1) * windowMs - now };
}

export class MemoryTokenBudget implements TokenBudgetStore {
  private readonly counts = new Map<string, { window: number; used: number }>();
  constructor(private readonly windowMs: number, private readonly now: () => number = Date.now) {}

  async reserve(key: string, amount: number, limit: number): Promise<Reservation> {
    const { window, resetMs } = windowAt(this.now(), this.windowMs);
    const c = this.counts.get(key);
    const used = c !== undefined && c.window === window ? c.used : 0;
    if (used + amount > limit) return { ok: false, used, resetMs, window };
    this.counts.set(key, { window, used: used + amount });
    // Keys of past windows are dropped as they are met; bound the map anyway.
    if (this.counts.size > 100_000) for (const [k, v] of this.counts) if (v.window < window) this.counts.delete(k);
    return { ok: true, used: used + amount, resetMs, window };
  }

  async adjust(key: string, window: number, delta: number): Promise<void> {
    const c = this.counts.get(key);
    if (c !== undefined && c.window === window) c.used = Math.max(0, c.used + delta);
  }
}

// Check-and-add in one script: GET, refuse if over, else INCRBY and expire with the window.
const RESERVE = `
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if used + amount > tonumber(ARGV[2]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], amount)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, used}`;
// Only while the window's key exists: a correction must not open a window that already ended.
const ADJUST = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
return 1`;

export class RedisTokenBudget implements TokenBudgetStore {
  constructor(
    private readonly client: Redis,
    private readonly windowMs: number,
    private readonly prefix = 'gemma-serve:ratelimit:tokens:',
    private readonly now: () => number = Date.now,
  ) {}

  private key(key: string, window: number): string {
    return `${this.prefix}${key}:${window}`;
  }

  async reserve(key: string, amount: number, limit: number): Promise<Reservation> {
    const { window, resetMs } = windowAt(this.now(), this.windowMs);
    // Expire a little after the window ends, so a late correction still finds it closed rather than missing.
    const [ok, used] = (await this.client.eval(RESERVE, 1, this.key(key, window), amount, limit, resetMs + 1000)) as [number, number];
    return { ok: ok === 1, used, resetMs, window };
  }

  async adjust(key: string, window: number, delta: number): Promise<void> {
    if (delta === 0 || window !== windowAt(this.now(), this.windowMs).window) return;
    await this.client.eval(ADJUST, 1, this.key(key, window), delta);
  }
}

/**
 * Prompt tokens reserved before the prompt is tokenized (the scheduler
 * tokenizes it later, off this path): a quarter of the characters, OpenAI's
 * rule of thumb, plus a few per message for the chat template. The
 * correction at the end replaces it with the real count.
 */
export function estimatePromptTokens(turns: readonly ChatTurn[]): number {
  let chars = 0;
  for (const t of turns) chars += t.content.length;
  return Math.ceil(chars / 4) + 4 * turns.length;
}
