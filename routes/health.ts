/**
 * Probes, as Kubernetes uses them. GET /health is liveness: 200 whenever the
 * process answers, with the phase in the body (a liveness probe that failed
 * while the model loads or the service drains would kill a healthy process).
 * GET /ready is readiness: 200 once the model is loaded and requests are
 * admitted, else the same 503 (OpenAI's error shape, Retry-After) that a chat
 * request would get, so a load balancer sends traffic only where it is served.
 * Both are public and never rate limited.
 */
import type { FastifyPluginAsync } from 'fastify';
import { readyScheduler } from '../src/http/service.js';
import { errorResponses } from './schema-helpers.js';

export const healthRoute: FastifyPluginAsync = async (app) => {
  const { config, service } = app.gemma;
  const ok = { status: 'ok', model: config.model.id } as const;
  app.get('/health', {
    schema: {
      summary: 'Liveness: 200 while the process answers; `status` is the phase (ok, loading, draining, failed).',
      response: { 200: { description: 'The process is up.', $ref: 'Health#' } },
    },
    logLevel: 'warn', // probes every few seconds would drown the request log
    config: { access: 'public' },
  }, async () => ({ status: service.phase === 'ready' && service.scheduler !== undefined ? 'ok' : service.phase, model: config.model.id }));

  app.get('/ready', {
    schema: {
      summary: 'Readiness: 200 when serving, 503 while loading, draining or after a failed load.',
      response: {
        200: { description: 'Serving.', $ref: 'Health#' },
        ...errorResponses(503),
      },
    },
    logLevel: 'warn',
    config: { access: 'public' },
  }, async () => {
    readyScheduler(service); // throws the 503 saying why not
    return ok;
  });
};
