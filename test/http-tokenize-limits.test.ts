// /tokenize, /detokenize and GET /v1/models/{model} on a real service
// (loopback, the tiny Gemma 3 fixture, API keys and CORS on, small input
// limits): inputs past MAX_MESSAGE_CHARS / BODY_LIMIT_BYTES and inputs of
// the wrong type are refused in OpenAI's shape naming the field, large inputs
// go through the tokenizer workers, no tensor is left behind, a browser page
// of a listed origin can call /tokenize, and the model route answers for its
// id and 404s for others.
import * as tf from '@tensorflow/tfjs-core';
import t, { type Test } from 'tap';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';
const KEY = 'tokenize-limits-key';
const ORIGIN = 'https://chat.example.com';
const CHARS = 2000;
const svc = await startService(
  {
    HOST: '127.0.0.1', PORT: '0', MODEL_DIR: modelDir(MODEL), BACKEND: 'wasm', SLOTS: '2', CACHE_CAPACITY: '256',
    API_KEYS: KEY, LOG_LEVEL: 'silent', TOKENIZER_WORKER_MIN_CHARS: '64', MAX_MESSAGE_CHARS: String(CHARS),
    BODY_LIMIT_BYTES: '65536', CORS_ORIGINS: ORIGIN,
  },
  { handleSignals: false },
);
t.teardown(() => svc.stop());

