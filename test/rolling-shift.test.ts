// `shift` eviction against an independent float64 computation of attention over the retained K/V at renumbered positions.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../src/engine/engine.js';
import type { LayerType, RopeSettings } from '../src/model/hf-config.js';
import { modelDir, reference } from './helpers/fixtures.js';
import { ReferenceDecoder, rotate, type RefEntry } from './helpers/reference-decoder.js';
import { driveSession, nextTurnIds, promptOf as promptOfTurns } from './helpers/session-driver.js';
import { testEngineOptions } from './helpers/engine-options.js';

// gemma3-tiny-scaled: global layers (3 and 7) use linear RoPE scaling x8, sliding layers window 12.
const TOL = 1e-3;
const load = (C: number) => Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny-scaled'), backend: 'wasm', slots: 1, capacity: C }));
// C = 48: sliding layers hold 48 entries. C = 96: they hold their window plus slack (76), so their rings wrap before the eviction.
const small = await load(48);
const ringed = await load(96);
const engine = small;
t.teardown(() => {
  small.dispose();
  ringed.dispose();
});
const cfg = engine.config;
const ref = await ReferenceDecoder.load(modelDir('gemma3-tiny-scaled'), cfg);
const V = cfg.vocabSize;
const baseline = tf.memory().numTensors;

// All below the fixture's 4096-token vocabulary, so the chat template's system prefix is recognized as the sink.
const SYSTEM = 'You are a good and kind';
const promptOf = (turns: string[]) => promptOfTurns(engine, SYSTEM, turns);

interface Snapshot {
  length: number;
  positions: Record<LayerType, Int32Array>;
  k: Float32Array[];
  v: Float32Array[];
}

/**
 * A slot's V of one layer as [kvHeads, entries, headDim], whether the pool
 * keeps V as K does (`v`) or transposed (`vT`, [kvHeads, headDim, entries]).
 */
function valuesOf(engine: Engine, layer: number, slot: number): Float32Array {
  const pool = engineParts(engine).pool as unknown as { v?: tf.Tensor4D[][]; vT?: tf.Tensor4D[][] };
  if (pool.v) return Float32Array.from(pool.v[layer][slot].dataSync());
  const v = tf.transpose(pool.vT![layer][slot], [0, 1, 3, 2]);
  const data = Float32Array.from(v.dataSync());
  v.dispose();
  return data;
}

function snapshot(engine: Engine, slot: number): Snapshot {
  const pool = engineParts(engine).pool;
  return {
    length: pool.length(slot),
    positions: { global: Int32Array.from(pool.positions(slot, 'global')), sliding: Int32Array.from(pool.positions(slot, 'sliding')) },
    k: cfg.layerTypes.map((_, l) => Float32Array.from(pool.k[l][slot].dataSync())),
    v: cfg.layerTypes.map((_, l) => valuesOf(engine, l, slot)),
  };
}

/**
 * The reference's caches after an eviction: every token the snapshot held at
 * a kept position `p`, its key rotated back from `p` and forward to `moved(p)`
 * with its layer type's RoPE settings (`rope` overrides them, to show what a
 * wrong rotation would give), its value as it was.
 */
function retained(engine: Engine, s: Snapshot, moved: Map<number, number>, opts: { rope?: Record<LayerType, RopeSettings>; rerotate?: boolean } = {}): RefEntry[][] {
  const hd = cfg.headDim;
  const nkv = cfg.numKvHeads;
  return cfg.layerTypes.map((type, l) => {
    const E = engineParts(engine).pool.entries[type];
    const rope = (opts.rope ?? cfg.rope)[type];
    const out: RefEntry[] = [];
    s.positions[type].forEach((p, e) => {
      const q = moved.get(p);
      if (q === undefined) return;
      const k = new Float64Array(nkv * hd);
      const v = new Float64Array(nkv * hd);
      for (let h = 0; h < nkv; h++) {
        const from = (h * E + e) * hd;
        for (let d = 0; d < hd; d++) {
          k[h * hd + d] = s.k[l][from + d];
          v[h * hd + d] = s.v[l][from + d];
        }
        if (opts.rerotate !== false) {
          rotate(k, h * hd, hd, -p, rope);
          rotate(k, h * hd, hd, q, rope);
        }
      }
      out.push({ pos: q, k, v });
    });
    out.sort((a, b) => a.pos - b.pos);
    return out;
  });
}

