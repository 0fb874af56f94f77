// The rolling cache on Gemma 4 (wasm; the graph path, and the native kernels where built): shift eviction re-rotates kept keys with each layer type's
// own head size and partial ("proportional") RoPE, KV-shared layers hold nothing, recompute equals a fresh pass, and long
// conversations in both modes run with flat memory.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import { layerKv } from '../src/engine/kv-pool.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import type { LayerType, RopeSettings } from '../src/model/hf-config.js';
import { modelDir } from './helpers/fixtures.js';
import { driveSession, promptOf } from './helpers/session-driver.js';
import { continueHistory, firstPrompt, runTurn, USER_TURNS } from './helpers/turn-runner.js';
import { testEngineOptions } from './helpers/engine-options.js';

const TOL = 1e-3;
const C = 48;
// Folded below the 4096-token vocabulary (helpers/session-driver.ts), so the system prefix is recognized as the sink.
const SYSTEM = 'You are a good and kind';
const TURNS = ['Tell me a story', 'Once upon a time', 'Go on'];
// The graph (tfjs kernels), and the native CPU kernels where they are built with the Gemma 4 layer.
const KERNELS = ['tfjs', ...(typeof nativeAddon().addon?.gemma4Layer === 'function' ? ['native'] : [])] as Array<'tfjs' | 'native'>;
const load = (name: string, slots: number, capacity = C, kernels: 'tfjs' | 'native' = 'tfjs') =>
  Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'wasm', cpuKernels: kernels, slots, capacity }));
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

