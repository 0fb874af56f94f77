// Gemma 4 on the fused webgpu programs (webgpu/gemma4.ts) against Hugging Face transformers: both Gemma 4 fixtures
// (per-layer embeddings and KV-shared layers; MoE with keys as values), full passes, cached decode, chunked prefill
// past the sliding ring, a batched decode step and a shift eviction on the pooled cache. Lavapipe runs them on the CPU.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { layerKv } from '../src/engine/kv-pool.js';
import type { RopeSettings } from '../src/model/hf-config.js';
import { idsMatchUpToTies, modelDir, reference } from './helpers/fixtures.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;
const skip = WEBGPU_TESTABLE ? false : 'no Vulkan driver installed';

async function top(logits: tf.Tensor2D, row: number, k: number): Promise<{ ids: number[]; vals: number[] }> {
  const one = tf.slice(logits, [row, 0], [1, logits.shape[1]]);
  const tk = tf.topk(one, k);
  const [ids, vals] = [Array.from(await tk.indices.data()), Array.from(await tk.values.data())];
  tf.dispose([one, tk.values, tk.indices]);
  return { ids, vals };
}
const worstOf = (a: number[], b: number[]) => Math.max(...a.map((v, j) => Math.abs(v - b[j])));

/** Rotates one head's pairs (i, i + D/2) by `delta` positions in float64 (only the pairs proportional RoPE turns). */
function rerotate(x: Float64Array, delta: number, rope: RopeSettings): void {
  const half = x.length / 2;
  const turning = rope.partialFactor === undefined ? half : Math.floor((rope.partialFactor * x.length) / 2);
  for (let i = 0; i < turning; i++) {
    const angle = (delta / rope.factor) * Math.pow(rope.base, (-2 * i) / x.length);
    const [c, s, a, b] = [Math.cos(angle), Math.sin(angle), x[i], x[half + i]];
    x[i] = a * c - b * s;
    x[half + i] = b * c + a * s;
  }
}

