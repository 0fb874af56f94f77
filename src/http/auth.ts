/**
 * Bearer-token authorization, decided on the route the router matched (after
 * it decoded the path), never on the raw URL: every route needs a key unless
 * it declares `config.access`. `public` routes (/health) are open because
 * probes call them and they reveal nothing; `metrics` routes are open unless
 * METRICS_AUTH is set. Unmatched URLs need a key too, so a caller without one
 * cannot even learn which paths exist.
 *
 * Keys are compared as SHA-256 digests with timingSafeEqual, so neither the
 * key length nor a matching prefix shows in response times. Each request is
 * tagged with its credential's namespace: sessions are stored under it, so
 * one key never sees another's conversations.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { OPEN_NAMESPACE } from '../cache/namespace.js';
import { UnauthorizedError } from './errors.js';

/** Who may call a route: anyone, anyone unless METRICS_AUTH, or (the default) key holders only. */
export type RouteAccess = 'public' | 'metrics' | 'key';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Absent means 'key'. */
    access?: RouteAccess;
  }
  interface FastifyRequest {
    /** The credential's namespace (a hash of the API key, or OPEN_NAMESPACE). */
    namespace: string;
  }
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** 64 bits of the key's SHA-256: names its sessions without revealing or storing the key. */
export function keyNamespace(key: string): string {
  return `k${digest(`gemma-serve-namespace\0${key}`).subarray(0, 8).toString('hex')}`;
}

export interface AuthOptions {
  apiKeys: string[];
  metricsAuth: boolean;
}

export const authPlugin = fp<AuthOptions>(async (app, opts) => {
  app.decorateRequest('namespace', OPEN_NAMESPACE);
  if (opts.apiKeys.length === 0) return;
  const keys = opts.apiKeys.map(digest);
  app.addHook('onRequest', async (req) => {
    const access = req.routeOptions.url === undefined ? 'key' : (req.routeOptions.config.access ?? 'key');
    if (access === 'public' || (access === 'metrics' && !opts.metricsAuth)) return;
    const header = req.headers.authorization;
    const m = header === undefined ? null : /^Bearer\s+(.+)$/i.exec(header.trim());
    if (m === null) throw new UnauthorizedError(true);
    const key = m[1]!.trim();
    const given = digest(key);
    // Compare against every key so the time does not depend on which one matched.
    let ok = false;
    for (const k of keys) ok = timingSafeEqual(k, given) || ok;
    if (!ok) throw new UnauthorizedError(false);
    req.namespace = keyNamespace(key);
  });
}, { name: 'gemma-auth' });
