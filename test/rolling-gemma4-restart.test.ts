// Restart on Gemma 4: a second engine sharing Redis continues a session it never saw, from its stored metadata (sink +
// kept window), and answers as the first engine would in recompute mode. Driven on raw ids below the fixture's
// 4096-token vocabulary (the scheduler refuses the Gemma 3 template's larger ids), through SessionTurns as the scheduler.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Redis } from 'ioredis';
import { RedisSessionStore } from '../src/cache/index.js';
import { Engine, engineParts } from '../src/engine/engine.js';
import { layerKv } from '../src/engine/kv-pool.js';
import { nativeAddon } from '../src/engine/native/kernels.js';
import { modelDir } from './helpers/fixtures.js';
import { driveSession } from './helpers/session-driver.js';
import { continueHistory, firstPrompt, runTurn, USER_TURNS, type TurnResult } from './helpers/turn-runner.js';
import { testEngineOptions } from './helpers/engine-options.js';

const C = 128;
const PREFIX = `gemma-serve-test:g4-restart-${process.pid}-${Date.now().toString(36)}:`;
const SYSTEM = 'You are a good and kind';
// Short turns (about 14 tokens with the markers), shorter than the C/8 an eviction frees at least, so some turns fit.
const REPLY = 3;
// The graph (tfjs kernels), and the native CPU kernels where they are built with the Gemma 4 layer.
const KERNELS = ['tfjs', ...(typeof nativeAddon().addon?.gemma4Layer === 'function' ? ['native'] : [])] as Array<'tfjs' | 'native'>;
const load = (name: string, kernels: 'tfjs' | 'native') => Engine.load(testEngineOptions({ dir: modelDir(name), backend: 'wasm', cpuKernels: kernels, slots: 1, capacity: C }));

const raw = new Redis({ host: '127.0.0.1', port: 6379 });
t.teardown(async () => {
  const keys = await raw.keys(`${PREFIX}*`);
  if (keys.length) await raw.del(...keys);
  raw.disconnect();
});

/** What both processes must agree on after the turn. */
const state = (r: TurnResult) => ({ sink: r.meta.sinkIds, kept: r.meta.keptIds, turns: r.meta.turnStarts, evicted: r.meta.evicted, history: r.meta.historyHash, length: r.meta.historyLength });

/** Whether slot 0 of both engines numbers its entries alike, and the largest K or V difference over held entries. */
function cacheDiff(a: Engine, b: Engine): { positions: boolean; worst: number } {
  const [pa, pb] = [engineParts(a).pool, engineParts(b).pool];
  let positions = true;
  let worst = 0;
  a.config.layerTypes.forEach((type, l) => {
    const held = pa.positions(0, type);
    positions &&= held.every((p, e) => p === pb.positions(0, type)[e]);
    if (pa.k[l].length === 0) return;
    const { heads: H, headDim: D } = layerKv(a.config, l);
    const E = held.length;
    const [ka, kb, va, vb] = [pa.k[l][0], pb.k[l][0], pa.vT[l][0], pb.vT[l][0]].map((x) => x.dataSync());
    held.forEach((p, e) => {
      if (p < 0) return;
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < D; d++) {
          worst = Math.max(worst, Math.abs(ka[(h * E + e) * D + d] - kb[(h * E + e) * D + d]), Math.abs(va[(h * D + d) * E + e] - vb[(h * D + d) * E + e]));
        }
      }
    });
  });
  return { positions, worst };
}

