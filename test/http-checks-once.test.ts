// The protocol layer validates a request once, completely: every value the
// engine's own invariant checks would refuse is refused at the HTTP boundary
// with a 400 naming the field, before any scheduler or engine code runs.
import t from 'tap';
import { MODEL, makeApp, userMsg } from './http-helpers.js';

const base = { model: MODEL, messages: [userMsg()] };

const CASES: Array<[string, Record<string, unknown>, string]> = [
  ['temperature above 2', { temperature: 2.1 }, 'temperature'],
  ['top_p of 0', { top_p: 0 }, 'top_p'],
  ['top_p above 1', { top_p: 1.5 }, 'top_p'],
  ['top_k above TOPK_CAP', { top_k: 65 }, 'top_k'],
  ['top_k below -1', { top_k: -2 }, 'top_k'],
  ['min_p above 1', { min_p: 1.1 }, 'min_p'],
  ['presence_penalty above 2', { presence_penalty: 2.5 }, 'presence_penalty'],
  ['frequency_penalty below -2', { frequency_penalty: -3 }, 'frequency_penalty'],
  ['repetition_penalty above 2', { repetition_penalty: 3 }, 'repetition_penalty'],
  ['repetition_penalty of 0', { repetition_penalty: 0 }, 'repetition_penalty'],
  ['a seed beyond a safe integer', { seed: 2 ** 60 }, 'seed'],
  ['top_logprobs above 20', { logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
  ['top_logprobs without logprobs', { top_logprobs: 2 }, 'top_logprobs'],
  ['max_tokens above MAX_TOKENS_LIMIT', { max_tokens: 5000 }, 'max_tokens'],
  ['max_tokens of 0', { max_tokens: 0 }, 'max_tokens'],
  ['a logit_bias id outside the vocabulary', { logit_bias: { 262144: 1 } }, 'logit_bias.262144'],
  ['a logit_bias value above 100', { logit_bias: { 5: 101 } }, 'logit_bias.5'],
  ['more stop strings than MAX_STOP_STRINGS', { stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, 'stop'],
  ['an empty stop string', { stop: ['ok', ''] }, 'stop[1]'],
  ['a stop token id outside the vocabulary', { stop_token_ids: [262144] }, 'stop_token_ids[0]'],
  ['n above MAX_BATCH_SIZE', { n: 9 }, 'n'],
];

t.test('sampling values the engine would refuse never reach it', async (t) => {
  // The default scheduler fails the test if any request reaches it.
  const { app } = await makeApp();
  t.teardown(() => app.close());
  for (const [label, extra, param] of CASES) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...base, ...extra } });
    t.equal(res.statusCode, 400, `${label}: 400`);
    t.equal(res.json().error.param, param, `${label}: names ${param}`);
  }
});
