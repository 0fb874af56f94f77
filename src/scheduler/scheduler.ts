/**
 * Continuous batching. Requests wait in a bounded queue; between decode
 * steps the loop (1) admits waiting requests while batch rows and KV slots
 * are free, (2) runs one prefill chunk of one admitted prompt, so running
 * streams never stall behind a long prompt for more than a chunk, (3) runs
 * one batched decode step over every row that is decoding, and (4) retires
 * finished or cancelled rows, recording their sessions. Each choice of a
 * request (OpenAI `n`) is one row. The loop yields to the event loop after
 * the prefill chunk and after the decode step, so sockets and probes wait for
 * one of them at most; a large prompt is tokenized off the main thread (by the
 * `encoder`) while its request waits in the queue.
 */
import { randomUUID } from 'node:crypto';
import { OPEN_NAMESPACE, SessionBusyError, SlotsBusyError, nameOf, scopedId } from '../cache/index.js';
import type { Engine } from '../engine/engine.js';
import type { CompiledGrammar } from '../engine/grammar/grammars.js';
import { Sampler, type RequestLimits, type Sequence, type StepOutput } from '../engine/sampler.js';
import { GemmaServeError, InvalidValueError } from '../errors.js';
import type { ChatEncoder } from '../model/tokenizer-pool.js';
import { endsInsideBlock, ReasoningSplitter, type ReasoningPart } from './reasoning.js';
import { EventQueue } from './event-queue.js';
import { EmptyPromptError, PromptTooLongError, QueueFullError, ShuttingDownError, TokenOutsideVocabularyError } from './errors.js';
import type { Binding, SessionTurns } from './session-turns.js';
import type {
  GenerationEvent,
  GenerationRequest,
  GenerationStream,
  GenerationUsage,
  RawPrompt,
  Scheduler,
  SchedulerStats,
  SessionInfo,
} from './types.js';

export interface SchedulerOptions {
  maxBatch: number;
  maxQueue: number;
  prefillChunk: number;
  /** Limits on stop strings and logit_bias entries (config `limits`). */
  requestLimits?: RequestLimits;
  /** Tokenizes the prompts it accepts (the large ones) off the main thread; the rest are tokenized in `submit`. */
  encoder?: ChatEncoder;
}

/**
 * Hooks the metrics layer listens on: the one clock of the latency metrics
 * (the service feeds the Prometheus histograms from here, not from the routes).
 * Times are milliseconds of `performance.now()`.
 */
export interface SchedulerObserver {
  /** A decode step ran `rows` rows in `ms`. */
  step?(rows: number, ms: number): void;
  /**
   * A request's first generated token, `ms` after `submit` accepted it. The
   * clock starts at submit, not at admission, so queueing (waiting for a batch
   * row or a slot) and prefill count: that wait is part of what a client sees
   * before its first token.
   */
  firstToken?(ms: number): void;
  /** `ms` between two consecutive tokens of one choice (row). */
  interToken?(ms: number): void;
  /** A request completed (not cancelled or failed) with this usage. */
  finished?(usage: GenerationUsage): void;
}

interface Row {
  choice: number;
  binding?: Binding;
  seq?: Sequence;
  /** Separates the reply's thinking from its answer (models with thinking markers only). */
  reasoning?: ReasoningSplitter;
  done: boolean;
  lastTokenAt?: number;
}

interface Job {
  req: GenerationRequest;
  /** The scoped id (`<namespace>/<name>`) the request is bound to, once bound. */
  sessionId?: string;
  /** The prompt is being tokenized off the main thread: `promptIds` and `rows` are empty until it is, and admission skips the job. */
  tokenizing: boolean;
  /** The structured output's grammar is being compiled (Engine.grammars); admission skips the job until it is. */
  compiling: boolean;
  grammar?: CompiledGrammar;
  promptIds: number[];
  rows: Row[];
  events: EventQueue<GenerationEvent>;
  cancelled: boolean;
  /** Why the server cancelled it; undefined when the client did (its events just end). */
  failure?: unknown;
  /** When `submit` accepted it: time to first token counts from here, so queueing is included. */
  submittedAt: number;
  firstTokenAt?: number;
}

export class BatchScheduler implements Scheduler {
  private readonly queue: Job[] = [];
  private readonly running: Job[] = [];
  private readonly sampler: Sampler;
  private lastBatch = 0;
  private closing = false;
  private wakeLoop: (() => void) | undefined;
  /** A wake-up arrived while the loop was busy. */
  private woken = false;
  private stopped = false;
  private loopDone: Promise<void>;

