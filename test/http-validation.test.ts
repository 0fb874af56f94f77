// Every malformed request is answered with the right 4xx and a message naming
// the field, before the scheduler is reached (UnreachableScheduler throws).
import t from 'tap';
import { MODEL, makeApp, userMsg } from './http-helpers.js';

const ok = { model: MODEL, messages: [userMsg()] };

const cases: { name: string; body: unknown; status: number; param: string | null; message: RegExp }[] = [
  { name: 'missing messages', body: { model: MODEL }, status: 400, param: 'messages', message: /Missing required parameter: 'messages'/ },
  { name: 'missing model', body: { messages: [userMsg()] }, status: 400, param: 'model', message: /'model'/ },
  { name: 'empty messages', body: { ...ok, messages: [] }, status: 400, param: 'messages', message: /empty array/ },
  { name: 'messages not an array', body: { ...ok, messages: 'hi' }, status: 400, param: 'messages', message: /expected an array/ },
  { name: 'unknown role', body: { ...ok, messages: [{ role: 'bot', content: 'x' }] }, status: 400, param: 'messages[0].role', message: /Supported values/ },
  { name: 'content wrong type', body: { ...ok, messages: [userMsg(5)] }, status: 400, param: 'messages[0].content', message: /Invalid type/ },
  { name: 'user content null', body: { ...ok, messages: [userMsg(null)] }, status: 400, param: 'messages[0].content', message: /Missing required/ },
  {
    name: 'image part', body: { ...ok, messages: [userMsg([{ type: 'text', text: 'what is this' }, { type: 'image_url', image_url: { url: 'data:,' } }])] },
    status: 400, param: 'messages[0].content[1].type', message: /image content is not supported/,
  },
  { name: 'audio part', body: { ...ok, messages: [userMsg([{ type: 'input_audio', input_audio: {} }])] }, status: 400, param: 'messages[0].content[0].type', message: /audio/ },
  { name: 'text part without text', body: { ...ok, messages: [userMsg([{ type: 'text' }])] }, status: 400, param: 'messages[0].content[0].text', message: /string "text"/ },
  { name: 'tools', body: { ...ok, tools: [{ type: 'function', function: { name: 'f' } }] }, status: 400, param: 'tools', message: /not supported/ },
  { name: 'tool_choice', body: { ...ok, tool_choice: 'auto' }, status: 400, param: 'tool_choice', message: /not supported/ },
  { name: 'functions', body: { ...ok, functions: [{ name: 'f' }] }, status: 400, param: 'functions', message: /not supported/ },
  {
    name: 'assistant tool_calls', body: { ...ok, messages: [userMsg(), { role: 'assistant', content: null, tool_calls: [{ id: 'x' }] }] },
    status: 400, param: 'messages[1].tool_calls', message: /tools are not supported/,
  },
  { name: 'unknown response format', body: { ...ok, response_format: { type: 'yaml' } }, status: 400, param: 'response_format.type', message: /not supported/ },
  { name: 'unknown argument', body: { ...ok, frobnicate: true }, status: 400, param: 'frobnicate', message: /Unrecognized request argument supplied: frobnicate/ },
  { name: 'string for integer', body: { ...ok, max_tokens: '10' }, status: 400, param: 'max_tokens', message: /expected an integer/ },
  { name: 'decimal for integer', body: { ...ok, n: 1.5 }, status: 400, param: 'n', message: /expected an integer/ },
  { name: 'max_tokens beyond limit', body: { ...ok, max_tokens: 5000 }, status: 400, param: 'max_tokens', message: /MAX_TOKENS_LIMIT/ },
  { name: 'max_completion_tokens beyond limit', body: { ...ok, max_completion_tokens: 4097 }, status: 400, param: 'max_completion_tokens', message: /4096/ },
  { name: 'max_tokens zero', body: { ...ok, max_tokens: 0 }, status: 400, param: 'max_tokens', message: />= 1/ },
  { name: 'conflicting token limits', body: { ...ok, max_tokens: 5, max_completion_tokens: 6 }, status: 400, param: 'max_tokens', message: /differ/ },
  { name: 'n beyond batch', body: { ...ok, n: 9 }, status: 400, param: 'n', message: /MAX_BATCH_SIZE/ },
  { name: 'temperature range', body: { ...ok, temperature: 2.5 }, status: 400, param: 'temperature', message: /<= 2/ },
  { name: 'top_p range', body: { ...ok, top_p: -0.1 }, status: 400, param: 'top_p', message: />= 0/ },
  { name: 'top_k beyond cap', body: { ...ok, top_k: 65 }, status: 400, param: 'top_k', message: /TOPK_CAP/ },
  { name: 'top_logprobs without logprobs', body: { ...ok, top_logprobs: 3 }, status: 400, param: 'top_logprobs', message: /requires 'logprobs'/ },
  { name: 'top_logprobs beyond 20', body: { ...ok, logprobs: true, top_logprobs: 21 }, status: 400, param: 'top_logprobs', message: /<= 20/ },
  { name: 'stream_options without stream', body: { ...ok, stream_options: { include_usage: true } }, status: 400, param: 'stream_options', message: /only allowed when 'stream'/ },
  { name: 'stop wrong type', body: { ...ok, stop: 3 }, status: 400, param: 'stop', message: /Invalid type/ },
  { name: 'logit_bias bad key', body: { ...ok, logit_bias: { abc: 1 } }, status: 400, param: 'logit_bias.abc', message: /token ids/ },
  { name: 'logit_bias out of range', body: { ...ok, logit_bias: { '5': 200 } }, status: 400, param: 'logit_bias.5', message: /<= 100/ },
  { name: 'logit_bias id beyond vocab', body: { ...ok, logit_bias: { '262144': 1 } }, status: 400, param: 'logit_bias.262144', message: /vocabulary/ },
  { name: 'body is an array', body: [ok], status: 400, param: null, message: /expected an object/ },
  { name: 'unknown model', body: { ...ok, model: 'gpt-4o' }, status: 404, param: 'model', message: /does not exist/ },
];

