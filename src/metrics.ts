/**
 * Prometheus metrics of the whole service, on one Registry per app so tests
 * and several in-process servers never share counters. Each layer updates what
 * it owns through the named methods below (engine: memory, slots, evictions;
 * scheduler: batch steps and the latency histograms, on its one clock; routes:
 * requests, finish reasons, tokens); values that are
 * cheaper to read than to push (queue depth, memory) come from `onScrape`
 * readers run just before each scrape. All names start with `gemma_serve_`;
 * the default Node process metrics keep their standard names so stock
 * dashboards work.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const P = 'gemma_serve_';

export type EvictionKind = 'turn' | 'token' | 'slot';

/** Byte counts by component, as the engine reports them (any subset). */
export interface MemorySample {
  weightsBytes?: number;
  kvCacheBytes?: number;
  transientBytes?: number;
  backendBytes?: number;
  deviceBytesInUse?: number;
  deviceBytesAllocated?: number;
}

export interface TokenCounts {
  prompt?: number;
  generated?: number;
  cached?: number;
  /** Prompt tokens actually prefilled. */
  processed?: number;
  evicted?: number;
}

type ScrapeReader = () => void | Promise<void>;

export class Metrics {
  readonly registry = new Registry();
  private readonly readers: ScrapeReader[] = [];

  // Memory by component (set by the engine, or read at scrape via onScrape).
  readonly weightsBytes = this.gauge('memory_weights_bytes', 'Bytes held by model weights on the backend.');
  readonly kvCacheBytes = this.gauge('memory_kv_cache_bytes', 'Bytes held by the KV cache pool.');
  readonly transientBytes = this.gauge('memory_transient_bytes', 'Bytes held by activations and other per-step tensors.');
  readonly backendBytes = this.gauge('memory_backend_total_bytes', 'Total bytes the tensor backend holds (tf.memory()).');
  // GPU memory (VRAM): only the webgpu backend reports it; 0 on the others.
  readonly gpuBytesInUse = this.gauge('gpu_memory_in_use_bytes', 'GPU memory in buffers holding live tensors (webgpu backend; 0 on backends that do not report device memory).');
  readonly gpuBytesAllocated = this.gauge(
    'gpu_memory_allocated_bytes',
    'GPU memory allocated by the tensor backend, including freed buffers it keeps for reuse (webgpu backend; 0 on backends that do not report device memory).',
  );

