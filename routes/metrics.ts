/** GET /metrics: Prometheus text exposition of the app's registry. */
import type { FastifyPluginAsync } from 'fastify';

export const metricsRoute: FastifyPluginAsync = async (app) => {
  const { metrics } = app.gemma;
  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics (text exposition format).',
      response: { 200: { description: 'Metrics.', content: { 'text/plain': { schema: { type: 'string' } } } } },
    },
    logLevel: 'warn',
    config: { access: 'metrics' },
  }, async (_req, reply) => {
    const { contentType, body } = await metrics.scrape();
    return reply.type(contentType).send(body);
  });
};
