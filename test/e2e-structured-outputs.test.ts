// Structured outputs end to end with the official openai client on a real
// service (loopback, the tiny Gemma 3 fixture, random weights): whatever the
// weights, an output that ends with `stop` parses and validates against its
// schema, because the grammar's mask is applied before top-K.
import t from 'tap';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { Ajv } from 'ajv';
import * as tf from '@tensorflow/tfjs-core';
import { startService } from '../src/service.js';
import { modelDir } from './helpers/fixtures.js';

const MODEL = 'gemma3-tiny';
const svc = await startService(
  { HOST: '127.0.0.1', PORT: '0', MODEL_DIR: modelDir(MODEL), BACKEND: 'wasm', SLOTS: '4', CACHE_CAPACITY: '512', MAX_TOKENS_LIMIT: '512', LOG_LEVEL: 'silent' },
  { handleSignals: false },
);
t.teardown(() => svc.stop());
const client = new OpenAI({ baseURL: `${svc.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const messages = [{ role: 'user' as const, content: 'Describe a city.' }];
const SEEDS = [1, 2, 3, 4, 5, 6];

const schema = {
  type: 'object',
  properties: {
    kind: { enum: ['town', 'city', 'village'] },
    rank: { type: 'integer', minimum: 1, maximum: 5 },
    place: { type: 'object', properties: { zone: { type: 'string', maxLength: 6 }, north: { type: 'boolean' } }, required: ['zone', 'north'], additionalProperties: false },
    codes: { type: 'array', items: { type: 'integer', minimum: 0, maximum: 9 }, minItems: 1, maxItems: 3 },
  },
  required: ['kind', 'rank', 'place', 'codes'],
  additionalProperties: false,
};
const validate = new Ajv().compile(schema);

t.test('json_schema: every output that stops validates (enums, bounded integers, nested objects, arrays)', async (t) => {
  const baseline = tf.memory().numTensors;
  let stopped = 0;
  for (const seed of SEEDS) {
    const res = await client.chat.completions.create({
      model: MODEL, messages, seed, temperature: 1, max_tokens: 120,
      response_format: { type: 'json_schema', json_schema: { name: 'place', schema, strict: true } },
    });
    const c = res.choices[0]!;
    if (c.finish_reason !== 'stop') continue;
    stopped++;
    const value = JSON.parse(c.message.content!);
    t.ok(validate(value), `seed ${seed}: ${c.message.content} validates${validate.errors ? ` (${JSON.stringify(validate.errors)})` : ''}`);
  }
  t.ok(stopped >= SEEDS.length / 2, `most seeded runs finish within max_tokens (${stopped} of ${SEEDS.length})`);
  t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
});

t.test('chat.completions.parse with a zod schema returns the parsed object', async (t) => {
  const Place = z.object({ kind: z.enum(['town', 'city']), rank: z.number().int().min(1).max(3), tags: z.array(z.enum(['old', 'new'])).max(2) });
  let parsed = 0;
  for (const seed of SEEDS) {
    const res = await client.chat.completions.parse({ model: MODEL, messages, seed, temperature: 1, max_tokens: 80, response_format: zodResponseFormat(Place, 'place') });
    const c = res.choices[0]!;
    if (c.finish_reason !== 'stop') continue;
    parsed++;
    t.ok(Place.safeParse(c.message.parsed).success, `seed ${seed}: ${JSON.stringify(c.message.parsed)}`);
  }
  t.ok(parsed > 0, `some runs parsed (${parsed} of ${SEEDS.length})`);
});

t.test('json_object: the output is a JSON object', async (t) => {
  for (const seed of SEEDS.slice(0, 3)) {
    const res = await client.chat.completions.create({ model: MODEL, messages, seed, temperature: 0.8, max_tokens: 80, response_format: { type: 'json_object' } });
    const c = res.choices[0]!;
    if (c.finish_reason !== 'stop') continue;
    const value: unknown = JSON.parse(c.message.content!);
    t.ok(typeof value === 'object' && value !== null && !Array.isArray(value), `seed ${seed}: ${c.message.content}`);
  }
});

t.test('streamed and not, with n = 2: the same text per choice', async (t) => {
  const request = {
    model: MODEL, messages, seed: 7, temperature: 1, max_tokens: 120, n: 2,
    response_format: { type: 'json_schema' as const, json_schema: { name: 'place', schema } },
  };
  const whole = await client.chat.completions.create(request);
  const parts = ['', ''];
  for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
    for (const c of chunk.choices) parts[c.index] += c.delta.content ?? '';
  }
  t.same(parts, whole.choices.map((c) => c.message.content), 'the streamed choices assemble into the non-streamed ones');
  for (const c of whole.choices) if (c.finish_reason === 'stop') t.ok(validate(JSON.parse(c.message.content!)), `choice ${c.index} validates`);
});

t.test('bad schemas are refused with a 400 naming the field', async (t) => {
  const post = (response_format: unknown) => fetch(`${svc.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages, max_tokens: 4, response_format }),
  });
  const cases: Array<[string, unknown, string]> = [
    ['an invalid schema', { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'bogus' } } }, 'response_format.json_schema.schema'],
    ['an unsupported keyword', { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'array', uniqueItems: true } } } } }, 'response_format.json_schema.schema.properties.a.uniqueItems'],
    ['an unsupported format', { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'credit-card' } } }, 'response_format.json_schema.schema.format'],
    ['a string bound past GRAMMAR_MAX_STRING_LENGTH', { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', maxLength: 33 } } }, 'response_format.json_schema.schema.maxLength'],
    ['a pattern count past GRAMMAR_MAX_STRING_LENGTH', { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', pattern: '^a{2,5000}$' } } }, 'response_format.json_schema.schema.pattern'],
    ['no name', { type: 'json_schema', json_schema: { schema: { type: 'object' } } }, 'response_format.json_schema.name'],
    ['a bad name', { type: 'json_schema', json_schema: { name: 'a b', schema: { type: 'object' } } }, 'response_format.json_schema.name'],
    ['no schema', { type: 'json_schema', json_schema: { name: 'x' } }, 'response_format.json_schema.schema'],
    ['no json_schema', { type: 'json_schema' }, 'response_format.json_schema'],
    ['an unknown type', { type: 'yaml' }, 'response_format.type'],
  ];
  for (const [what, format, param] of cases) {
    const res = await post(format);
    const body = (await res.json()) as { error: { type: string; param: string; message: string } };
    t.equal(res.status, 400, `${what}: 400`);
    t.equal(body.error.type, 'invalid_request_error');
    t.equal(body.error.param, param, `${what}: names ${param}`);
  }
  const ok = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4 });
  t.equal(ok.choices.length, 1, 'the server answers the next request');
});
