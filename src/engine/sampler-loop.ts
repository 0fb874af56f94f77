/**
 * The simple sampler loop: a fixed batch of requests, each prefilled, then
 * decoded together until every one has finished. Yields outputs per request
 * as they are produced. The service's scheduler drives `Sampler` directly
 * (requests join and leave between steps); this loop is for the CLI,
 * benchmarks and tests.
 */
import type { Engine } from './engine.js';
import { Sampler, type Sequence, type StepOutput } from './sampler.js';
import type { SamplingParams } from './types.js';

export interface GenerateRequest {
  promptIds: number[];
  params: SamplingParams;
  /** KV slot; defaults to the request's index. The slot's cache is reset. */
  slot?: number;
}

export interface GenerateEvent {
  /** Index of the request in the batch. */
  index: number;
  output: StepOutput;
}

export async function* generate(engine: Engine, requests: GenerateRequest[], prefillChunk = 256): AsyncGenerator<GenerateEvent> {
  const sampler = new Sampler(engine);
  const seqs: Sequence[] = [];
  for (const [i, r] of requests.entries()) {
    const slot = r.slot ?? i;
    await engine.resetSlot(slot);
    seqs.push(await sampler.add({ slot, promptIds: r.promptIds, params: r.params }));
  }
  for (let i = 0; i < seqs.length; i++) {
    for (;;) {
      const { done, output } = await sampler.prefill(seqs[i], prefillChunk);
      if (done) {
        yield { index: i, output: output as StepOutput };
        break;
      }
    }
  }
  for (;;) {
    const running = seqs.filter((s) => !s.finished);
    if (running.length === 0) return;
    const outputs = await sampler.step(running);
    for (let b = 0; b < running.length; b++) yield { index: seqs.indexOf(running[b]), output: outputs[b] };
  }
}