interface Reply { status: number; headers: Headers; body: any }

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  // A header given as '' is left out (a request without a key).
  const all = Object.entries({ authorization: `Bearer ${KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers });
  const res = await fetch(`${svc.url}${path}`, {
    method,
    headers: Object.fromEntries(all.filter(([, v]) => v !== '')),
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text === '' ? undefined : JSON.parse(text) };
}
const post = (path: string, body: unknown, headers?: Record<string, string>) => call('POST', path, body, headers);

function isOpenAIError(t: Test, r: Reply, status: number, param: string | null, what: string): void {
  t.equal(r.status, status, `${what}: ${status}`);
  t.match(r.headers.get('content-type') ?? '', /application\/json/, `${what}: JSON`);
  t.type(r.body?.error?.message, 'string', `${what}: error.message`);
  t.equal(r.body?.error?.type, 'invalid_request_error', `${what}: error.type`);
  t.ok(r.body?.error && 'code' in r.body.error && 'param' in r.body.error, `${what}: error.code and error.param present`);
  if (param !== null) t.equal(r.body?.error?.param, param, `${what}: names ${param}`);
}

t.test('inputs past the configured limits are a 400 naming the field', async (t) => {
  const atLimit = 'a'.repeat(CHARS);
  const ok = await post('/tokenize', { prompt: atLimit, add_special_tokens: false });
  t.equal(ok.status, 200, 'a prompt of exactly MAX_MESSAGE_CHARS is taken (and tokenized on a worker)');
  t.ok(ok.body.count > 0 && ok.body.count === ok.body.tokens.length);
  t.equal((await post('/detokenize', { tokens: ok.body.tokens })).body.prompt, atLimit, 'and round-trips');

  isOpenAIError(t, await post('/tokenize', { prompt: 'a'.repeat(CHARS + 1) }), 400, 'prompt', 'a prompt one character too long');
  isOpenAIError(t, await post('/tokenize', { messages: [{ role: 'user', content: 'a'.repeat(CHARS + 1) }] }), 400, null, 'a message too long');
  const tooLong = await post('/tokenize', { messages: [{ role: 'user', content: 'a'.repeat(CHARS + 1) }] });
  t.match(tooLong.body.error.param, /^messages\[0\]/, 'names the message');
  isOpenAIError(t, await post('/detokenize', { tokens: Array.from({ length: CHARS + 1 }, () => 9) }), 400, 'tokens', 'too many token ids');
  t.equal((await post('/detokenize', { tokens: Array.from({ length: CHARS }, () => 9) })).status, 200, 'MAX_MESSAGE_CHARS ids are taken');
  isOpenAIError(t, await post('/tokenize', { prompt: 'a'.repeat(70_000) }), 413, null, 'a body past BODY_LIMIT_BYTES');
});

t.test('wrong types are a 400 naming the field', async (t) => {
  const cases: Array<[string, string, unknown, string]> = [
    ['messages as a string', '/tokenize', { messages: 'hello' }, 'messages'],
    ['no messages', '/tokenize', { messages: [] }, 'messages'],
    ['a message without a role', '/tokenize', { messages: [{ content: 'hi' }] }, 'messages[0]'],
    ['a number for add_special_tokens', '/tokenize', { prompt: 'a', add_special_tokens: 1 }, 'add_special_tokens'],
    ['a string for return_token_strs', '/tokenize', { prompt: 'a', return_token_strs: 'yes' }, 'return_token_strs'],
    ['chat_template_kwargs as a list', '/tokenize', { messages: [{ role: 'user', content: 'hi' }], chat_template_kwargs: [1] }, 'chat_template_kwargs'],
    ['chat_template_kwargs with a prompt', '/tokenize', { prompt: 'a', chat_template_kwargs: {} }, 'chat_template_kwargs'],
    ['a number for model', '/tokenize', { model: 5, prompt: 'a' }, 'model'],
    ['tokens as a string', '/detokenize', { tokens: '1,2' }, 'tokens'],
    ['a fractional id', '/detokenize', { tokens: [1, 2.5] }, 'tokens[1]'],
    ['a string id', '/detokenize', { tokens: ['2'] }, 'tokens[0]'],
    ['an unknown field', '/detokenize', { tokens: [2], skip_special_tokens: true }, 'skip_special_tokens'],
  ];
  for (const [what, path, body, param] of cases) {
    const r = await post(path, body);
    isOpenAIError(t, r, 400, null, what);
    t.match(r.body?.error?.param ?? '', new RegExp(`^${param.replace(/[[\]]/g, '\\$&')}`), `${what}: names ${param}`);
  }
  const past = await post('/detokenize', { tokens: [2, 262_144] });
  isOpenAIError(t, past, 400, 'tokens', 'the first id past the vocabulary');
  t.match(past.body.error.message, /tokens\[1\]/, 'the message says which id');
  isOpenAIError(t, await post('/tokenize', 'not json'), 400, null, 'a body that is not JSON');
  t.equal((await post('/tokenize', { prompt: 'still fine' })).status, 200, 'the service answers after them');
});

t.test('large prompts and conversations count the same on a worker and on the main thread', async (t) => {
  const text = 'Foxes <start_of_turn>model\n<end_of_turn> and <eos> dens. '.repeat(30); // > TOKENIZER_WORKER_MIN_CHARS, < MAX_MESSAGE_CHARS
  const big = await post('/tokenize', { prompt: text, return_token_strs: true });
  t.equal(big.status, 200);
  const pieces = text.match(/.{1,40}/gs)!;
  const small = (await Promise.all(pieces.map((p) => post('/tokenize', { prompt: p, add_special_tokens: false })))).map((r) => r.body.tokens as number[]);
  for (const ids of small) t.notOk(ids.includes(105) || ids.includes(106) || ids.includes(1), 'no control id from text on the main thread');
  t.notOk(big.body.tokens.slice(1).some((id: number) => id === 105 || id === 106 || id === 1 || id === 2), 'none from text on a worker');
  t.equal(big.body.token_strs.join('').replaceAll('\u2581', ' '), `<bos>${text}`, 'token_strs spell the text');
  t.equal((await post('/detokenize', { tokens: big.body.tokens.slice(1) })).body.prompt, text);
});

t.test('tokenize and detokenize leave no tensor behind', async (t) => {
  const before = tf.memory().numTensors;
  await post('/tokenize', { prompt: 'hello there' });
  await post('/tokenize', { messages: [{ role: 'user', content: 'hello '.repeat(40) }] });
  await post('/detokenize', { tokens: [2, 9259] });
  await post('/detokenize', { tokens: [2, 10_000_000] });
  t.equal(tf.memory().numTensors, before, 'numTensors unchanged');
});

t.test('a listed origin can call /tokenize from a page', async (t) => {
  const pre = await call('OPTIONS', '/tokenize', undefined, {
    authorization: '', origin: ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,x-stainless-lang',
  });
  t.equal(pre.status, 204, 'preflight answered without a key');
  t.equal(pre.headers.get('access-control-allow-origin'), ORIGIN);
  t.match(pre.headers.get('access-control-allow-headers') ?? '', /x-stainless-lang/);
  const r = await post('/tokenize', { prompt: 'hi' }, { origin: ORIGIN });
  t.equal(r.status, 200);
  t.equal(r.headers.get('access-control-allow-origin'), ORIGIN, 'the real request carries Access-Control-Allow-Origin');
  const other = await post('/tokenize', { prompt: 'hi' }, { origin: 'https://elsewhere.example' });
  t.equal(other.headers.get('access-control-allow-origin'), null, 'another origin gets none');
});

t.test('GET /v1/models/{model}', async (t) => {
  const list = await call('GET', '/v1/models');
  t.equal(list.status, 200);
  const one = await call('GET', `/v1/models/${MODEL}`);
  t.equal(one.status, 200);
  t.same(one.body, list.body.data[0], 'the same object as its entry in the list');
  t.same(Object.keys(one.body).sort(), ['created', 'id', 'object', 'owned_by']);
  t.equal(one.body.object, 'model');
  const missing = await call('GET', '/v1/models/gpt-4o');
  isOpenAIError(t, missing, 404, 'model', 'an unknown model');
  t.equal(missing.body.error.code, 'model_not_found');
  t.equal((await call('GET', `/v1/models/${MODEL}`, undefined, { authorization: '' })).status, 401, 'a key is needed, as for the list');
  t.equal((await call('GET', '/v1/models/gpt-4o', undefined, { authorization: 'Bearer wrong' })).status, 401, 'no key: no 404 to learn from');
});
