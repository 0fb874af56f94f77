// Sessions belong to the key that made them, over the real service (engine,
// slots, Redis): another key can neither read, delete nor continue them, and
// automatic prefix matching never crosses keys. `user` is a label only;
// x-session-id and prompt_cache_key name sessions.
import t, { type Test } from 'tap';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { keyNamespace } from '../src/http/auth.js';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';
const KEY_A = 'sk-alpha';
const KEY_B = 'sk-beta';
// A Redis database of its own, emptied afterwards.
const REDIS_DB = 6;

const redis = new Redis({ host: '127.0.0.1', port: 6379, db: REDIS_DB });
await redis.flushdb();
const svc = await startService({
  HOST: '127.0.0.1',
  PORT: '0',
  MODEL_DIR: modelDir(MODEL),
  BACKEND: 'wasm',
  SLOTS: '4',
  CACHE_CAPACITY: '256',
  API_KEYS: `${KEY_A},${KEY_B}`,
  REDIS_URL: `redis://127.0.0.1:6379/${REDIS_DB}`,
  LOG_LEVEL: 'silent',
}, { handleSignals: false });
t.teardown(async () => {
  await svc.stop();
  await redis.flushdb();
  redis.disconnect();
});

interface Completion {
  choices: { message: { content: string } }[];
  usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
}
type Message = { role: string; content: string };

async function chat(key: string, messages: Message[], opts: { session?: string; extra?: Record<string, unknown> } = {}) {
  const res = await request(`${svc.url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${key}`,
      ...(opts.session === undefined ? {} : { 'x-session-id': opts.session }),
    },
    body: JSON.stringify({ model: MODEL, messages, max_tokens: 6, temperature: 0, ...opts.extra }),
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`chat answered ${res.statusCode}: ${text}`);
  return { body: JSON.parse(text) as Completion, session: String(res.headers['x-session-id']) };
}

