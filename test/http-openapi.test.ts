// openapi.yaml is generated from the registered routes' schemas; the committed
// file must equal a fresh rendering (run `npm run openapi` after changing a schema).
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { buildOpenApi, renderOpenApi } from '../src/http/openapi.js';
import { loadConfig } from '../config/index.js';
import { sharedSchemas } from '../src/server.js';
import { makeApp } from './http-helpers.js';

const committedPath = new URL('../openapi.yaml', import.meta.url);

t.test('committed openapi.yaml matches the route schemas', async (t) => {
  const committed = await readFile(committedPath, 'utf8');
  const fresh = await renderOpenApi();
  t.ok(committed === fresh, 'openapi.yaml is up to date (regenerate with npm run openapi)');
});

t.test('the YAML parses back to the document', async (t) => {
  // `yaml` arrives with tap; when it is absent the byte comparison above still holds.
  let parse: ((s: string) => unknown) | undefined;
  try {
    ({ parse } = await import('yaml'));
  } catch {
    t.skip('yaml package not resolvable');
    return;
  }
  t.same(parse!(await readFile(committedPath, 'utf8')), await buildOpenApi());
});

t.test('every route and shared schema is documented', async (t) => {
  const doc = await buildOpenApi();
  const paths = doc.paths as Record<string, Record<string, unknown>>;
  const seen: string[] = [];
  const { app } = await makeApp();
  t.teardown(() => app.close());
  for (const [method, url] of [
    ['post', '/v1/chat/completions'], ['post', '/v1/completions'], ['get', '/v1/models'], ['get', '/v1/models/{model}'], ['get', '/v1/sessions/{id}'],
    ['delete', '/v1/sessions/{id}'], ['get', '/health'], ['get', '/ready'], ['get', '/metrics'], ['post', '/tokenize'], ['post', '/detokenize'],
  ] as const) {
    t.ok(paths[url]?.[method], `${method.toUpperCase()} ${url} documented`);
    t.ok(app.hasRoute({ method: method.toUpperCase() as 'GET', url: url.replace(/\{(\w+)\}/g, ':$1') }), `${method.toUpperCase()} ${url} registered`);
    seen.push(`${method} ${url}`);
  }
  const documented = Object.entries(paths).flatMap(([url, ops]) => Object.keys(ops).map((m) => `${m} ${url}`));
  t.same(documented.sort(), seen.sort(), 'no undocumented or stale operations');
  const schemas = (doc.components as { schemas: Record<string, unknown> }).schemas;
  t.same(Object.keys(schemas).sort(), sharedSchemas(loadConfig({}).limits).map((s) => s.$id).sort());
  t.notOk(JSON.stringify(doc).includes('"$id"'), 'no Fastify $ids leak into the document');
  t.notOk(/"\$ref":"(?!#\/components\/schemas\/)/.test(JSON.stringify(doc)), 'every $ref points at a component');
});