  constructor(
    private readonly engine: Engine,
    private readonly turns: SessionTurns,
    private readonly opts: SchedulerOptions,
    private readonly observer: SchedulerObserver = {},
  ) {
    this.sampler = new Sampler(engine, opts.requestLimits);
    this.loopDone = this.loop();
  }

  submit(req: GenerationRequest): GenerationStream {
    if (this.closing) throw new ShuttingDownError();
    if (req.n > this.opts.maxBatch) throw new InvalidValueError(`n must be at most ${this.opts.maxBatch} (MAX_BATCH_SIZE), got ${req.n}`, 'n');
    if (this.queue.length >= this.opts.maxQueue) throw new QueueFullError(this.opts.maxQueue);
    const encodeOpts = { addGenerationPrompt: true, templateKwargs: req.templateKwargs };
    const raw = req.prompt;
    const encoder = raw === undefined && this.opts.encoder?.accepts(req.messages) ? this.opts.encoder : undefined;
    // Small prompts (and raw ones, bounded per prompt by the route) are tokenized here, so their errors are thrown to the caller.
    const prompt = encoder
      ? undefined
      : raw !== undefined
        ? this.prompt(this.rawPromptIds(raw, req.params.maxTokens), req.n, true)
        : this.prompt(this.engine.tokenizer.encodeChat(req.messages, encodeOpts), req.n);
    const job: Job = {
      req,
      tokenizing: prompt === undefined,
      compiling: req.grammar !== undefined,
      promptIds: prompt?.promptIds ?? [],
      rows: prompt?.rows ?? [],
      events: new EventQueue<GenerationEvent>(() => this.cancel(job)),
      cancelled: false,
      submittedAt: performance.now(),
    };
    req.signal.addEventListener('abort', () => this.cancel(job), { once: true });
    this.queue.push(job);
    if (encoder) {
      encoder.encodeChat(req.messages, encodeOpts).then(
        (ids) => this.tokenized(job, () => this.prompt(ids, req.n)),
        (err: unknown) => this.tokenized(job, () => { throw err; }),
      );
    }
    // The grammar compiles beside the tokenizing, outside the loop; a schema it refuses fails the request alone.
    if (req.grammar) {
      const spec = req.grammar;
      this.engine.grammars().then((g) => g.compile(spec)).then(
        (grammar) => this.prepared(job, () => Object.assign(job, { grammar, compiling: false })),
        (err: unknown) => this.prepared(job, () => { throw err; }),
      );
    }
    this.wake();
    const events = job.events;
    const tok = this.engine.tokenizer;
    return {
      get sessionId() {
        return job.sessionId === undefined || raw !== undefined ? undefined : nameOf(job.sessionId);
      },
      get promptText() {
        return raw === undefined ? undefined : 'text' in raw ? raw.text : tok.decode(raw.ids);
      },
      [Symbol.asyncIterator]: () => events[Symbol.asyncIterator](),
    };
  }

  /**
   * A raw prompt's ids: text as the model expects it (BOS, then the text with
   * control strings as characters), ids as given. It must fit the context with
   * room for the reply as SessionTurns plans it, so that nothing of it is evicted.
   */
  private rawPromptIds(raw: RawPrompt, maxTokens: number): number[] {
    const tok = this.engine.tokenizer;
    const capacity = this.engine.capacity;
    const room = Math.max(1, Math.min(maxTokens, Math.floor(capacity / 4)));
    // Text too long to fit whatever its tokens is refused before it is tokenized here, on the main thread.
    if ('text' in raw) {
      const fewest = 1 + Math.ceil(raw.text.length / this.longestToken());
      if (fewest + room > capacity) throw new PromptTooLongError(fewest, room, capacity, true);
    }
    const ids = 'text' in raw ? [tok.bosId, ...tok.encodeText(raw.text)] : [...raw.ids];
    if (ids.length === 0 || ('text' in raw && raw.text === '')) throw new EmptyPromptError();
    if (ids.length + room > capacity) throw new PromptTooLongError(ids.length, room, capacity);
    return ids;
  }

  private longestTokenChars: number | undefined;

