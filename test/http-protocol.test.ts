// The pure protocol layer: cross-field checks and conversion to internal types.
import t from 'tap';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import {
  EmptyMessagesError, LimitExceededError, ParameterConflictError, UnknownRoleError, UnsupportedContentError, UnsupportedFeatureError,
  checkChatRequest, toChatTurns, toSamplingParams, type ChatCompletionRequest,
} from '../src/protocol/index.js';

const limits = { maxTokensLimit: 100, maxN: 4, topKCap: 64, vocabSize: 1000 };
const base: ChatCompletionRequest = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
const check = (extra: Partial<ChatCompletionRequest>) => () => checkChatRequest({ ...base, ...extra } as ChatCompletionRequest, limits);

t.test('checkChatRequest names the problem', async (t) => {
  t.doesNotThrow(check({}));
  t.throws(check({ messages: [] }), EmptyMessagesError);
  t.throws(check({ messages: [{ role: 'robot' as 'user', content: 'x' }] }), UnknownRoleError);
  t.throws(check({ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }), UnsupportedContentError);
  t.throws(check({ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }), { message: /image content is not supported/ });
  t.throws(check({ tools: [{}] }), UnsupportedFeatureError);
  t.doesNotThrow(check({ tools: [] }));
  t.throws(check({ n: 5 }), LimitExceededError);
  t.throws(check({ max_tokens: 101 }), { param: 'max_tokens' });
  t.throws(check({ max_completion_tokens: 101 }), { param: 'max_completion_tokens' });
  t.throws(check({ max_tokens: 5, max_completion_tokens: 6 }), ParameterConflictError);
  t.doesNotThrow(check({ max_tokens: 5, max_completion_tokens: 5 }));
  t.throws(check({ stream_options: { include_usage: true } }), { param: 'stream_options' });
  t.throws(check({ top_logprobs: 2 }), { param: 'top_logprobs' });
  t.throws(check({ top_k: 65 }), { param: 'top_k' });
  t.throws(check({ logit_bias: { '1000': 1 } }), { param: 'logit_bias.1000' });
  t.throws(check({ stop_token_ids: [1, 5000] }), { param: 'stop_token_ids[1]' });
  t.throws(check({ messages: [{ role: 'assistant', content: null, tool_calls: [{}] }] }), { param: 'messages[0].tool_calls' });
});

t.test('toSamplingParams fills defaults and maps names', async (t) => {
  t.same(toSamplingParams(base, { maxTokens: 33 }), { ...DEFAULT_SAMPLING, maxTokens: 33 });
  const p = toSamplingParams({
    ...base, temperature: 0.7, top_p: 0.9, top_k: -1, min_p: 0.1, seed: 42, stop: 'END', logprobs: true, top_logprobs: 3,
    presence_penalty: 0.5, frequency_penalty: 0.25, repetition_penalty: 1.2, logit_bias: { '7': -100 }, max_completion_tokens: 9, stop_token_ids: [3],
  }, { maxTokens: 33, topK: 64, topP: 0.95 });
  t.same(p, {
    temperature: 0.7, topK: 0, topP: 0.9, minP: 0.1, seed: 42, presencePenalty: 0.5, frequencyPenalty: 0.25, repetitionPenalty: 1.2,
    logitBias: { 7: -100 }, logprobs: true, topLogprobs: 3, maxTokens: 9, stop: ['END'], stopTokenIds: [3],
  });
  const d = toSamplingParams({ ...base, max_tokens: 5, top_logprobs: 0 }, { maxTokens: 33, topK: 64, topP: 0.95, temperature: 1 });
  t.match(d, { topK: 64, topP: 0.95, maxTokens: 5, topLogprobs: 0 }, 'model defaults apply to omitted fields');
  t.notOk('seed' in d);
});

t.test('toChatTurns makes conversations Gemma templates accept', async (t) => {
  t.same(toChatTurns([
    { role: 'developer', content: 'sys' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
    { role: 'user', content: 'c' }, { role: 'assistant', content: 'd' }, { role: 'tool', content: 'e', tool_call_id: 'x' }, { role: 'system', content: 'f' },
  ]), [{ role: 'system', content: 'sys' }, { role: 'user', content: 'a\nb\n\nc' }, { role: 'assistant', content: 'd' }, { role: 'user', content: 'e\n\nf' }]);
  t.same(toChatTurns([{ role: 'assistant', content: 'hello' }, { role: 'user', content: 'hi' }]),
    [{ role: 'user', content: '' }, { role: 'assistant', content: 'hello' }, { role: 'user', content: 'hi' }]);
  t.same(toChatTurns([{ role: 'system', content: 'only' }]), [{ role: 'user', content: 'only' }]);
  t.same(toChatTurns([{ role: 'system', content: 's' }, { role: 'assistant', content: null }]),
    [{ role: 'system', content: 's' }, { role: 'user', content: '' }, { role: 'assistant', content: '' }]);
});
