// chat_template_kwargs checks without a server: plain JSON data only, at most
// 8 levels deep, at most MAX_CHAT_TEMPLATE_KWARGS_BYTES as JSON; each failure
// a 400 naming the field.
import t from 'tap';
import { checkChatRequest, checkTemplateKwargs, type ChatCompletionRequest } from '../src/protocol/index.js';

const limits = { maxTokensLimit: 100, maxN: 4, topKCap: 64, chatTemplateKwargsBytes: 64 };
const req = (kwargs: unknown): ChatCompletionRequest =>
  ({ model: 'm', messages: [{ role: 'user', content: 'x' }], chat_template_kwargs: kwargs }) as ChatCompletionRequest;

/** `depth` objects, one inside the other. */
const nested = (depth: number): unknown => {
  let v: unknown = true;
  for (let i = 0; i < depth; i++) v = { k: v };
  return v;
};

t.test('plain JSON objects pass, unknown keys included', async (t) => {
  t.doesNotThrow(() => checkChatRequest(req({ enable_thinking: true, anything: [1, 'two', null, { three: 3.5 }] }), limits));
  t.doesNotThrow(() => checkChatRequest(req(null), limits), 'null means absent');
  t.doesNotThrow(() => checkTemplateKwargs(nested(8)), '8 levels');
});

t.test('what a template cannot be given is a 400 naming chat_template_kwargs', async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ['too deep', nested(9), /nested more than 8 deep/],
    ['a function', { f: () => 1 }, /not JSON-serializable \(function\)/],
    ['undefined', { u: undefined }, /not JSON-serializable \(undefined\)/],
    ['a bigint', { b: 1n }, /not JSON-serializable \(bigint\)/],
    ['NaN', { n: Number.NaN }, /not a finite number/],
    ['Infinity', { n: [Infinity] }, /not a finite number/],
    ['a Date', { d: new Date(0) }, /not a plain JSON object/],
    ['a Map', { m: new Map() }, /not a plain JSON object/],
    ['an array at the top', ['x'], /expected an object/],
  ];
  for (const [what, kwargs, message] of cases) {
    t.throws(() => checkChatRequest(req(kwargs), limits), { status: 400, param: 'chat_template_kwargs', code: 'invalid_chat_template_kwargs', message }, what);
  }
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  t.throws(() => checkTemplateKwargs(cyclic), { param: 'chat_template_kwargs', message: /nested more than 8 deep/ }, 'a cycle is too deep, not a hang');
});

t.test('larger than the limit as JSON', async (t) => {
  t.throws(() => checkChatRequest(req({ text: 'x'.repeat(64) }), limits), {
    status: 400,
    param: 'chat_template_kwargs',
    code: 'limit_exceeded',
    message: /MAX_CHAT_TEMPLATE_KWARGS_BYTES/,
  });
  t.doesNotThrow(() => checkChatRequest(req({ text: 'x'.repeat(40) }), limits));
});