  // KV slots and sessions (slot manager).
  readonly slotsTotal = this.gauge('slots_total', 'KV slots in the pool.');
  readonly slotsUsed = this.gauge('slots_used', 'KV slots owned by a session.');
  // Resident only: stored sessions (Redis) would take a keyspace scan per scrape to count.
  readonly sessions = this.gauge('sessions', 'Sessions resident on this instance, i.e. holding a KV slot (each extra choice of a running n > 1 request holds one too); sessions kept only in the session store are not counted.');
  readonly evictions = new Counter({
    name: `${P}evictions_total`,
    help: 'Cache evictions: whole turns, single tokens (a turn longer than the room left), or a session losing its slot.',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly sessionStoreFallbacks = new Counter({
    name: `${P}session_store_fallbacks_total`,
    help: 'Session store operations that failed on Redis and fell back to memory.',
    labelNames: ['operation'] as const,
    registers: [this.registry],
  });

  // Scheduler.
  readonly queueDepth = this.gauge('queue_depth', 'Requests waiting for a batch row.');
  readonly runningRequests = this.gauge('running_requests', 'Requests holding a batch row.');
  readonly batchSize = this.gauge('batch_size', 'Rows in the latest decode step.');
  readonly stepBatchSize = new Histogram({
    name: `${P}step_batch_size`,
    help: 'Rows per decode step (counts every step, so batching shows even between scrapes).',
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });

  // Requests as clients see them.
  readonly requests = new Counter({
    name: `${P}requests_total`,
    help: 'HTTP requests by route and status code.',
    labelNames: ['route', 'status'] as const,
    registers: [this.registry],
  });
  readonly connectionsRefused = new Counter({
    name: `${P}connections_refused_total`,
    help: 'Sockets closed at accept: over MAX_CONNECTIONS (max_connections) or MAX_CONNECTIONS_PER_ADDRESS (per_address).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: `${P}rejected_requests_total`,
    help: 'Requests refused before the scheduler: rate limits (requests, tokens) or load shedding (overloaded).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly finishes = new Counter({
    name: `${P}finished_choices_total`,
    help: 'Completed choices by finish reason (stop, length, cancelled, error).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly timeToFirstToken = new Histogram({
    name: `${P}time_to_first_token_seconds`,
    help: 'From the scheduler accepting a request to its first generated token (queueing and prefill included).',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly interTokenLatency = new Histogram({
    name: `${P}inter_token_latency_seconds`,
    help: 'Time between consecutive tokens of one choice.',
    buckets: [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly promptTokens = this.counter('prompt_tokens_total', 'Prompt tokens of completed requests.');
  readonly generatedTokens = this.counter('generation_tokens_total', 'Tokens generated.');
  readonly cachedTokens = this.counter('cached_prompt_tokens_total', 'Prompt tokens reused from session caches.');
  readonly processedPromptTokens = this.counter('prefill_tokens_total', 'Prompt tokens run through prefill.');
  readonly evictedTokens = this.counter('evicted_tokens_total', 'Tokens dropped by the rolling cache.');

  readonly modelInfo = new Gauge({
    name: `${P}model_info`,
    help: 'The loaded model (value 1), by id and backend.',
    labelNames: ['model', 'backend'] as const,
    registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  private gauge(name: string, help: string): Gauge {
    return new Gauge({ name: `${P}${name}`, help, registers: [this.registry] });
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name: `${P}${name}`, help, registers: [this.registry] });
  }

  setMemory(m: MemorySample): void {
    if (m.weightsBytes !== undefined) this.weightsBytes.set(m.weightsBytes);
    if (m.kvCacheBytes !== undefined) this.kvCacheBytes.set(m.kvCacheBytes);
    if (m.transientBytes !== undefined) this.transientBytes.set(m.transientBytes);
    if (m.backendBytes !== undefined) this.backendBytes.set(m.backendBytes);
    if (m.deviceBytesInUse !== undefined) this.gpuBytesInUse.set(m.deviceBytesInUse);
    if (m.deviceBytesAllocated !== undefined) this.gpuBytesAllocated.set(m.deviceBytesAllocated);
  }

  setSlots(total: number, used: number): void {
    this.slotsTotal.set(total);
    this.slotsUsed.set(used);
  }

  recordEviction(kind: EvictionKind, count = 1): void {
    this.evictions.inc({ kind }, count);
  }

  recordStoreFallback(operation: string): void {
    this.sessionStoreFallbacks.inc({ operation });
  }

  setScheduler(s: { queueDepth: number; running: number; batchSize: number }): void {
    this.queueDepth.set(s.queueDepth);
    this.runningRequests.set(s.running);
    this.batchSize.set(s.batchSize);
  }

  /** One decode step ran with `rows` sequences. */
  observeStep(rows: number): void {
    this.batchSize.set(rows);
    this.stepBatchSize.observe(rows);
  }

  /** A request's first token, `ms` after the scheduler accepted it (the scheduler's clock). */
  observeFirstToken(ms: number): void {
    this.timeToFirstToken.observe(ms / 1000);
  }

  /** `ms` between two consecutive tokens of one choice (the scheduler's clock). */
  observeInterToken(ms: number): void {
    this.interTokenLatency.observe(ms / 1000);
  }

  countTokens(t: TokenCounts): void {
    if (t.prompt) this.promptTokens.inc(t.prompt);
    if (t.generated) this.generatedTokens.inc(t.generated);
    if (t.cached) this.cachedTokens.inc(t.cached);
    if (t.processed) this.processedPromptTokens.inc(t.processed);
    if (t.evicted) this.evictedTokens.inc(t.evicted);
  }

  /** Registers a reader run before each scrape (e.g. `() => metrics.setMemory(engine.memory())`). */
  onScrape(reader: ScrapeReader): void {
    this.readers.push(reader);
  }

  /** The exposition text, after running the scrape readers (a failing reader does not fail the scrape). */
  async scrape(): Promise<{ contentType: string; body: string }> {
    await Promise.allSettled(this.readers.map(async (r) => r()));
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