  /** Characters of the vocabulary's longest token: text of N characters has at least N / this tokens. */
  private longestToken(): number {
    if (this.longestTokenChars === undefined) {
      const tok = this.engine.tokenizer;
      let longest = 1;
      for (let id = 0; id < tok.vocabSize; id++) longest = Math.max(longest, tok.tokenText(id).length);
      this.longestTokenChars = longest;
    }
    return this.longestTokenChars;
  }

  /** Checks a prompt's ids against the vocabulary and makes the request's rows (a raw prompt's text is never split into thinking). */
  private prompt(promptIds: number[], n: number, raw = false): Pick<Job, 'promptIds' | 'rows'> {
    const tok = this.engine.tokenizer;
    const vocab = this.engine.config.vocabSize;
    for (const id of promptIds) if (id >= vocab) throw new TokenOutsideVocabularyError(id, vocab, raw ? 'prompt' : 'messages');
    // Thinking markers, when the vocabulary has them: a prompt may already leave the model inside a block.
    const markers = raw ? undefined : tok.reasoningMarkers;
    const open = markers !== undefined && endsInsideBlock(promptIds, markers, tok.startOfTurnId);
    const rows = Array.from({ length: n }, (_, choice): Row => ({
      choice,
      done: false,
      ...(markers ? { reasoning: new ReasoningSplitter(markers, { open }) } : {}),
    }));
    return { promptIds, rows };
  }

  /** A prompt tokenized off the main thread is back: the job can be admitted, or fails alone. */
  private tokenized(job: Job, prompt: () => Pick<Job, 'promptIds' | 'rows'>): void {
    job.tokenizing = false;
    this.prepared(job, () => Object.assign(job, prompt()));
  }

  /** Work done before admission (tokenizing, a grammar) is back: `apply` records it, or throws and the job fails alone. */
  private prepared(job: Job, apply: () => void): void {
    // Cancelled, or failed by shutdown, meanwhile: nothing waits for it.
    if (job.cancelled || !this.queue.includes(job)) return;
    try {
      apply();
    } catch (err) {
      this.cancel(job, err);
      return;
    }
    this.wake();
  }

  stats(): SchedulerStats {
    return { queueDepth: this.queue.length, running: this.running.length, batchSize: this.lastBatch };
  }

  async session(name: string, namespace = OPEN_NAMESPACE): Promise<SessionInfo | undefined> {
    const id = scopedId(namespace, name);
    const slot = this.turns.slots.slotOf(id);
    const meta = await this.turns.slots.lookup(id);
    if (!meta) return undefined;
    return {
      id: name,
      resident: slot !== undefined,
      slot: slot ?? null,
      cachedTokens: meta.sinkIds.length + meta.keptIds.length,
      keptTurns: meta.turnStarts.length,
      evictedTokens: meta.evicted,
      createdAt: meta.createdAt,
      lastUsedAt: meta.lastUsedAt,
    };
  }

  async deleteSession(name: string, namespace = OPEN_NAMESPACE): Promise<boolean> {
    const id = scopedId(namespace, name);
    for (let i = 0; i < 200 && this.turns.slots.isBusy(id); i++) await new Promise((r) => setTimeout(r, 25));
    const slot = this.turns.slots.slotOf(id);
    const deleted = await this.turns.slots.delete(id);
    if (slot !== undefined) await this.engine.resetSlot(slot);
    return deleted;
  }

  async shutdown(graceMs: number): Promise<void> {
    this.closing = true;
    for (const job of this.queue.splice(0)) job.events.fail(new ShuttingDownError());
    const deadline = Date.now() + graceMs;
    while (this.running.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    // Still-connected clients must learn their reply was cut short, not see a silent end.
    const cut = new ShuttingDownError(`The server shut down before this request finished (SHUTDOWN_GRACE_MS=${graceMs}).`);
    for (const job of this.running) this.cancel(job, cut);
    this.wake();
    while (this.running.length > 0) await new Promise((r) => setTimeout(r, 10));
    this.stopped = true;
    this.wake();
    await this.loopDone;
  }

  private cancel(job: Job, failure?: unknown): void {
    if (job.cancelled) return;
    job.cancelled = true;
    job.failure = failure;
    const i = this.queue.indexOf(job);
    if (i >= 0) {
      this.queue.splice(i, 1);
      this.endCancelled(job);
    }
    this.wake();
  }

  /** Wakes the loop; a wake-up that arrives while the loop is busy is remembered. */
  private wake(): void {
    this.woken = true;
    const w = this.wakeLoop;
    this.wakeLoop = undefined;
    w?.();
  }

  private activeRows(): number {
    return this.running.reduce((n, j) => n + j.rows.filter((r) => !r.done).length, 0);
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      try {
        this.woken = false;
        await this.admit();
        await this.retire();
        // Both in every round: a decode step skipped for each waiting prompt would stall running streams behind all of them.
        const prefilled = await this.prefillOne();
        // A chunk and a decode step are each a stretch of compute on this thread: let I/O in between them.
        if (prefilled) await yieldToEventLoop();
        const decoded = await this.decodeStep();
        const worked = prefilled || decoded;
        await this.retire();
        if (!worked && !this.stopped && !this.woken) await new Promise<void>((resolve) => (this.wakeLoop = resolve));
        this.woken = false;
        // Let I/O (new requests, disconnects, SSE writes) run between steps.
        await yieldToEventLoop();
      } catch (err) {
        this.failRunning(err);
      }
    }
  }

