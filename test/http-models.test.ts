// GET /v1/models/{model} for a model id with slashes (MODEL_ID may be a
// Hugging Face name): escaped or not, the id finds its model object, the same
// as its entry in GET /v1/models; other ids are OpenAI's 404 model_not_found;
// both spellings need the key; only the documented route is in openapi.yaml.
import t from 'tap';
import { buildOpenApi } from '../src/http/openapi.js';
import { makeApp } from './http-helpers.js';

const ID = 'google/gemma-3-1b-it';
const KEY = 'models-test-key';
const auth = { authorization: `Bearer ${KEY}` };

t.test('an id with slashes, escaped or not', async (t) => {
  const { app } = await makeApp({ env: { MODEL_ID: ID, API_KEYS: KEY } });
  t.teardown(() => app.close());
  const list = (await app.inject({ method: 'GET', url: '/v1/models', headers: auth })).json();
  t.equal(list.data[0].id, ID);
  for (const url of ['/v1/models/google/gemma-3-1b-it', '/v1/models/google%2Fgemma-3-1b-it', '/v1/models/google%2fgemma-3-1b-it']) {
    const res = await app.inject({ method: 'GET', url, headers: auth });
    t.equal(res.statusCode, 200, `${url}: 200`);
    t.same(res.json(), list.data[0], `${url}: the list's entry`);
  }
  for (const url of ['/v1/models/google', '/v1/models/google/gemma-3-1b-it/extra', '/v1/models/google/', '/v1/models/gemma-3-1b-it']) {
    const res = await app.inject({ method: 'GET', url, headers: auth });
    t.equal(res.statusCode, 404, `${url}: 404`);
    t.same(Object.keys(res.json().error).sort(), ['code', 'message', 'param', 'type'], `${url}: OpenAI's error shape`);
    t.equal(res.json().error.type, 'invalid_request_error');
    t.equal(res.json().error.code, 'model_not_found');
    t.equal(res.json().error.param, 'model');
  }
  for (const url of ['/v1/models/google/gemma-3-1b-it', '/v1/models/google/nope']) {
    const res = await app.inject({ method: 'GET', url });
    t.equal(res.statusCode, 401, `${url} without a key: 401`);
    t.equal(res.json().error.code, 'invalid_api_key');
  }
  const post = await app.inject({ method: 'POST', url: '/v1/models/google/gemma-3-1b-it', headers: auth });
  t.equal(post.statusCode, 405, 'another method: 405');
  t.match(post.headers.allow, /GET/);
});

t.test('openapi.yaml documents the one route', async (t) => {
  const paths = Object.keys((await buildOpenApi()).paths as Record<string, unknown>).filter((p) => p.startsWith('/v1/models'));
  t.same(paths.sort(), ['/v1/models', '/v1/models/{model}']);
});
