/** The benchmark model: the `270m` preset (Gemma 3 270M's exact shape) unless asked otherwise, written once and reused. */
import { loadConfig } from '../config/index.js';
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { engineOptions, type EngineOptions } from '../src/engine/options.js';
import { parseArgs } from 'node:util';
import { makeModel, presetNames, type Architecture, type PresetName } from '../src/model/make-model.js';
import type { Gemma4PresetName } from '../src/model/make-model-gemma4.js';
import type { WritableDType } from '../src/model/safetensors.js';

/** `dtype`: the checkpoint's storage, BF16 as released checkpoints, or F32 (values bfloat16 cannot hold). */
export async function benchModelDir(preset: PresetName | Gemma4PresetName = '270m', dtype: WritableDType = 'BF16', arch: Architecture = 'gemma3'): Promise<string> {
  const name = `gemma-serve-bench-${arch === 'gemma3' ? '' : `${arch}-`}${preset}${dtype === 'BF16' ? '' : `-${dtype.toLowerCase()}`}`;
  const dir = process.env.BENCH_MODEL_DIR ?? join(loadConfig(process.env).model.cacheDir, name);
  if (existsSync(join(dir, 'config.json'))) return dir;
  const partial = `${dir}.partial-${process.pid}`;
  await rm(partial, { recursive: true, force: true });
  await makeModel({ out: partial, arch, preset, dtype });
  await rename(partial, dir);
  return dir;
}

/** Deterministic filler prompt ids (ordinary vocabulary, no special tokens). */
export function promptIds(n: number, seed = 1): number[] {
  let s = seed;
  return [2, ...Array.from({ length: n - 1 }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) % 200000) + 1000)];
}

/**
 * Options for an engine a benchmark loads itself: the service's configuration
 * from the environment (BACKEND, CPU_KERNELS, CPU_THREADS, ...) on the model
 * in `dir`, with the benchmark's own shapes in `overrides`.
 */
export function benchEngineOptions(dir: string, overrides: Partial<EngineOptions> = {}): EngineOptions {
  return engineOptions(loadConfig(process.env), { dir, ...overrides });
}

/** The benchmark model a command line names: `--arch gemma3|gemma4` (gemma3), `--preset NAME` (270m, or e2b for gemma4). */
export function benchModelArgs(argv: string[] = process.argv.slice(2)): { arch: Architecture; preset: PresetName | Gemma4PresetName; label: string } {
  const { values } = parseArgs({ args: argv, options: { arch: { type: 'string', default: 'gemma3' }, preset: { type: 'string' } }, strict: false });
  const arch = values.arch as Architecture;
  if (arch !== 'gemma3' && arch !== 'gemma4') throw new Error('--arch must be gemma3 or gemma4');
  const preset = (typeof values.preset === 'string' ? values.preset : arch === 'gemma4' ? 'e2b' : '270m') as PresetName | Gemma4PresetName;
  if (!presetNames(arch).includes(preset)) throw new Error(`--preset must be one of ${presetNames(arch).join(', ')} for ${arch}`);
  return { arch, preset, label: `${arch} ${preset} preset (random weights)` };
}
