/**
 * The public generation API: sequences are added, their prompts prefilled
 * (in chunks, so a scheduler can interleave them with decode steps), then
 * decoded together one token per step. Low-level and batch-agnostic: the
 * scheduler decides which sequences run each step; `generate` in
 * sampler-loop.ts is the simple loop on top.
 *
 * Per step and row: logits (last position only) -> bias/penalties -> top-K
 * on the device -> a token picked in JavaScript -> detokenized text delta ->
 * stop rules. The seed rides in the sequence, so a seeded request gives the
 * same tokens whatever else shares its batch.
 */
import { IncrementalDetokenizer } from './detok.js';
import type { Engine } from './engine.js';
import { createRng, type Rng } from './rng.js';
import { pickToken, requiredK, tokenLogprob, validateSamplingParams, type SamplingLimits } from './sampling.js';
import { StopMatcher } from './stop.js';
import type { RowLogitsInput } from './reduce.js';
import type { FinishReason, SamplingParams, TokenLogprob, TopK } from './types.js';
import type { CompiledGrammar, RowGrammar } from './grammar/grammars.js';

export interface SequenceInit {
  /** KV slot the sequence writes to. */
  slot: number;
  /** The whole prompt (chat-templated ids). */
  promptIds: number[];
  /** Leading prompt tokens already in the slot's cache. */
  reuseTokens?: number;
  params: SamplingParams;
  /** A structured output's grammar (Engine.grammars): every token is one it allows. */
  grammar?: CompiledGrammar;
}

export interface StepOutput {
  token: number;
  /** Text to emit now: never a partial character, never part of a stop string. */
  text: string;
  logprob?: TokenLogprob;
  /** Set on the sequence's last output. */
  finish?: FinishReason;
}

let nextId = 0;

/** One generation in progress. Fields are grouped by lifetime. */
export class Sequence {
  // Fixed at creation.
  readonly id = `seq-${++nextId}`;
  readonly promptIds: number[];
  readonly params: SamplingParams;
  readonly slot: number;
  /** Prompt tokens found in the cache (not recomputed). */
  readonly cachedTokens: number;
  readonly stopIds: Set<number>;

  // Advanced by prefill.
  /** Prompt tokens in the cache so far (cached + prefilled). */
  prefilled: number;

  // Advanced by every sampled token.
  readonly generated: number[] = [];
  readonly counts = new Map<number, number>();
  /** The last sampled token, fed to the model by the next step. */
  pending: number | undefined;
  finished: FinishReason | undefined;
  readonly rng: Rng;
  readonly detok: IncrementalDetokenizer;
  readonly stop: StopMatcher;
  /** The row's grammar matcher (structured outputs); released when the sequence is. */
  grammar: RowGrammar | undefined;

  constructor(init: SequenceInit, engine: Engine) {
    this.promptIds = init.promptIds;
    this.params = init.params;
    this.slot = init.slot;
    // The last prompt token is always run, so its logits exist.
    this.cachedTokens = Math.max(0, Math.min(init.reuseTokens ?? 0, init.promptIds.length - 1));
    this.prefilled = this.cachedTokens;
    this.rng = createRng(init.params.seed);
    const tok = engine.tokenizer;
    this.stopIds = new Set([...engine.config.eosIds, tok.eosId, tok.endOfTurnId, ...init.params.stopTokenIds]);
    this.detok = new IncrementalDetokenizer((ids) => tok.decode(ids, { skipSpecialTokens: true }), init.promptIds.slice(-4));
    this.stop = new StopMatcher(init.params.stop);
  }

  get promptTokens(): number {
    return this.promptIds.length;
  }

  get prefillDone(): boolean {
    return this.prefilled >= this.promptIds.length;
  }

  /** Frees what the sequence holds outside the JS heap (its grammar matcher); call once it is done with. */
  release(): void {
    this.grammar?.dispose();
  }
}

/** Request limits the sampler enforces besides the engine's own (the service passes its configured ones). */
export type RequestLimits = Pick<SamplingLimits, 'maxStopStrings' | 'maxLogitBias'>;

/**
 * Sequences' slots must have room for what a call writes: the caller (the
 * scheduler's rolling cache) makes it before `prefill` and `step`.
 */
export class Sampler {
  constructor(
    readonly engine: Engine,
    private readonly limits: RequestLimits = {},
  ) {}