/**
 * Kept tokens the first query at new position `P` must see but that the
 * snapshot did not hold (global layers see every kept token, sliding layers
 * those within their window): a cache that lost one would make the reference
 * as wrong as the engine, so the tests require none.
 */
function missing(caches: RefEntry[][], moved: Map<number, number>, P: number): string[] {
  const out: string[] = [];
  cfg.layerTypes.forEach((type, l) => {
    const held = new Set(caches[l].map((e) => e.pos));
    for (const q of moved.values()) {
      const needed = type === 'global' || q > P - cfg.slidingWindow;
      if (needed && !held.has(q)) out.push(`layer ${l} (${type}) position ${q}`);
    }
  });
  return out;
}

/** Old position -> new position: the sink stays, `[cut, length)` moves down to follow it. */
function renumbering(sinkLen: number, cut: number, length: number): Map<number, number> {
  const m = new Map<number, number>();
  for (let p = 0; p < sinkLen; p++) m.set(p, p);
  for (let p = cut; p < length; p++) m.set(p, sinkLen + p - cut);
  return m;
}

function runReference(caches: RefEntry[][], ids: number[], from: number): Float64Array {
  let logits: Float64Array | undefined;
  ids.forEach((id, i) => (logits = ref.step(id, from + i, caches, i === ids.length - 1)));
  return logits!;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

t.test('the reference decoder reproduces Hugging Face on the fixture (so it can judge the engine)', async (t) => {
  for (const c of reference('gemma3-tiny-scaled').cases) {
    const caches: RefEntry[][] = cfg.layerTypes.map(() => []);
    let worst = 0;
    c.input_ids.forEach((id, p) => {
      const logits = ref.step(id, p, caches, true)!;
      worst = Math.max(worst, maxDiff(c.top_ids[p].map((j) => logits[j]), c.top_logits[p]));
    });
    t.ok(worst < TOL, `${c.name} (${c.input_ids.length} tokens, window ${cfg.slidingWindow}): top-20 logits within ${TOL} of HF (worst ${worst.toExponential(2)})`);
  }
});

// Earlier turns go whole; a reply that fills the cache by itself is cut token by token.
const cases = [
  { engine: small, turns: ['Tell me a story', 'Once upon a time', 'Go on'], kind: 'turn' },
  { engine: ringed, turns: ['Tell me a story', 'Once upon a time', 'Go on'], kind: 'turn' },
  { engine: small, turns: ['Tell me a long story'], kind: 'token' },
];
for (const { engine, turns, kind } of cases) {
  const C = engine.capacity;
  t.test(`C = ${C}, ${kind} eviction while generating: next-token logits equal the reference over re-rotated retained K/V`, async (t) => {
    const s = driveSession(engine, `shift-generate-${C}-${kind}`, 'shift', SYSTEM);
    const prompt = promptOf(turns);
    const { b, seq } = await s.bind(prompt);
    const sinkLen = b.meta.sinkIds.length;
    t.ok(sinkLen > 4 && prompt.slice(0, sinkLen).includes(3048), `the sink (${sinkLen} tokens) covers the system prompt`);
    t.ok(prompt.length < C - 3, `prompt of ${prompt.length} tokens fits`);
    await s.sampler.prefill(seq);
    while (engineParts(engine).pool.length(b.slot) < C) await s.sampler.step([seq]);
    t.equal(s.evictions.length, 0, 'no eviction until the cache is full');
    if (engine === ringed) t.ok(C > engineParts(engine).pool.entries.sliding, `the sliding rings (${engineParts(engine).pool.entries.sliding} entries) wrapped`);

    const before = snapshot(engine, b.slot);
    // What Sampler.step does for the next token: make room, then one cached forward pass.
    await s.turns.makeRoom(b, seq, 1);
    t.equal(s.evictions.length, 1, 'one eviction');
    t.equal(s.evictions[0].kind, kind, `of kind ${kind}`);
    const evicted = s.evictions[0].tokens;
    const cut = sinkLen + evicted;
    const newLength = engineParts(engine).pool.length(b.slot);
    t.equal(newLength, before.length - evicted, 'the cache shrank by the evicted tokens');
    const logits = engineParts(engine).path.forward([[seq.pending!]], { pool: engineParts(engine).pool, slots: [b.slot] });
    const got = await logits.data();
    logits.dispose();

    const moved = renumbering(sinkLen, cut, before.length);
    const kept = retained(engine, before, moved);
    t.same(missing(kept, moved, newLength), [], 'the cache held every kept token the next query attends to');
    const want = runReference(kept, [seq.pending!], newLength);
    const worst = maxDiff(got, want);
    t.ok(worst < TOL, `logits over all ${V} ids within ${TOL} of the reference (worst ${worst.toExponential(2)})`);

    // The comparison is sharp: leaving keys at their old positions, or rotating the
    // global layers without their linear scaling, gives visibly different logits.
    const stale = maxDiff(got, runReference(retained(engine, before, moved, { rerotate: false }), [seq.pending!], newLength));
    t.ok(stale > 50 * TOL, `without re-rotation the logits differ by ${stale.toExponential(2)}`);
    const unscaled = { global: { ...cfg.rope.global, factor: 1 }, sliding: cfg.rope.sliding };
    const wrong = maxDiff(got, runReference(retained(engine, before, moved, { rope: unscaled }), [seq.pending!], newLength));
    t.ok(cfg.rope.global.factor === 8 && wrong > 10 * TOL, `re-rotating global keys without the x8 scaling differs by ${wrong.toExponential(2)}`);

    // The cache now says what the reference assumed.
    const global = engineParts(engine).pool.positions(b.slot, 'global');
    t.same([...global].filter((p) => p >= 0).sort((x, y) => x - y), Array.from({ length: newLength + 1 }, (_, i) => i), 'global positions renumbered contiguously');
    t.same(b.meta.sinkIds, prompt.slice(0, sinkLen), 'the sink is kept');
    t.equal(b.meta.evicted, evicted, 'the session metadata counts the evicted tokens');
    await s.turns.finish(b, seq, true);
    engineParts(engine).pool.reset(b.slot);
    t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
  });
}

t.test('eviction when the next turn arrives: prefill logits equal the reference run over the new suffix', async (t) => {
  const s = driveSession(engine, 'shift-turn', 'shift', SYSTEM);
  const turns = ['Tell me a story', 'Once upon a time'];
  const first = await s.bind(promptOf([...turns, 'Go on']));
  await s.sampler.prefill(first.seq);
  for (let i = 0; i < 6; i++) await s.sampler.step([first.seq]);
  await s.turns.finish(first.b, first.seq, true);
  t.equal(s.evictions.length, 0, 'the first turn fits');
  const sinkLen = first.b.meta.sinkIds.length;

  // The client sends the whole history back (the reply as generated) with a new user turn that does not fit.
  const history = [...first.seq.promptIds, ...first.seq.generated, ...nextTurnIds(engine, 'And then what happened to them')];
  const before = snapshot(engine, first.b.slot);
  const { b, seq } = await s.bind(history);
  t.equal(s.evictions.length, 1, 'the turn plan evicted');
  t.equal(s.evictions[0].kind, 'turn', 'whole turns');
  const evicted = s.evictions[0].tokens;
  t.ok(b.reuse > sinkLen, `${b.reuse} cached tokens kept and shifted, not recomputed`);
  const suffix = b.promptIds.slice(b.reuse);
  t.ok(suffix.length > 5, `${suffix.length} new tokens to prefill`);
  const logits = engineParts(engine).path.prefill(suffix, { pool: engineParts(engine).pool, slots: [b.slot] })!;
  const got = await logits.data();
  logits.dispose();

  t.equal(b.reuse + evicted, before.length, 'the whole cache was reusable before the eviction');
  const cut = sinkLen + evicted;
  const moved = renumbering(sinkLen, cut, b.reuse + evicted);
  const kept = retained(engine, before, moved);
  t.same(missing(kept, moved, b.reuse), [], 'the cache held every kept token the new suffix attends to');
  const want = runReference(kept, suffix, b.reuse);
  const worst = maxDiff(got, want);
  t.ok(worst < TOL, `logits after prefilling ${suffix.length} tokens within ${TOL} of the reference (worst ${worst.toExponential(2)})`);
  const stale = maxDiff(got, runReference(retained(engine, before, moved, { rerotate: false }), suffix, b.reuse));
  t.ok(stale > 50 * TOL, `without re-rotation they differ by ${stale.toExponential(2)}`);
  t.equal(seq.promptIds.length, b.reuse + suffix.length, 'the sequence starts from the shifted cache');
  engineParts(engine).pool.reset(b.slot);
  s.turns.slots.release('shift-turn');
  t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
});
