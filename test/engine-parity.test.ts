// The engine against Hugging Face transformers: every fixture case, on wasm, cpu and (where Vulkan is installed) webgpu.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { MODELS, checkGreedyDecode, idsMatchUpToTies, modelDir, reference } from './helpers/fixtures.js';
import { engineBackends } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;

for (const { label, backend, kernels, threads } of engineBackends()) {
  for (const name of MODELS) {
    t.test(`${name} on ${label}`, async (t) => {
      const engine = await Engine.load(testEngineOptions({ dir: modelDir(name), backend, cpuKernels: kernels, cpuThreads: threads, slots: 2, capacity: 128 }));
      t.teardown(() => engine.dispose());
      const baseline = tf.memory().numTensors;

      for (const c of reference(name).cases) {
        t.test(`${c.name}: full forward pass (score)`, async (t) => {
          const positions = await engine.score(c.input_ids, c.top_k);
          t.equal(positions.length, c.input_ids.length);
          positions.forEach((p, i) => {
            const worst = Math.max(...p.top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j])));
            t.ok(worst < TOL, `position ${i}: top-20 logits within ${TOL} (worst ${worst.toExponential(2)})`);
            t.ok(idsMatchUpToTies(p.top_ids, c.top_ids[i], c.top_logits[i], TOL), `position ${i}: top-20 ids`);
            t.ok(Math.abs(p.logsumexp - c.logsumexp[i]) < TOL, `position ${i}: logsumexp`);
          });
          t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
        });

        t.test(`${c.name}: greedy continuation through the cached decode path`, async (t) => {
          const { path, pool } = engineParts(engine);
          await checkGreedyDecode(t, path, pool, c, TOL);
          t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
        });
      }
    });
  }
}
