// The HTTP half of the compose smoke test: wait for /ready, stream one chat
// completion in a named session, check the SSE framing and /metrics.
// Usage: node test/compose/smoke-client.mjs <base-url> <session-id>
import { request } from 'undici';

const [base, session] = process.argv.slice(2);
if (!base || !session) throw new Error('usage: smoke-client.mjs <base-url> <session-id>');
const fail = (msg) => { console.error(`compose-smoke: ${msg}`); process.exit(1); };

// 1. The model loads before /ready turns 200 (503 meanwhile; /health is 200 throughout); allow a slow first start.
const deadline = Date.now() + 600_000;
for (;;) {
  try {
    const res = await request(`${base}/ready`);
    const text = await res.body.text();
    if (res.statusCode === 200) break;
    if (Date.now() > deadline) fail(`/ready still ${res.statusCode} ${text}`);
  } catch (err) {
    if (Date.now() > deadline) fail(`/ready unreachable: ${err.message}`);
  }
  await new Promise((r) => setTimeout(r, 1000));
}

// 2. One streamed completion.
const models = await (await request(`${base}/v1/models`)).body.json();
const model = models.data[0].id;
const res = await request(`${base}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', 'x-session-id': session },
  body: JSON.stringify({
    model, stream: true, stream_options: { include_usage: true }, max_tokens: 8, temperature: 0,
    messages: [{ role: 'user', content: 'Say hello.' }],
  }),
});
const body = await res.body.text();
if (res.statusCode !== 200) fail(`chat completion: ${res.statusCode} ${body}`);
const frames = body.split('\n\n').filter((f) => f !== '');
if (frames.at(-1) !== 'data: [DONE]') fail(`stream did not end with [DONE]: ${body.slice(-300)}`);
const chunks = frames.slice(0, -1).map((f) => JSON.parse(f.replace(/^data: /, '')));
if (chunks[0].choices[0].delta.role !== 'assistant') fail('first chunk has no role');
if (!chunks.some((c) => c.choices[0]?.finish_reason)) fail('no finish_reason chunk');
const usage = chunks.at(-1).usage;
if (!usage || usage.completion_tokens < 1) fail(`no usage chunk: ${JSON.stringify(chunks.at(-1))}`);
const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
console.error(`compose-smoke: ${usage.completion_tokens} tokens: ${JSON.stringify(text)}`);

// 3. Metrics saw it.
const metrics = await (await request(`${base}/metrics`)).body.text();
for (const name of ['gemma_serve_requests_total{route="/v1/chat/completions",status="200"}', 'gemma_serve_memory_weights_bytes', 'gemma_serve_time_to_first_token_seconds_count', 'process_cpu_seconds_total']) {
  if (!metrics.includes(name)) fail(`/metrics lacks ${name}`);
}