for (const [name, kernels] of KERNELS.flatMap((k) => (['gemma4-tiny-ple', 'gemma4-tiny-moe'] as const).map((n) => [n, k] as const))) {
  t.test(`${name}, ${kernels} kernels: a second engine continues a session from Redis and answers as the first would`, async (t) => {
    const id = `g4-restart-${name}-${kernels}`;
    // Process A: turns until the rolling cache has evicted, each recorded in Redis.
    const engineA = await load(name, kernels);
    const storeA = new RedisSessionStore({ ttlSeconds: 300, keyPrefix: PREFIX });
    t.teardown(async () => {
      await storeA.close();
      engineA.dispose();
    });
    const a = driveSession(engineA, id, 'recompute', SYSTEM, storeA);
    let history = firstPrompt(engineA, SYSTEM, USER_TURNS[0]);
    // Until A has evicted and the next turn fits A's slot without evicting again (the plan keeps C/4 free for the
    // reply): then A answers from the cache it built up, B from a rebuild, and agreement is not a foregone conclusion.
    const fits = () => engineParts(engineA).pool.length(0) + (history.length - a.turns.slots.metaOf(id)!.historyLength) + C / 4 <= C;
    for (let i = 0; i < 30 && !(a.evictions.length > 0 && i >= 3 && fits()); i++) {
      const r = await runTurn(a, history, REPLY);
      t.equal(r.generated.length, REPLY, `A: turn ${i} answered`);
      history = continueHistory(engineA, history, r.generated, 'Go on');
    }
    t.ok(a.evictions.length > 0, `A evicted ${a.evictions.length} times`);
    const stored = await storeA.get(id);
    t.ok(stored && stored.evicted > 0, `Redis holds the session, ${stored?.evicted} tokens evicted`);
    t.same(stored, a.turns.slots.metaOf(id), 'Redis holds what A has in its slot');
    t.ok(JSON.parse((await raw.get(`${PREFIX}session:${id}`))!).keptIds.length > 0, 'under <prefix>session:<id>');

    // Process B: a new engine and slot manager on the same Redis.
    const engineB = await load(name, kernels);
    const storeB = new RedisSessionStore({ ttlSeconds: 300, keyPrefix: PREFIX });
    t.teardown(async () => {
      await storeB.close();
      engineB.dispose();
    });
    const b = driveSession(engineB, id, 'recompute', SYSTEM, storeB);
    t.notOk(b.turns.slots.isCached(id), 'B has never seen the session');
    const baselineB = tf.memory().numTensors;
    const fromB = await runTurn(b, history, REPLY);
    t.equal(fromB.reuse, 0, 'B had nothing cached: it rebuilt the slot');
    // Rebuilt from the stored metadata: the sink, then the newest tokens of the conversation (this turn may evict more).
    const sinkLen = stored!.sinkIds.length;
    t.same(fromB.promptIds.slice(0, sinkLen), stored!.sinkIds, 'B starts from the stored sink');
    t.same(fromB.promptIds.slice(sinkLen), history.slice(history.length - (fromB.promptIds.length - sinkLen)), 'then the newest tokens of the history');
    t.ok(fromB.promptIds.length < history.length, `${fromB.promptIds.length} of ${history.length} history tokens`);

    // A answers the same turn from its own slot (B's write to Redis does not touch A's slot).
    const fromA = await runTurn(a, history, REPLY);
    t.ok(fromA.reuse > 0, `A answered from its own cache (${fromA.reuse} tokens reused, nothing evicted this turn)`);
    t.same(fromB.generated, fromA.generated, `B's greedy reply equals A's (${fromA.generated.join(' ')})`);
    t.same(fromB.promptIds, fromA.promptIds, 'both started from the same ids');
    t.same(state(fromB), state(fromA), 'A and B hold the same sink, kept window, turn starts, eviction count and history hash');
    t.equal(fromB.meta.createdAt, stored!.createdAt, "B's session continues A's (same creation time)");
    t.equal(engineParts(engineB).pool.length(0), engineParts(engineA).pool.length(0), 'both slots hold as many tokens');
    // A's cache grew turn by turn (shared layers reading it, sliding rings wrapping), B's came from one rebuild: same K/V.
    const { positions, worst } = cacheDiff(engineA, engineB);
    t.ok(positions, 'at the same positions in every entry');
    t.ok(worst < 1e-3, `every held key and value within 1e-3 (worst ${worst.toExponential(2)})`);

    // The next turn on B then continues from its own resident slot, as A would.
    const next = continueHistory(engineB, history, fromB.generated, 'And then what happened to them');
    const againB = await runTurn(b, next, REPLY);
    const againA = await runTurn(a, next, REPLY);
    t.same(againB.generated, againA.generated, 'and the turn after that answers alike too');
    t.same(state(againB), state(againA), 'with the same session state');
    engineParts(engineB).pool.reset(0);
    t.equal(tf.memory().numTensors, baselineB, 'B leaked no tensor');
  });
}
