/**
 * Socket-level limits, applied to the HTTP server before it listens: how many
 * sockets it holds in all and per client address. A socket over either limit
 * is closed at accept, before a byte of its request is read: answering it
 * would mean reading its request, and the point of the limit is that a client
 * opening thousands of sockets (each sending nothing, or half a body) cannot
 * hold file descriptors. Every such close is counted in
 * `gemma_serve_connections_refused_total{reason}`.
 *
 * The timeouts themselves (headers, whole request, keep-alive) are Node's own
 * server options, set in buildApp; see `serverTimeouts`.
 */
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Config } from '../../config/index.js';

export type RefusedReason = 'max_connections' | 'per_address';

export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerAddress: number;
}

/** Node's http.ServerOptions for the configured timeouts (Fastify passes them to createServer). */
export function serverTimeouts(server: Config['server']): {
  headersTimeout: number;
  requestTimeout: number;
  keepAliveTimeout: number;
  connectionsCheckingInterval: number;
} {
  return {
    headersTimeout: server.headersTimeoutMs,
    requestTimeout: server.requestTimeoutMs,
    keepAliveTimeout: server.keepAliveTimeoutMs,
    // Node checks both timeouts only this often (default 30 s, which would make
    // a 1 s timeout fire after up to 31 s); a quarter of the shorter one, at most 1 s.
    connectionsCheckingInterval: Math.max(25, Math.min(1000, Math.floor(server.headersTimeoutMs / 4))),
  };
}

/** Installs the limits on `server`; `onRefused` hears of every socket closed for one. */
export function limitConnections(server: Server, limits: ConnectionLimits, onRefused: (reason: RefusedReason) => void): void {
  // Node closes sockets over maxConnections itself and emits 'drop' for each.
  if (limits.maxConnections > 0) {
    server.maxConnections = limits.maxConnections;
    server.on('drop', () => onRefused('max_connections'));
  }
  const perAddress = limits.maxConnectionsPerAddress;
  if (perAddress <= 0) return;
  const open = new Map<string, number>();
  // Prepended, so an extra socket is closed before the HTTP parser is attached to it.
  server.prependListener('connection', (socket: Socket) => {
    const addr = socket.remoteAddress ?? 'unknown';
    const n = open.get(addr) ?? 0;
    if (n >= perAddress) {
      onRefused('per_address');
      socket.destroy();
      return;
    }
    open.set(addr, n + 1);
    socket.once('close', () => {
      const left = (open.get(addr) ?? 1) - 1;
      if (left <= 0) open.delete(addr);
      else open.set(addr, left);
    });
  });
}
