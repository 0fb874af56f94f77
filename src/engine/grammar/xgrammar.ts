/**
 * Loads @mlc-ai/web-xgrammar (the grammar engine web-llm uses: JSON Schema
 * and EBNF compiled against a vocabulary, next-token bitmasks). Its
 * `lib/index.js` is a UMD bundle inside a `type: module` package: Node's ESM
 * import finds no named exports and `require` refuses the file, so it is
 * evaluated here as the CommonJS module it is. Each load is a fresh instance
 * with its own wasm heap.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';

/** The parts of the package's API the engine uses (lib/xgrammar.d.ts). */
export interface XGrammar {
  TokenizerInfo: {
    createTokenizerInfo(encodedVocab: string[], vocabType?: string, prependSpace?: boolean, vocabSize?: number, stopTokenIds?: number[]): Promise<XTokenizerInfo>;
  };
  GrammarCompiler: { createGrammarCompiler(info: XTokenizerInfo, cacheEnabled?: boolean): Promise<XGrammarCompiler> };
  GrammarMatcher: { createGrammarMatcher(compiled: XCompiledGrammar): Promise<XGrammarMatcher> };
  Testings: { _jsonSchemaToEBNF(schema: string, anyWhitespace?: boolean): Promise<string> };
}

export interface XTokenizerInfo {
  getVocabSize(): number;
  dispose(): void;
}

export interface XGrammarCompiler {
  compileGrammar(ebnf: string, rootRule?: string): Promise<XCompiledGrammar>;
  compileBuiltinJSONGrammar(): Promise<XCompiledGrammar>;
  dispose(): void;
}

export interface XCompiledGrammar {
  dispose(): void;
}

export interface XGrammarMatcher {
  getNextTokenBitmask(): Promise<Int32Array>;
  acceptToken(token: number): boolean;
  isTerminated(): boolean;
  dispose(): void;
}

const requireHere = createRequire(import.meta.url);

/** A new instance of the package. */
export function loadXGrammar(): XGrammar {
  const file = requireHere.resolve('@mlc-ai/web-xgrammar/lib/index.js');
  const module = { exports: {} as Record<string, unknown> };
  const body = new Function('module', 'exports', 'require', '__filename', '__dirname', readFileSync(file, 'utf8'));
  body(module, module.exports, createRequire(file), file, dirname(file));
  return module.exports as unknown as XGrammar;
}
