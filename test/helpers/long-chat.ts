// A 200-turn conversation many times longer than the cache, and what must hold at its end (rolling-long-chat*.test.ts).
import type { Test } from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { Engine, engineParts } from '../../src/engine/engine.js';
import type { ChatTurn } from '../../src/scheduler/types.js';
import { modelDir } from './fixtures.js';
import { chat, scoped, type Stack } from './stack.js';
import { testEngineOptions } from './engine-options.js';

export const C = 64;
const TURNS = 200;
const MAX_TOKENS = 5;
/** One user turn longer than the whole cache: only token-level eviction can fit it. */
const LONG_TURN = 120;
const SYSTEM = 'You are a patient assistant. Answer briefly and never forget this instruction.';
const TOPICS = ['rivers', 'owls', 'bread', 'comets', 'violins', 'glaciers', 'tea', 'lighthouses', 'chess', 'moss'];

export function loadEngine(): Promise<Engine> {
  return Engine.load(testEngineOptions({ dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 1, capacity: C }));
}

function userMessage(i: number): string {
  if (i === LONG_TURN) return Array.from({ length: 40 }, (_, j) => `${TOPICS[j % TOPICS.length]} number ${j}`).join(', ');
  return `Turn ${i}: tell me one thing about ${TOPICS[i % TOPICS.length]}.`;
}

/** K of every global layer at the sink's cache entries, to show later that they were never touched. */
function sinkKeys(engine: Engine, slot: number, sinkLen: number): Float32Array[] {
  const pos = engineParts(engine).pool.positions(slot, 'global');
  const entries = Array.from({ length: sinkLen }, (_, p) => pos.indexOf(p));
  return engine.config.layerTypes.flatMap((type, l) => {
    if (type !== 'global') return [];
    const k = engineParts(engine).pool.k[l][slot].arraySync()[0];
    return [Float32Array.from(k.flatMap((head) => entries.flatMap((e) => head[e])))];
  });
}

/**
 * Gemma's template trims replies, so a resent reply that began with a space no
 * longer agrees with the cache and the prompt is (rightly) not matched to the
 * session. Nudging a few tokens without a leading space keeps the replies of
 * the unnamed conversation matchable.
 */
const NO_LEADING_SPACE = Object.fromEntries([79090, 246005, 201578, 199203, 9564].map((id) => [id, 4]));

/**
 * Runs the conversation (the client resends the whole history every turn,
 * under `named` or matched by prefix) and checks the outcome.
 */
export async function converse(t: Test, s: Stack, named: string | undefined): Promise<void> {
  const engine = s.engine;
  const history: ChatTurn[] = [{ role: 'system', content: SYSTEM }];
  const problems: string[] = [];
  const sessions = new Set<string>();
  let atFifty: { numBytes: number; numTensors: number } | undefined;
  let firstSink: Float32Array[] | undefined;
  let longTurnEvicted = 0;
  for (let i = 0; i < TURNS; i++) {
    history.push({ role: 'user', content: userMessage(i) });
    const r = await chat(s, history, { maxTokens: MAX_TOKENS, logitBias: named ? {} : NO_LEADING_SPACE }, named);
    const n = r.usage.completionTokens;
    if (!(r.finish === 'length' ? n === MAX_TOKENS : r.finish === 'stop' && n >= 1 && n <= MAX_TOKENS)) {
      problems.push(`turn ${i}: finish ${r.finish} after ${n} tokens`);
    }
    sessions.add(r.sessionId!);
    if (i === LONG_TURN) longTurnEvicted = r.usage.evictedTokens;
    history.push({ role: 'assistant', content: r.text });
    if (i === 0) {
      const meta = s.slots.metaOf(scoped(r.sessionId!))!;
      firstSink = sinkKeys(engine, s.slots.slotOf(scoped(r.sessionId!))!, meta.sinkIds.length);
    }
    if (i === 50) atFifty = { numBytes: tf.memory().numBytes, numTensors: tf.memory().numTensors };
  }
  const end = { numBytes: tf.memory().numBytes, numTensors: tf.memory().numTensors };
  t.same(problems, [], 'every turn finished by max_tokens or a stop token, never cut short');
  t.same([...sessions].length, 1, 'every turn continued the same session');
  const id = scoped([...sessions][0]!);
  const meta = s.slots.metaOf(id)!;
  t.ok(meta.historyLength > 20 * C, `conversation of ${meta.historyLength} tokens > 20 x C = ${20 * C}`);
  t.ok(meta.evicted > 19 * C, `${meta.evicted} tokens evicted over the conversation`);
  const kinds = new Set(s.evictions.map((e) => e.kind));
  t.ok(kinds.has('turn'), 'whole turns were evicted');
  t.ok(kinds.has('token'), 'the over-long user turn was cut token by token');
  t.ok(longTurnEvicted > 0, `the over-long turn reported ${longTurnEvicted} evicted tokens`);
  t.same(end, atFifty, 'backend bytes and tensor count after turn 200 equal those after turn 50');

  const slot = s.slots.slotOf(id)!;
  const sinkLen = meta.sinkIds.length;
  const systemIds = engine.tokenizer.encode(SYSTEM, { addSpecialTokens: false });
  t.ok(sinkLen >= systemIds.length + 4, `sink of ${sinkLen} tokens`);
  const at = meta.sinkIds.findIndex((_, i) => systemIds.every((id, j) => meta.sinkIds[i + j] === id));
  t.ok(at > 0, `the sink holds the system prompt's ${systemIds.length} token ids (from index ${at})`);
  t.equal(meta.sinkIds[0], engine.config.bosId, 'the sink starts with BOS');
  const global = engineParts(engine).pool.positions(slot, 'global');
  const missing = Array.from({ length: sinkLen }, (_, p) => p).filter((p) => !global.includes(p));
  t.same(missing, [], 'global KV positions 0..sinkLen-1 are all present');
  t.equal(engineParts(engine).pool.length(slot), sinkLen + meta.keptIds.length, 'the pool holds exactly sink + kept window');
  t.ok(engineParts(engine).pool.length(slot) <= C, `within the capacity (${engineParts(engine).pool.length(slot)} <= ${C})`);
  t.same(sinkKeys(engine, slot, sinkLen), firstSink, "the sink's keys are the ones computed on turn 1, never re-rotated or recomputed");
}

