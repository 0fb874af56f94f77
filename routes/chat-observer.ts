/**
 * Records what only the route knows of one chat request in the metrics: token
 * counts as the client received them, and how each choice ended (its finish
 * reason, or cancelled or failed when the stream stopped first). Latencies
 * (time to first token, inter-token) are not measured here: the scheduler's
 * observer is their one clock (see SchedulerObserver, wired in src/service.ts).
 * It also tells the route, once, how the request ended and what it used
 * (`onEnd`), which settles the request's token rate-limit reservation.
 */
import type { Metrics } from '../src/metrics.js';
import type { GenerationEvent, GenerationUsage } from '../src/scheduler/types.js';

export type Outcome = 'ok' | 'cancelled' | 'error';

/** How a request ended: its usage when it completed, and the token events the client got. */
export type EndListener = (usage: GenerationUsage | undefined, tokenEvents: number) => void;

export class ChatObserver {
  private readonly finished: boolean[];
  private usage: GenerationUsage | undefined;
  private tokenEvents = 0;
  private ended = false;

  constructor(private readonly metrics: Metrics, n: number, private readonly onEnd?: EndListener) {
    this.finished = Array.from({ length: n }, () => false);
  }

  event(ev: GenerationEvent): void {
    if (ev.type === 'token') {
      this.tokenEvents++;
      this.metrics.countTokens({ generated: 1 });
    } else if (ev.type === 'finish') {
      this.finished[ev.choice] = true;
      this.metrics.finishes.inc({ reason: ev.reason });
    } else {
      const u = ev.usage;
      this.usage = u;
      this.metrics.countTokens({ prompt: u.promptTokens, cached: u.cachedTokens, processed: u.promptTokensProcessed, evicted: u.evictedTokens });
    }
  }

  /** Choices that never finished are counted as cancelled or failed. */
  end(outcome: Outcome): void {
    if (!this.ended) {
      this.ended = true;
      this.onEnd?.(this.usage, this.tokenEvents);
    }
    if (outcome === 'ok') return;
    this.finished.forEach((done, i) => {
      if (!done) {
        this.finished[i] = true;
        this.metrics.finishes.inc({ reason: outcome === 'cancelled' ? 'cancelled' : 'error' });
      }
    });
  }
}