/** Held positions a query at `length` attends to (global layers: all; sliding: within the window), ascending. */
function visible(positions: Int32Array, type: LayerType, length: number, window: number): number[] {
  return [...positions].filter((p) => p >= 0 && p < length && (type === 'global' || p > length - window)).sort((x, y) => x - y);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Logits of one cached decode step of `token` on `slot`. */
async function decode(engine: Engine, slot: number, token: number): Promise<Float32Array> {
  const { path, pool } = engineParts(engine);
  const logits = path.forward([[token]], { pool, slots: [slot] });
  const data = (await logits.data()) as Float32Array;
  logits.dispose();
  return data;
}

/**
 * Rotates one head (pairs (i, i + D/2), as Hugging Face) by `delta` positions, in float64, with frequencies written out
 * from transformers' proportional RoPE: the first floor(partial * D / 2) pairs turn at base^(-2i/D), the rest not at all.
 * `ignorePartial` turns every pair, to show that a rotation of the whole head would be caught.
 */
function rerotate(x: Float64Array, delta: number, rope: RopeSettings, ignorePartial = false): void {
  const D = x.length;
  const half = D / 2;
  const turning = rope.partialFactor === undefined || ignorePartial ? half : Math.floor((rope.partialFactor * D) / 2);
  for (let i = 0; i < turning; i++) {
    const angle = (delta / rope.factor) * Math.pow(rope.base, (-2 * i) / D);
    const [c, s] = [Math.cos(angle), Math.sin(angle)];
    const [a, b] = [x[i], x[half + i]];
    x[i] = a * c - b * s;
    x[half + i] = b * c + a * s;
  }
}

interface Snapshot {
  positions: Record<LayerType, Int32Array>;
  /** Per layer (undefined for KV-shared ones): K [heads, E, D] and V^T [heads, D, E] as the pool holds them. */
  k: (Float32Array | undefined)[];
  vT: (Float32Array | undefined)[];
}

function snapshot(engine: Engine, slot: number): Snapshot {
  const pool = engineParts(engine).pool;
  const own = (l: number) => layerKv(engine.config, l).source === l;
  return {
    positions: { global: Int32Array.from(pool.positions(slot, 'global')), sliding: Int32Array.from(pool.positions(slot, 'sliding')) },
    k: engine.config.layerTypes.map((_, l) => (own(l) ? Float32Array.from(pool.k[l][slot].dataSync()) : undefined)),
    vT: engine.config.layerTypes.map((_, l) => (own(l) ? Float32Array.from(pool.vT[l][slot].dataSync()) : undefined)),
  };
}

/**
 * Writes into `slot` what compaction should have made of `s`: each kept token's key moved from entry p % E to q % E and
 * rotated by q - p in float64 (`rerotate: false` leaves keys as they were, `ignorePartial` rotates whole heads), values moved.
 * The slot's positions come from prefilling `length` placeholder tokens, which numbers the entries as compaction does.
 */
function inject(engine: Engine, slot: number, s: Snapshot, moved: Map<number, number>, length: number, opts: { rerotate?: boolean; ignorePartial?: boolean } = {}): void {
  const { path, pool } = engineParts(engine);
  const cfg = engine.config;
  pool.reset(slot);
  path.prefill(Array.from({ length }, (_, i) => 200 + i), { pool, slots: [slot], noLogits: true });
  cfg.layerTypes.forEach((type, l) => {
    const { heads: H, headDim: D, source } = layerKv(cfg, l);
    if (source !== l) return;
    const E = pool.entries[type];
    const k = new Float32Array(H * E * D);
    const vT = new Float32Array(H * D * E);
    s.positions[type].forEach((p, e) => {
      const q = moved.get(p);
      if (q === undefined) return;
      const to = q % E;
      for (let h = 0; h < H; h++) {
        const head = Float64Array.from(s.k[l]!.subarray((h * E + e) * D, (h * E + e + 1) * D));
        if (opts.rerotate !== false) rerotate(head, q - p, cfg.rope[type], opts.ignorePartial);
        k.set(head, (h * E + to) * D);
        for (let d = 0; d < D; d++) vT[(h * D + d) * E + to] = s.vT[l]![(h * D + d) * E + e];
      }
    });
    pool.k[l][slot].dispose();
    pool.vT[l][slot].dispose();
    pool.k[l][slot] = tf.tensor4d(k, [1, H, E, D]);
    pool.vT[l][slot] = tf.tensor4d(vT, [1, H, D, E]);
  });
}

// C = 48: the sliding rings hold every token. C = 96: they hold window + 64 = 76 entries and wrap before the eviction.
for (const [capacity, kernels] of KERNELS.flatMap((k) => [C, 2 * C].map((cap) => [cap, k] as const))) {
  t.test(`gemma4-tiny-ple, C = ${capacity}, ${kernels} kernels, shift eviction while generating`, async (t) => {
    // Two slots: the session's (0) and one for the independently re-rotated copy of its cache (1).
    const engine = await load('gemma4-tiny-ple', 2, capacity, kernels);
    t.teardown(() => engine.dispose());
    const cfg = engine.config;
    const { pool } = engineParts(engine);
    const expected = kernels === 'native' ? 'native' : 'graph';
    t.equal(engine.pathName, expected, `Gemma 4 runs on the ${expected} path`);
    t.ok(cfg.rope.global.partialFactor === 0.25 && cfg.gemma4!.typeHeadDim.global !== cfg.gemma4!.typeHeadDim.sliding, 'global layers: wider heads, partial RoPE');
    const baseline = tf.memory().numTensors;

    const s = driveSession(engine, 'g4-shift', 'shift', SYSTEM);
    const prompt = promptOf(engine, SYSTEM, TURNS);
    const { b, seq } = await s.bind(prompt);
    const sinkLen = b.meta.sinkIds.length;
    t.ok(sinkLen > 4, `a sink of ${sinkLen} tokens`);
    await s.sampler.prefill(seq);
    while (pool.length(b.slot) < capacity) await s.sampler.step([seq]);
    if (capacity > pool.entries.sliding) t.ok(true, `the sliding rings (${pool.entries.sliding} entries) wrapped`);
    const before = snapshot(engine, b.slot);

    await s.turns.makeRoom(b, seq, 1);
    t.equal(s.evictions.length, 1, `one eviction (${s.evictions[0]?.kind}, ${s.evictions[0]?.tokens} tokens)`);
    const cut = sinkLen + s.evictions[0].tokens;
    const length = pool.length(b.slot);
    t.equal(length, capacity - s.evictions[0].tokens, 'the cache shrank by the evicted tokens');

    // (a) Positions contiguous from 0 (sliding layers: over the window the next query sees), the sink's ids and keys
    // untouched (a rotation by 0 is exact).
    t.same(visible(pool.positions(b.slot, 'global'), 'global', length, cfg.slidingWindow), range(0, length), `global positions are 0..${length - 1}`);
    const from = Math.max(0, length - cfg.slidingWindow + 1);
    t.same(visible(pool.positions(b.slot, 'sliding'), 'sliding', length, cfg.slidingWindow), range(from, length), `sliding positions cover the window ${from}..${length - 1}`);
    t.same(b.meta.sinkIds, prompt.slice(0, sinkLen), 'the sink ids are kept');
    let sinkDrift = 0;
    let sinkEntries = 0;
    cfg.layerTypes.forEach((type, l) => {
      if (!before.k[l]) return;
      const { heads: H, headDim: D } = layerKv(cfg, l);
      const E = pool.entries[type];
      const now = pool.k[l][b.slot].dataSync();
      before.positions[type].forEach((p, e) => {
        if (p < 0 || p >= sinkLen || pool.positions(b.slot, type)[e] !== p) return;
        sinkEntries++;
        // Entry e of head h starts at (h * E + e) * D.
        for (let i = e * D; i < H * E * D; i += E * D) for (let d = 0; d < D; d++) sinkDrift = Math.max(sinkDrift, Math.abs(now[i + d] - before.k[l]![i + d]));
      });
    });
    t.ok(sinkEntries >= sinkLen && sinkDrift === 0, `the sink's keys (${sinkEntries} layer entries) are bit-identical after the compaction`);

    // (b) KV-shared layers (the last num_kv_shared_layers) hold no tensors.
    const shared = cfg.layerTypes.map((_, l) => l).filter((l) => layerKv(cfg, l).source !== l);
    t.same(shared, [5, 6, 7], "layers 5-7 read an earlier layer's K/V");
    t.same(shared.map((l) => pool.k[l].length + pool.vT[l].length), shared.map(() => 0), 'and hold no K or V tensors');

    // (c) The next token's logits equal those over the retained K/V re-rotated independently (float64) into slot 1.
    const moved = new Map<number, number>();
    for (let p = 0; p < sinkLen; p++) moved.set(p, p);
    for (let p = cut; p < capacity; p++) moved.set(p, sinkLen + p - cut);
    const token = seq.pending!;
    const got = await decode(engine, b.slot, token);
    inject(engine, 1, before, moved, length);
    for (const type of ['global', 'sliding'] as const) {
      t.same(visible(pool.positions(1, type), type, length, cfg.slidingWindow), visible(pool.positions(b.slot, type), type, length, cfg.slidingWindow), `slot 1's ${type} entries the query sees are numbered as the compacted slot's`);
    }
    const want = await decode(engine, 1, token);
    const worst = maxDiff(got, want);
    t.ok(worst < TOL, `logits over all ${cfg.vocabSize} ids within ${TOL} of the independently re-rotated cache (worst ${worst.toExponential(2)})`);
    // Sharpness: stale keys, or rotating the non-rotating pairs of global heads, answer visibly differently.
    inject(engine, 1, before, moved, length, { rerotate: false });
    const stale = maxDiff(got, await decode(engine, 1, token));
    t.ok(stale > 20 * TOL, `without re-rotation the logits differ by ${stale.toExponential(2)}`);
    inject(engine, 1, before, moved, length, { ignorePartial: true });
    const whole = maxDiff(got, await decode(engine, 1, token));
    t.ok(whole > 5 * TOL, `rotating whole global heads (ignoring partial_rotary_factor) differs by ${whole.toExponential(2)}`);

    pool.reset(1);
    pool.truncate(b.slot, length);
    await s.turns.finish(b, seq, true);
    pool.reset(b.slot);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}

for (const [name, kernels] of KERNELS.flatMap((k) => (['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const).map((n) => [n, k] as const))) {
  t.test(`${name}, ${kernels} kernels, recompute eviction while generating: the next logits equal a fresh pass over sink + kept + token`, async (t) => {
    const engine = await load(name, 1, C, kernels);
    t.teardown(() => engine.dispose());
    const { path, pool } = engineParts(engine);
    const baseline = tf.memory().numTensors;
    const fresh = async (ids: number[]) => {
      const logits = path.forward([ids]);
      const data = await logits.data();
      logits.dispose();
      return data;
    };
    const s = driveSession(engine, 'g4-recompute', 'recompute', SYSTEM);
    const prompt = promptOf(engine, SYSTEM, TURNS);
    const { b, seq } = await s.bind(prompt);
    const sinkLen = b.meta.sinkIds.length;
    await s.sampler.prefill(seq);
    while (pool.length(b.slot) < C) await s.sampler.step([seq]);
    const cached = [...prompt, ...seq.generated.slice(0, -1)];
    await s.turns.makeRoom(b, seq, 1);
    t.equal(s.evictions.length, 1, 'one eviction');
    const retained = [...cached.slice(0, sinkLen), ...cached.slice(sinkLen + s.evictions[0].tokens)];
    t.same([...b.meta.sinkIds, ...b.meta.keptIds], retained, 'the metadata lists the sink and the newest tokens');
    t.equal(pool.length(b.slot), retained.length, 'the slot was refilled with exactly those');
    const got = await decode(engine, b.slot, seq.pending!);
    const worst = maxDiff(got, await fresh([...retained, seq.pending!]));
    t.ok(worst < TOL, `logits within ${TOL} of the fresh pass (worst ${worst.toExponential(2)})`);
    const uncut = maxDiff(got, await fresh([...cached, seq.pending!]));
    t.ok(uncut > 20 * TOL, `the uncut history answers ${uncut.toExponential(2)} away`);
    pool.truncate(b.slot, retained.length);
    await s.turns.finish(b, seq, true);
    pool.reset(b.slot);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}

for (const [name, kernels] of KERNELS.flatMap((k) => (['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const).map((n) => [n, k] as const))) {
  for (const mode of ['shift', 'recompute'] as const) {
    t.test(`${name}, ${kernels} kernels, ${mode}: a conversation many times the cache completes every turn with flat memory`, async (t) => {
      const engine = await load(name, 1, C, kernels);
      t.teardown(() => engine.dispose());
      const d = driveSession(engine, `g4-long-${mode}`, mode, SYSTEM);
      const TURN_COUNT = 24;
      // Every fifth reply (30 tokens) outgrows the C/4 the turn plan keeps free, so room is also made while generating.
      const replyOf = (i: number) => (i % 5 === 4 ? 30 : 6);
      let history = firstPrompt(engine, SYSTEM, USER_TURNS[0]);
      const problems: string[] = [];
      const tensorsAt: number[] = [];
      let last;
      for (let i = 0; i < TURN_COUNT; i++) {
        try {
          last = await runTurn(d, history, replyOf(i));
          if (last.generated.length !== replyOf(i)) problems.push(`turn ${i}: ${last.generated.length} tokens`);
          if (engineParts(engine).pool.length(0) > C) problems.push(`turn ${i}: ${engineParts(engine).pool.length(0)} cached`);
        } catch (err) {
          problems.push(`turn ${i}: ${(err as Error).message}`);
          break;
        }
        if (i === 12 || i === TURN_COUNT - 1) tensorsAt.push(tf.memory().numTensors, tf.memory().numBytes);
        history = continueHistory(engine, history, last.generated, USER_TURNS[(i + 1) % USER_TURNS.length]);
      }
      t.same(problems, [], `all ${TURN_COUNT} turns answered in full within the capacity`);
      t.ok(last && last.meta.historyLength > 5 * C, `the conversation reached ${last?.meta.historyLength} tokens (> 5 x C = ${5 * C})`);
      t.ok(last && last.meta.evicted > 4 * C, `${last?.meta.evicted} tokens evicted`);
      t.ok(d.evictions.length > TURN_COUNT, `${d.evictions.length} evictions (${[...new Set(d.evictions.map((e) => e.kind))].join(', ')}), some while generating`);
      t.same(tensorsAt.slice(2), tensorsAt.slice(0, 2), `tensor count and bytes after turn 12 equal those after turn ${TURN_COUNT - 1} (${tensorsAt.join(', ')})`);
      if (mode === 'shift') t.ok(d.evictions.length > 0 && last!.reuse > 0, `the last turn reused ${last!.reuse} shifted tokens`);
    });
  }
}
