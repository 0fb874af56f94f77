// Gemma 4 against Hugging Face transformers: every case of both Gemma 4 fixtures, on the tfjs graph (wasm, cpu) and on the
// native CPU kernels (wasm, cpu), where they are built.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { checkGreedyDecode, idsMatchUpToTies, modelDir, reference } from './helpers/fixtures.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;
const GEMMA4_MODELS = ['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const;
const NATIVE = typeof nativeAddon().addon?.gemma4Layer === 'function';
// 'auto' with two threads: the native kernels where they are built (with the Gemma 4 layer), else the graph (no column split).
const VARIANTS = [
  { label: 'wasm', backend: 'wasm', kernels: 'tfjs', threads: undefined },
  { label: 'cpu', backend: 'cpu', kernels: 'tfjs', threads: undefined },
  { label: 'wasm, kernels auto, 2 threads', backend: 'wasm', kernels: 'auto', threads: 2 },
  ...(NATIVE
    ? ([
        { label: 'wasm, native kernels', backend: 'wasm', kernels: 'native', threads: undefined },
        { label: 'cpu, native kernels, 2 threads', backend: 'cpu', kernels: 'native', threads: 2 },
      ] as const)
    : []),
] as const;

for (const { label, backend, kernels, threads } of VARIANTS) {
  for (const name of GEMMA4_MODELS) {
    t.test(`${name} on ${label}`, async (t) => {
      const engine = await Engine.load(testEngineOptions({ dir: modelDir(name), backend, cpuKernels: kernels, cpuThreads: threads, slots: 2, capacity: 128 }));
      t.teardown(() => engine.dispose());
      const expected = kernels === 'native' || (kernels === 'auto' && NATIVE) ? 'native' : 'graph';
      t.equal(engine.pathName, expected, `Gemma 4 runs on the ${expected} path`);
      const baseline = tf.memory().numTensors;

      for (const c of reference(name).cases) {
        t.test(`${c.name}: full forward pass (score)`, async (t) => {
          const positions = await engine.score(c.input_ids, c.top_k);
          t.equal(positions.length, c.input_ids.length);
          let worstAll = 0;
          positions.forEach((p, i) => {
            const worst = Math.max(...p.top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j])), Math.abs(p.logsumexp - c.logsumexp[i]));
            worstAll = Math.max(worstAll, worst);
            t.ok(worst < TOL, `position ${i}: top-20 logits and logsumexp within ${TOL} (worst ${worst.toExponential(2)})`);
            t.ok(idsMatchUpToTies(p.top_ids, c.top_ids[i], c.top_logits[i], TOL), `position ${i}: top-20 ids`);
          });
          t.comment(`worst |logit - reference| over ${positions.length} positions: ${worstAll.toExponential(2)}`);
          t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
        });

        t.test(`${c.name}: greedy continuation through the cached decode path`, async (t) => {
          const { path, pool } = engineParts(engine);
          const worstAll = await checkGreedyDecode(t, path, pool, c, TOL);
          t.comment(`worst |top-5 logit - reference| over the decode steps: ${worstAll.toExponential(2)}`);
          t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
        });
      }

      t.test('chunked prefill (sliding rings wrap, shared layers read the cache) and a batched decode step', async (t) => {
        const [, mid, long] = reference(name).cases;
        const { pool, path } = engineParts(engine);
        pool.reset(0);
        pool.reset(1);
        const topOf = async (logits: tf.Tensor2D, row: number): Promise<number[]> => {
          const one = tf.slice(logits, [row, 0], [1, logits.shape[1]]);
          const top = tf.topk(one, 5);
          const vals = Array.from(await top.values.data());
          tf.dispose([one, top.values, top.indices]);
          return vals;
        };
        const worstOf = (a: number[], b: number[]) => Math.max(...a.map((v, j) => Math.abs(v - b[j])));
        for (const [slot, c] of [[0, long], [1, mid]] as const) {
          let logits: tf.Tensor2D | undefined;
          for (let at = 0; at < c.input_ids.length; at += 20) {
            logits?.dispose();
            logits = path.prefill(c.input_ids.slice(at, at + 20), { pool, slots: [slot] });
          }
          const worst = worstOf(await topOf(logits!, 0), c.greedy_top5_logits[0]);
          logits!.dispose();
          t.ok(worst < TOL, `${c.name} in chunks of 20: last logits within ${TOL} (worst ${worst.toExponential(2)})`);
        }
        const logits = path.forward([[long.greedy_new_ids[0]], [mid.greedy_new_ids[0]]], { pool, slots: [0, 1] });
        for (const [row, c] of [[0, long], [1, mid]] as const) {
          const worst = worstOf(await topOf(logits, row), c.greedy_top5_logits[1]);
          t.ok(worst < TOL, `${c.name}, batch row ${row}: decode step within ${TOL} (worst ${worst.toExponential(2)})`);
        }
        logits.dispose();
        pool.reset(0);
        pool.reset(1);
        t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
      });

      t.test('compaction re-rotates each own layer with its type head size; global keys only in their rotated pairs', async (t) => {
        const c = engine.config;
        const { pool, path } = engineParts(engine);
        pool.reset(0);
        const ids = reference(name).cases[1].input_ids;
        path.prefill(ids, { pool, slots: [0] })?.dispose();
        const g = c.gemma4!;
        const shared = g.layers.flatMap((s, l) => (s.kvSource !== l ? [l] : []));
        shared.forEach((l) => t.equal(pool.k[l].length, 0, `layer ${l} reads layer ${g.layers[l].kvSource}'s cache and holds none`));
        const global = c.layerTypes.indexOf('global');
        const before = Float32Array.from(pool.k[global][0].dataSync());
        pool.compact(0, [[0, 5], [15, ids.length]]);
        const after = Float32Array.from(pool.k[global][0].dataSync());
        const [, nkv, E, hd] = pool.k[global][0].shape;
        const rotatedPairs = Math.floor((c.rope.global.partialFactor! * hd) / 2);
        let still = true;
        let moved = false;
        for (let h = 0; h < nkv; h++) {
          for (let p = 15; p < ids.length; p++) {
            for (let d = 0; d < hd; d++) {
              const a = before[(h * E + p) * hd + d];
              const b = after[(h * E + p - 10) * hd + d];
              if (d % (hd / 2) >= rotatedPairs) still &&= a === b;
              else moved ||= Math.abs(a - b) > 1e-4;
            }
          }
        }
        t.ok(still, 'pairs with frequency 0 are unchanged');
        t.ok(moved, 'rotated pairs are re-rotated');
        t.equal(pool.length(0), ids.length - 10);
        path.forward([[ids[0]]], { pool, slots: [0] }).dispose();
        pool.reset(0);
        t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
      });
    });
  }
}
