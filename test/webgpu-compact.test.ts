// Shift eviction on webgpu's pooled KV layout (one tensor per layer, all slots) against the per-slot layout on wasm:
// the same prompts, compaction of one slot and decode steps give the same logits, and the other slot is untouched.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { modelDir } from './helpers/fixtures.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 2 + ((i * 37 + seed * 101) % 4000));

/** Runs the scenario and returns the logits of every decode step, per slot. */
async function scenario(backend: 'wasm' | 'webgpu'): Promise<{ evicted: Float32Array[]; other: Float32Array[]; leaked: number }> {
  // gemma3-tiny-scaled: sliding window 12, so with capacity 96 its rings (76 entries) wrap before the eviction.
  const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny-scaled'), backend, slots: 2, capacity: 96 }));
  try {
    const { pool, path: model } = engineParts(engine);
    const baseline = tf.memory().numTensors;
    pool.reset(0);
    pool.reset(1);
    model.prefill(ids(30, 1), { pool, slots: [0], noLogits: true });
    model.prefill(ids(90, 2), { pool, slots: [1], noLogits: true });
    pool.compact(1, [[0, 10], [50, 90]]);
    const evicted: Float32Array[] = [];
    const other: Float32Array[] = [];
    for (let s = 0; s < 4; s++) {
      const logits = model.forward([[500 + s], [900 + s]], { pool, slots: [0, 1] });
      const data = (await logits.data()) as Float32Array;
      const V = logits.shape[1];
      other.push(data.slice(0, V));
      evicted.push(data.slice(V, 2 * V));
      logits.dispose();
    }
    return { evicted, other, leaked: tf.memory().numTensors - baseline };
  } finally {
    engine.dispose();
  }
}

t.test('compaction in the pooled layout equals the per-slot layout', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  const want = await scenario('wasm');
  const got = await scenario('webgpu');
  const worst = (a: Float32Array[], b: Float32Array[]) => Math.max(...a.map((x, s) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - b[s][i])), 0)));
  const e = worst(got.evicted, want.evicted);
  const o = worst(got.other, want.other);
  t.ok(e < 1e-3, `the compacted slot decodes alike (worst ${e.toExponential(2)})`);
  t.ok(o < 1e-3, `the other slot of the same pooled tensors decodes alike (worst ${o.toExponential(2)})`);
  t.equal(got.leaked, 0, 'no tensor leaked on webgpu');
});
