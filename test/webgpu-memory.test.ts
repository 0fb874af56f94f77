// VRAM gauges and the per-buffer limit, checked without a GPU.
import t from 'tap';
import { Engine, checkTensorLimit } from '../src/engine/engine.js';
import { ModelTooLargeError } from '../src/engine/weights.js';
import { Metrics } from '../src/metrics.js';
import type { ModelConfig } from '../src/model/hf-config.js';
import { modelDir } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

const gauge = (body: string, name: string): number | undefined => {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
  return m ? Number(m[1]) : undefined;
};

t.test('GPU memory gauges: 0 until a backend reports device bytes', async (t) => {
  const metrics = new Metrics({ defaultMetrics: false });
  metrics.setMemory({ weightsBytes: 10, kvCacheBytes: 5, transientBytes: 1, backendBytes: 16 });
  let { body } = await metrics.scrape();
  t.equal(gauge(body, 'gemma_serve_gpu_memory_in_use_bytes'), 0);
  t.equal(gauge(body, 'gemma_serve_gpu_memory_allocated_bytes'), 0);
  metrics.setMemory({ deviceBytesInUse: 1234, deviceBytesAllocated: 4096 });
  ({ body } = await metrics.scrape());
  t.equal(gauge(body, 'gemma_serve_gpu_memory_in_use_bytes'), 1234);
  t.equal(gauge(body, 'gemma_serve_gpu_memory_allocated_bytes'), 4096);
  t.equal(gauge(body, 'gemma_serve_memory_weights_bytes'), 10, 'the component gauges are unchanged');
});

t.test('Engine.memory() on cpu has no device fields', async (t) => {
  const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'cpu', slots: 1, capacity: 32 }));
  t.teardown(() => engine.dispose());
  const m = engine.memory();
  t.ok(m.weightsBytes > 0);
  t.equal(m.deviceBytesInUse, undefined);
  t.equal(m.deviceBytesAllocated, undefined);
  const metrics = new Metrics({ defaultMetrics: false });
  metrics.setMemory(m);
  const { body } = await metrics.scrape();
  t.equal(gauge(body, 'gemma_serve_gpu_memory_in_use_bytes'), 0);
});

const shape = (hiddenSize: number, intermediateSize: number, numHeads: number, numKvHeads: number): ModelConfig =>
  ({ vocabSize: 262144, hiddenSize, intermediateSize, numHeads, numKvHeads, headDim: 256 }) as ModelConfig;

t.test('a weight over the WebGPU binding limit fails before loading, naming the limit', async (t) => {
  const limit = { bytes: 2 ** 31 - 4, what: 'maxStorageBufferBindingSize' };
  t.doesNotThrow(() => checkTensorLimit(shape(640, 2048, 4, 1), 'webgpu', limit), '270M fits');
  t.doesNotThrow(() => checkTensorLimit(shape(1152, 6912, 4, 1), 'webgpu', limit), '1B fits');
  t.throws(() => checkTensorLimit(shape(2560, 10240, 8, 4), 'webgpu', limit), ModelTooLargeError, '4B does not');
  t.throws(() => checkTensorLimit(shape(2560, 10240, 8, 4), 'webgpu', limit), {
    message: /tied embedding \[2560 x 262144\] is 2\.50 GiB .*maxStorageBufferBindingSize = 2147483644 bytes.*only the embedding is split/,
  });
  t.doesNotThrow(() => checkTensorLimit(shape(2560, 10240, 8, 4), 'cpu'), 'no such limit on cpu');
  t.doesNotThrow(() => checkTensorLimit(shape(2560, 10240, 8, 4), 'webgpu', limit, true), '4B loads where the embedding is split (fused programs)');
});
