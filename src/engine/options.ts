/**
 * What `Engine.load` takes, and how it is built from the configuration. A
 * module of its own, free of tfjs, so that code which only builds options
 * (benchmark helpers, the CLI) does not load the engine.
 */
import { defaultModelId, type Config } from '../../config/index.js';

/**
 * What `Engine.load` needs: settings of the service's configuration, under
 * their names and with their documentation there (config/index.ts), which
 * also holds every default; the engine has none of its own. Build one with
 * `engineOptions(config, overrides)`.
 *
 * - `dir` absent: the embedded default model, built under `cacheDir`;
 * - `slots`, `capacity`: the KV pool (slots of `capacity` global-layer entries);
 * - `maxBatchSize`, `prefillChunk`: the largest decode batch and prompt chunk
 *   (they size the transient memory estimate and the wasm worker's buffer);
 * - `cpuKernels`, `cpuThreads`: on wasm and cpu, what runs the linear layers
 *   and on how many threads (the native kernels' count is process-wide: the
 *   last engine loaded sets it);
 * - `topKCap`: the largest K of the device-side top-k;
 * - `grammarCacheSize`, `grammarMaxStringLength`: structured outputs' grammar cache and string-bound limit.
 */
export type EngineOptions = Pick<Config['model'], 'dir' | 'id' | 'backend' | 'cpuKernels' | 'cpuThreads' | 'cacheDir'> &
  Pick<Config['cache'], 'slots' | 'capacity'> &
  Pick<Config['scheduler'], 'maxBatchSize' | 'prefillChunk'> &
  Pick<Config['sampling'], 'topKCap' | 'grammarCacheSize' | 'grammarMaxStringLength'> &
  EngineTuning;

/** Knobs that only tests and benchmarks turn; the service leaves them unset. */
export interface EngineTuning {
  /** On webgpu: 'graph' runs the tfjs op graph that the other backends run; unset, the fused WGSL programs. */
  webgpuKernels?: 'fused' | 'graph';
  /** On webgpu with the fused programs: the most bytes one embedding part may hold; unset, the device's binding limit. */
  maxTensorBytes?: number;
  /** On webgpu with the fused Gemma 2/3 programs: 'float32' keeps every weight in f32; unset, a bf16 checkpoint's weights stay bf16. */
  webgpuWeights?: 'auto' | 'float32';
  /**
   * With the tfjs graph on wasm: its threads, where they should differ from
   * `cpuThreads` (2 or more split each linear weight by columns with a worker
   * thread); unset, `cpuThreads`, as in the service.
   */
  graphThreads?: number;
}

/**
 * Engine options from the configuration, `overrides` on top (tests and
 * benchmarks choose their own shapes). Overrides that are undefined count as
 * unset. An overridden `dir` without an `id` names the model after the
 * directory, as MODEL_DIR does, and the batch size stays within the slots, as
 * MAX_BATCH_SIZE does.
 */
export function engineOptions(config: Config, overrides: Partial<EngineOptions> = {}): EngineOptions {
  const set = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)) as Partial<EngineOptions>;
  const { model, cache, scheduler, sampling } = config;
  const slots = set.slots ?? cache.slots;
  return {
    dir: model.dir,
    id: set.dir === undefined ? model.id : defaultModelId(set.dir),
    backend: model.backend,
    cpuKernels: model.cpuKernels,
    cpuThreads: model.cpuThreads,
    cacheDir: model.cacheDir,
    slots,
    capacity: cache.capacity,
    maxBatchSize: Math.min(scheduler.maxBatchSize, slots),
    prefillChunk: scheduler.prefillChunk,
    topKCap: sampling.topKCap,
    grammarCacheSize: sampling.grammarCacheSize,
    grammarMaxStringLength: sampling.grammarMaxStringLength,
    ...set,
  };
}
