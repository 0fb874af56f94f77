/**
 * Optional bearer-token check on the OpenAI routes (/v1/*). /health and
 * /metrics stay open so orchestrators and Prometheus need no secret.
 * Keys are compared as SHA-256 digests with timingSafeEqual, so neither the
 * key length nor a matching prefix shows in response times.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { UnauthorizedError } from './errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

export const authPlugin = fp<{ apiKeys: string[] }>(async (app, opts) => {
  if (opts.apiKeys.length === 0) return;
  const keys = opts.apiKeys.map(digest);
  app.addHook('onRequest', async (req) => {
    if (!(req.url === '/v1' || req.url.startsWith('/v1/'))) return;
    const header = req.headers.authorization;
    const m = header === undefined ? null : /^Bearer\s+(.+)$/i.exec(header.trim());
    if (m === null) throw new UnauthorizedError(true);
    const given = digest(m[1]!.trim());
    // Compare against every key so the time does not depend on which one matched.
    let ok = false;
    for (const k of keys) ok = timingSafeEqual(k, given) || ok;
    if (!ok) throw new UnauthorizedError(false);
  });
}, { name: 'gemma-auth' });
