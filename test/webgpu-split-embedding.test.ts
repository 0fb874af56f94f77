// On webgpu an embedding larger than one buffer may hold is split by token ids (Gemma 3 4B's is 2.5 GiB,
// NVIDIA binds at most 2 GiB). Forced here with a small limit: the fixture's [262144 x 32] table in 4 parts, as bf16 and as f32.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { idsMatchUpToTies, modelDir, reference } from './helpers/fixtures.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;

for (const [webgpuWeights, limit] of [['auto', 5_000_000], ['float32', 10_000_000]] as const) {
  t.test(`a split embedding gives the reference logits (${webgpuWeights} weights)`, { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
    const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'webgpu', slots: 1, capacity: 128, maxTensorBytes: limit, webgpuWeights }));
    t.teardown(() => engine.dispose());
    const parts = engineParts(engine).path.weights.embedParts;
    t.equal(parts.length, 4, 'four parts');
    t.ok(parts.every((p) => p.table.size * 4 <= limit), 'none over the limit');
    t.same(parts.map((p) => p.from), [0, 78125, 156250, 234375], 'consecutive id ranges');
    const baseline = tf.memory().numTensors;
    for (const c of reference('gemma3-tiny').cases) {
      const positions = await engine.score(c.input_ids, c.top_k);
      positions.forEach((p, i) => {
        const worst = Math.max(...p.top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j])));
        t.ok(worst < TOL, `${c.name} position ${i}: top-${c.top_k} logits within ${TOL} (worst ${worst.toExponential(2)})`);
        t.ok(idsMatchUpToTies(p.top_ids, c.top_ids[i], c.top_logits[i], TOL), `${c.name} position ${i}: ids, from every part`);
        t.ok(Math.abs(p.logsumexp - c.logsumexp[i]) < TOL, `${c.name} position ${i}: logsumexp`);
      });
    }
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}
