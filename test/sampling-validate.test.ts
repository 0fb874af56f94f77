import t, { type Test } from 'tap';
import { validateSamplingParams, type SamplingLimits } from '../src/engine/sampling.js';
import {
  InvalidSamplingParamError,
  LogitBiasError,
  SamplingRangeError,
  StopSequenceError,
  TopLogprobsWithoutLogprobsError,
} from '../src/engine/sampling-errors.js';
import { InvalidValueError } from '../src/errors.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../src/engine/types.js';

const limits: SamplingLimits = { vocabSize: 1000, maxTokensLimit: 4096, topKCap: 64, maxStopStrings: 4, maxLogitBias: 3 };
const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...p });

function rejects(t: Test, p: Partial<SamplingParams>, param: string, cls: Function, range?: string): void {
  let err: unknown;
  try {
    validateSamplingParams(params(p), limits);
  } catch (e) {
    err = e;
  }
  const label = JSON.stringify(p);
  t.ok(err instanceof cls, `${label} -> ${cls.name}`);
  t.ok(err instanceof InvalidSamplingParamError && err instanceof InvalidValueError, `${label} is an InvalidValueError`);
  const e = err as InvalidValueError;
  t.equal(e.param, param, `${label} names param ${param}`);
  t.equal(e.status, 400);
  t.match(e.message, param, 'message names the field');
  if (range) t.match(e.message, range, 'message gives the allowed range');
}

t.test('valid parameters pass', async (t) => {
  const ok: Partial<SamplingParams>[] = [
    {},
    { temperature: 0 },
    { temperature: 2, topP: 1, topK: 64, minP: 1 },
    { topK: -1 },
    { topK: 0 },
    { topP: 1e-9 },
    { presencePenalty: -2, frequencyPenalty: 2, repetitionPenalty: 2 },
    { logprobs: true, topLogprobs: 20 },
    { logprobs: true, topLogprobs: 0 },
    { logitBias: { 0: -100, 999: 100, 5: 0.5 } },
    { maxTokens: 1 },
    { maxTokens: 4096 },
    { stop: ['a', 'bb', '\n\n', 'END'] },
    { seed: -3 },
    { seed: 2 ** 40 },
    { stopTokenIds: [0, 999] },
  ];
  for (const p of ok) t.doesNotThrow(() => validateSamplingParams(params(p), limits), JSON.stringify(p));
});

t.test('out-of-range values name the OpenAI field', async (t) => {
  rejects(t, { temperature: -0.1 }, 'temperature', SamplingRangeError, '[0, 2]');
  rejects(t, { temperature: 2.01 }, 'temperature', SamplingRangeError, '[0, 2]');
  rejects(t, { temperature: Number.NaN }, 'temperature', SamplingRangeError);
  rejects(t, { topP: 0 }, 'top_p', SamplingRangeError, '(0, 1]');
  rejects(t, { topP: 1.5 }, 'top_p', SamplingRangeError);
  rejects(t, { topK: -2 }, 'top_k', SamplingRangeError, '64');
  rejects(t, { topK: 1.5 }, 'top_k', SamplingRangeError);
  rejects(t, { topK: 65 }, 'top_k', SamplingRangeError, '[1, 64]');
  rejects(t, { minP: -0.1 }, 'min_p', SamplingRangeError, '[0, 1]');
  rejects(t, { minP: 1.1 }, 'min_p', SamplingRangeError);
  rejects(t, { presencePenalty: 2.5 }, 'presence_penalty', SamplingRangeError, '[-2, 2]');
  rejects(t, { frequencyPenalty: -3 }, 'frequency_penalty', SamplingRangeError, '[-2, 2]');
  rejects(t, { repetitionPenalty: 0 }, 'repetition_penalty', SamplingRangeError, '(0, 2]');
  rejects(t, { repetitionPenalty: 2.5 }, 'repetition_penalty', SamplingRangeError);
  rejects(t, { logprobs: true, topLogprobs: 21 }, 'top_logprobs', SamplingRangeError, '[0, 20]');
  rejects(t, { logprobs: true, topLogprobs: -1 }, 'top_logprobs', SamplingRangeError);
  rejects(t, { maxTokens: 0 }, 'max_tokens', SamplingRangeError, '[1, 4096]');
  rejects(t, { maxTokens: 4097 }, 'max_tokens', SamplingRangeError, '[1, 4096]');
  rejects(t, { maxTokens: 10.5 }, 'max_tokens', SamplingRangeError);
  rejects(t, { seed: 0.5 }, 'seed', SamplingRangeError);
  rejects(t, { stopTokenIds: [1000] }, 'stop_token_ids', SamplingRangeError, '[0, 999]');
});

t.test('cross-field and structured checks', async (t) => {
  rejects(t, { topLogprobs: 3, logprobs: false }, 'top_logprobs', TopLogprobsWithoutLogprobsError, 'logprobs');
  rejects(t, { logitBias: { 1000: 1 } }, 'logit_bias', LogitBiasError, '[0, 1000)');
  rejects(t, { logitBias: { [-1]: 1 } as Record<number, number> }, 'logit_bias', LogitBiasError);
  rejects(t, { logitBias: { ['1.5' as unknown as number]: 1 } }, 'logit_bias', LogitBiasError);
  rejects(t, { logitBias: { 3: 101 } }, 'logit_bias', LogitBiasError, '[-100, 100]');
  rejects(t, { logitBias: { 3: Number.NaN } }, 'logit_bias', LogitBiasError);
  rejects(t, { stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', StopSequenceError, 'at most 4');
  rejects(t, { stop: ['ok', ''] }, 'stop', StopSequenceError, 'non-empty');
  rejects(t, { logitBias: { 1: 1, 2: 1, 3: 1, 4: 1 } }, 'logit_bias', LogitBiasError, 'at most 3 entries');
});

t.test('top_logprobs is also bounded by a small top-K cap', async (t) => {
  t.throws(() => validateSamplingParams(params({ logprobs: true, topLogprobs: 10 }), { ...limits, topKCap: 8 }), SamplingRangeError);
});
