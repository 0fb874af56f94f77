// Drives one session through SessionTurns and a Sampler by hand, so a test can look at the cache between the steps the scheduler would run.
import { MemorySessionStore, SlotManager, type SessionStore } from '../../src/cache/index.js';
import type { Engine } from '../../src/engine/engine.js';
import { Sampler, type Sequence } from '../../src/engine/sampler.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../../src/engine/types.js';
import { SessionTurns, type Binding, type EvictionMode } from '../../src/scheduler/session-turns.js';

/** Greedy, without stop tokens or stray turn markers, so generation runs as long as asked and the turns stay as planned. */
export const GREEDY: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1000, logitBias: { 1: -100, 105: -100, 106: -100 } };

/** Folds ids outside a small fixture vocabulary into it (the turn markers 105/106/107 are below any fixture's size). */
export function fold(engine: Engine, ids: number[]): number[] {
  const V = engine.config.vocabSize;
  return ids.map((id) => (id < V ? id : 200 + (id % (V - 296))));
}

/** Chat-templated ids of a system prompt and alternating user/assistant turns, ending with the generation prompt. */
export function promptOf(engine: Engine, system: string, turns: string[]): number[] {
  const messages = [
    { role: 'system' as const, content: system },
    ...turns.map((content, i) => ({ role: i % 2 ? ('assistant' as const) : ('user' as const), content })),
  ];
  return fold(engine, engine.tokenizer.encodeChat(messages, { addGenerationPrompt: true }));
}

/** Ids of `<end_of_turn>` after a reply, a new user turn, and the generation prompt. */
export function nextTurnIds(engine: Engine, user: string): number[] {
  const text = `<end_of_turn>\n<start_of_turn>user\n${user}<end_of_turn>\n<start_of_turn>model\n`;
  return fold(engine, engine.tokenizer.encode(text, { addSpecialTokens: false }));
}

export interface Driven {
  turns: SessionTurns;
  evictions: { kind: string; tokens: number }[];
  sampler: Sampler;
  /** Binds the session to `prompt` (as the scheduler's admission does) and registers its sequence. */
  bind(prompt: number[]): Promise<{ b: Binding; seq: Sequence }>;
}

/**
 * One session on a one-slot SlotManager, in `mode`, on `store` (a Redis store
 * lets a second engine find it); room is made by calling `turns.makeRoom`
 * before a step, as the scheduler does.
 */
export function driveSession(engine: Engine, id: string, mode: EvictionMode, system: string, store: SessionStore = new MemorySessionStore()): Driven {
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
