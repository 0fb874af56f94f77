/**
 * Builds the Fastify app without listening, so tests drive it with `inject`
 * and the CLI decides when to listen and when to load the model. Load order
 * follows Fastify's guide: shared services and schemas, then cross-cutting
 * plugins (errors, auth, request metrics), then one plugin per route.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type RouteOptions } from 'fastify';
import type { Config } from '../config/index.js';
import { chatCompletionsRoute } from '../routes/chat-completions.js';
import { completionsRoute } from '../routes/completions.js';
import { healthRoute } from '../routes/health.js';
import { metricsRoute } from '../routes/metrics.js';
import { modelsRoute } from '../routes/models.js';
import { sessionsRoute } from '../routes/sessions.js';
import { tokenizeRoute } from '../routes/tokenize.js';
import { tokenizeSchemas } from './protocol/tokenize-schemas.js';
import { QUOTE_MAX_CHARS } from './errors.js';
import { authPlugin } from './http/auth.js';
import { corsPlugin } from './http/cors.js';
import { jsonBodyPlugin } from './http/body-parser.js';
import { limitConnections, serverTimeouts } from './http/connections.js';
import { answerProtocolRequests, clientErrorHandler, errorHandlerPlugin, frameworkErrors } from './http/error-handler.js';
import { loadShedPlugin } from './http/load-shed.js';
import { rateLimitPlugin } from './http/rate-limit.js';
import { contextPlugin, type ServiceState } from './http/service.js';
import type { Metrics } from './metrics.js';
import { chatSchemas, type ProtocolLimits } from './protocol/chat-schemas.js';
import { COMMON_SCHEMAS } from './protocol/common-schemas.js';
import { completionSchemas } from './protocol/completion-schemas.js';

export interface BuildAppOptions {
  config: Config;
  /** Mutable: the CLI sets `scheduler`, `model` and `phase` as loading and shutdown proceed. */
  service: ServiceState;
  metrics: Metrics;
  /** A pino logger to use, `false` for none; default: pino at config.server.logLevel. */
  logger?: FastifyBaseLogger | false;
  /** Sees every route as it is added (the OpenAPI generator collects schemas with it). */
  onRoute?: (route: RouteOptions) => void;
}

/** Every schema shared by `$ref`, in dependency order (also the components of openapi.yaml). */
export const sharedSchemas = (limits: ProtocolLimits) => [...COMMON_SCHEMAS, ...chatSchemas(limits), ...completionSchemas(limits), ...tokenizeSchemas(limits)];

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;

/** Request logs show a short prefix of the URL: it is the client's text. */
const logSerializers = {
  req: (req: { method?: string; url?: string; ip?: string }) => ({
    method: req.method,
    url: req.url !== undefined && req.url.length > 256 ? `${req.url.slice(0, 256)}…` : req.url,
    remoteAddress: req.ip,
  }),
};

export async function buildApp(opts: BuildAppOptions): Promise<FastifyInstance> {
  const { config, service, metrics } = opts;
  const app = Fastify({
    ...(opts.logger === false
      ? { logger: false }
      : opts.logger !== undefined
        ? { loggerInstance: opts.logger.child({}, { serializers: logSerializers }) }
        : { logger: { level: config.server.logLevel, serializers: logSerializers } }),
    bodyLimit: config.server.bodyLimitBytes,
    // Node's timeouts: a request (body included) that has not fully arrived in time gets 408
    // (clientErrorHandler) and its socket closed; it never reached a route, so it held no
    // queue place, batch row or KV slot. Fastify sets the last two again from its own options.
    http: serverTimeouts(config.server),
    requestTimeout: config.server.requestTimeoutMs,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    // Longer than any session id or model name (256), so those reach their routes; past it, 414.
    routerOptions: { maxParamLength: 300 },
    frameworkErrors,
    clientErrorHandler,
    // A caller's x-request-id is kept when it is sane, so logs join up across services.
    requestIdHeader: false,
    genReqId: (req) => {
      const h = req.headers['x-request-id'];
      return typeof h === 'string' && REQUEST_ID_RE.test(h) ? h : randomUUID();
    },
    // Request logs name the session when the client names it in a header.
    childLoggerFactory: (logger, bindings, childOpts, rawReq) => {
      const sid = rawReq.headers['x-session-id'];
      return logger.child(typeof sid === 'string' ? { ...bindings, sessionId: sid.slice(0, QUOTE_MAX_CHARS) } : bindings, childOpts);
    },
    ajv: {
      // OpenAI rejects "10" for an integer and unknown fields; Fastify's defaults would coerce and strip them.
      customOptions: { coerceTypes: false, removeAdditional: false, allowUnionTypes: true },
    },
  }) as unknown as FastifyInstance;
  limitConnections(app.server, config.server, (reason) => metrics.connectionsRefused.inc({ reason }));
  answerProtocolRequests(app.server);

  if (opts.onRoute !== undefined) app.addHook('onRoute', opts.onRoute);
  await app.register(contextPlugin, { config, service, metrics });
  for (const s of sharedSchemas(config.limits)) app.addSchema(s);
  await app.register(errorHandlerPlugin, { bodyLimit: config.server.bodyLimitBytes });
  await app.register(jsonBodyPlugin, { maxDepth: config.limits.jsonDepth });
  await app.register(corsPlugin, { origins: config.server.corsOrigins, maxAgeSeconds: config.server.corsMaxAgeSeconds });
  await app.register(authPlugin, { apiKeys: config.server.apiKeys, metricsAuth: config.server.metricsAuth });
  // Admission, in this order at onRequest: the key (above), then the queue bound, then the credential's rate.
  await app.register(loadShedPlugin, { queueDepth: config.scheduler.shedQueueDepth, service, metrics });
  await app.register(rateLimitPlugin, { limits: config.rateLimit, redisUrl: config.cache.redisUrl, metrics });

  app.addHook('onRequest', async (req, reply) => {
    void reply.header('x-request-id', req.id);
  });
  app.addHook('onResponse', async (req, reply) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) });
  });
  metrics.onScrape(() => {
    const s = service.scheduler?.stats();
    if (s !== undefined) metrics.setScheduler(s);
  });

  await app.register(healthRoute);
  await app.register(metricsRoute);
  await app.register(modelsRoute, { prefix: '/v1' });
  await app.register(chatCompletionsRoute, { prefix: '/v1' });
  await app.register(completionsRoute, { prefix: '/v1' });
  await app.register(sessionsRoute, { prefix: '/v1' });
  await app.register(tokenizeRoute);
  return app;
}

/**
 * Closes the server once nothing is in flight (call after `scheduler.shutdown`):
 * Fastify's close only drops idle keep-alive sockets, and a client may hold a
 * socket that never carried a request, which would delay exit by minutes.
 */
export async function closeApp(app: FastifyInstance): Promise<void> {
  const closing = app.close();
  app.server.closeAllConnections();
  await closing;
}
