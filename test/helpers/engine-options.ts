// Engine options for tests: the configuration's defaults (loadConfig of an empty environment, so a test runs the same
// whatever the shell sets) with the test's own choices on top.
import { loadConfig } from '../../config/index.js';
import { engineOptions, type EngineOptions } from '../../src/engine/engine.js';

/**
 * Unless a test sets `cpuThreads` (or `graphThreads`), the tfjs graph on wasm
 * runs without its worker thread, as these tests always have; the native
 * kernels take config's one thread per core.
 */
export function testEngineOptions(overrides: Partial<EngineOptions>): EngineOptions {
  return engineOptions(loadConfig({}), { ...overrides, graphThreads: overrides.graphThreads ?? overrides.cpuThreads ?? 1 });
}
