// The engine facade on every forward path: prefill and decode come back as
// candidates equal to Hugging Face's, and the slot operations the rolling
// cache uses (truncate, rebuild, compact, reset) leave a cache that continues
// exactly as a fresh one would, and alike on every path. Also: which path a
// backend and kernel setting choose, decided in one place.
import t, { type Test } from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { choosePath } from '../src/engine/choose-path.js';
import { Engine } from '../src/engine/engine.js';
import { loadModelConfig } from '../src/model/hf-config.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import type { RowLogitsInput } from '../src/engine/reduce.js';
import type { TopK } from '../src/engine/types.js';
import { engineBackends } from './helpers/backends.js';
import { testEngineOptions } from './helpers/engine-options.js';
import { modelDir, reference } from './helpers/fixtures.js';

const TOL = 1e-3;
const ref = reference('gemma3-tiny').cases.find((c) => c.name === 'past_window')!;
const ids = ref.input_ids;
const last = ids.length - 1;
const row: RowLogitsInput = { params: { ...DEFAULT_SAMPLING, temperature: 0 }, counts: new Map(), k: 8 };

function close(t: Test, got: TopK, want: { ids: number[]; logits: number[] }, label: string) {
  t.equal(got.ids[0], want.ids[0], `${label}: same best token`);
  const worst = Math.max(...want.logits.slice(0, 5).map((v, i) => Math.abs(got.logits[i]! - v)));
  t.ok(worst < TOL, `${label}: top-5 logits within ${TOL} (worst ${worst.toExponential(2)})`);
}

const asWant = (top: TopK) => ({ ids: Array.from(top.ids), logits: Array.from(top.logits) });
const hf = { ids: ref.top_ids[last]!, logits: ref.top_logits[last]! };
/** The first path's candidates after a compaction: the others must agree with them. */
let compactedOnFirstPath: { ids: number[]; logits: number[] } | undefined;

for (const { label, backend, kernels, threads } of engineBackends()) {
  t.test(`slot operations through the facade on ${label}`, async (t) => {
    const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend, cpuKernels: kernels, cpuThreads: threads, slots: 2, capacity: 128 }));
    t.teardown(() => engine.dispose());
    t.equal(engine.pathName, backend === 'webgpu' ? 'webgpu' : kernels === 'native' ? 'native' : 'graph', 'the path chosen at load');
    const baseline = tf.memory().numTensors;

    close(t, (await engine.prefill(0, ids, row))!, hf, 'prefill');
    t.equal(engine.slotLength(0), ids.length);

    t.ok(engine.canTruncate(0, 20));
    await engine.truncateSlot(0, 20);
    t.equal(engine.slotLength(0), 20);
    t.equal(await engine.prefill(0, ids.slice(20, 30)), undefined, 'a chunk without a row returns no candidates');
    close(t, (await engine.prefill(0, ids.slice(30), row))!, hf, 'truncate, then prefill the rest');

    await engine.rebuildSlot(0, ids.slice(0, 33));
    t.equal(engine.slotLength(0), 33);
    close(t, (await engine.prefill(0, ids.slice(33), row))!, hf, 'rebuild, then prefill the rest');

    // Slot 1 decodes beside slot 0 in one step; slot 0's cache is left as a prefill made it.
    await engine.prefill(1, ids.slice(0, last));
    const [a, b] = await engine.decode([ids[last]!, ids[last]!], [0, 1], [row, row]);
    close(t, b!, hf, 'decode in a batch of two');
    t.equal(a!.ids.length, row.k);

    // Keep the first 4 and the last 24 tokens of slot 1, renumbered, and decode one more token.
    await engine.compactSlot(1, [[0, 4], [24, ids.length]]);
    t.equal(engine.slotLength(1), 28);
    const [compacted] = await engine.decode([1000], [1], [row]);
    if (compactedOnFirstPath === undefined) compactedOnFirstPath = asWant(compacted!);
    else close(t, compacted!, compactedOnFirstPath, 'compaction agrees with the first path');

    await engine.resetSlot(0);
    await engine.resetSlot(1);
    t.equal(engine.slotLength(0), 0);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}

t.test('the path a backend and kernel setting choose', async (t) => {
  const config = await loadModelConfig(modelDir('gemma3-tiny'));
  const base = { webgpuKernels: 'fused', kernels: 'auto', threads: 2, graphThreads: 1, maxBatch: 2, prefillChunk: 64 } as const;
  t.equal(choosePath(config, 'webgpu', base).name, 'webgpu');
  t.equal(choosePath(config, 'webgpu', { ...base, webgpuKernels: 'graph' }).name, 'graph');
  t.equal(choosePath(config, 'tensorflow', base).name, 'graph');
  t.equal(choosePath(config, 'cpu', { ...base, kernels: 'tfjs' }).name, 'graph');
  const split = choosePath(config, 'wasm', { ...base, kernels: 'tfjs', graphThreads: 2 });
  t.ok(split.name === 'graph' && split.split !== undefined, 'the graph on wasm with two threads splits its weights');
  split.split?.dispose();
  t.equal(choosePath(config, 'cpu', { ...base, kernels: 'tfjs', graphThreads: 2 }).split, undefined, 'only on wasm');
  if (nativeAddon().addon) {
    const native = choosePath(config, 'wasm', base);
    t.equal(native.name, 'native');
    t.match(native.description, /native kernels/);
  } else {
    t.throws(() => choosePath(config, 'cpu', { ...base, kernels: 'native' }), /native CPU kernels cannot run/);
  }
});

t.test('on the native path a pass runs off the event loop, and the engine runs its calls one at a time, in order', async (t) => {
  const engine = await Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', cpuKernels: 'native', cpuThreads: 2, slots: 2, capacity: 128 }));
  t.teardown(() => engine.dispose());
  t.equal(engine.pathName, 'native');
  const baseline = tf.memory().numTensors;
  const order: string[] = [];
  let immediates = 0;
  let inFlight = true;
  const spin = () => {
    if (!inFlight) return;
    immediates++;
    setImmediate(spin);
  };
  setImmediate(spin);
  // Issued together, never awaited in between: the reset of slot 0 must wait for slot 0's prefill.
  const prefilled = engine.prefill(0, ids, row).then((top) => (order.push('prefill 0'), top));
  const other = engine.prefill(1, ids.slice(0, 10)).then(() => order.push('prefill 1'));
  const reset = engine.resetSlot(0).then(() => order.push('reset 0'));
  const top = await prefilled;
  await Promise.all([other, reset]);
  inFlight = false;
  t.ok(immediates > 1, `the event loop turned while the passes ran (${immediates} immediates)`);
  t.same(order, ['prefill 0', 'prefill 1', 'reset 0'], 'the calls ran in the order they were made');
  close(t, top!, hf, 'prefill on a worker thread');
  t.equal(engine.slotLength(0), 0, 'the reset came after the prefill it was queued behind');
  t.equal(engine.slotLength(1), 10);
  await t.rejects(engine.decode([1e9], [1], [row]), /outside|range/, 'a failing call rejects');
  await engine.resetSlot(1);
  t.equal(engine.slotLength(1), 0, 'and the engine goes on after it');
  t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
});