t.test('schema and cross-field validation', async (t) => {
  const { app } = await makeApp();
  t.teardown(() => app.close());
  for (const c of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: c.body as object });
    t.equal(res.statusCode, c.status, `${c.name}: status`);
    const body = res.json();
    t.equal(body.error.param, c.param, `${c.name}: param`);
    t.match(body.error.message, c.message, `${c.name}: message`);
    t.equal(body.error.type, 'invalid_request_error', `${c.name}: type`);
    t.ok('code' in body.error, `${c.name}: code present`);
  }
});

t.test('malformed JSON, empty body, wrong content type', async (t) => {
  const { app } = await makeApp();
  t.teardown(() => app.close());
  const post = (payload: string, type = 'application/json') =>
    app.inject({ method: 'POST', url: '/v1/chat/completions', payload, headers: { 'content-type': type } });
  let res = await post('{"model": ');
  t.equal(res.statusCode, 400);
  t.equal(res.json().error.code, 'invalid_json');
  res = await post('');
  t.equal(res.statusCode, 400);
  t.equal(res.json().error.code, 'invalid_json');
  res = await post('model=x', 'application/x-www-form-urlencoded');
  t.equal(res.statusCode, 415);
  t.equal(res.json().error.code, 'unsupported_media_type');
});

t.test('oversized body gets 413 in the error shape', async (t) => {
  const { app } = await makeApp({ env: { BODY_LIMIT_BYTES: '2048' } });
  t.teardown(() => app.close());
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...ok, messages: [userMsg('x'.repeat(4096))] } });
  t.equal(res.statusCode, 413);
  t.equal(res.json().error.code, 'request_too_large');
  t.match(res.json().error.message, /BODY_LIMIT_BYTES/);
});

t.test('bad x-session-id header', async (t) => {
  const { app } = await makeApp();
  t.teardown(() => app.close());
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: ok, headers: { 'x-session-id': 'has space' } });
  t.equal(res.statusCode, 400);
  t.equal(res.json().error.param, 'x-session-id');
});

t.test('accepted-and-ignored fields pass validation', async (t) => {
  // The unreachable scheduler throws a plain Error (500) only once validation passed.
  const { app } = await makeApp();
  t.teardown(() => app.close());
  const res = await app.inject({
    method: 'POST', url: '/v1/chat/completions',
    payload: {
      ...ok, store: false, metadata: { a: 'b' }, parallel_tool_calls: false, response_format: { type: 'text' }, tools: [],
      user: 'u1', seed: 7, stop: ['\n'], top_k: -1, min_p: 0.05, repetition_penalty: 1.1, logit_bias: { '5': -100 },
      messages: [{ role: 'developer', content: 'be brief' }, userMsg([{ type: 'text', text: 'a' }]), { role: 'assistant', content: null }, { role: 'tool', content: 'r', tool_call_id: 'c' }],
    },
  });
  t.equal(res.statusCode, 500);
  t.equal(res.json().error.type, 'server_error');
});
