// A Gemma 4 checkpoint through the whole service: it loads (on the native
// kernels where they are built, else the graph), lists itself, and a conversation its vocabulary cannot
// represent (the fixture has 4,096 tokens, the Gemma 3 tokenizer it falls back
// to has 262,145) is a 400 naming the token, never a 500, with the server up after.
import t from 'tap';
import { request } from 'undici';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const svc = await startService({
  HOST: '127.0.0.1',
  PORT: '0',
  MODEL_DIR: modelDir('gemma4-tiny-ple'),
  BACKEND: 'wasm',
  SLOTS: '2',
  CACHE_CAPACITY: '64',
  LOG_LEVEL: 'silent',
}, { handleSignals: false });
t.teardown(() => svc.stop());

t.test('a Gemma 4 checkpoint serves, on the native kernels where they are built', async (t) => {
  const built = nativeAddon().addon !== undefined;
  t.equal(svc.engine.pathName, built ? 'native' : 'graph');
  t.match(svc.engine.linearKernels, built ? /native kernels/ : /graph/);
  const models = (await (await request(`${svc.url}/v1/models`)).body.json()) as { data: { id: string }[] };
  t.same(models.data.map((m) => m.id), ['gemma4-tiny-ple']);
});

t.test('tokens outside the model vocabulary are a 400, not a 500', async (t) => {
  const res = await request(`${svc.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gemma4-tiny-ple', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 }),
  });
  t.equal(res.statusCode, 400);
  const err = ((await res.body.json()) as { error: { code: string; param: string; message: string } }).error;
  t.equal(err.code, 'token_outside_vocabulary');
  t.equal(err.param, 'messages');
  t.match(err.message, /vocabulary of 4096/);
  t.equal((await request(`${svc.url}/health`)).statusCode, 200, 'the server is up');
});
