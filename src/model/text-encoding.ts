/**
 * Encoding with control-token parsing off. Message content is always text: a
 * user who types `<end_of_turn>` (or `<bos>`, `<unused0>`, ...) must not forge
 * a turn, so control strings in content become the ids of their characters,
 * never control ids. In a chat the template's own control tokens are the only
 * ones in the result.
 *
 * The library Tokenizer has no such mode (it splits out every added token it
 * finds), so this module escapes message content before the template renders
 * it, finds the template's control tokens in the rendering, and encodes the
 * text between them the way the library's `encode_text` would, with only the
 * non-control added tokens split out.
 */
import type { Tokenizer } from '@huggingface/tokenizers';
import { Dictionary } from './dictionary.js';
import { TokenizerFileError } from './tokenizer-errors.js';

/** A chat message as the template renders it. */
export interface ChatMessage {
  role: string;
  content: string | { type: 'text'; text: string }[];
}

/** An entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  normalized?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
}

/** The tokenizer_config.json settings this module reads. */
export interface TextEncodingConfig {
  additional_special_tokens?: (string | { content: string })[];
  remove_space?: boolean;
  do_lowercase_and_remove_accent?: boolean;
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
 * Gemma 3 `<unused0..6241>`) and its turn, image and sequence markers, and
 * Gemma 4's (`<|turn>` / `<turn|>`, the thinking switch `<|think|>`, the
 * channel markers `<|channel>` / `<channel|>`, the tool markers and string
 * delimiter `<|"|>`, the image, audio and video markers). The other
 * non-special added tokens (runs of `\n`, `\t`, `▁`, HTML tags) are text.
 */
const CONTROL_NAMES = new RegExp(
  '^(?:' +
    [
      '<unused\\d+>', '<mask>', '\\[multimodal\\]', '\\[@BOS@\\]', '<pad>', '<eos>', '<bos>', '<unk>',
      '<start_of_turn>', '<end_of_turn>', '<start_of_image>', '<end_of_image>', '<image_soft_token>',
      // Gemma 4
      '<\\|turn>', '<turn\\|>', '<\\|think\\|>', '<\\|channel>', '<channel\\|>',
      '<\\|tool>', '<tool\\|>', '<\\|tool_call>', '<tool_call\\|>', '<\\|tool_response>', '<tool_response\\|>', '<\\|"\\|>',
      '<\\|image>', '<image\\|>', '<\\|image\\|>', '<\\|audio>', '<audio\\|>', '<\\|audio\\|>', '<\\|video\\|>',
    ].join('|') +
    ')$',
);

/**
 * Escape in rendered message content: ESC ESC is ESC itself, ESC <base-36
 * index> ESC the control string of that index, ESC . ESC the end of a marked
 * content. No control string survives escaping, and the template's `trim`
 * leaves escapes whole.
 */
const ESC = '\uE000';
const ESC_CODE = 0xe000;
const MARK = `${ESC}.${ESC}`;

const utf8 = new TextEncoder();

/** Control-safe encoding over one parsed tokenizer.json (+ config) and its library Tokenizer. */
export class TextEncoding {
  /** Control token strings; an escape names one by its index here. */
  readonly controls: readonly string[];
  private readonly controlIndex: Map<string, number>;
  private readonly controlIds: Set<number>;
  /** Added tokens by content (and by normalized content), as the library's added_tokens_map. */
  private readonly added = new Map<string, AddedInfo>();
  /** Control strings, to escape them in message content. */
  private readonly controlDict: Dictionary;
  /** Every unnormalized added token: how the library splits a string (finds the template's control tokens). */
  private readonly allDict: Dictionary;
  /** Non-control added tokens, split out before / after normalization. */
  private readonly textDict: Dictionary;
  private readonly textDictNormalized: Dictionary;
  private readonly removeSpace: boolean;
  private readonly lowercase: boolean;

  /** `file` names tokenizer.json in errors. */
  constructor(private readonly tok: Tokenizer, addedTokens: readonly AddedTokenJson[], config: TextEncodingConfig, file: string) {
    const extraControl = new Set(
      Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens.map((t) => (typeof t === 'string' ? t : t?.content)) : [],
    );
    const controls: string[] = [];
    const unnormalized: string[] = [];
    const textUnnormalized: string[] = [];
    const textNormalized: string[] = [];
    for (const a of addedTokens) {
      const control = a.special === true || CONTROL_NAMES.test(a.content) || extraControl.has(a.content);
      const info: AddedInfo = { id: a.id, lstrip: a.lstrip ?? false, rstrip: a.rstrip ?? false, control };
      this.added.set(a.content, info);
      if (control && a.content.length > 0) controls.push(a.content);
      // As the library: normalized tokens are matched after normalization, the others before.
      if ((a.normalized ?? !a.special) && tok.normalizer !== null) {
        const n = tok.normalizer(a.content);
        this.added.set(n, info);
        if (!control) textNormalized.push(n);
      } else {
        unnormalized.push(a.content);
        if (!control) textUnnormalized.push(a.content);
      }
    }
    if (controls.some((c) => c.includes(ESC))) throw new TokenizerFileError(`${file}: a control token contains U+E000`, file);
    this.controls = controls;
    this.controlIndex = new Map(controls.map((c, i) => [c, i]));
    this.controlIds = new Set(controls.map((c) => this.added.get(c)!.id));
    this.controlDict = new Dictionary(controls);
    this.allDict = new Dictionary(unnormalized);
    this.textDict = new Dictionary(textUnnormalized);
    this.textDictNormalized = new Dictionary(textNormalized);
    this.removeSpace = config.remove_space === true;
    this.lowercase = config.do_lowercase_and_remove_accent === true;
  }

