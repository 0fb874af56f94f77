/**
 * Structured outputs: response formats compiled into grammars over the
 * model's vocabulary, and one matcher per generated row that gives the
 * tokens allowed next as a bitmask (applied before top-K by every path's
 * reduction; reduce.ts) and follows the tokens picked.
 *
 * A schema is first checked (json-schema.ts), then turned into EBNF by a
 * separate instance of the grammar engine: its converter aborts on input it
 * cannot take, and an abort there only costs that instance, which is
 * replaced. The EBNF is compiled by the instance that holds the vocabulary
 * (built once, ~0.3 s for Gemma's 262k tokens). Compiled grammars are kept
 * by schema, the least recently used dropped past `cacheSize`.
 */
import { GrammarSchemaError, checkJsonSchema } from './json-schema.js';
import { loadXGrammar, type XCompiledGrammar, type XGrammar, type XGrammarCompiler, type XGrammarMatcher } from './xgrammar.js';

/** What a request asks its output to follow. */
export type GrammarSpec = { kind: 'json_object' } | { kind: 'json_schema'; schema: object; param: string };

/** A grammar compiled for this model's vocabulary; rows get their own matcher from it. */
export interface CompiledGrammar {
  readonly key: string;
  readonly compiled: XCompiledGrammar;
}

/** The vocabulary as the grammar engine needs it. */
export interface GrammarVocabulary {
  /** Token strings by id (SentencePiece form: "▁" for a space, "<0xNN>" for a byte). */
  tokens: string[];
  /** Ids that end a generation; a grammar allows them once it is complete. */
  stopIds: number[];
}

/** What the service allows: compiled grammars kept, and the largest string length bound (json-schema.ts). */
export interface GrammarLimits {
  cacheSize: number;
  maxStringLength: number;
}

export class Grammars {
  private readonly cache = new Map<string, CompiledGrammar>();
  private sandbox: XGrammar = loadXGrammar();

  private constructor(
    private readonly xg: XGrammar,
    private readonly compiler: XGrammarCompiler,
    private readonly limits: GrammarLimits,
  ) {}

  static async create(vocab: GrammarVocabulary, limits: GrammarLimits): Promise<Grammars> {
    const xg = loadXGrammar();
    const info = await xg.TokenizerInfo.createTokenizerInfo(vocab.tokens, 'byte_fallback', false, vocab.tokens.length, vocab.stopIds);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, true);
    return new Grammars(xg, compiler, limits);
  }

  /** The grammar of `spec`, compiled or from the cache. Throws GrammarSchemaError on a schema it cannot take. */
  async compile(spec: GrammarSpec): Promise<CompiledGrammar> {
    const schema = spec.kind === 'json_object' ? { type: 'object' } : spec.schema;
    const param = spec.kind === 'json_object' ? 'response_format' : spec.param;
    if (spec.kind === 'json_schema') checkJsonSchema(schema, param, this.limits);
    const key = JSON.stringify(schema);
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    const ebnf = await this.toEbnf(key, param);
    const compiled: CompiledGrammar = { key, compiled: await this.compiler.compileGrammar(ebnf, 'root') };
    this.cache.set(key, compiled);
    while (this.cache.size > this.limits.cacheSize) {
      const [oldest, dropped] = this.cache.entries().next().value as [string, CompiledGrammar];
      this.cache.delete(oldest);
      // A matcher keeps what it needs of its grammar; disposing the handle here does not end it.
      dropped.compiled.dispose();
    }
    return compiled;
  }

  /** A matcher for one row. */
  async matcher(grammar: CompiledGrammar): Promise<RowGrammar> {
    return new RowGrammar(await this.xg.GrammarMatcher.createGrammarMatcher(grammar.compiled));
  }

  get cached(): number {
    return this.cache.size;
  }

  private async toEbnf(schema: string, param: string): Promise<string> {
    try {
      // Compact JSON (fixed separators, no free whitespace): a model cannot stall in a run of blank lines.
      return jsonStringsFix(await this.sandbox.Testings._jsonSchemaToEBNF(schema, false));
    } catch {
      this.sandbox = loadXGrammar();
      throw new GrammarSchemaError(param, 'the grammar engine cannot turn this schema into a grammar');
    }
  }
}

/**
 * The converter writes a length-bounded string (minLength, maxLength) as
 * `[^"\\\r\n]{m,n}`, which lets raw control characters in (Gemma's
 * vocabulary has a token that is a bare U+001F), and JSON forbids them
 * unescaped: its unbounded strings already leave them out, and so do these.
 */
export function jsonStringsFix(ebnf: string): string {
  return ebnf.replaceAll(String.raw`[^"\\\r\n]{`, String.raw`[^\0-\x1f"\\\r\n]{`);
}

/** One row's progress through its grammar. */
export class RowGrammar {
  private done = false;

  constructor(private readonly matcher: XGrammarMatcher) {}

  /** The tokens allowed next: bit i % 32 of word i / 32 set where token i is. */
  mask(): Promise<Int32Array> {
    return this.matcher.getNextTokenBitmask();
  }

  /** Advances past `token`; false when the grammar does not allow it. */
  accept(token: number): boolean {
    return this.matcher.acceptToken(token);
  }

  /** The grammar is complete and a stop token was accepted. */
  get terminated(): boolean {
    return this.matcher.isTerminated();
  }

  dispose(): void {
    if (this.done) return;
    this.done = true;
    this.matcher.dispose();
  }
}
