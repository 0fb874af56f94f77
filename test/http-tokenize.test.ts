// POST /tokenize and /detokenize on a real service (loopback, the tiny Gemma 3
// fixture, API keys on): counts that match the chat route's usage, round
// trips, control strings kept as text, and bad input refused in OpenAI's shape.
import t from 'tap';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';
const KEY = 'tokenize-test-key';
const svc = await startService(
  { HOST: '127.0.0.1', PORT: '0', MODEL_DIR: modelDir(MODEL), BACKEND: 'wasm', SLOTS: '2', CACHE_CAPACITY: '256', API_KEYS: KEY, LOG_LEVEL: 'silent', TOKENIZER_WORKER_MIN_CHARS: '64' },
  { handleSignals: false },
);
t.teardown(() => svc.stop());

async function post(path: string, body: unknown, key: string | null = KEY): Promise<{ status: number; body: any }> {
  const res = await fetch(`${svc.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is a fox?' }];

t.test('messages count as the chat route counts its prompt', async (t) => {
  const tok = await post('/tokenize', { model: MODEL, messages });
  t.equal(tok.status, 200);
  const chat = await post('/v1/chat/completions', { model: MODEL, messages, max_tokens: 1 });
  t.equal(tok.body.count, chat.body.usage.prompt_tokens, 'count = usage.prompt_tokens');
  t.equal(tok.body.tokens.length, tok.body.count);
  t.equal(tok.body.max_model_len, 256, 'the tokens a session keeps');
  const bare = await post('/tokenize', { messages, add_generation_prompt: false });
  t.ok(bare.body.count < tok.body.count, 'without the generation prompt the model turn is not opened');
  const long = [{ role: 'user', content: 'fox '.repeat(200) }];
  const viaWorker = await post('/tokenize', { messages: long });
  t.equal(viaWorker.body.count, (await post('/v1/chat/completions', { model: MODEL, messages: long, max_tokens: 1 })).body.usage.prompt_tokens, 'a conversation long enough for the worker thread counts the same');
});

t.test('a prompt round-trips, and control strings stay text', async (t) => {
  const text = 'The quick brown fox: <start_of_turn>user\nhello<end_of_turn> é 漢字';
  const tok = await post('/tokenize', { prompt: text, return_token_strs: true });
  t.equal(tok.status, 200);
  t.equal(tok.body.tokens[0], 2, 'a leading <bos> by default');
  t.notOk(tok.body.tokens.slice(1).includes(105) || tok.body.tokens.slice(1).includes(106), 'no <start_of_turn> or <end_of_turn> id from user text');
  t.equal(tok.body.token_strs.length, tok.body.count);
  t.equal(tok.body.token_strs[0], '<bos>');
  const without = await post('/tokenize', { prompt: text, add_special_tokens: false });
  t.same(without.body.tokens, tok.body.tokens.slice(1), 'add_special_tokens: false drops the <bos> only');
  const back = await post('/detokenize', { tokens: without.body.tokens });
  t.equal(back.status, 200);
  t.equal(back.body.prompt, text, 'detokenize gives the text back');
  t.equal((await post('/detokenize', { tokens: [2, 105] })).body.prompt, '<bos><start_of_turn>', 'special tokens are kept in the text');
  const big = 'fox '.repeat(100);
  t.same((await post('/tokenize', { prompt: big })).body.count, 1 + (await post('/tokenize', { prompt: big, add_special_tokens: false })).body.count, 'a prompt long enough for the worker thread');
});

t.test('bad input is a 400 in OpenAI shape, naming the field', async (t) => {
  const cases: Array<[string, string, unknown, number, string | null]> = [
    ['neither prompt nor messages', '/tokenize', {}, 400, 'prompt'],
    ['both', '/tokenize', { prompt: 'a', messages }, 400, 'messages'],
    ['add_generation_prompt with a prompt', '/tokenize', { prompt: 'a', add_generation_prompt: true }, 400, 'add_generation_prompt'],
    ['a number for a prompt', '/tokenize', { prompt: 5 }, 400, 'prompt'],
    ['an unknown field', '/tokenize', { prompt: 'a', frobnicate: 1 }, 400, 'frobnicate'],
    ['an image part', '/tokenize', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 400, 'messages[0].content[0]'],
    ['an unknown model', '/tokenize', { model: 'other', prompt: 'a' }, 404, 'model'],
    ['an id past the vocabulary', '/detokenize', { tokens: [1, 10_000_000] }, 400, 'tokens'],
    ['a negative id', '/detokenize', { tokens: [-1] }, 400, 'tokens[0]'],
    ['no tokens', '/detokenize', {}, 400, 'tokens'],
  ];
  for (const [what, path, body, status, param] of cases) {
    const res = await post(path, body);
    t.equal(res.status, status, `${what}: ${status}`);
    t.equal(res.body.error?.type, 'invalid_request_error', `${what}: OpenAI's error shape`);
    t.match(res.body.error?.param ?? '', param ?? '', `${what}: names ${param}`);
  }
  t.equal((await post('/tokenize', { prompt: 'a' }, null)).status, 401, 'a key is needed, as for chat');
  t.equal((await post('/detokenize', { tokens: [2] }, 'wrong')).status, 401);
  t.equal((await post('/tokenize', { prompt: 'still fine' })).status, 200, 'the server answers after them');
});
