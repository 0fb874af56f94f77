/** GET /health: 200 once the model is loaded and requests are admitted, 503 before (loading) and after (draining, failed). */
import type { FastifyPluginAsync } from 'fastify';

export const healthRoute: FastifyPluginAsync = async (app) => {
  const { config, service } = app.gemma;
  app.get('/health', {
    schema: {
      summary: 'Readiness: 200 when serving, 503 while loading, draining or after a failed load.',
      response: {
        200: { description: 'Serving.', $ref: 'Health#' },
        503: { description: 'Not serving yet or any more.', $ref: 'Health#' },
      },
    },
    logLevel: 'warn', // probes every few seconds would drown the request log
    config: { access: 'public' },
  }, async (_req, reply) => {
    const ready = service.phase === 'ready' && service.scheduler !== undefined;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : service.phase, model: config.model.id });
  });
};
