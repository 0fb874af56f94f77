/**
 * Chat encoding of large conversations off the main thread. Tokenizing a
 * 1 MB prompt takes seconds of CPU; on the main thread that stops every
 * socket, SSE stream and health probe for as long. The pool keeps a few
 * worker threads (./tokenizer-worker.ts), each with its own copy of the same
 * tokenizer, and sends them the conversations of at least `minChars`
 * characters; smaller ones are cheaper to encode in place than to send.
 * Plain text (`encodeText`) and id lists to decode (`decode`, /detokenize)
 * of that size go to them too.
 *
 * A worker returns exactly what `GemmaTokenizer.encodeChat` returns on the
 * main thread (the same files, the same code). Failures stay local: a worker
 * that cannot load makes the pool encode on the main thread instead (logged
 * once); the requests of one that dies are encoded on the main thread, and
 * it is replaced on the next request. An encoding error (a template that rejects the
 * conversation) reaches the request as the error the main thread would throw.
 */
import { Worker } from 'node:worker_threads';
import { GemmaServeError } from '../errors.js';
import type { ChatMessage, ChatRenderOptions, GemmaTokenizer, TokenizerSource } from './tokenizer.js';
import { ChatTemplateError, TokenizerFileError } from './tokenizer-errors.js';

/** What the worker gets at start. */
export interface WorkerData {
  source: TokenizerSource;
  /** The worker thread's nice value (Linux; 0 = the process's own priority). */
  nice: number;
}

/**
 * Main thread -> worker: a conversation to render and encode, plain text to
 * encode with control strings as text (`encodeText`), or ids to decode.
 */
export type WorkerRequest =
  | { id: number; messages: ChatMessage[]; opts: ChatRenderOptions }
  | { id: number; text: string }
  | { id: number; decode: Int32Array<ArrayBuffer>; skipSpecialTokens: boolean };

interface ErrorShape {
  name: string;
  message: string;
}

/** Worker -> main thread: loaded (or not), then one reply per request. */
export type WorkerReply =
  | { ready: true }
  | { ready: false; error: ErrorShape }
  | { id: number; ids: Int32Array }
  | { id: number; text: string }
  | { id: number; error: ErrorShape };

/** The pool was closed (the service is stopping) while a request waited on it: retryable elsewhere. */
export class TokenizerWorkerError extends GemmaServeError {
  constructor(message: string) {
    super(`tokenizer worker failed: ${message}`, { status: 503, code: 'tokenizer_unavailable' });
  }
}

/** Encodes conversations; where it runs is the implementation's business. */
export interface ChatEncoder {
  /** Whether this encoder wants the conversation (else the caller encodes it on its own thread). */
  accepts(messages: readonly ChatMessage[]): boolean;
  /** The ids `GemmaTokenizer.encodeChat(messages, opts)` returns. */
  encodeChat(messages: ChatMessage[], opts?: ChatRenderOptions): Promise<number[]>;
}

export interface TokenizerPoolOptions {
  /** Worker threads; 0 leaves every conversation to the main thread. */
  workers: number;
  /** Conversations with at least this many characters of content go to a worker (so do texts of that many characters and id lists of that many ids). */
  minChars: number;
  /**
   * The workers' nice value on Linux (0 = the process's priority): above 0
   * they yield the CPU to the threads that compute and serve, so a prompt
   * being tokenized slows running streams less and is itself tokenized slower.
   */
  nice?: number;
  /** Where start failures and crashes are reported. */
  log?: { warn(obj: object, msg: string): void };
}

interface Pending {
  resolve: (value: number[] | string) => void;
  reject: (err: unknown) => void;
}

interface PoolWorker {
  worker: Worker;
  /** Resolves true once the tokenizer is loaded, false if it could not be. */
  ready: Promise<boolean>;
  pending: Map<number, Pending>;
}


/** Characters a conversation carries: its message text (the part tokenizing time grows with). */
export function conversationChars(messages: readonly ChatMessage[]): number {
  let n = 0;
  for (const m of messages) {
    const c = m.content;
    if (typeof c === 'string') n += c.length;
    else if (Array.isArray(c)) for (const p of c) if (p !== null && typeof p === 'object' && typeof p.text === 'string') n += p.text.length;
  }
  return n;
}

function workerUrl(): URL {
  // Under the test runner this module is TypeScript, loaded by its loader, which workers inherit.
  return new URL(import.meta.url.endsWith('.ts') ? './tokenizer-worker.ts' : './tokenizer-worker.js', import.meta.url);
}

function fromShape(e: ErrorShape): Error {
  if (e.name === 'ChatTemplateError') return new ChatTemplateError(e.message);
  if (e.name === 'TokenizerFileError') return new TokenizerFileError(e.message, '');
  return new TokenizerWorkerError(`${e.name}: ${e.message}`);
}

export class TokenizerPool implements ChatEncoder {
  private readonly workers: (PoolWorker | undefined)[];
  private nextId = 1;
  /** A worker could not load the tokenizer: everything is encoded on the main thread from then on. */
  private broken = false;
  private closed = false;

