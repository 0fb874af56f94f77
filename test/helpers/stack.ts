// A real engine + slot manager + scheduler, wired by the service's buildStack, for tests.
import { MemorySessionStore, OPEN_NAMESPACE, scopedId, type SessionStore } from '../../src/cache/index.js';
import type { Engine } from '../../src/engine/engine.js';
import { DEFAULT_SAMPLING, type SamplingParams } from '../../src/engine/types.js';
import type { SchedulerObserver } from '../../src/scheduler/scheduler.js';
import type { ChatEncoder } from '../../src/model/tokenizer-pool.js';
import type { EvictionMode } from '../../src/scheduler/session-turns.js';
import { buildStack, type Stack as BuiltStack } from '../../src/scheduler/stack.js';
import type { ChatTurn, GenerationUsage } from '../../src/scheduler/types.js';

/** The id the slot manager and the store keep a session's name under (requests without a key share the open namespace). */
export const scoped = (name: string): string => scopedId(OPEN_NAMESPACE, name);

/** The built stack, plus what it reported: each eviction, and the rows of each scheduler step. */
export interface Stack extends BuiltStack {
  evictions: { kind: string; tokens: number }[];
  steps: number[];
}

export function makeStack(
  engine: Engine,
  opts: { store?: SessionStore; mode?: EvictionMode; maxBatch?: number; maxQueue?: number; prefillChunk?: number; observer?: SchedulerObserver; encoder?: ChatEncoder } = {},
): Stack {
  const evictions: { kind: string; tokens: number }[] = [];
  const steps: number[] = [];
  const stack = buildStack(engine, {
    store: opts.store ?? new MemorySessionStore(),
    turns: { mode: opts.mode ?? 'shift', onEvict: (kind, tokens) => evictions.push({ kind, tokens }) },
    scheduler: { maxBatch: opts.maxBatch ?? engine.slots, maxQueue: opts.maxQueue ?? 16, prefillChunk: opts.prefillChunk ?? 64, encoder: opts.encoder },
    observer: { step: (rows) => steps.push(rows), ...opts.observer },
  });
  return { ...stack, evictions, steps };
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
