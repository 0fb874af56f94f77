/** GET /v1/models and GET /v1/models/:model: the one model this instance serves. */
import type { FastifyPluginAsync } from 'fastify';
import { ModelNotFoundError } from '../src/http/errors.js';
import { errorResponses } from './schema-helpers.js';

export const modelsRoute: FastifyPluginAsync = async (app) => {
  const { config, service } = app.gemma;
  // Before loading finishes, `created` is the process start, so the list is stable from the first request.
  const startedAt = Math.floor(Date.now() / 1000);
  const model = () => ({ id: config.model.id, object: 'model' as const, created: service.model?.created ?? startedAt, owned_by: 'gemma-serve' });

  app.get('/models', {
    schema: {
      summary: 'List the served model.',
      response: { 200: { description: 'The model list.', $ref: 'ModelList#' }, ...errorResponses(401) },
    },
  }, async () => ({ object: 'list', data: [model()] }));

  const describe = (id: string) => {
    if (id !== config.model.id) throw new ModelNotFoundError(id, config.model.id);
    return model();
  };
  const response = { 200: { description: 'The model.', $ref: 'Model#' }, ...errorResponses(401, 404) };

  app.get<{ Params: { model: string } }>('/models/:model', {
    schema: {
      summary: 'Describe a model.',
      params: { type: 'object', required: ['model'], properties: { model: { type: 'string' } } },
      response,
    },
  }, async (req) => describe(req.params.model));

  // An id with slashes (MODEL_ID=google/gemma-3-1b-it) sent unescaped, as curl and some SDKs send it.
  app.get<{ Params: { '*': string } }>('/models/*', { schema: { hide: true, response } }, async (req) => describe(req.params['*']));
};
