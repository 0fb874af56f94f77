// Whole conversation turns through SessionTurns and a Sampler, as the scheduler runs them, on raw token ids
// (so fixtures whose vocabulary is smaller than the tokenizer's can be driven).
import type { Engine } from '../../src/engine/engine.js';
import type { Binding } from '../../src/scheduler/session-turns.js';
import { nextTurnIds, promptOf, type Driven } from './session-driver.js';

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