  /** Starts the workers (they load in the background); `local` is the main thread's tokenizer, the fallback. */
  constructor(private readonly local: GemmaTokenizer, private readonly opts: TokenizerPoolOptions) {
    this.workers = Array.from({ length: Math.max(0, opts.workers) }, () => undefined);
    for (let i = 0; i < this.workers.length; i++) this.workers[i] = this.spawn(i);
  }

  accepts(messages: readonly ChatMessage[]): boolean {
    return !this.closed && !this.broken && this.workers.length > 0 && conversationChars(messages) >= this.opts.minChars;
  }

  async encodeChat(messages: ChatMessage[], opts: ChatRenderOptions = {}): Promise<number[]> {
    return this.ask((id) => ({ id, messages, opts }), () => this.local.encodeChat(messages, opts));
  }

  /**
   * The ids `GemmaTokenizer.encodeText(text)` returns (control strings as the
   * characters they are), on a worker when the text has at least `minChars`
   * characters.
   */
  async encodeText(text: string): Promise<number[]> {
    if (this.workers.length === 0 || text.length < this.opts.minChars) return this.local.encodeText(text);
    return this.ask((id) => ({ id, text }), () => this.local.encodeText(text));
  }

  /**
   * The text `GemmaTokenizer.decode(ids, opts)` returns, on a worker when
   * there are at least `minChars` ids (half a million ids take a third of a
   * second to decode).
   */
  async decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): Promise<string> {
    if (this.workers.length === 0 || ids.length < this.opts.minChars) return this.local.decode(ids, opts);
    return this.ask((id) => ({ id, decode: Int32Array.from(ids), skipSpecialTokens: opts.skipSpecialTokens ?? true }), () => this.local.decode(ids, opts));
  }

  /** Sends a request to a worker; `here` answers it on this thread when no worker can. */
  private async ask<T extends number[] | string>(request: (id: number) => WorkerRequest, here: () => T): Promise<T> {
    if (this.closed) throw new TokenizerWorkerError('the tokenizer pool is closed');
    const w = this.pick();
    if (!w || !(await w.ready) || this.broken) return here();
    if (this.closed) throw new TokenizerWorkerError('the tokenizer pool is closed');
    const id = this.nextId++;
    try {
      return await new Promise<T>((resolve, reject) => {
        w.pending.set(id, { resolve: resolve as Pending['resolve'], reject });
        try {
          const r = request(id);
          w.worker.postMessage(r, 'decode' in r ? [r.decode.buffer] : []);
        } catch (err) {
          w.pending.delete(id);
          reject(new TokenizerWorkerError((err as Error)?.message ?? String(err)));
        }
      });
    } catch (err) {
      // A worker that died takes nothing with it: its requests are encoded here instead.
      if (err instanceof TokenizerWorkerError && !this.closed) return here();
      throw err;
    }
  }

  /** Stops the workers; requests they still hold fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = this.workers.splice(0).filter((w): w is PoolWorker => w !== undefined);
    await Promise.all(all.map((w) => w.worker.terminate().catch(() => undefined)));
    for (const w of all) this.failPending(w, new TokenizerWorkerError('the tokenizer pool was closed'));
  }

  /** The least busy worker, a dead one replaced first. */
  private pick(): PoolWorker | undefined {
    let best: PoolWorker | undefined;
    for (let i = 0; i < this.workers.length; i++) {
      const w = (this.workers[i] ??= this.spawn(i));
      if (!best || w.pending.size < best.pending.size) best = w;
    }
    return best;
  }

  private spawn(index: number): PoolWorker {
    const pending = new Map<number, Pending>();
    let settleReady!: (ok: boolean) => void;
    const ready = new Promise<boolean>((r) => (settleReady = r));
    const worker = new Worker(workerUrl(), { workerData: { source: this.local.source, nice: this.opts.nice ?? 0 } satisfies WorkerData });
    // The pool must never keep the process alive, nor its workers' failures take it down.
    worker.unref();
    const self: PoolWorker = { worker, ready, pending };
    worker.on('message', (m: WorkerReply) => {
      if ('ready' in m) {
        if (!m.ready) this.markBroken(`${m.error.name}: ${m.error.message}`);
        settleReady(m.ready);
        return;
      }
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if ('ids' in m) p.resolve(Array.from(m.ids));
      else if ('text' in m) p.resolve(m.text);
      else p.reject(fromShape(m.error));
    });
    worker.on('error', (err) => {
      this.opts.log?.warn({ err, worker: index }, 'tokenizer worker failed');
    });
    worker.on('exit', (code) => {
      if (this.workers[index] === self) this.workers[index] = undefined;
      settleReady(false);
      if (!this.closed) this.failPending(self, new TokenizerWorkerError(`worker exited with code ${code}`));
    });
    void ready.then((ok) => {
      if (!ok && !this.closed) this.markBroken('the worker stopped before the tokenizer loaded');
    });
    return self;
  }

  private markBroken(why: string): void {
    if (this.broken) return;
    this.broken = true;
    this.opts.log?.warn({ why }, 'tokenizer workers unavailable: large prompts are tokenized on the main thread');
  }

  private failPending(w: PoolWorker, err: Error): void {
    for (const p of w.pending.values()) p.reject(err);
    w.pending.clear();
  }
}
