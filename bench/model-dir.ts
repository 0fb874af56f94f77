/** The benchmark model: the `270m` preset (Gemma 3 270M's exact shape), written once and reused. */
import { loadConfig } from '../config/index.js';
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { engineOptions, type EngineOptions } from '../src/engine/options.js';
import { makeModel, type PresetName } from '../src/model/make-model.js';
import type { WritableDType } from '../src/model/safetensors.js';

/** `dtype`: the checkpoint's storage, BF16 as released checkpoints, or F32 (values bfloat16 cannot hold). */
export async function benchModelDir(preset: PresetName = '270m', dtype: WritableDType = 'BF16'): Promise<string> {
  const name = `gemma-serve-bench-${preset}${dtype === 'BF16' ? '' : `-${dtype.toLowerCase()}`}`;
  const dir = process.env.BENCH_MODEL_DIR ?? join(loadConfig(process.env).model.cacheDir, name);
  if (existsSync(join(dir, 'config.json'))) return dir;
  const partial = `${dir}.partial-${process.pid}`;
  await rm(partial, { recursive: true, force: true });
  await makeModel({ out: partial, preset, dtype });
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
