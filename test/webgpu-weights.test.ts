// The fused webgpu programs hold a bf16 checkpoint's weights as bf16: half the bytes, and the logits of f32 storage of the same values.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { WebGPUPath } from '../src/engine/webgpu/forward.js';
import { allBf16, gpuMatrix, packBf16 } from '../src/engine/webgpu/weights.js';
import { MODELS, modelDir, reference } from './helpers/fixtures.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-5;

t.test('bf16 packing keeps every value', async (t) => {
  const v = new Float32Array([1.5, -2.25, 0, -0, 2 ** 100, 2 ** -100, 0.099609375, -7]);
  const bits = new Uint32Array(v.buffer);
  t.ok(allBf16(v), 'values with zero low halves are bf16');
  const packed = new Uint32Array(packBf16(v).buffer);
  for (let i = 0; i < v.length; i++) {
    const half = i % 2 === 0 ? packed[i >> 1] << 16 : packed[i >> 1] & 0xffff0000;
    t.equal(half >>> 0, bits[i], `value ${i} comes back bit for bit`);
  }
  t.notOk(allBf16(new Float32Array([1.5, 0.1])), '0.1 is not a bf16 value');
});

/** Logits of every position of each reference prompt, then of a few cached decode steps after it. */
async function logitsOf(engine: Engine, name: string): Promise<Float32Array[]> {
  const { path, pool } = engineParts(engine);
  const out: Float32Array[] = [];
  for (const c of reference(name).cases) {
    pool.reset(0);
    let logits = path.prefill(c.input_ids, { pool, slots: [0], allPositions: true }) as tf.Tensor2D;
    for (const id of c.greedy_new_ids.slice(0, 3)) {
      out.push((await logits.data()) as Float32Array);
      logits.dispose();
      logits = path.forward([[id]], { pool, slots: [0] });
    }
    out.push((await logits.data()) as Float32Array);
    logits.dispose();
  }
  pool.reset(0);
  return out;
}

for (const name of MODELS) {
  t.test(`${name}: bf16 weights on webgpu give the logits of f32 weights`, { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
    const load = (webgpuWeights: 'auto' | 'float32') => Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'webgpu', slots: 1, capacity: 128, webgpuWeights }));
    const results: Float32Array[][] = [];
    const bytes: number[] = [];
    for (const policy of ['float32', 'auto'] as const) {
      const engine = await load(policy);
      const { weights } = engineParts(engine).path as WebGPUPath;
      const c = engineParts(engine).path.config;
      // Gemma 2 folds its query scale into Wq; unless the scale is a power of two, that leaves values bf16 cannot hold.
      const scaledQ = !c.qkNorm && Math.log2(c.queryPreAttnScalar) % 2 !== 0;
      const want = (qkv: boolean) => (policy === 'float32' || (qkv && scaledQ) ? 'f32' : 'bf16');
      for (const l of weights.layers) {
        t.equal(gpuMatrix(l.qkv).storage, want(true), `${policy}: q/k/v held as ${want(true)}`);
        t.same([l.o, l.gateUp, l.down].map((w) => gpuMatrix(w).storage), Array(3).fill(want(false)), `${policy}: o, gate/up, down held as ${want(false)}`);
      }
      t.same([...new Set(weights.embedParts.map((p) => gpuMatrix(p.table).storage))], [want(false)], `${policy}: the embedding held as ${want(false)}`);
      bytes.push(weights.bytes);
      const baseline = tf.memory().numTensors;
      results.push(await logitsOf(engine, name));
      if (policy === 'auto') {
        // A call's dispatches over several command buffers: the same programs in the same order.
        (engineParts(engine).path as WebGPUPath).submitEvery = 7;
        t.same(await logitsOf(engine, name), results[1], 'the same logits with a command buffer submitted every 7 dispatches');
      }
      t.equal(tf.memory().numTensors, baseline, `${policy}: no tensor leaked`);
      engine.dispose();
    }
    t.ok(bytes[1] < 0.55 * bytes[0], `bf16 weights take about half the bytes (${bytes[1]} of ${bytes[0]})`);
    let worst = 0;
    results[0].forEach((f, i) => f.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - results[1][i][j])))));
    t.ok(worst <= TOL, `every logit of ${results[0].length} calls within ${TOL} (worst ${worst.toExponential(2)})`);
  });
}
