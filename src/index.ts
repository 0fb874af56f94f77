/**
 * gemma-serve as a library: the public surface, in the layers a caller would
 * use them. Pick the highest layer that does the job:
 *
 * - `startService` runs the whole server (config from the environment, HTTP,
 *   engine, sessions, scheduler), as the CLI does;
 * - `buildApp` builds the HTTP app around a scheduler you wire yourself;
 * - `BatchScheduler` (with `SessionTurns` and a `SlotManager`) serves chat
 *   requests with continuous batching and rolling per-session caches, no HTTP;
 * - `Engine` plus `generate` is the low-level, stateless loop: token ids in,
 *   sampled tokens out, one fixed batch at a time.
 *
 * Everything else under src/ is internal and may change without notice.
 */

// Engine: load a model, run the sampler loop over token ids.
export {
  Engine,
  engineOptions,
  DEFAULT_MODEL_ID,
  type EngineOptions,
  type EngineTuning,
  type MemoryReport,
  type EngineInfo,
  type KernelChoice,
} from './engine/engine.js';
export { generate, type GenerateRequest, type GenerateEvent } from './engine/sampler-loop.js';
export type { StepOutput } from './engine/sampler.js';
export { DEFAULT_SAMPLING, type SamplingParams, type FinishReason, type TokenLogprob, type TopLogprob } from './engine/types.js';
export type { GemmaTokenizer, ChatMessage } from './model/tokenizer.js';

// Scheduler: continuous batching over chat requests, bound to sessions.
export { BatchScheduler, type SchedulerOptions, type SchedulerObserver } from './scheduler/scheduler.js';
export { SessionTurns, type SessionTurnOptions, type EvictionMode } from './scheduler/session-turns.js';
export { QueueFullError, ShuttingDownError } from './scheduler/errors.js';
export { buildStack, type Stack, type StackOptions } from './scheduler/stack.js';
export type {
  ChatTurn,
  GenerationRequest,
  GenerationEvent,
  GenerationStream,
  GenerationUsage,
  Scheduler,
  SchedulerStats,
  SessionInfo,
} from './scheduler/types.js';

// Cache: which session owns which KV slot, and where session metadata is stored.
export {
  SlotManager,
  SlotsBusyError,
  SessionBusyError,
  MemorySessionStore,
  RedisSessionStore,
  ResilientSessionStore,
  SessionStoreError,
  OPEN_NAMESPACE,
  type SlotManagerOptions,
  type SessionStore,
  type SessionMeta,
  type RedisSessionStoreOptions,
  type ResilientSessionStoreOptions,
  type CacheLogger,
} from './cache/index.js';

// Server: the HTTP app, and the whole service.
export { buildApp, closeApp, type BuildAppOptions } from './server.js';
export { startService, type RunningService } from './service.js';
export type { ServiceState } from './http/service.js';
export { Metrics } from './metrics.js';

// Config: every setting from the environment, validated once.
export { loadConfig, describeConfig, ConfigError, type Config } from '../config/index.js';

// Errors: the base class every error of this package extends (status, type and code as OpenAI's error shape has them).
export { GemmaServeError } from './errors.js';