  /** Registers a sequence; its cache is cut back to the reused prefix. */
  async add(init: SequenceInit): Promise<Sequence> {
    if (init.promptIds.length === 0) throw new Error('a prompt needs at least one token');
    // The engine API checks what it is given; the HTTP layer checks earlier, with the server's own limits.
    validateSamplingParams(init.params, {
      ...this.limits,
      vocabSize: this.engine.config.vocabSize,
      maxTokensLimit: Number.MAX_SAFE_INTEGER,
      topKCap: this.engine.topKCap,
    });
    const seq = new Sequence(init, this.engine);
    const engine = this.engine;
    if (init.grammar) seq.grammar = await (await engine.grammars()).matcher(init.grammar);
    if (engine.slotLength(seq.slot) !== seq.cachedTokens) {
      if (engine.canTruncate(seq.slot, seq.cachedTokens)) await engine.truncateSlot(seq.slot, seq.cachedTokens);
      else throw new Error(`slot ${seq.slot} cannot reuse ${seq.cachedTokens} tokens without a rebuild`);
    }
    return seq;
  }

  /** Prefills up to `maxTokens` more prompt tokens; the last chunk also samples the first token. */
  async prefill(seq: Sequence, maxTokens = Infinity): Promise<{ done: boolean; output?: StepOutput }> {
    const end = Math.min(seq.promptIds.length, seq.prefilled + Math.max(1, maxTokens));
    const chunk = seq.promptIds.slice(seq.prefilled, end);
    const last = end === seq.promptIds.length;
    const top = await this.engine.prefill(seq.slot, chunk, last ? await this.rowInput(seq) : undefined);
    seq.prefilled = end;
    if (!top) return { done: false };
    return { done: true, output: this.accept(seq, top) };
  }

  /** One decode step for sequences whose prompt is in and that have not finished. */
  async step(seqs: Sequence[]): Promise<StepOutput[]> {
    if (seqs.length === 0) return [];
    for (const s of seqs) {
      if (s.pending === undefined || s.finished) throw new Error(`sequence ${s.id} is not ready to decode`);
    }
    const tops = await this.engine.decode(
      seqs.map((s) => s.pending as number),
      seqs.map((s) => s.slot),
      await Promise.all(seqs.map((s) => this.rowInput(s))),
    );
    return seqs.map((s, b) => this.accept(s, tops[b]!));
  }

  private async rowInput(seq: Sequence): Promise<RowLogitsInput> {
    const row: RowLogitsInput = { params: seq.params, counts: seq.counts, k: requiredK(seq.params, this.engine.topKCap) };
    if (seq.grammar) row.mask = await seq.grammar.mask();
    return row;
  }

  /** Picks a token from the row's candidates and applies the stop rules, in their order. */
  private accept(seq: Sequence, candidates: TopK): StepOutput {
    const p = seq.params;
    // Fewer tokens than K may be allowed: the masked ones come back at -inf (or the lowest float) and are dropped.
    const top = seq.grammar ? allowedOnly(candidates) : candidates;
    const index = pickToken(top, p, seq.rng);
    const token = top.ids[index];
    const logprob = p.logprobs ? tokenLogprob(top, index, p.topLogprobs, this.engine.tokenizer) : undefined;
    seq.generated.push(token);
    seq.counts.set(token, (seq.counts.get(token) ?? 0) + 1);
    seq.pending = undefined;
    // The mask allowed the token, so the matcher takes it.
    seq.grammar?.accept(token);

    // Stop 1: an end-of-sequence token; it is not emitted, held-back text is.
    if (seq.stopIds.has(token)) return this.finish(seq, 'stop', seq.stop.push(seq.detok.flush()).text, token, logprob);
    // Stop 2: a stop string in the decoded text; it and what follows are withheld.
    const fed = seq.stop.push(seq.detok.push(token));
    if (fed.stopped) return this.finish(seq, 'stop', fed.text, token, logprob, false);
    // Stop 3: max_tokens.
    if (seq.generated.length >= p.maxTokens) return this.finish(seq, 'length', fed.text + seq.stop.push(seq.detok.flush()).text, token, logprob);
    seq.pending = token;
    return { token, text: fed.text, logprob };
  }

  private finish(seq: Sequence, reason: FinishReason, text: string, token: number, logprob?: TokenLogprob, flush = true): StepOutput {
    seq.finished = reason;
    seq.release();
    const rest = flush ? seq.stop.flush() : '';
    return { token, text: text + rest, logprob, finish: reason };
  }
}

/** The candidates a grammar's mask left in (finite and above the lowest float). */
function allowedOnly(top: TopK): TopK {
  let n = 0;
  while (n < top.logits.length && top.logits[n]! > -1e30) n++;
  return n === top.logits.length ? top : { ...top, ids: top.ids.slice(0, n), logits: top.logits.slice(0, n) };
}
