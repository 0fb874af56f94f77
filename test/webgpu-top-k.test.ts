// The webgpu decode step's reduction (WGSL programs) against the same reduction computed in plain JS.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, releaseBackend } from '../src/engine/backend.js';
import { reduceLogits } from '../src/engine/top-k.js';
import { createRng } from '../src/engine/rng.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { expectedTopK as expected, testRows } from './helpers/top-k-reference.js';

t.test('fused top-k on webgpu equals the reduction in JS', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  await initBackend('webgpu');
  t.teardown(() => releaseBackend());
  const rng = createRng(11);
  for (const V of [262144, 5000]) {
    const B = 3;
    const values = new Float32Array(B * V).map(() => (rng.next() - 0.5) * 20);
    values[7] = values[9] = 50; // a tie in row 0: the lower id comes first
    const rows = testRows(V);
    const baseline = tf.memory().numTensors;
    const got = await reduceLogits(tf.tensor2d(values, [B, V]), rows);
    const want = expected(values, V, rows);
    t.equal(tf.memory().numTensors, baseline, `V=${V}: the logits were disposed and nothing leaked`);
    got.forEach((g, b) => {
      t.same(Array.from(g.ids), want[b].ids, `V=${V} row ${b}: top-${rows[b].k} ids in order`);
      t.ok(Array.from(g.logits).every((v, i) => Math.abs(v - want[b].logits[i]) < 1e-4), `V=${V} row ${b}: their logits`);
      t.ok(Math.abs(g.logsumexp - want[b].lse) < 1e-3, `V=${V} row ${b}: log-sum-exp ${g.logsumexp} vs ${want[b].lse}`);
      t.ok(Math.abs(g.scaledLogsumexp - want[b].scaled) < 1e-3, `V=${V} row ${b}: scaled log-sum-exp ${g.scaledLogsumexp} vs ${want[b].scaled}`);
    });
  }
});
