/**
 * Builds openapi.yaml from what the app actually registers: every route's
 * schema is collected through buildApp's onRoute option, and the shared
 * schemas become components. The committed file is compared with this output
 * in test/http-openapi.test.ts, so the document cannot drift from the routes.
 */
import type { RouteOptions } from 'fastify';
import { loadConfig } from '../../config/index.js';
import { Metrics } from '../metrics.js';
import { buildApp, sharedSchemas } from '../server.js';
import { toYaml } from './yaml.js';

type Obj = Record<string, unknown>;

/** Fastify's `Id#` references -> OpenAPI component references; `$id`s dropped. */
function rewrite(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(rewrite);
  if (v === null || typeof v !== 'object') return v;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === '$id') continue;
    out[k] = k === '$ref' && typeof x === 'string' ? `#/components/schemas/${x.replace(/#$/, '')}` : rewrite(x);
  }
  return out;
}

function parameters(schema: Obj | undefined, where: 'path' | 'header'): Obj[] {
  const props = (schema?.properties ?? {}) as Record<string, Obj>;
  const required = (schema?.required ?? []) as string[];
  return Object.entries(props).map(([name, s]) => {
    const { description, ...rest } = s;
    return {
      name, in: where, required: where === 'path' || required.includes(name),
      ...(description === undefined ? {} : { description }), schema: rewrite(rest),
    };
  });
}

function responses(resp: Record<string, Obj>): Obj {
  const out: Obj = {};
  for (const [code, r] of Object.entries(resp)) {
    const { description, content, ...schema } = r;
    const byType = content !== undefined
      ? Object.fromEntries(Object.entries(content as Record<string, Obj>).map(([ct, c]) => [ct, { schema: rewrite(c.schema) }]))
      : { 'application/json': { schema: rewrite(schema) } };
    out[code] = { description: description ?? '', content: byType };
  }
  return out;
}

function operation(route: RouteOptions): Obj {
  const s = (route.schema ?? {}) as Obj;
  const params = [...parameters(s.params as Obj | undefined, 'path'), ...parameters(s.headers as Obj | undefined, 'header')];
  return {
    ...(s.summary === undefined ? {} : { summary: s.summary }),
    ...(params.length === 0 ? {} : { parameters: params }),
    ...(s.body === undefined ? {} : { requestBody: { required: true, content: { 'application/json': { schema: rewrite(s.body) } } } }),
    responses: responses((s.response ?? {}) as Record<string, Obj>),
    // API_KEYS is optional: either a bearer token or nothing. Public routes never need one.
    ...(route.config?.access === undefined || route.config.access === 'key' ? { security: [{ bearer: [] }, {}] } : {}),
  };
}

/** The OpenAPI document as an object. */
export async function buildOpenApi(): Promise<Obj> {
  const routes: RouteOptions[] = [];
  const config = loadConfig({});
  const app = await buildApp({
    config,
    service: { phase: 'loading' },
    metrics: new Metrics({ defaultMetrics: false }),
    logger: false,
    onRoute: (r) => { routes.push(r); },
  });
  await app.close();
  const paths: Record<string, Obj> = {};
  for (const r of routes) {
    if (r.schema?.hide === true) continue;
    for (const method of [r.method].flat()) {
      if (method === 'HEAD') continue; // Fastify's automatic twin of each GET
      const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
      (paths[path] ??= {})[method.toLowerCase()] = operation(r);
    }
  }
  const sortedPaths = Object.fromEntries(Object.entries(paths).sort(([a], [b]) => a.localeCompare(b)));
  return {
    openapi: '3.1.0',
    info: {
      title: 'gemma-serve',
      version: '1.0.0',
      description: 'OpenAI-compatible chat completions for Gemma models with rolling per-session KV caches. '
        + 'Generated from the route schemas (npm run openapi); do not edit by hand.',
    },
    servers: [{ url: 'http://127.0.0.1:8080' }],
    paths: sortedPaths,
    components: {
      schemas: Object.fromEntries(sharedSchemas(config.limits).map((s) => [s.$id, rewrite(s)])),
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'Required only when API_KEYS is set.' } },
    },
  };
}

export async function renderOpenApi(): Promise<string> {
  return toYaml(await buildOpenApi());
}