for (const name of ['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const) {
  t.test(`${name} on the fused webgpu programs`, { skip }, async (t) => {
    const engine = await Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'webgpu', slots: 2, capacity: 128 }));
    t.teardown(() => engine.dispose());
    t.equal(engine.pathName, 'webgpu', 'Gemma 4 runs on the fused webgpu path');
    const { pool, path } = engineParts(engine);
    const baseline = tf.memory().numTensors;
    const cases = reference(name).cases;

    t.test('layers that read another layer\'s K/V hold no cache', async (t) => {
      const c = engine.config;
      const shared = c.layerTypes.map((_, l) => l).filter((l) => layerKv(c, l).source !== l);
      t.equal(shared.length, c.gemma4!.layers.filter((s, l) => s.kvSource !== l).length);
      for (const l of shared) t.equal(pool.pooled!.k[l].size + pool.pooled!.vT[l].size, 0, `layer ${l}: no pooled K/V`);
      const own = c.layerTypes.map((type, l) => (layerKv(c, l).source === l ? 2 * layerKv(c, l).heads * layerKv(c, l).headDim * pool.entries[type] * pool.slots * 4 : 0));
      t.equal(pool.bytes(), own.reduce((a, b) => a + b, 0), 'the pool\'s bytes are the own layers\' K/V only');
    });

    for (const c of cases) {
      t.test(`${c.name}: full forward pass`, async (t) => {
        const positions = await engine.score(c.input_ids, c.top_k);
        let worstAll = 0;
        let idsOk = true;
        positions.forEach((p, i) => {
          const worst = Math.max(...p.top_logits.map((v, j) => Math.abs(v - c.top_logits[i][j])), Math.abs(p.logsumexp - c.logsumexp[i]));
          worstAll = Math.max(worstAll, worst);
          idsOk &&= idsMatchUpToTies(p.top_ids, c.top_ids[i], c.top_logits[i], TOL);
        });
        t.ok(worstAll < TOL, `top-20 logits and logsumexp at all ${positions.length} positions within ${TOL} (worst ${worstAll.toExponential(2)})`);
        t.ok(idsOk, 'top-20 ids at every position (up to reference ties)');
        t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
      });

      t.test(`${c.name}: teacher-forced greedy decode through the KV cache`, async (t) => {
        pool.reset(0);
        let logits = path.prefill(c.input_ids, { pool, slots: [0] }) as tf.Tensor2D;
        let worstAll = 0;
        let idsOk = true;
        for (let s = 0; s < c.greedy_new_ids.length; s++) {
          const { ids, vals } = await top(logits, 0, 5);
          logits.dispose();
          const ref = c.greedy_top5_logits[s];
          worstAll = Math.max(worstAll, worstOf(vals, ref));
          if (ref[0] - ref[1] > 1e-2) idsOk &&= ids[0] === c.greedy_new_ids[s];
          logits = path.forward([[c.greedy_new_ids[s]]], { pool, slots: [0] });
        }
        logits.dispose();
        pool.reset(0);
        t.ok(worstAll < TOL, `top-5 logits of ${c.greedy_new_ids.length} steps within ${TOL} (worst ${worstAll.toExponential(2)})`);
        t.ok(idsOk, 'greedy ids where the reference has no near-tie');
        t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
      });
    }

    t.test('chunked prefill longer than the sliding ring, then a 2-row batched decode at different lengths', async (t) => {
      const [, mid, long] = cases;
      pool.reset(0);
      pool.reset(1);
      t.ok(long.input_ids.length > pool.entries.sliding, `${long.input_ids.length} tokens wrap the ${pool.entries.sliding}-entry sliding ring`);
      // Chunks of 80 tokens: longer than the ring (window + 64 = 76 or 74), so shared layers must read the source's call K/V.
      for (const [slot, c, chunk] of [[0, long, 80], [1, mid, 20]] as const) {
        let logits: tf.Tensor2D | undefined;
        for (let at = 0; at < c.input_ids.length; at += chunk) {
          logits?.dispose();
          logits = path.prefill(c.input_ids.slice(at, at + chunk), { pool, slots: [slot] });
        }
        const worst = worstOf((await top(logits!, 0, 5)).vals, c.greedy_top5_logits[0]);
        logits!.dispose();
        t.ok(worst < TOL, `${c.name} in chunks of ${chunk}: last logits within ${TOL} (worst ${worst.toExponential(2)})`);
      }
      const logits = path.forward([[long.greedy_new_ids[0]], [mid.greedy_new_ids[0]]], { pool, slots: [0, 1] });
      for (const [row, c] of [[0, long], [1, mid]] as const) {
        const worst = worstOf((await top(logits, row, 5)).vals, c.greedy_top5_logits[1]);
        t.ok(worst < TOL, `${c.name}, batch row ${row} (length ${c.input_ids.length}): decode step within ${TOL} (worst ${worst.toExponential(2)})`);
      }
      logits.dispose();
      pool.reset(0);
      pool.reset(1);
      t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
    });

    t.test('shift eviction on the pooled cache equals the kept K/V re-rotated independently', async (t) => {
      const cfg = engine.config;
      const ids = cases[2].input_ids;
      pool.reset(0);
      pool.reset(1);
      path.prefill(ids, { pool, slots: [0], noLogits: true });
      const before = await snapshot(0);
      const positions = { global: Int32Array.from(pool.positions(0, 'global')), sliding: Int32Array.from(pool.positions(0, 'sliding')) };
      const [sink, cut] = [4, 30];
      pool.compact(0, [[0, sink], [cut, ids.length]]);
      const length = ids.length - (cut - sink);
      t.equal(pool.length(0), length, 'the cache shrank by the evicted tokens');
      const token = cases[2].greedy_new_ids[0];
      const got = await decode(0, token);

      // Slot 1: the same positions (placeholders), then K/V moved and re-rotated in float64 from the snapshot.
      path.prefill(Array.from({ length }, (_, i) => 200 + i), { pool, slots: [1], noLogits: true });
      const moved = (p: number) => (p < sink ? p : p >= cut ? p - (cut - sink) : -1);
      const pooled = pool.pooled!;
      for (let l = 0; l < cfg.numLayers; l++) {
        const { heads: H, headDim: D, source } = layerKv(cfg, l);
        if (source !== l) continue;
        const type = cfg.layerTypes[l];
        const E = pool.entries[type];
        const k = new Float32Array(H * E * D);
        const vT = new Float32Array(H * D * E);
        positions[type].forEach((p, e) => {
          const q = p >= 0 ? moved(p) : -1;
          if (q < 0) return;
          for (let h = 0; h < H; h++) {
            const head = Float64Array.from(before.k[l].subarray((h * E + e) * D, (h * E + e + 1) * D));
            rerotate(head, q - p, cfg.rope[type]);
            k.set(head, (h * E + (q % E)) * D);
            for (let d = 0; d < D; d++) vT[(h * D + d) * E + (q % E)] = before.vT[l][(h * D + d) * E + e];
          }
        });
        await replaceSlot(pooled.k, l, 1, k);
        await replaceSlot(pooled.vT, l, 1, vT);
      }
      const want = await decode(1, token);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      t.ok(worst < TOL, `logits over all ${cfg.vocabSize} ids within ${TOL} (worst ${worst.toExponential(2)})`);
      pool.reset(0);
      pool.reset(1);
      t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
    });

    /** One slot's K [kv, E, D] and V^T [kv, D, E] per own layer, read back from the pooled tensors. */
    async function snapshot(slot: number): Promise<{ k: Float32Array[]; vT: Float32Array[] }> {
      const out = { k: [] as Float32Array[], vT: [] as Float32Array[] };
      for (let l = 0; l < engine.config.numLayers; l++) {
        for (const [key, all] of [['k', pool.pooled!.k[l]], ['vT', pool.pooled!.vT[l]]] as const) {
          const per = all.size / all.shape[0];
          out[key].push(((await all.data()) as Float32Array).slice(slot * per, (slot + 1) * per));
        }
      }
      return out;
    }

    /** Replaces slot `slot` of a pooled tensor with `data` (a new tensor; the old one is disposed). */
    async function replaceSlot(list: tf.Tensor4D[], l: number, slot: number, data: Float32Array): Promise<void> {
      const old = list[l];
      const per = old.size / old.shape[0];
      const all = ((await old.data()) as Float32Array).slice();
      all.set(data, slot * per);
      list[l] = tf.tensor4d(all, old.shape);
      old.dispose();
    }

    async function decode(slot: number, token: number): Promise<Float32Array> {
      const logits = path.forward([[token]], { pool, slots: [slot] });
      const data = (await logits.data()) as Float32Array;
      logits.dispose();
      return data;
    }
  });
}
