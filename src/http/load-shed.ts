/**
 * Load shedding: while the scheduler's queue holds SHED_QUEUE_DEPTH requests
 * or more, routes that declare `config.shed` (the chat route) answer 503 with
 * Retry-After at once, at onRequest, before their body is read or tokenized,
 * instead of joining a queue they would wait in until a client or proxy
 * timeout. The queue's own bound (MAX_QUEUE, 429) stays behind it.
 *
 * @fastify/under-pressure was considered: its checks (event-loop delay, heap,
 * RSS) are process-wide and refuse every route, probes included, and while the
 * engine computes on the main thread the event-loop delay would shed /health
 * too. The overload signal that matters here is the queue, so it is read directly.
 */
import fp from 'fastify-plugin';
import type { Metrics } from '../metrics.js';
import { OverloadedError } from './errors.js';
import type { ServiceState } from './service.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route is refused with 503 while the queue is at SHED_QUEUE_DEPTH. */
    shed?: boolean;
  }
}

export interface LoadShedOptions {
  /** 0 = off. */
  queueDepth: number;
  service: ServiceState;
  metrics: Metrics;
}

export const loadShedPlugin = fp<LoadShedOptions>(async (app, opts) => {
  if (opts.queueDepth <= 0) return;
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.config?.shed !== true) return;
    const depth = opts.service.scheduler?.stats().queueDepth ?? 0;
    if (depth >= opts.queueDepth) {
      opts.metrics.rejected.inc({ reason: 'overloaded' });
      throw new OverloadedError(depth);
    }
  });
}, { name: 'gemma-load-shed' });
