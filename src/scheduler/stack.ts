/**
 * The serving stack over a loaded engine, wired in one place for the service,
 * the tests and the benchmarks:
 *
 *   engine -> SlotManager (which session holds which KV slot; metadata in `store`)
 *          -> SessionTurns (binds each request to a session and its slot, evicts)
 *          -> BatchScheduler (admission, continuous batching).
 *
 * The caller loads the engine and owns the store; what differs between callers
 * (the eviction mode, queue and batch sizes, the hooks metrics listen on) comes
 * in as options.
 */
import { SlotManager, type CacheLogger, type SessionStore } from '../cache/index.js';
import type { Engine } from '../engine/engine.js';
import { BatchScheduler, type SchedulerObserver, type SchedulerOptions } from './scheduler.js';
import { SessionTurns, type SessionTurnOptions } from './session-turns.js';

export interface StackOptions {
  /** Where session metadata lives; closing it stays with the caller. */
  store: SessionStore;
  /** The slot manager's logger (failed store operations). */
  logger?: CacheLogger;
  /** The eviction mode and its hooks. */
  turns: SessionTurnOptions;
  /** Batch rows, queue length, prefill chunk, per-request limits. */
  scheduler: SchedulerOptions;
  /** The scheduler's hooks (step sizes, token latencies). */
  observer?: SchedulerObserver;
}

export interface Stack {
  engine: Engine;
  slots: SlotManager;
  turns: SessionTurns;
  scheduler: BatchScheduler;
}

/** One slot per engine KV slot, sessions stored under the engine's model id, turns split at the tokenizer's markers. */
export function buildStack(engine: Engine, opts: StackOptions): Stack {
  const slots = new SlotManager({
    slots: engine.slots,
    store: opts.store,
    model: engine.modelId,
    logger: opts.logger,
    // Prefix keys split at the loaded tokenizer's own turn starts.
    turnMarkers: engine.tokenizer.turnMarkers,
  });
  const turns = new SessionTurns(engine, slots, opts.turns);
  const scheduler = new BatchScheduler(engine, turns, opts.scheduler, opts.observer);
  return { engine, slots, turns, scheduler };
}
