/**
 * What the routes share: config, metrics and the live service state. The
 * state is a mutable holder because the HTTP server starts before the model
 * has loaded (so /health can say 503): the CLI fills in `scheduler` and
 * `model` and moves `phase` on; routes read it per request.
 */
import fp from 'fastify-plugin';
import type { Config } from '../../config/index.js';
import type { Metrics } from '../metrics.js';
import type { SamplingDefaults } from '../protocol/convert.js';
import type { ChatTurn, Scheduler } from '../scheduler/types.js';
import { ModelLoadingError, ModelUnavailableError } from './errors.js';
import { ShuttingDownError } from '../scheduler/errors.js';

export type ServicePhase = 'loading' | 'ready' | 'draining' | 'failed';

/** Facts about the loaded model the routes need. */
export interface ModelInfo {
  /** Unix seconds when it finished loading (GET /v1/models `created`). */
  created: number;
  vocabSize: number;
  /** Defaults from the model's generation_config.json for fields a request leaves out. */
  samplingDefaults?: Omit<SamplingDefaults, 'maxTokens'>;
}

/** The loaded model's tokenizer as /tokenize and /detokenize use it (large inputs are encoded and decoded on worker threads). */
export interface TokenService {
  /** Tokens a session keeps (CACHE_CAPACITY). */
  maxModelLen: number;
  vocabSize: number;
  bosId: number;
  /** A conversation as /v1/chat/completions renders and encodes it. */
  encodeChat(messages: ChatTurn[], opts: { addGenerationPrompt: boolean; templateKwargs?: Record<string, unknown> }): Promise<number[]>;
  /** Plain text, control strings as text. */
  encodeText(text: string): Promise<number[]>;
  /** Ids to text, special tokens kept. */
  decode(ids: number[]): Promise<string>;
  tokenText(id: number): string;
}

export interface ServiceState {
  phase: ServicePhase;
  /** Set once the engine is loaded; required in phase 'ready'. */
  scheduler?: Scheduler;
  model?: ModelInfo;
  tokens?: TokenService;
}

export interface AppContext {
  config: Config;
  service: ServiceState;
  metrics: Metrics;
}

declare module 'fastify' {
  interface FastifyInstance {
    gemma: AppContext;
  }
  /** Documentation keys the OpenAPI generator copies into openapi.yaml. */
  interface FastifySchema {
    summary?: string;
    /** Left out of openapi.yaml (an alternate spelling of a documented route; @fastify/swagger's key). */
    hide?: boolean;
  }
}

/** The scheduler when the service takes requests, else the 503 explaining why not. */
export function readyScheduler(service: ServiceState): Scheduler {
  if (service.phase === 'draining') throw new ShuttingDownError();
  if (service.phase === 'failed') throw new ModelUnavailableError();
  if (service.phase !== 'ready' || service.scheduler === undefined) throw new ModelLoadingError();
  return service.scheduler;
}

/** The tokenizer when the service takes requests, else the 503 explaining why not. */
export function readyTokens(service: ServiceState): TokenService {
  readyScheduler(service);
  if (!service.tokens) throw new ModelLoadingError();
  return service.tokens;
}

/** Decorates the root instance (fastify-plugin: visible to every route plugin). */
export const contextPlugin = fp<AppContext>(async (app, ctx) => {
  app.decorate('gemma', { config: ctx.config, service: ctx.service, metrics: ctx.metrics });
}, { name: 'gemma-context' });
