/**
 * Records what clients experience of one chat request in the metrics: time to
 * first token (from arrival, so queueing counts), inter-token latency per
 * choice, token counts, and how each choice ended.
 */
import type { Metrics } from '../src/metrics.js';
import type { GenerationEvent } from '../src/scheduler/types.js';

export type Outcome = 'ok' | 'cancelled' | 'error';

export class ChatObserver {
  private firstSeen = false;
  private readonly lastTokenMs: (number | undefined)[];
  private readonly finished: boolean[];

  /** `elapsedMs` reads milliseconds since the request arrived. */
  constructor(private readonly metrics: Metrics, private readonly elapsedMs: () => number, n: number) {
    this.lastTokenMs = Array.from({ length: n }, () => undefined);
    this.finished = Array.from({ length: n }, () => false);
  }

  event(ev: GenerationEvent): void {
    if (ev.type === 'token') {
      const now = this.elapsedMs();
      if (!this.firstSeen) {
        this.firstSeen = true;
        this.metrics.timeToFirstToken.observe(now / 1000);
      }
      const last = this.lastTokenMs[ev.choice];
      if (last !== undefined) this.metrics.interTokenLatency.observe((now - last) / 1000);
      this.lastTokenMs[ev.choice] = now;
      this.metrics.countTokens({ generated: 1 });
    } else if (ev.type === 'finish') {
      this.finished[ev.choice] = true;
      this.metrics.finishes.inc({ reason: ev.reason });
    } else {
      const u = ev.usage;
      this.metrics.countTokens({ prompt: u.promptTokens, cached: u.cachedTokens, processed: u.promptTokensProcessed, evicted: u.evictedTokens });
    }
  }

  /** Choices that never finished are counted as cancelled or failed. */
  end(outcome: Outcome): void {
    if (outcome === 'ok') return;
    this.finished.forEach((done, i) => {
      if (!done) {
        this.finished[i] = true;
        this.metrics.finishes.inc({ reason: outcome === 'cancelled' ? 'cancelled' : 'error' });
      }
    });
  }
}