async function sessionCall(key: string, method: 'GET' | 'DELETE', id: string) {
  const res = await request(`${svc.url}/v1/sessions/${id}`, { method, headers: { authorization: `Bearer ${key}` } });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

function sameNotFound(t: Test, got: { status: number; body: Record<string, unknown> }, unknown: { status: number; body: Record<string, unknown> }, label: string) {
  t.equal(got.status, 404, `${label}: 404`);
  const msg = (b: Record<string, unknown>) => String((b.error as { message: string }).message);
  // The answer for another key's session is the answer for a session that never existed (up to the name).
  t.equal(msg(got.body).replace(/"[^"]*"/, 'ID'), msg(unknown.body).replace(/"[^"]*"/, 'ID'), `${label}: says nothing of the session`);
}

const first: Message[] = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Tell me about the sea.' }];

t.test("another key cannot read, delete or continue a key's named session", async (t) => {
  const a = await chat(KEY_A, first, { session: 'conv-1' });
  t.equal(a.session, 'conv-1');
  const info = await sessionCall(KEY_A, 'GET', 'conv-1');
  t.equal(info.status, 200);
  t.same(Object.keys(info.body).sort(), ['cached_tokens', 'created', 'evicted_tokens', 'id', 'kept_turns', 'last_used', 'object', 'resident', 'slot']);
  t.notOk(JSON.stringify(info.body).includes('sea'), 'GET shows counts, not text');

  const unknown = await sessionCall(KEY_B, 'GET', 'never-made');
  sameNotFound(t, await sessionCall(KEY_B, 'GET', 'conv-1'), unknown, "B GET A's session");
  sameNotFound(t, await sessionCall(KEY_B, 'DELETE', 'conv-1'), unknown, "B DELETE A's session");
  t.equal((await sessionCall(KEY_A, 'GET', 'conv-1')).status, 200, "A's session survived B's delete");

  // B names the same session and resends A's history: a new session of B's, nothing reused.
  const history = [...first, { role: 'assistant', content: a.body.choices[0]!.message.content }, { role: 'user', content: 'And the sky?' }];
  const b = await chat(KEY_B, history, { session: 'conv-1' });
  t.equal(b.body.usage.prompt_tokens_details.cached_tokens, 0, "B reuses none of A's cached tokens");
  const again = await chat(KEY_A, history, { session: 'conv-1' });
  t.ok(again.body.usage.prompt_tokens_details.cached_tokens > 0, 'A continues its own session from the cache');

  // Stored under each key's namespace in Redis, never the key itself.
  const keys = await redis.keys('*');
  t.ok(keys.includes(`gemma-serve:session:${keyNamespace(KEY_A)}/conv-1`), 'A\'s session stored in its namespace');
  t.ok(keys.includes(`gemma-serve:session:${keyNamespace(KEY_B)}/conv-1`), 'B\'s in its own');
  t.notOk(keys.some((k) => k.includes(KEY_A) || k.includes(KEY_B)), 'no key in plain text');

  const del = await sessionCall(KEY_A, 'DELETE', 'conv-1');
  t.equal(del.status, 200);
  t.equal((await sessionCall(KEY_B, 'GET', 'conv-1')).status, 200, "deleting A's session leaves B's");
});

// Gemma's template trims replies; with random weights, nudging a few tokens without a leading space keeps a resent reply matchable.
const NO_LEADING_SPACE = Object.fromEntries([79090, 246005, 201578, 199203, 9564].map((id) => [String(id), 4]));

t.test('automatic prefix matching never crosses keys', async (t) => {
  const msgs: Message[] = [{ role: 'user', content: 'Count the waves on the shore, slowly.' }];
  const a = await chat(KEY_A, msgs, { extra: { logit_bias: NO_LEADING_SPACE } });
  const history = [...msgs, { role: 'assistant', content: a.body.choices[0]!.message.content }, { role: 'user', content: 'More.' }];
  const b = await chat(KEY_B, history);
  t.equal(b.body.usage.prompt_tokens_details.cached_tokens, 0, "B resending A's history matches nothing");
  t.not(b.session, a.session);
  const a2 = await chat(KEY_A, history);
  t.equal(a2.session, a.session, 'A resending it continues its own conversation');
  t.ok(a2.body.usage.prompt_tokens_details.cached_tokens > 0);
});

t.test('prompt_cache_key names a session; user is a label only', async (t) => {
  const one = await chat(KEY_A, [{ role: 'user', content: 'First chat.' }], { extra: { user: 'end-user-7' } });
  const two = await chat(KEY_A, [{ role: 'user', content: 'Second chat.' }], { extra: { user: 'end-user-7' } });
  t.not(one.session, two.session, "one end user's two chats are two sessions");
  const keyed = await chat(KEY_A, [{ role: 'user', content: 'Third chat.' }], { extra: { prompt_cache_key: 'pck-1' } });
  t.equal(keyed.session, 'pck-1');
  t.equal((await sessionCall(KEY_A, 'GET', 'pck-1')).status, 200);
  t.equal((await sessionCall(KEY_B, 'GET', 'pck-1')).status, 404);
});

async function rawChat(headers: Record<string, string>, extra: Record<string, unknown>) {
  const res = await request(`${svc.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY_A}`, ...headers },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 1, ...extra }),
  });
  return { status: res.statusCode, error: ((await res.body.json()) as { error: { message: string; param: string | null } }).error };
}

t.test('session names are validated', async (t) => {
  for (const bad of ['has space', 'a/b', '-lead', '../x', 'x'.repeat(257)]) {
    const r = await rawChat({ 'x-session-id': bad }, {});
    t.equal(r.status, 400, `x-session-id ${JSON.stringify(bad.slice(0, 20))} refused`);
    t.equal(r.error.param, 'x-session-id');
    t.ok(r.error.message.length < 300, 'the message quotes a short prefix at most');
    const p = await rawChat({}, { prompt_cache_key: bad });
    t.equal(p.status, 400, `prompt_cache_key ${JSON.stringify(bad.slice(0, 20))} refused`);
    t.equal(p.error.param, 'prompt_cache_key');
  }
  t.equal((await rawChat({}, { prompt_cache_key: 'é' })).status, 400);
  t.equal((await rawChat({ 'x-session-id': 'Good.name:1@x' }, {})).status, 200);
});
