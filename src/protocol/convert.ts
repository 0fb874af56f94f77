/**
 * From a checked OpenAI request to the internal types the scheduler takes:
 * sampling parameters with server defaults filled in, and the conversation
 * reshaped into turns Gemma's chat template accepts. Routes call these after
 * `checkChatRequest`; the scheduler never sees OpenAI types.
 */
import { DEFAULT_SAMPLING, type SamplingParams } from '../engine/types.js';
import type { GrammarSpec } from '../engine/grammar/grammars.js';
import type { ChatTurn } from '../scheduler/types.js';
import type { ChatCompletionMessageParam, ChatCompletionRequest } from './chat-types.js';

/**
 * Values used where the request leaves a field out: the server's max tokens
 * and, optionally, the model's generation_config.json (as vLLM does).
 */
export interface SamplingDefaults {
  maxTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
}

const given = <T>(v: T | null | undefined): v is T => v !== undefined && v !== null;

/** The request fields sampling reads (a text completion request supplies them as well). */
export type SamplingFields = Pick<
  ChatCompletionRequest,
  | 'temperature' | 'top_k' | 'top_p' | 'min_p' | 'seed' | 'presence_penalty' | 'frequency_penalty' | 'repetition_penalty'
  | 'logit_bias' | 'logprobs' | 'top_logprobs' | 'max_completion_tokens' | 'max_tokens' | 'stop' | 'stop_token_ids'
>;

export function toSamplingParams(req: SamplingFields, defaults: SamplingDefaults): SamplingParams {
  const logprobs = req.logprobs === true;
  const logitBias: Record<number, number> = {};
  for (const [k, v] of Object.entries(req.logit_bias ?? {})) logitBias[Number(k)] = v;
  const stop = given(req.stop) ? (typeof req.stop === 'string' ? [req.stop] : [...req.stop]) : [];
  return {
    temperature: req.temperature ?? defaults.temperature ?? DEFAULT_SAMPLING.temperature,
    // vLLM spells "off" as -1 or 0; the engine uses 0.
    topK: given(req.top_k) ? Math.max(0, req.top_k) : defaults.topK ?? DEFAULT_SAMPLING.topK,
    topP: req.top_p ?? defaults.topP ?? DEFAULT_SAMPLING.topP,
    minP: req.min_p ?? defaults.minP ?? DEFAULT_SAMPLING.minP,
    ...(given(req.seed) ? { seed: req.seed } : {}),
    presencePenalty: req.presence_penalty ?? DEFAULT_SAMPLING.presencePenalty,
    frequencyPenalty: req.frequency_penalty ?? DEFAULT_SAMPLING.frequencyPenalty,
    repetitionPenalty: req.repetition_penalty ?? defaults.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
    logitBias,
    logprobs,
    topLogprobs: logprobs ? req.top_logprobs ?? 0 : 0,
    maxTokens: req.max_completion_tokens ?? req.max_tokens ?? defaults.maxTokens,
    stop,
    stopTokenIds: [...(req.stop_token_ids ?? [])],
  };
}

/** Text of a message: a string, or its text parts joined by newlines (as vLLM joins them). */
export function messageText(m: ChatCompletionMessageParam): string {
  if (!given(m.content)) return '';
  if (typeof m.content === 'string') return m.content;
  return m.content.map((p) => p.text ?? '').join('\n');
}

/**
 * Reshapes OpenAI messages into what Gemma's template accepts (an optional
 * leading system turn, then user/assistant alternating, starting with user),
 * so a valid OpenAI conversation never fails inside the template:
 * 1. `developer` is a system message; `tool` results are user turns.
 * 2. Only a leading system message stays system; later ones become user turns.
 * 3. Consecutive turns of one role merge, separated by a blank line.
 * 4. A conversation whose first turn is the assistant's gets an empty user turn before it.
 * 5. A system message with nothing after it becomes the user turn (the template would drop it).
 */
export function toChatTurns(messages: ChatCompletionMessageParam[]): ChatTurn[] {
  const turns: ChatTurn[] = [];
  messages.forEach((m, i) => {
    const content = messageText(m);
    let role: ChatTurn['role'];
    if (m.role === 'system' || m.role === 'developer') role = i === 0 ? 'system' : 'user';
    else if (m.role === 'assistant') role = 'assistant';
    else role = 'user';
    const last = turns[turns.length - 1];
    if (last !== undefined && last.role === role) last.content = `${last.content}\n\n${content}`;
    else turns.push({ role, content });
  });
  const first = turns[0]?.role === 'system' ? 1 : 0;
  if (first === 1 && turns.length === 1) turns[0]!.role = 'user';
  else if (turns[first]?.role === 'assistant') turns.splice(first, 0, { role: 'user', content: '' });
  return turns;
}

/** The grammar a chat request's response format asks for; undefined for text. */
export function toGrammarSpec(req: ChatCompletionRequest): GrammarSpec | undefined {
  const format = req.response_format;
  if (!format || format.type === 'text') return undefined;
  if (format.type === 'json_object') return { kind: 'json_object' };
  return { kind: 'json_schema', schema: format.json_schema!.schema!, param: 'response_format.json_schema.schema' };
}
