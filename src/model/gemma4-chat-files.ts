/**
 * Tokenizer files for generated Gemma 4 models (make-model `--arch gemma4`):
 * the Gemma 3 tokenizer this project ships (the same 262,144-token size as
 * Gemma 4) with Gemma 4's control tokens renamed into place at their
 * published ids, and a chat template that renders as Gemma 4's published one.
 *
 * Where the facts come from (checked 2026-12-07):
 * - ids of `<|turn>` 105, `<turn|>` 106, `<|image>` 255999, `<|audio>` 256000,
 *   `<|image|>` 258880, `<|audio|>` 258881, `<image|>` 258882, `<audio|>`
 *   258883, pad/eos/bos/unk/mask 0-4: google-deepmind/gemma,
 *   `gemma/gm/text/_tokenizer.py` (`_Gemma4SpecialTokens`);
 * - `<|think|>` 98: vLLM `vllm/reasoning/gemma4_reasoning_parser.py` (its docstring);
 * - `<|channel>` 100, `<channel|>` 101, `<|tool>` 46, `<tool|>` 47,
 *   `<|tool_call>` 48, `<tool_call|>` 49, `<|tool_response>` 50,
 *   `<tool_response|>` 51, `<|"|>` 52: the Gemma 4 vocabularies that
 *   vLLM-derived and other public parsers test against (they agree);
 * - the template: google/gemma-4 `chat_template.jinja` as mirrored in
 *   ggml-org/llama.cpp `models/templates/gemma4.jinja`.
 *
 * The Gemma 3 entries at those ids are `<unusedN>` (and `<start_of_turn>`,
 * `<end_of_turn>`, `<start_of_image>`, `<end_of_image>`); no merge uses any
 * of them. Gemma 3's extra `<image_soft_token>` (id 262144) is left out, so
 * the vocabulary is exactly 262,144 tokens, as the Gemma 4 configs say.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { defaultTokenizerFiles } from './tokenizer.js';
import { TokenizerFileError } from './tokenizer-errors.js';

/** Gemma 4's control tokens at their published ids (see the module doc for sources). */
export const GEMMA4_CONTROL_TOKENS: Readonly<Record<string, number>> = Object.freeze({
  '<|tool>': 46,
  '<tool|>': 47,
  '<|tool_call>': 48,
  '<tool_call|>': 49,
  '<|tool_response>': 50,
  '<tool_response|>': 51,
  '<|"|>': 52,
  '<|think|>': 98,
  '<|channel>': 100,
  '<channel|>': 101,
  '<|turn>': 105,
  '<turn|>': 106,
  '<|image>': 255999,
  '<|audio>': 256000,
  '<|image|>': 258880,
  '<|audio|>': 258881,
  '<image|>': 258882,
  '<audio|>': 258883,
});

/** Gemma 4's vocabulary size. */
export const GEMMA4_VOCAB_SIZE = 262144;

/**
 * Gemma 4's chat template for text conversations: renders what the
 * published template renders for system/developer, user and assistant
 * messages with string or text-part content. `enable_thinking` puts
 * `<|think|>` at the head of a system turn; without it the generation prompt
 * closes an empty thought channel, so the model answers directly. Assistant
 * turns are rendered without their thinking (`<|channel>...<channel|>`).
 * Tool declarations, tool calls and images/audio (which this server does not
 * accept) are not rendered.
 */
export const GEMMA4_CHAT_TEMPLATE = `{%- macro strip_thinking(text) -%}
    {%- set ns = namespace(result='') -%}
    {%- for part in text.split('<channel|>') -%}
        {%- if '<|channel>' in part -%}
            {%- set ns.result = ns.result + part.split('<|channel>')[0] -%}
        {%- else -%}
            {%- set ns.result = ns.result + part -%}
        {%- endif -%}
    {%- endfor -%}
    {{- ns.result | trim -}}
{%- endmacro -%}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- set loop_messages = messages -%}
{{ bos_token }}
{%- if thinking or messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\\n' -}}
    {%- if thinking -%}
        {{- '<|think|>' -}}
    {%- endif -%}
    {%- if messages[0]['role'] in ['system', 'developer'] -%}
        {{- messages[0]['content'] | trim -}}
        {%- set loop_messages = messages[1:] -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\\n' -}}
    {%- if message['content'] is string -%}
        {%- if role == 'model' -%}
            {{- strip_thinking(message['content']) -}}
        {%- else -%}
            {{- message['content'] | trim -}}
        {%- endif -%}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {%- if role == 'model' -%}
                    {{- strip_thinking(item['text']) -}}
                {%- else -%}
                    {{- item['text'] | trim -}}
                {%- endif -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\\n' -}}
    {%- if not thinking -%}
        {{- '<|channel>thought\\n<channel|>' -}}
    {%- endif -%}
{%- endif -%}
`;

