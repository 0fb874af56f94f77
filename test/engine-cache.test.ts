// Cached, batched decoding equals a full forward pass, across several sliding windows and ring wrap-around.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { modelDir } from './helpers/fixtures.js';
import { engineBackends } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

for (const { label, backend, kernels, threads } of engineBackends()) {
  t.test(`batched cached decode vs full forward on ${label}`, async (t) => {
    // gemma3-tiny: window 16; its ring holds 16 + slack entries, so 106 tokens wrap it.
    const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend, cpuKernels: kernels, cpuThreads: threads, slots: 3, capacity: 128 }));
    t.teardown(() => engine.dispose());
    const baseline = tf.memory().numTensors;
    const V = engine.config.vocabSize;
    let seed = 7;
    const token = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 50000 + 100;
    const rows = [5, 30, 61].map((n) => [2, ...Array.from({ length: n - 1 }, token)]);
    const slots = [0, 1, 2];
    rows.forEach((ids, b) => {
      engineParts(engine).pool.reset(b);
      engineParts(engine).path.prefill(ids, { pool: engineParts(engine).pool, slots: [b], noLogits: true });
    });
    let worst = 0;
    for (let step = 0; step < 45; step++) {
      const next = rows.map(() => token());
      const cached = engineParts(engine).path.forward(next.map((x) => [x]), { pool: engineParts(engine).pool, slots });
      rows.forEach((r, b) => r.push(next[b]));
      const got = await cached.data();
      cached.dispose();
      if (step % 4 !== 0 && step !== 44) continue;
      for (let b = 0; b < rows.length; b++) {
        const full = engineParts(engine).path.forward([rows[b]]);
        const want = await full.data();
        full.dispose();
        for (let i = 0; i < V; i++) worst = Math.max(worst, Math.abs(got[b * V + i] - want[i]));
      }
    }
    t.ok(rows[2].length > engineParts(engine).pool.entries.sliding, 'the longest row wrapped its sliding ring');
    t.ok(worst < 1e-4, `cached logits equal the full pass within 1e-4 (worst ${worst.toExponential(2)})`);
    slots.forEach((s) => engineParts(engine).pool.reset(s));
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}
