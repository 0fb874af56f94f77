/** Builds apps for the HTTP tests with stand-in schedulers (no engine needed). */
import type { FastifyInstance } from 'fastify';
import { loadConfig } from '../config/index.js';
import type { ServiceState } from '../src/http/service.js';
import { Metrics } from '../src/metrics.js';
import type { GenerationEvent, GenerationRequest, GenerationStream, Scheduler, SessionInfo } from '../src/scheduler/types.js';
import { buildApp } from '../src/server.js';

export const MODEL = 'gemma-serve-default';

/** A scheduler that fails the test if any request reaches it. */
export class UnreachableScheduler implements Scheduler {
  submit(req: GenerationRequest): GenerationStream {
    throw new Error(`the scheduler must not be reached (request ${req.requestId})`);
  }
  stats() { return { queueDepth: 0, running: 0, batchSize: 0 }; }
  async session(): Promise<SessionInfo | undefined> { return undefined; }
  async deleteSession(): Promise<boolean> { return false; }
  async shutdown(): Promise<void> {}
}

/** Replays scripted events per request (the script sees the request). */
export class ScriptedScheduler implements Scheduler {
  readonly requests: GenerationRequest[] = [];
  readonly sessions = new Map<string, SessionInfo>();
  constructor(private readonly script: (req: GenerationRequest) => AsyncIterable<GenerationEvent>) {}
  submit(req: GenerationRequest): GenerationStream {
    this.requests.push(req);
    const it = this.script(req);
    return { sessionId: req.sessionId, [Symbol.asyncIterator]: () => it[Symbol.asyncIterator]() };
  }
  stats() { return { queueDepth: 0, running: 0, batchSize: 1 }; }
  async session(id: string) { return this.sessions.get(id); }
  async deleteSession(id: string) { return this.sessions.delete(id); }
  async shutdown(): Promise<void> {}
}

/** Events of one choice generating `pieces`, then usage. */
export async function* reply(pieces: string[], opts: { n?: number; reason?: 'stop' | 'length' } = {}): AsyncGenerator<GenerationEvent> {
  const n = opts.n ?? 1;
  for (let c = 0; c < n; c++) {
    for (const text of pieces) yield { type: 'token', choice: c, text };
    yield { type: 'finish', choice: c, reason: opts.reason ?? 'stop' };
  }
  yield {
    type: 'usage',
    usage: { promptTokens: 10, completionTokens: pieces.length * n, cachedTokens: 4, evictedTokens: 0, promptTokensProcessed: 6 },
  };
}

export async function makeApp(opts: { env?: Record<string, string>; scheduler?: Scheduler; phase?: ServiceState['phase'] } = {}): Promise<{
  app: FastifyInstance; service: ServiceState; metrics: Metrics;
}> {
  const config = loadConfig({ ...opts.env });
  const service: ServiceState = {
    phase: opts.phase ?? 'ready',
    scheduler: opts.scheduler ?? new UnreachableScheduler(),
    model: { created: 1700000000, vocabSize: 262144 },
  };
  const metrics = new Metrics({ defaultMetrics: false });
  const app = await buildApp({ config, service, metrics, logger: false });
  return { app, service, metrics };
}

export const userMsg = (content: unknown = 'Hi') => ({ role: 'user', content });
