// The library's public surface (src/index.ts, the package's `main`): each layer
// used only through what it exports, on a fixture model. Breaking an export
// breaks the import or the type check of this file.
import t from 'tap';
import {
  BatchScheduler,
  DEFAULT_SAMPLING,
  Engine,
  MemorySessionStore,
  Metrics,
  SessionTurns,
  SlotManager,
  buildApp,
  closeApp,
  describeConfig,
  engineOptions,
  generate,
  loadConfig,
  startService,
  type Config,
  type EngineOptions,
  type GenerationEvent,
  type MemoryReport,
  type SamplingParams,
  type ServiceState,
} from '../src/index.js';
import { modelDir, reference } from './helpers/fixtures.js';

// The configuration's defaults (an empty environment) with the fixture's shape on top.
const options: EngineOptions = engineOptions(loadConfig({}), { dir: modelDir('gemma3-tiny'), backend: 'wasm', slots: 1, capacity: 64, graphThreads: 1 });
const engine = await Engine.load(options);
t.teardown(() => engine.dispose());

t.test('Engine and generate: greedy tokens equal the Hugging Face reference', async (t) => {
  const c = reference('gemma3-tiny').cases.find((x) => x.name === 'short')!;
  // Ten steps: eight repeats of one token, then the switch to the next (all with clear margins in the reference).
  const steps = 10;
  const params: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: steps, stopTokenIds: [] };
  const ids: number[] = [];
  for await (const e of generate(engine, [{ promptIds: c.input_ids, params }])) {
    t.equal(e.index, 0);
    ids.push(e.output.token);
  }
  t.same(ids, c.greedy_new_ids.slice(0, steps));
  const memory: MemoryReport = engine.memory();
  t.ok(memory.weightsBytes > 0 && memory.kvCacheBytes > 0, 'memory by component');
});

t.test('config, slot manager, session turns, scheduler and the HTTP app wired by hand', async (t) => {
  const config: Config = loadConfig({ MODEL_DIR: modelDir('gemma3-tiny'), REDIS_URL: 'redis://user:secret@127.0.0.1:6379' });
  t.equal(config.model.id, 'gemma3-tiny', 'the model id defaults to the directory name');
  t.match(describeConfig(config), { cache: { redisUrl: /REDACTED/ } }, 'secrets are redacted');
  t.notMatch(JSON.stringify(describeConfig(config)), /secret/);

  const metrics = new Metrics({ defaultMetrics: false });
  const slots = new SlotManager({ slots: engine.slots, store: new MemorySessionStore(), model: engine.modelId });
  const turns = new SessionTurns(engine, slots, { mode: 'shift' });
  const scheduler = new BatchScheduler(engine, turns, { maxBatch: 1, maxQueue: 4, prefillChunk: 32 }, {
    firstToken: (ms) => metrics.observeFirstToken(ms),
    interToken: (ms) => metrics.observeInterToken(ms),
  });
  t.teardown(() => scheduler.shutdown(0));

  // The scheduler alone: a chat request, its events, its session.
  const events: GenerationEvent[] = [];
  const stream = scheduler.submit({
    requestId: 'smoke',
    sessionId: 'smoke-session',
    messages: [{ role: 'user', content: 'Hi' }],
    params: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 3 },
    n: 1,
    signal: new AbortController().signal,
  });
  for await (const e of stream) events.push(e);
  t.match(events.at(-1), { type: 'usage', usage: { completionTokens: 3 } });
  t.match(events.at(-2), { type: 'finish', choice: 0, reason: 'length' });
  t.equal(stream.sessionId, 'smoke-session');
  t.match(await scheduler.session('smoke-session'), { id: 'smoke-session', resident: true });

  // The HTTP app around it.
  const service: ServiceState = { phase: 'ready', scheduler, model: { created: 1_700_000_000, vocabSize: engine.config.vocabSize } };
  const app = await buildApp({ config, service, metrics, logger: false });
  t.teardown(() => closeApp(app));
  const res = await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    payload: { model: config.model.id, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 },
  });
  t.equal(res.statusCode, 200, res.body);
  t.match(res.json(), { object: 'chat.completion', choices: [{ finish_reason: 'length' }], usage: { completion_tokens: 2 } });
  // Two requests: two first tokens, 2 + 1 inter-token gaps, all through the scheduler's observer.
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  t.ok(text.includes('gemma_serve_time_to_first_token_seconds_count 2'), 'time to first token, once per request');
  t.ok(text.includes('gemma_serve_inter_token_latency_seconds_count 3'), 'inter-token latency, between tokens of a choice');

  t.type(startService, 'function', 'startService is exported (run end to end in e2e-service.test.ts)');
});