  /** Whether an id is a control token (never produced by encodeText). */
  isControl(id: number): boolean {
    return this.controlIds.has(id);
  }

  /**
   * Ids of `render(messages)` with message content (and roles) encoded as
   * text: `render` gets the messages escaped and must return the template's
   * rendering of them. `prefix`: the ids through the end of the content of
   * `messages[through]` (before its trailing whitespace), undefined when the
   * rendering does not hold that content or `through` is -1.
   */
  encodeChat(messages: ChatMessage[], through: number, render: (escaped: ChatMessage[]) => string): { ids: number[]; prefix: number[] | undefined } {
    return this.encodeRendered(render(this.escapeMessages(messages, through)));
  }

  /**
   * A template variable with every string in it (object keys too) escaped as
   * message content is, so that a control string passed in a variable (e.g.
   * `chat_template_kwargs`) is rendered as text, never as a control token.
   */
  escapeValue(v: unknown): unknown {
    if (typeof v === 'string') return this.escape(v);
    if (Array.isArray(v)) return v.map((x) => this.escapeValue(x));
    if (v !== null && typeof v === 'object') {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [this.escape(k), this.escapeValue(x)]));
    }
    return v;
  }

  /** Encodes text as `encode(text, { addSpecialTokens: false })` would, control strings as their characters. */
  encodeText(text: string): number[] {
    const out: number[] = [];
    this.encodeTextInto(text, out, 0, false, false);
    return out;
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
    let out = '';
    let start = 0;
    for (let i = 0; i < s.length; ) {
      const code = s.charCodeAt(i);
      if (code === ESC_CODE) {
        out += s.slice(start, i + 1) + ESC;
        start = ++i;
        continue;
      }
      const w = this.controlDict.mayStart(code) ? this.controlDict.longestAt(s, i) : undefined;
      if (w === undefined) {
        i++;
        continue;
      }
      out += s.slice(start, i) + ESC + this.controlIndex.get(w)!.toString(36) + ESC;
      i += w.length;
      start = i;
    }
    return start === 0 ? s : out + s.slice(start);
  }

  /** Undoes `escape`; MARKs are dropped, the last one's offset returned. */
  private unescape(s: string): { text: string; mark: number } {
    let at = s.indexOf(ESC);
    if (at < 0) return { text: s, mark: -1 };
    const controls = this.controls;
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
    this.allDict.scan(rendered, (pos, word) => {
      const a = this.added.get(word)!;
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
    const { normalizer, pre_tokenizer: preTokenizer, model } = this.tok;
    if (!model) throw new TokenizerFileError('tokenizer has no model', 'tokenizer.json');
    const textToken = (s: string): AddedInfo | undefined => {
      const a = this.added.get(s);
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
    const sections = this.textDict.split(text);
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
      if (this.removeSpace) s = s.trim().split(/\s+/).join(' ');
      if (this.lowercase) s = s.toLowerCase().replace(/\p{M}/gu, '');
      if (normalizer !== null) s = normalizer(s);
      if (s.length === 0) continue;
      const subs = this.textDictNormalized.split(s);
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
          const id = this.added.get(p)?.id ?? model.tokens_to_ids.get(p) ?? model.unk_token_id;
          // A model piece that spells a control string (none does in Gemma's vocabularies) goes as its bytes.
          if (id === undefined || (this.controlIds.has(id) && id !== model.unk_token_id)) this.pushBytes(p, out);
          else out.push(id);
        }
      }
    }
    return sections.length;
  }

  /** Byte-fallback ids of a model piece ('▁' is a space). */
  private pushBytes(piece: string, out: number[]): void {
    const model = this.tok.model!;
    for (const b of utf8.encode(piece.replaceAll('\u2581', ' '))) {
      const id = model.tokens_to_ids.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`) ?? model.unk_token_id;
      if (id !== undefined) out.push(id);
    }
  }
}
