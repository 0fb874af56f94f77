// The engine against Hugging Face transformers: every fixture case, on wasm, cpu and (where Vulkan is installed) webgpu.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { MODELS, idsMatchUpToTies, modelDir, reference } from './helpers/fixtures.js';
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
          const pool = engineParts(engine).pool;
          pool.reset(0);
          const steps = c.greedy_new_ids.length;
          let logits = engineParts(engine).path.prefill(c.input_ids, { pool, slots: [0] }) as tf.Tensor2D;
          for (let s = 0; s < steps; s++) {
            const top = tf.topk(logits, 5);
            const ids = Array.from(await top.indices.data());
            const vals = Array.from(await top.values.data());
            tf.dispose([top.values, top.indices, logits]);
            const refVals = c.greedy_top5_logits[s];
            const worst = Math.max(...vals.map((v, j) => Math.abs(v - refVals[j])));
            t.ok(worst < TOL, `step ${s}: top-5 logits within ${TOL} (worst ${worst.toExponential(2)})`);
            if (refVals[0] - refVals[1] > 1e-2) t.equal(ids[0], c.greedy_new_ids[s], `step ${s}: greedy id`);
            // Teacher forcing keeps the comparison aligned where a near-tie could go either way.
            logits = engineParts(engine).path.forward([[c.greedy_new_ids[s]]], { pool, slots: [0] });
          }
          logits.dispose();
          pool.reset(0);
          t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
        });
      }
    });
  }
}
