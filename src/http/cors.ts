/**
 * Cross-origin requests from browser front-ends (`@fastify/cors`), off unless
 * CORS_ORIGINS names origins. Registered before authentication: a browser's
 * preflight carries no Authorization header, so it is answered (204 with the
 * Access-Control-Allow-* headers) before a key is asked for. A preflight from
 * an origin not listed gets no CORS headers and goes on as an ordinary
 * OPTIONS request (401 without a key, else 404 in OpenAI's shape), so the
 * browser refuses the real request.
 */
import cors from '@fastify/cors';
import fp from 'fastify-plugin';

export interface CorsOptions {
  /** Exact origins, or ['*']; empty: the plugin registers nothing. */
  origins: string[];
  maxAgeSeconds: number;
}

/** Response headers a browser script may read: request ids, sessions, rate limits. */
const EXPOSED = ['x-request-id', 'x-session-id', 'retry-after', 'x-ratelimit-limit-requests', 'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests', 'x-ratelimit-limit-tokens', 'x-ratelimit-remaining-tokens', 'x-ratelimit-reset-tokens'];

export const corsPlugin = fp<CorsOptions>(async (app, opts) => {
  if (opts.origins.length === 0) return;
  const any = opts.origins.includes('*');
  const allowed = new Set(opts.origins);
  await app.register(cors, {
    origin: (origin, cb) => cb(null, origin !== undefined && (any || allowed.has(origin)) ? origin : false),
    methods: ['GET', 'POST', 'DELETE'],
    // Unset: the headers a preflight asks for are allowed (OpenAI clients send authorization, x-stainless-*, openai-*).
    exposedHeaders: EXPOSED,
    maxAge: opts.maxAgeSeconds,
    // Its plain-text 400 for a malformed preflight is not OpenAI's shape; such a request goes on as an OPTIONS request.
    strictPreflight: false,
  });
}, { name: 'gemma-cors' });
