// A real engine + slot manager + scheduler, as the service wires them, for tests.
import { MemorySessionStore, OPEN_NAMESPACE, scopedId, SlotManager, type SessionStore } from '../../src/cache/index.js';
import type { Engine } from '../../src/engine/engine.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../../src/engine/types.js';
import { BatchScheduler, type SchedulerObserver } from '../../src/scheduler/scheduler.js';
import { SessionTurns, type EvictionMode } from '../../src/scheduler/session-turns.js';
import type { ChatTurn, GenerationUsage } from '../../src/scheduler/types.js';

/** The id the slot manager and the store keep a session's name under (requests without a key share the open namespace). */
export const scoped = (name: string): string => scopedId(OPEN_NAMESPACE, name);

export interface Stack {
  engine: Engine;
  slots: SlotManager;
  turns: SessionTurns;
  scheduler: BatchScheduler;
  evictions: { kind: string; tokens: number }[];
  steps: number[];
}

export function makeStack(
  engine: Engine,
  opts: { store?: SessionStore; mode?: EvictionMode; maxBatch?: number; maxQueue?: number; prefillChunk?: number; observer?: SchedulerObserver } = {},
): Stack {
  const slots = new SlotManager({ slots: engine.slots, store: opts.store ?? new MemorySessionStore(), model: engine.modelId });
  const evictions: { kind: string; tokens: number }[] = [];
  const steps: number[] = [];
  const turns = new SessionTurns(engine, slots, { mode: opts.mode ?? 'shift', onEvict: (kind, tokens) => evictions.push({ kind, tokens }) });
  const scheduler = new BatchScheduler(
    engine,
    turns,
    { maxBatch: opts.maxBatch ?? engine.slots, maxQueue: opts.maxQueue ?? 16, prefillChunk: opts.prefillChunk ?? 64 },
    { step: (rows) => steps.push(rows), ...opts.observer },
  );
  return { engine, slots, turns, scheduler, evictions, steps };
}

export interface ChatResult {
  text: string;
  finish: string;
  usage: GenerationUsage;
  sessionId?: string;
  tokens: number;
}

export async function chat(
  s: Stack,
  messages: ChatTurn[],
  params: Partial<SamplingParams> = {},
  sessionId?: string,
  signal: AbortSignal = new AbortController().signal,
): Promise<ChatResult> {
  const stream = s.scheduler.submit({
    requestId: `req-${Math.random().toString(36).slice(2)}`,
    sessionId,
    messages,
    params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 8, ...params },
    n: 1,
    signal,
  });
  let text = '';
  let finish = '';
  let usage: GenerationUsage | undefined;
  let tokens = 0;
  for await (const e of stream) {
    if (e.type === 'token') {
      text += e.text;
      tokens++;
    } else if (e.type === 'finish') finish = e.reason;
    else usage = e.usage;
  }
  if (!usage) throw new Error('stream ended without usage');
  return { text, finish, usage, sessionId: stream.sessionId, tokens };
}
