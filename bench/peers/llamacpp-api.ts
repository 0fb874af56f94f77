/**
 * What the llama.cpp peers (llamacpp-child.ts on the CPU, llamacpp-gpu.ts on
 * the GPU machine) use of node-llama-cpp, which is not a project dependency:
 * the slice of its API they call, typed structurally, its loading from an
 * install folder, and the timed greedy decode both benchmarks share.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export interface Sequence {
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], opts: { temperature: number; yieldEogToken: boolean }): AsyncGenerator<number, void, void>;
  evaluateWithMetadata(
    tokens: number[], meta: { probabilities: true },
    opts: { temperature: number; topK: number; topP: number; minP: number; yieldEogToken: boolean },
  ): AsyncGenerator<{ token: number; probabilities: Map<number, number> }, void, void>;
  clearHistory(): Promise<void>;
}
export interface Context {
  readonly flashAttention: boolean | string;
  readonly contextSize: number;
  readonly batchSize: number;
  getSequence(): Sequence;
  dispose(): Promise<void>;
}
export interface Model {
  readonly gpuLayers: number;
  readonly size: number;
  readonly typeDescription: string;
  readonly fileInfo: { metadata: { general?: { file_type?: number } } };
  tokenize(text: string): number[];
  createContext(opts: {
    contextSize: number; batchSize: number; threads?: number; sequences: number;
    flashAttention?: boolean | 'auto'; experimentalKvCacheKeyType?: string; experimentalKvCacheValueType?: string;
  }): Promise<Context>;
  dispose(): Promise<void>;
}
export interface Llama {
  readonly gpu: string | false;
  readonly buildType: string;
  readonly systemInfo: string;
  readonly llamaCppRelease: { release: string };
  loadModel(opts: { modelPath: string; gpuLayers: number | 'max' }): Promise<Model>;
  getGpuDeviceNames(): Promise<string[]>;
  getVramState(): Promise<{ total: number; used: number; free: number }>;
  dispose(): Promise<void>;
}
export interface NodeLlamaCpp {
  getLlama(opts: Record<string, unknown>): Promise<Llama>;
  LlamaLogLevel: Record<string, unknown>;
}

/** node-llama-cpp from `nlcDir` (the folder holding node_modules/node-llama-cpp), and its version. */
export async function loadNodeLlamaCpp(nlcDir: string): Promise<{ nlc: NodeLlamaCpp; version: string }> {
  const pkgDir = join(nlcDir, 'node_modules', 'node-llama-cpp');
  const version = (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
  const nlc = (await import(pathToFileURL(join(pkgDir, 'dist', 'index.js')).href)) as NodeLlamaCpp;
  return { nlc, version };
}

export const now = () => performance.now();

/** Greedy decode of `n` tokens after `prompt`; returns the span of the n forwards and the tokens. */
export async function decode(seq: Sequence, prompt: number[], n: number): Promise<{ t0: number; t1: number; tokens: number[] }> {
  const tokens: number[] = [];
  let t0 = 0;
  let t1 = 0;
  // llama.cpp keeps decoding past an end-of-generation token, as our side does.
  for await (const tok of seq.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
    tokens.push(tok);
    if (tokens.length === 1) t0 = now();
    if (tokens.length === n + 1) {
      t1 = now();
      break;
    }
  }
  await seq.clearHistory();
  return { t0, t1, tokens };
}