  /** Step 1: bind queued requests to slots while rows are free. Busy slots or sessions keep a request queued. */
  private async admit(): Promise<void> {
    for (let i = 0; i < this.queue.length; ) {
      const job = this.queue[i];
      if (job.tokenizing || job.compiling) {
        i++;
        continue;
      }
      if (this.activeRows() + job.rows.length > this.opts.maxBatch) return;
      try {
        await this.bindJob(job);
      } catch (err) {
        if (err instanceof SlotsBusyError || err instanceof SessionBusyError) {
          i++;
          continue;
        }
        this.queue.splice(i, 1);
        job.events.fail(err);
        continue;
      }
      this.queue.splice(i, 1);
      this.running.push(job);
    }
  }

  private async bindJob(job: Job): Promise<void> {
    const { req } = job;
    const namespace = req.namespace ?? OPEN_NAMESPACE;
    // A raw prompt is stateless: a fresh id, never matched to a conversation, and no row kept after it.
    const stateless = req.prompt !== undefined;
    const sessionId = stateless ? scopedId(namespace, `cmpl-${randomUUID()}`) : await this.turns.resolve(req.sessionId, job.promptIds, namespace);
    // Every choice needs a slot: wait until all are free rather than bind some and undo them.
    const free = this.turns.slots.size - this.turns.slots.busySlots();
    if (job.rows.length > 1 && free < job.rows.length) throw new SlotsBusyError(this.turns.slots.size);
    const bound: Binding[] = [];
    try {
      for (const row of job.rows) {
        const persistent = !stateless && row.choice === 0;
        const id = persistent ? sessionId : `${sessionId}#${req.requestId}#${row.choice}`;
        const b = await this.turns.bind(id, req.messages, job.promptIds, req.params.maxTokens, persistent, req.templateKwargs);
        bound.push(b);
        row.binding = b;
        row.seq = await this.sampler.add({
          slot: b.slot,
          promptIds: b.promptIds,
          reuseTokens: b.reuse,
          params: { ...req.params, seed: seedFor(req.params.seed, row.choice) },
          ...(job.grammar ? { grammar: job.grammar } : {}),
        });
      }
    } catch (err) {
      for (const b of bound) await this.turns.finish(b, undefined, false);
      for (const row of job.rows) row.seq?.release();
      for (const row of job.rows) Object.assign(row, { binding: undefined, seq: undefined });
      throw err;
    }
    job.sessionId = sessionId;
  }

  /** Step 2: one chunk of one prompt (the oldest admitted). */
  private async prefillOne(): Promise<boolean> {
    for (const job of this.running) {
      if (job.cancelled) continue;
      for (const row of job.rows) {
        if (row.done || !row.seq || row.seq.prefillDone) continue;
        const { output } = await this.sampler.prefill(row.seq, this.opts.prefillChunk);
        if (output) this.emit(job, row, output);
        return true;
      }
    }
    return false;
  }

  /** Step 3: one batched decode step over every decoding row. */
  private async decodeStep(): Promise<boolean> {
    const rows: { job: Job; row: Row }[] = [];
    for (const job of this.running) {
      if (job.cancelled) continue;
      for (const row of job.rows) if (!row.done && row.seq?.prefillDone && row.seq.pending !== undefined) rows.push({ job, row });
    }
    if (rows.length === 0) return false;
    // The rolling cache makes room for each row's next token before the step, never from inside it.
    for (const { row } of rows) await this.turns.makeRoom(row.binding!, row.seq!, 1);
    this.lastBatch = rows.length;
    const t0 = performance.now();
    const outputs = await this.sampler.step(rows.map((r) => r.row.seq as Sequence));
    this.observer.step?.(rows.length, performance.now() - t0);
    rows.forEach(({ job, row }, i) => this.emit(job, row, outputs[i]));
    return true;
  }

