#!/usr/bin/env node
/**
 * `gemma-serve <command>`: serve (the HTTP service), score (top-k logits at
 * every position, one JSON object: how the engine is checked against outside
 * references), generate (a quick greedy chat completion, streamed), and
 * make-model (a random-weight Gemma 3 or Gemma 4 model directory with the real tokenizer).
 */
import { parseArgs } from 'node:util';
import { loadConfig, type BackendChoice } from '../config/index.js';
import { engineOptions, type EngineOptions } from './engine/options.js';
import { DEFAULT_SAMPLING } from './engine/types.js';
import { GemmaServeError } from './errors.js';

const USAGE = `usage:
  gemma-serve serve                      start the HTTP service (configured by environment variables; see README)
  gemma-serve score --model DIR --ids 2,105,1645 [--top-k 20] [--backend wasm|cpu|webgpu|tensorflow]
  gemma-serve generate [--model DIR] --prompt "..." [--max-tokens N] [--backend ...]
  gemma-serve make-model --out DIR [--arch gemma3|gemma4] [--preset NAME] [--seed N] [--dtype bf16|f32]
      presets: gemma3 tiny|270m|1b|4b|12b (default tiny), gemma4 tiny|e2b|e4b|26b-a4b|31b`;

/**
 * Engine options for score and generate: the flags on top of the
 * configuration's defaults. Of the environment they read only
 * GEMMA_SERVE_CACHE_DIR (where the embedded default model is kept); the tfjs
 * graph on wasm runs without its worker thread.
 */
function cliEngineOptions(overrides: Partial<EngineOptions>): EngineOptions {
  const config = loadConfig({ GEMMA_SERVE_CACHE_DIR: process.env.GEMMA_SERVE_CACHE_DIR });
  return engineOptions(config, { graphThreads: 1, ...overrides });
}

async function score(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { model: { type: 'string' }, ids: { type: 'string' }, 'top-k': { type: 'string', default: '20' }, backend: { type: 'string', default: 'auto' } },
  });
  if (!values.model || !values.ids) throw new UsageError('score needs --model DIR and --ids');
  const ids = values.ids.split(',').map((s) => Number(s.trim()));
  if (ids.some((x) => !Number.isInteger(x) || x < 0)) throw new UsageError(`--ids must be comma-separated token ids, got "${values.ids}"`);
  const { Engine } = await import('./engine/engine.js');
  const engine = await Engine.load(cliEngineOptions({ dir: values.model, backend: values.backend as BackendChoice, slots: 1, capacity: Math.max(16, ids.length) }));
  const vocab = engine.config.vocabSize;
  const bad = ids.find((x) => x >= vocab);
  if (bad !== undefined) throw new UsageError(`token id ${bad} is outside the vocabulary (${vocab})`);
  const positions = await engine.score(ids, Math.min(vocab, Number(values['top-k'])));
  process.stdout.write(JSON.stringify({ positions }) + '\n');
  engine.dispose();
}

async function generateCmd(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      backend: { type: 'string', default: 'auto' },
    },
  });
  if (values.prompt === undefined) throw new UsageError('generate needs --prompt');
  const { Engine } = await import('./engine/engine.js');
  const { generate } = await import('./engine/sampler-loop.js');
  const engine = await Engine.load(cliEngineOptions({ dir: values.model, backend: values.backend as BackendChoice, slots: 1, capacity: 2048 }));
  const promptIds = engine.tokenizer.encodeChat([{ role: 'user', content: values.prompt }], { addGenerationPrompt: true });
  const params = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: Number(values['max-tokens']) };
  let finish = '';
  for await (const { output } of generate(engine, [{ promptIds, params }])) {
    process.stdout.write(output.text);
    if (output.finish) finish = output.finish;
  }
  process.stdout.write('\n');
  process.stderr.write(`[finish_reason: ${finish}]\n`);
  engine.dispose();
}

async function makeModelCmd(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: 'string' },
      arch: { type: 'string', default: 'gemma3' },
      preset: { type: 'string', default: 'tiny' },
      seed: { type: 'string' },
      dtype: { type: 'string', default: 'bf16' },
    },
  });
  if (!values.out) throw new UsageError('make-model needs --out DIR');
  if (values.arch !== 'gemma3' && values.arch !== 'gemma4') throw new UsageError('--arch must be gemma3 or gemma4');
  const { makeModel } = await import('./model/make-model.js');
  const dtype = values.dtype.toUpperCase();
  if (dtype !== 'BF16' && dtype !== 'F32') throw new UsageError('--dtype must be bf16 or f32');
  await makeModel({
    out: values.out,
    arch: values.arch,
    preset: values.preset as 'tiny',
    seed: values.seed === undefined ? undefined : Number(values.seed),
    dtype,
  });
  process.stderr.write(`wrote ${values.arch} ${values.preset} model to ${values.out}\n`);
}

async function serve(): Promise<void> {
  const { startService } = await import('./service.js');
  await startService(process.env);
}

class UsageError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 400, code: 'usage' });
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve();
    case 'score':
      return score(rest);
    case 'generate':
      return generateCmd(rest);
    case 'make-model':
      return makeModelCmd(rest);
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'no command given');
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) process.stderr.write(`${err.message}\n${USAGE}\n`);
  else process.stderr.write(`gemma-serve: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\n`);
  process.exit(err instanceof UsageError ? 2 : 1);
});
