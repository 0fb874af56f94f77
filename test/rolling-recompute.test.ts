// `recompute` eviction equals a fresh prefill of the retained tokens (sink plus kept turns), on Gemma 3 and Gemma 2 fixtures.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { modelDir } from './helpers/fixtures.js';
import { driveSession, nextTurnIds, promptOf } from './helpers/session-driver.js';
import { testEngineOptions } from './helpers/engine-options.js';

const C = 48;
const TOL = 1e-4;
// Below the fixtures' 4096-token vocabulary, so the system prefix is recognized as the sink.
const SYSTEM = 'You are a good and kind';
const TURNS = ['Tell me a story', 'Once upon a time', 'Go on'];

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Last-position logits of one standalone forward pass (no cache) over `ids`. */
async function fresh(engine: Engine, ids: number[]): Promise<Float32Array> {
  const logits = engineParts(engine).path.forward([ids]);
  const data = (await logits.data()) as Float32Array;
  logits.dispose();
  return data;
}

for (const name of ['gemma3-tiny-scaled', 'gemma2-tiny'] as const) {
  t.test(name, async (t) => {
    const engine = await Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'wasm', slots: 1, capacity: C }));
    t.teardown(() => engine.dispose());
    const baseline = tf.memory().numTensors;

    t.test('eviction while generating: next-token logits equal a fresh prefill of sink + kept', async (t) => {
      const s = driveSession(engine, 'recompute-generate', 'recompute', SYSTEM);
      const prompt = promptOf(engine, SYSTEM, TURNS);
      const { b, seq } = await s.bind(prompt);
      const sinkLen = b.meta.sinkIds.length;
      await s.sampler.prefill(seq);
      while (engineParts(engine).pool.length(b.slot) < C) await s.sampler.step([seq]);
      // The cache holds the prompt and every generated token but the pending one.
      const cached = [...prompt, ...seq.generated.slice(0, -1)];
      t.equal(cached.length, C, 'the cache is full');

      await s.turns.makeRoom(b, seq, 1);
      t.equal(s.evictions.length, 1, 'one eviction');
      t.equal(s.evictions[0].kind, 'turn', 'of whole turns');
      const cut = sinkLen + s.evictions[0].tokens;
      const retainedIds = [...cached.slice(0, sinkLen), ...cached.slice(cut)];
      t.same([...b.meta.sinkIds, ...b.meta.keptIds], retainedIds, 'the metadata lists the sink and the newest tokens');
      t.equal(engineParts(engine).pool.length(b.slot), retainedIds.length, 'the slot was refilled with exactly those');
      const global = [...engineParts(engine).pool.positions(b.slot, 'global')].filter((p) => p >= 0).sort((x, y) => x - y);
      t.same(global, Array.from({ length: retainedIds.length }, (_, i) => i), 'at positions 0..n-1');

      const logits = engineParts(engine).path.forward([[seq.pending!]], { pool: engineParts(engine).pool, slots: [b.slot] });
      const got = await logits.data();
      logits.dispose();
      const want = await fresh(engine, [...retainedIds, seq.pending!]);
      const worst = maxDiff(got, want);
      t.ok(worst < TOL, `logits over all ${engine.config.vocabSize} ids within ${TOL} of the fresh pass (worst ${worst.toExponential(2)})`);
      // Sharpness: keeping the evicted tokens would have answered differently.
      const unevicted = maxDiff(got, await fresh(engine, [...cached, seq.pending!]));
      t.ok(unevicted > 100 * TOL, `the uncut history gives logits ${unevicted.toExponential(2)} away`);
      await s.turns.finish(b, seq, true);
      engineParts(engine).pool.reset(b.slot);
      t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
    });

    t.test('eviction when the next turn arrives: the rebuilt prompt is sink + kept + new turn, and prefills like a fresh pass', async (t) => {
      const s = driveSession(engine, 'recompute-turn', 'recompute', SYSTEM);
      const first = await s.bind(promptOf(engine, SYSTEM, TURNS));
      await s.sampler.prefill(first.seq);
      for (let i = 0; i < 6; i++) await s.sampler.step([first.seq]);
      await s.turns.finish(first.b, first.seq, true);
      t.equal(s.evictions.length, 0, 'the first turn fits');
      const sinkLen = first.b.meta.sinkIds.length;
      const cached = [...first.seq.promptIds, ...first.seq.generated.slice(0, -1)];
      t.equal(engineParts(engine).pool.length(first.b.slot), cached.length, 'the slot holds the first turn');

      const history = [...first.seq.promptIds, ...first.seq.generated, ...nextTurnIds(engine, 'And then what happened to them')];
      const { b, seq } = await s.bind(history);
      t.equal(s.evictions.length, 1, 'the turn plan evicted');
      t.equal(s.evictions[0].kind, 'turn', 'whole turns');
      t.equal(b.reuse, 0, 'nothing is reused: the slot is rebuilt');
      const cut = sinkLen + s.evictions[0].tokens;
      const expected = [...cached.slice(0, sinkLen), ...cached.slice(cut), ...history.slice(cached.length)];
      t.same(b.promptIds, expected, 'the rebuilt prompt is the sink, the kept tokens and the new suffix');
      t.same(seq.promptIds, expected, 'and the sequence starts from it');

      // Prefilled in chunks, as the scheduler does.
      const chunk = 8;
      let logits: tf.Tensor2D | undefined;
      for (let i = 0; i < b.promptIds.length; i += chunk) {
        const last = i + chunk >= b.promptIds.length;
        logits = engineParts(engine).path.prefill(b.promptIds.slice(i, i + chunk), { pool: engineParts(engine).pool, slots: [b.slot], noLogits: !last });
      }
      const got = await logits!.data();
      logits!.dispose();
      const worst = maxDiff(got, await fresh(engine, expected));
      t.ok(worst < TOL, `logits within ${TOL} of a fresh pass over the retained tokens (worst ${worst.toExponential(2)})`);
      engineParts(engine).pool.reset(b.slot);
      s.turns.slots.release('recompute-turn');
      t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
    });
  });
}