  private emit(job: Job, row: Row, out: StepOutput): void {
    const now = performance.now();
    if (job.firstTokenAt === undefined) {
      job.firstTokenAt = now;
      this.observer.firstToken?.(now - job.submittedAt);
    } else if (row.lastTokenAt !== undefined) {
      this.observer.interToken?.(now - row.lastTokenAt);
    }
    row.lastTokenAt = now;
    if (row.reasoning) {
      this.emitSplit(job, row, out);
    } else if (out.text !== '' || out.logprob) {
      job.events.push({ type: 'token', choice: row.choice, text: out.text, logprob: out.logprob });
    }
    if (out.finish) {
      job.events.push({ type: 'finish', choice: row.choice, reason: out.finish });
      row.done = true;
    }
  }

  /** A token of a model with thinking markers: its text as reasoning and/or content parts, the logprob on the first. */
  private emitSplit(job: Job, row: Row, out: StepOutput): void {
    const splitter = row.reasoning!;
    const parts: ReasoningPart[] = splitter.push(out.token, out.text);
    if (out.finish) parts.push(...splitter.flush());
    if (parts.length === 0 && out.logprob) parts.push({ reasoning: splitter.reasoning, text: '' });
    parts.forEach((p, i) => {
      job.events.push({
        type: 'token',
        choice: row.choice,
        text: p.text,
        ...(i === 0 && out.logprob ? { logprob: out.logprob } : {}),
        ...(p.reasoning ? { reasoning: true as const } : {}),
      });
    });
  }

  /** Step 4: rows that finished or were cancelled give their slots back; finished requests get their usage. */
  private async retire(): Promise<void> {
    for (const job of [...this.running]) {
      if (!job.cancelled && !job.rows.every((r) => r.done)) continue;
      for (const row of job.rows) {
        if (!row.binding) continue;
        const seq = row.seq;
        seq?.release();
        // A row cut off mid-prompt leaves a partial cache that its metadata does not describe.
        await this.turns.finish(row.binding, seq, seq !== undefined && seq.prefillDone);
      }
      this.running.splice(this.running.indexOf(job), 1);
      if (job.cancelled) {
        this.endCancelled(job);
        continue;
      }
      const usage = usageOf(job);
      this.observer.finished?.(usage);
      job.events.push({ type: 'usage', usage });
      job.events.end();
    }
  }

  private endCancelled(job: Job): void {
    if (job.failure === undefined) job.events.end();
    else job.events.fail(job.failure);
  }

  private failRunning(err: unknown): void {
    const wrapped = err instanceof GemmaServeError ? err : new GemmaServeError(`generation failed: ${(err as Error)?.message ?? String(err)}`);
    // Failed rows are retired like cancelled ones; without a sequence their slots are reset.
    for (const job of this.running) {
      job.cancelled = true;
      job.events.fail(wrapped);
      for (const row of job.rows) row.seq = undefined;
    }
  }
}

/** Lets pending I/O callbacks (sockets, timers) run before the loop goes on. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** Choice i > 0 of a seeded request gets its own deterministic stream. */
function seedFor(seed: number | undefined, choice: number): number | undefined {
  return seed === undefined || choice === 0 ? seed : seed + choice * 0x9e3779b1;
}

function usageOf(job: Job): GenerationUsage {
  const first = job.rows[0];
  const processed = job.rows.reduce((n, r) => n + (r.binding ? r.binding.promptIds.length - (r.seq?.cachedTokens ?? 0) : 0), 0);
  return {
    promptTokens: job.promptIds.length,
    completionTokens: job.rows.reduce((n, r) => n + (r.seq?.generated.length ?? 0), 0),
    cachedTokens: first.seq?.cachedTokens ?? 0,
    evictedTokens: job.rows.reduce((n, r) => n + (r.binding?.evicted ?? 0), 0),
    promptTokensProcessed: processed,
    ...(first.reasoning ? { reasoningTokens: job.rows.reduce((n, r) => n + (r.reasoning?.reasoningTokens ?? 0), 0) } : {}),
  };
}