interface AddedToken {
  id: number;
  content: string;
  special?: boolean;
  [k: string]: unknown;
}

interface TokenizerJson {
  added_tokens: AddedToken[];
  model: { vocab: Record<string, number> };
  [k: string]: unknown;
}

/**
 * Writes tokenizer.json, tokenizer_config.json and chat_template.jinja of a
 * Gemma-4-style tokenizer into `out` (which must exist).
 */
export async function writeGemma4TokenizerFiles(out: string): Promise<void> {
  const src = defaultTokenizerFiles();
  const tj = JSON.parse(await fsp.readFile(src.tokenizerJson, 'utf8')) as TokenizerJson;
  const config = JSON.parse(await fsp.readFile(src.tokenizerConfig, 'utf8')) as Record<string, unknown>;
  const byId = new Map<number, string>();
  for (const [t, id] of Object.entries(tj.model.vocab)) byId.set(id, t);

  for (const [name, id] of Object.entries(GEMMA4_CONTROL_TOKENS)) {
    const old = byId.get(id);
    if (old === undefined) throw new TokenizerFileError(`the Gemma 3 vocabulary has no id ${id} to rename to ${name}`, src.tokenizerJson);
    if (Object.hasOwn(tj.model.vocab, name) && tj.model.vocab[name] !== id) {
      throw new TokenizerFileError(`${name} already has id ${tj.model.vocab[name]}`, src.tokenizerJson);
    }
    delete tj.model.vocab[old];
    tj.model.vocab[name] = id;
    byId.set(id, name);
  }
  const renamed = new Map(Object.entries(GEMMA4_CONTROL_TOKENS).map(([name, id]) => [id, name]));
  tj.added_tokens = tj.added_tokens
    .filter((a) => a.id < GEMMA4_VOCAB_SIZE)
    .map((a) => (renamed.has(a.id) ? { ...a, content: renamed.get(a.id)!, special: true } : a));

  const decoder = (config.added_tokens_decoder ?? {}) as Record<string, { content: string; special?: boolean }>;
  for (const key of Object.keys(decoder)) if (Number(key) >= GEMMA4_VOCAB_SIZE) delete decoder[key];
  for (const [id, name] of renamed) if (decoder[String(id)]) decoder[String(id)] = { ...decoder[String(id)]!, content: name, special: true };
  const gemma4Config: Record<string, unknown> = {
    ...config,
    added_tokens_decoder: decoder,
    bos_token: '<bos>',
    eos_token: '<eos>',
    pad_token: '<pad>',
    unk_token: '<unk>',
    boi_token: '<|image>',
    eoi_token: '<image|>',
    image_token: '<|image|>',
    boa_token: '<|audio>',
    eoa_token: '<audio|>',
    audio_token: '<|audio|>',
    sot_token: '<|turn>',
    eot_token: '<turn|>',
    soc_token: '<|channel>',
    eoc_token: '<channel|>',
    think_token: '<|think|>',
  };
  delete gemma4Config.chat_template;
  delete gemma4Config.extra_special_tokens;

  await fsp.writeFile(path.join(out, 'tokenizer.json'), JSON.stringify(tj));
  await fsp.writeFile(path.join(out, 'tokenizer_config.json'), JSON.stringify(gemma4Config, null, 2) + '\n');
  await fsp.writeFile(path.join(out, 'chat_template.jinja'), GEMMA4_CHAT_TEMPLATE);
}
