// Whole conversation turns through SessionTurns and a Sampler, as the scheduler runs them, on raw token ids
// (so fixtures whose vocabulary is smaller than the tokenizer's can be driven), with any session store.
import { SlotManager, type SessionStore } from '../../src/cache/index.js';
import type { Engine } from '../../src/engine/engine.js';
import { Sampler } from '../../src/engine/sampler.js';
import { SessionTurns, type Binding, type EvictionMode } from '../../src/scheduler/session-turns.js';
import { GREEDY, nextTurnIds, promptOf, type Driven } from './session-driver.js';

/** driveSession's one-slot session, on the given store (a Redis store lets a second engine find it). */
export function driveWithStore(engine: Engine, id: string, mode: EvictionMode, system: string, store: SessionStore): Driven {
  const slots = new SlotManager({ slots: 1, store, model: engine.modelId });
  const evictions: { kind: string; tokens: number }[] = [];
  const turns = new SessionTurns(engine, slots, { mode, onEvict: (kind, tokens) => evictions.push({ kind, tokens }) });
  const sampler = new Sampler(engine);
  return {
    turns,
    evictions,
    sampler,
    async bind(prompt) {
      const b = await turns.bind(id, [{ role: 'system', content: system }], prompt, GREEDY.maxTokens);
      return { b, seq: await sampler.add({ slot: b.slot, promptIds: b.promptIds, reuseTokens: b.reuse, params: GREEDY }) };
    },
  };
}

export interface TurnResult {
  /** Greedy ids generated (the last one sampled but not yet fed to the model). */
  generated: number[];
  /** What the sequence started from: cached prefix plus what was prefilled. */
  promptIds: number[];
  reuse: number;
  meta: Binding['meta'];
}

/**
 * One turn: bind the whole history (as a client resends it), prefill, then
 * `tokens - 1` decode steps, each after `makeRoom` as the scheduler calls it,
 * and record the session.
 */
export async function runTurn(d: Driven, history: number[], tokens: number): Promise<TurnResult> {
  const { b, seq } = await d.bind(history);
  const reuse = b.reuse;
  const promptIds = [...b.promptIds];
  try {
    await d.sampler.prefill(seq);
    while (seq.generated.length < tokens) {
      await d.turns.makeRoom(b, seq, 1);
      await d.sampler.step([seq]);
    }
  } catch (err) {
    await d.turns.finish(b, seq, false);
    throw err;
  }
  await d.turns.finish(b, seq, true);
  return { generated: [...seq.generated], promptIds, reuse, meta: b.meta };
}

/** User messages for long conversations (every id below a 4096-token vocabulary once folded). */
export const USER_TURNS = ['Tell me a story', 'Go on please', 'And then what happened', 'Why was that', 'Tell me more about them', 'What came next'];

/** The history a client sends for its next turn: everything so far, the reply, and a new user turn. */
export function continueHistory(engine: Engine, history: number[], reply: number[], user: string): number[] {
  return [...history, ...reply, ...nextTurnIds(engine, user)];
}

/** The first turn's templated prompt. */
export function firstPrompt(engine: Engine, system: string, user: string): number[] {
  return promptOf(engine, system, [user]);
}
