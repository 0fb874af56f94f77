/** Public surface of the rolling KV cache bookkeeping (no tensors; the engine applies these decisions). */

// Eviction planning
export {
  planEviction,
  planPrompt,
  findTurnStarts,
  lastClosedTurnStart,
  sinkLength,
  EvictionImpossibleError,
  START_OF_TURN_ID,
  END_OF_TURN_ID,
  GEMMA3_TURN_MARKERS,
  MIN_SINK,
  type TurnMarkers,
  type Range,
  type CacheLayout,
  type EvictionPlan,
  type PromptPlan,
} from './eviction.js';

// Session metadata
export {
  createSessionMeta,
  sessionFromPrompt,
  appendTokens,
  skipTokens,
  applyEviction,
  truncateMeta,
  computeReuse,
  cacheLength,
  promptPrefixKeys,
  isSessionMeta,
  type SessionMeta,
  type Reuse,
} from './session-meta.js';
export { hashTokens, prefixKey, TokenHasher, type TokenHash } from './hash.js';

// Per-request plan
export { planTurn, type TurnPlan, type TurnPlanOptions } from './turn-plan.js';

// Stores
export {
  MemorySessionStore,
  RedisSessionStore,
  SessionStoreError,
  REDIS_CLIENT_DEFAULTS,
  type SessionStore,
  type CacheLogger,
  type RedisSessionStoreOptions,
} from './session-store.js';
export { ResilientSessionStore, type ResilientSessionStoreOptions, type StoreOp } from './resilient-store.js';

// Namespaces (which credential a session belongs to)
export { OPEN_NAMESPACE, scopedId, nameOf, namespaceOf } from './namespace.js';

// Slots
export {
  SlotManager,
  SlotsBusyError,
  SessionBusyError,
  UnknownSessionError,
  type Acquired,
  type AcquireState,
  type SlotManagerOptions,
} from './slot-manager.js';
