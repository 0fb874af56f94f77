/**
 * Per-credential rate limits, as OpenAI applies them: requests per window
 * (RATE_LIMIT_RPM, counted by @fastify/rate-limit on its Redis store, or its
 * in-memory one without REDIS_URL) and tokens per window (RATE_LIMIT_TPM,
 * token-budget.ts). A credential is the API key (its namespace hash, never
 * the key itself), or the client address when API_KEYS is off.
 *
 * Only key-protected routes count: the hook reads the access the matched
 * route declares, like auth does, so /health, /ready and /metrics are never
 * limited. The request limit runs at onRequest (after auth), before the body
 * is read; the token reservation runs in the chat route, which knows the
 * messages and max_tokens, and is settled when the request ends.
 *
 * Over a limit: 429 in OpenAI's shape (RateLimitError) with Retry-After; every
 * limited response carries OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
 * A Redis failure lets requests through (logged): a rate limiter must not
 * take the service down with the store.
 */
import fastifyRateLimit from '@fastify/rate-limit';
import fp from 'fastify-plugin';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Redis } from 'ioredis';
import type { Config } from '../../config/index.js';
import { OPEN_NAMESPACE } from '../cache/namespace.js';
import { REDIS_CLIENT_DEFAULTS } from '../cache/session-store.js';
import type { Metrics } from '../metrics.js';
import { RateLimitError } from './errors.js';
import { MemoryTokenBudget, RedisTokenBudget, type TokenBudgetStore } from './token-budget.js';

/** A request's token reservation; `settle` it once with the tokens actually used. */
export interface TokenReservation {
  settle(actualTokens: number): void;
}

export interface RateLimiter {
  /** Reserves `tokens` for this request's credential, or throws RateLimitError (429). */
  reserveTokens(req: FastifyRequest, reply: FastifyReply, tokens: number): Promise<TokenReservation>;
}

declare module 'fastify' {
  interface FastifyInstance {
    rateLimiter: RateLimiter;
  }
}

export interface RateLimitPluginOptions {
  limits: Config['rateLimit'];
  redisUrl?: string;
  metrics: Metrics;
}

const NO_RESERVATION: TokenReservation = { settle: () => undefined };

/** The credential a request is counted under. */
const credentialOf = (req: FastifyRequest): string => (req.namespace === OPEN_NAMESPACE ? `ip:${req.ip}` : req.namespace);

/** Only routes that need a key (the default) are limited; unmatched URLs are 404s that cost nothing. */
const isLimited = (req: FastifyRequest): boolean =>
  req.routeOptions.url !== undefined && (req.routeOptions.config.access ?? 'key') === 'key';

/** A duration as OpenAI writes x-ratelimit-reset-*: "20ms", "1.5s", "6m0s". */
export function formatReset(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.ceil(ms))}ms`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Number(((ms - minutes * 60_000) / 1000).toFixed(3));
  return minutes > 0 ? `${minutes}m${seconds}s` : `${seconds}s`;
}

function setHeaders(reply: FastifyReply, kind: 'requests' | 'tokens', limit: number, remaining: number, resetMs: number): void {
  void reply
    .header(`x-ratelimit-limit-${kind}`, String(limit))
    .header(`x-ratelimit-remaining-${kind}`, String(Math.max(0, remaining)))
    .header(`x-ratelimit-reset-${kind}`, formatReset(resetMs));
}

export const rateLimitPlugin = fp<RateLimitPluginOptions>(async (app, opts) => {
  const { limits, metrics } = opts;
  const rpm = limits.requestsPerWindow;
  const tpm = limits.tokensPerWindow;
  const off: RateLimiter = { reserveTokens: async () => NO_RESERVATION };
  if (rpm === 0 && tpm === 0) {
    app.decorate('rateLimiter', off);
    return;
  }

  let redis: Redis | undefined;
  if (opts.redisUrl !== undefined) {
    redis = new Redis(opts.redisUrl, REDIS_CLIENT_DEFAULTS);
    redis.on('error', () => undefined); // failures show in the failing commands (logged there)
    // Without an offline queue, the first requests would miss Redis: wait (briefly) for the connection.
    await new Promise<void>((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(done, 2000);
      redis!.once('ready', done);
    });
    app.addHook('onClose', async () => { redis!.disconnect(); });
  }

  if (rpm > 0) {
    await app.register(fastifyRateLimit, {
      global: false, // applied by the hook below, to key-protected routes only
      max: rpm,
      timeWindow: limits.windowMs,
      keyGenerator: credentialOf,
      skipOnError: true,
      ...(redis === undefined ? {} : { redis, nameSpace: 'gemma-serve:ratelimit:requests:' }),
    });
    const check = app.createRateLimit();
    app.addHook('onRequest', async (req, reply) => {
      if (!isLimited(req)) return;
      const r = await check(req);
      if (r.isAllowed) return;
      const resetMs = r.ttl > 0 ? r.ttl : limits.windowMs;
      setHeaders(reply, 'requests', r.max, r.remaining, resetMs);
      if (r.isExceeded) {
        metrics.rejected.inc({ reason: 'requests' });
        throw new RateLimitError('requests', r.max, r.max, 1, resetMs);
      }
    });
  }

  if (tpm === 0) {
    app.decorate('rateLimiter', off);
    return;
  }
  const store: TokenBudgetStore = redis === undefined
    ? new MemoryTokenBudget(limits.windowMs)
    : new RedisTokenBudget(redis, limits.windowMs);
  app.decorate('rateLimiter', {
    async reserveTokens(req, reply, tokens) {
      const key = credentialOf(req);
      let r;
      try {
        r = await store.reserve(key, tokens, tpm);
      } catch (err) {
        req.log.warn({ err }, 'token rate limit store failed; letting the request through');
        return NO_RESERVATION;
      }
      setHeaders(reply, 'tokens', tpm, tpm - r.used, r.resetMs);
      if (!r.ok) {
        metrics.rejected.inc({ reason: 'tokens' });
        throw new RateLimitError('tokens', tpm, r.used, tokens, r.resetMs);
      }
      let settled = false;
      return {
        settle(actual: number) {
          if (settled) return;
          settled = true;
          store.adjust(key, r.window, actual - tokens).catch((err: unknown) => req.log.warn({ err }, 'token rate limit correction failed'));
        },
      };
    },
  });
}, { name: 'gemma-rate-limit', dependencies: ['gemma-auth'] });
