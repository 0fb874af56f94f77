/**
 * `npm run bench:compare`: our engine against llama.cpp (node-llama-cpp
 * 3.21.1, prebuilt, 2 threads) on the same model, a preset written by
 * make-model (Gemma 3 `270m` unless asked otherwise) and converted to GGUF by
 * bench/peers/gguf.ts (Gemma 4: peers/gguf-gemma4.ts), with the same
 * prompt ids on both sides: prefill of a 512-token prompt, greedy decode at
 * batch 1, and aggregate greedy decode of 8 concurrent sequences. It also
 * checks that both compute the same function (`parity`: top-10 next tokens of
 * a few prompts, greedy tokens, tokenizer ids) and times the first token of a
 * ~512-token chat prompt through the HTTP service against the engine's own
 * prefill of the same ids. Prints one JSON object.
 *
 * node-llama-cpp is installed at run time into a scratch folder, never into
 * the project, and llama.cpp runs in a child process (peers/llamacpp-child.ts)
 * first; our side runs afterwards in this process.
 *
 * Options: --arch gemma3|gemma4 (gemma3), --preset: gemma3 tiny|270m|1b
 * (270m), gemma4 tiny|e2b|e4b|26b-a4b|31b (e2b), --dtype BF16|F32 (the
 * checkpoint's storage, BF16 as released checkpoints), --gguf f32|f16|bf16
 * (llama.cpp's storage: f32 for Gemma 3 and for tiny; bf16 for the other
 * Gemma 4 presets, which holds a BF16 checkpoint exactly, at half f32's
 * bytes, and which llama.cpp's CPU backend multiplies natively on AVX512-BF16),
 * --parity-kv f16|f32 (llama.cpp's K/V cache for the parity and greedy runs:
 * f16 with flash attention 'auto', its defaults and what the timings use, or
 * f32 with flash attention off, which takes llama.cpp's K/V rounding out of
 * the comparison; Gemma 4's unscaled scores over normed q and k magnify it),
 * --steps N decode steps (64),
 * --reps N timed runs per figure, the median is reported (3),
 * --parity-only, --out FILE (also write the JSON there).
 * Environment: BACKEND (auto), CPU_KERNELS and CPU_THREADS (as the service), BENCH_PEER_DIR (scratch folder, default
 * gemma-serve-peer-llamacpp under GEMMA_SERVE_CACHE_DIR, else the OS temp dir), BENCH_MODEL_DIR (see model-dir.ts).
 *
 * The GGUF is converted once into BENCH_PEER_DIR and reused while it is newer
 * than the checkpoint.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { request } from 'undici';
import { loadConfig } from '../config/index.js';
import { Engine, engineParts } from '../src/engine/engine.js';
import { Sampler, type Sequence } from '../src/engine/sampler.js';
import { DEFAULT_SAMPLING } from '../src/engine/types.js';
import { loadModelConfig, type ModelConfig } from '../src/model/hf-config.js';
import { parameterCount, PRESETS, type Architecture, type PresetName } from '../src/model/make-model.js';
import { GEMMA4_PRESETS, gemma4ParameterCounts, type Gemma4PresetName } from '../src/model/make-model-gemma4.js';
import type { WritableDType } from '../src/model/safetensors.js';
import { GemmaTokenizer, type ChatMessage } from '../src/model/tokenizer.js';
import { startService } from '../src/service.js';
import { benchEngineOptions, benchModelDir, promptIds } from './model-dir.js';
import { convertToGguf } from './peers/convert.js';
import { GGUF_TYPES, type GgufType } from './peers/gguf.js';
import type { LlamaJob, LlamaResult } from './peers/llamacpp-child.js';

// The oldest release whose llama.cpp ("v0.4.0") has both gemma3 and gemma4.
const NLC_VERSION = '3.21.1';
/** Bumped when the converters' output changes, so cached GGUF files are rewritten. */
const GGUF_REVISION = 1;
const THREADS = 2;
const TOP_K = 10;
const GREEDY_TOKENS = 16;
const SLOTS = 8;
const CAPACITY = 1024;
const PREFILL_TOKENS = 512;
const DECODE_PROMPT_TOKENS = 64;
const greedy = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1 << 30 };
const TEXTS = [
  'Hello world, this is a test.',
  'The quick brown fox jumps over the lazy dog.',
  '  two leading spaces, a\ttab and\nnew lines\n\n',
  'Unicode: naïve café, 東京タワー, Ελληνικά, 🙂👍 and 1234567.89',
  'def f(x):\n    return x ** 2  # squared',
];
const WORDS = ('the harbour town wakes slowly while fishing boats return with the tide gulls argue over the nets ' +
  'and the baker opens his shutters to the smell of fresh bread').split(' ');

const now = () => performance.now();
const log = (msg: string) => process.stderr.write(`[compare] ${msg}\n`);
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Installs node-llama-cpp into `dir` unless that version is there; returns the install time (null when none). */
function ensureNodeLlamaCpp(dir: string): number | null {
  const pkg = join(dir, 'node_modules', 'node-llama-cpp', 'package.json');
  const have = () => existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version === NLC_VERSION;
  if (have()) return null;
  log(`installing node-llama-cpp@${NLC_VERSION} into ${dir}`);
  const t = now();
  // npm's output goes to stderr so that stdout stays one JSON object; the
  // prebuilt llama.cpp binaries come as optional npm packages.
  const r = spawnSync('npm', ['install', '--prefix', dir, '--no-audit', '--no-fund', '--save-exact', `node-llama-cpp@${NLC_VERSION}`],
    { stdio: ['ignore', 2, 2] });
  if (r.status !== 0 || !have()) throw new Error(`npm install node-llama-cpp@${NLC_VERSION} into ${dir} failed (${r.error?.message ?? `exit ${r.status}`})`);
  return now() - t;
}

async function runLlama(job: LlamaJob, scratch: string): Promise<LlamaResult> {
  const jobFile = join(scratch, `job-${process.pid}.json`);
  await writeFile(jobFile, JSON.stringify(job));
  const child = spawn(process.execPath, [fileURLToPath(new URL('./peers/llamacpp-child.js', import.meta.url)), jobFile],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const code = await new Promise<number | null>((res, rej) => child.on('error', rej).on('close', res));
  await rm(jobFile, { force: true });
  if (code !== 0) throw new Error(`llama.cpp child exited with ${code}`);
  return JSON.parse(out.trim().split('\n').at(-1)!) as LlamaResult;
}

/**
 * Keeps a row decoding after it sampled an end token: llama.cpp's side
 * decodes on past them too, so both do the same number of forwards.
 */
function rearm(seq: Sequence): void {
  if (seq.finished) {
    seq.finished = undefined;
    seq.pending = seq.generated.at(-1);
  }
}

/** Prefills `prompts` into slots 0.. and times `steps` batched decode steps. */
async function decodeRun(engine: Engine, sampler: Sampler, prompts: number[][], steps: number): Promise<{ ms: number; tokens: number[] }> {
  const seqs: Sequence[] = [];
  for (const [b, p] of prompts.entries()) {
    await engine.resetSlot(b);
    seqs.push(await sampler.add({ slot: b, promptIds: p, params: greedy }));
  }
  for (const s of seqs) {
    await sampler.prefill(s);
    rearm(s);
  }
  const t = now();
  for (let i = 0; i < steps; i++) {
    await sampler.step(seqs);
    seqs.forEach(rearm);
  }
  return { ms: now() - t, tokens: seqs[0]!.generated.slice() };
}

/** Times prefilling `ids` into slot 0 in chunks of `chunk`, up to and including the first sampled token. */
async function prefillRun(engine: Engine, sampler: Sampler, ids: number[], chunk = Infinity): Promise<number> {
  await engine.resetSlot(0);
  const seq = await sampler.add({ slot: 0, promptIds: ids, params: greedy });
  const t = now();
  while (!seq.prefillDone) await sampler.prefill(seq, chunk);
  return now() - t;
}

/** A one-message chat, distinct per `i` (the service reuses cached prompt prefixes), templated to at most `target` tokens. */
function chatPrompt(tok: GemmaTokenizer, i: number, target: number): { messages: ChatMessage[]; ids: number[] } {
  const make = (k: number): ChatMessage[] => [
    { role: 'user', content: `Request ${i}: ${Array.from({ length: k }, (_, j) => WORDS[(j * 7 + i) % WORDS.length]).join(' ')}` },
  ];
  const len = (k: number) => tok.encodeChat(make(k), { addGenerationPrompt: true }).length;
  let lo = 1;
  let hi = target;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (len(mid) <= target) lo = mid;
    else hi = mid - 1;
  }
  return { messages: make(lo), ids: tok.encodeChat(make(lo), { addGenerationPrompt: true }) };
}

/** Streams one chat completion; returns the time to the first token (or finish) chunk and the prompt's token count. */
async function streamOnce(url: string, model: string, messages: ChatMessage[]): Promise<{ ttftMs: number; promptTokens: number }> {
  const t = now();
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages, max_tokens: 1, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${await res.body.text()}`);
  let ttftMs: number | undefined;
  let promptTokens = -1;
  let buf = '';
  const utf8 = new TextDecoder();
  for await (const chunk of res.body) {
    buf += utf8.decode(chunk as Buffer, { stream: true });
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!frame.startsWith('data: ') || frame === 'data: [DONE]') continue;
      const j = JSON.parse(frame.slice(6)) as {
        error?: unknown;
        choices?: { delta?: { content?: string }; finish_reason?: string | null }[];
        usage?: { prompt_tokens: number };
      };
      if (j.error) throw new Error(`stream error: ${JSON.stringify(j.error)}`);
      const c = j.choices?.[0];
      if (ttftMs === undefined && c && ((c.delta?.content ?? '') !== '' || c.finish_reason)) ttftMs = now() - t;
      if (j.usage) promptTokens = j.usage.prompt_tokens;
    }
  }
  if (ttftMs === undefined) throw new Error('the stream carried no token');
  return { ttftMs, promptTokens };
}

/** Threads our engine computes on: the wasm backend's own (1 under Node) plus the column-split worker. */
/** Threads that run our linear layers: the native kernels' pool, or wasm plus its worker. */
async function engineThreads(engine: Engine): Promise<number | null> {
  if (engine.pathName === 'native') return loadConfig(process.env).model.cpuThreads;
  if (engine.backend.name !== 'wasm') return null;
  return (await import('@tensorflow/tfjs-backend-wasm')).getThreadsCount() + (engine.memory().workerBytes !== undefined ? 1 : 0);
}

/** The model both sides run (every preset's KV-shared layers are ones llama.cpp maps as transformers does; the converter refuses others). */
function peerModelDir(arch: Architecture, preset: string, dtype: WritableDType): Promise<string> {
  return arch === 'gemma3' ? benchModelDir(preset as PresetName, dtype) : benchModelDir(preset as Gemma4PresetName, dtype, arch);
}

/** Converts `dir` to `file` unless a GGUF newer than the checkpoint is there; returns its size. */
async function cachedGguf(dir: string, file: string, type: GgufType): Promise<{ bytes: number; cached: boolean }> {
  const newest = Math.max(...['config.json', 'model.safetensors', 'tokenizer.json'].filter((f) => existsSync(join(dir, f))).map((f) => statSync(join(dir, f)).mtimeMs));
  if (existsSync(file) && statSync(file).mtimeMs > newest) return { bytes: statSync(file).size, cached: true };
  return { bytes: (await convertToGguf(dir, file, type)).bytes, cached: false };
}

/** Shape figures for meta.model. */
function modelMeta(arch: Architecture, preset: string, cfg: ModelConfig): Record<string, unknown> {
  const common = {
    arch, preset, layers: cfg.numLayers, hidden: cfg.hiddenSize, heads: cfg.numHeads, kv_heads: cfg.numKvHeads, head_dim: cfg.headDim,
    intermediate: cfg.intermediateSize, vocab: cfg.vocabSize, sliding_window: cfg.slidingWindow,
  };
  if (arch === 'gemma3') return { ...common, parameters: parameterCount(PRESETS[preset as PresetName]) };
  const g = cfg.gemma4!;
  const counts = gemma4ParameterCounts(GEMMA4_PRESETS[preset as Gemma4PresetName]);
  return {
    ...common, global_head_dim: g.typeHeadDim.global, kv_shared_layers: g.layers.filter((s, l) => s.kvSource !== l).length,
    per_layer_input: g.perLayerInputSize, experts: g.moe, parameters: counts.total, active_parameters: counts.active,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      arch: { type: 'string', default: 'gemma3' },
      preset: { type: 'string' },
      dtype: { type: 'string', default: 'BF16' },
      gguf: { type: 'string' },
      'parity-kv': { type: 'string', default: 'f16' },
      steps: { type: 'string', default: '64' },
      reps: { type: 'string', default: '3' },
      'parity-only': { type: 'boolean', default: false },
      out: { type: 'string' },
    },
  });
  const arch = values.arch as Architecture;
  if (arch !== 'gemma3' && arch !== 'gemma4') throw new Error('--arch must be gemma3 or gemma4');
  const presets = Object.keys(arch === 'gemma4' ? GEMMA4_PRESETS : PRESETS);
  const preset = values.preset ?? (arch === 'gemma4' ? 'e2b' : '270m');
  if (!presets.includes(preset)) throw new Error(`--preset must be one of ${presets.join(', ')} for ${arch}`);
  const ggufType = (values.gguf ?? (arch === 'gemma4' && preset !== 'tiny' ? 'bf16' : 'f32')) as GgufType;
  if (!GGUF_TYPES.includes(ggufType)) throw new Error(`--gguf must be one of ${GGUF_TYPES.join(', ')}`);
  const parityKv = values['parity-kv'];
  if (parityKv !== 'f16' && parityKv !== 'f32') throw new Error('--parity-kv must be f16 or f32');
  const steps = Number(values.steps);
  const reps = Number(values.reps);
  if (!(Number.isInteger(steps) && steps > 0 && Number.isInteger(reps) && reps > 0)) throw new Error('--steps and --reps must be positive integers');
  const bench = !values['parity-only'];
  const started = now();
  const phases: Record<string, number> = {};
  const phase = async <T>(name: string, f: () => Promise<T> | T): Promise<T> => {
    log(name);
    const t = now();
    const r = await f();
    phases[name] = round((now() - t) / 1000, 1);
    return r;
  };

  const dtype = values.dtype as 'BF16' | 'F32';
  if (dtype !== 'BF16' && dtype !== 'F32') throw new Error('--dtype must be BF16 or F32');
  const dir = await phase('model', () => peerModelDir(arch, preset, dtype));
  const cfg = await loadModelConfig(dir);
  const scratch = process.env.BENCH_PEER_DIR ?? join(loadConfig(process.env).model.cacheDir, 'gemma-serve-peer-llamacpp');
  await mkdir(scratch, { recursive: true });
  const installMs = await phase('install', () => ensureNodeLlamaCpp(scratch));
  const ggufFile = join(scratch, `${basename(dir)}-${ggufType}.r${GGUF_REVISION}.gguf`);
  const gguf = await phase('convert', () => cachedGguf(dir, ggufFile, ggufType));

  const tok = await GemmaTokenizer.fromModelDir(dir);
  const decodePrompts = Array.from({ length: SLOTS }, (_, b) => promptIds(DECODE_PROMPT_TOKENS, b + 2));
  const parityPrompts = [
    [cfg.bosId, ...tok.encode('The capital of France is Paris, and the capital of Italy is', { addSpecialTokens: false })],
    promptIds(DECODE_PROMPT_TOKENS, 11),
    // Longer than the sliding window, so the local layers' masking is compared too.
    promptIds(cfg.slidingWindow + 88, 12),
  ];
  const job: LlamaJob = {
    nlcDir: scratch, modelPath: ggufFile, threads: THREADS, bench, prefillPrompt: promptIds(PREFILL_TOKENS), decodePrompts, steps, reps,
    contextSize: CAPACITY, parityPrompts, topK: TOP_K, greedyTokens: GREEDY_TOKENS, texts: TEXTS,
    ...(parityKv === 'f32' ? { parityKv: { type: 'F32', flashAttention: false } } : {}),
  };
  const llama = await phase('llamacpp', () => runLlama(job, scratch));

  const engine = await phase('load', () => Engine.load(benchEngineOptions(dir, { slots: SLOTS, capacity: CAPACITY, maxBatchSize: SLOTS, prefillChunk: PREFILL_TOKENS })));
  const sampler = new Sampler(engine);

  const parity = await phase('parity', async () => {
    const prompts = parityPrompts.map((p, i) => {
      const { values: v, indices } = tf.tidy(() => tf.topk(engineParts(engine).path.forward([p]), TOP_K));
      const ours = Array.from(indices.dataSync()).map((id, k): [number, number] => [id, v.dataSync()[k]!]);
      tf.dispose([v, indices]);
      const theirs = llama.parity[i]!;
      // llama.cpp reports probabilities, so logits compare relative to each side's top one.
      const rel = (xs: [number, number][]) => new Map(xs.map(([id, x]) => [id, x - xs[0]![1]]));
      const a = rel(ours);
      const b = rel(theirs);
      const common = [...b.keys()].filter((id) => a.has(id));
      return {
        tokens: p.length,
        top1_match: ours[0]![0] === theirs[0]![0],
        same_top_k_order: ours.map((x) => x[0]).join() === theirs.map((x) => x[0]).join(),
        common_in_top_k: common.length,
        max_logit_diff: round(Math.max(...common.map((id) => Math.abs(a.get(id)! - b.get(id)!))), 5),
        ours_top: ours.map((x) => x[0]),
        llamacpp_top: theirs.map((x) => x[0]),
      };
    });
    const g = await decodeRun(engine, sampler, [decodePrompts[0]!], GREEDY_TOKENS - 1);
    let prefix = 0;
    while (prefix < GREEDY_TOKENS && g.tokens[prefix] === llama.greedy[prefix]) prefix++;
    const ourIds = TEXTS.map((s) => tok.encode(s, { addSpecialTokens: false }));
    const mismatched = TEXTS.flatMap((text, i) => (ourIds[i]!.join() === llama.tokenized[i]!.join() ? [] : [{ text, ours: ourIds[i], llamacpp: llama.tokenized[i] }]));
    return {
      top1_match: prompts.every((p) => p.top1_match),
      max_logit_diff: Math.max(...prompts.map((p) => p.max_logit_diff)),
      prompts,
      greedy_prefix_match: `${prefix}/${GREEDY_TOKENS}`,
      tokenizer_match: `${TEXTS.length - mismatched.length}/${TEXTS.length}`,
      tokenizer_mismatches: mismatched,
    };
  });

  const result: Record<string, unknown> = {};
  let ourThreads: number | null = null;
  if (bench) {
    const ours = await phase('ours', async () => {
      const prefillMs: number[] = [];
      for (let r = 0; r <= reps; r++) {
        const ms = await prefillRun(engine, sampler, job.prefillPrompt);
        if (r > 0) prefillMs.push(ms);
      }
      const b1: number[] = [];
      const b8: number[] = [];
      await decodeRun(engine, sampler, decodePrompts.slice(0, 1), 8);
      for (let r = 0; r < reps; r++) b1.push((await decodeRun(engine, sampler, decodePrompts.slice(0, 1), steps)).ms);
      await decodeRun(engine, sampler, decodePrompts, 8);
      for (let r = 0; r < reps; r++) b8.push((await decodeRun(engine, sampler, decodePrompts, steps)).ms);
      return { prefillMs, b1, b8 };
    });

    // Time to first token: the same templated ids through the engine, then through the service.
    const serviceChunk = loadConfig({ ...process.env }).scheduler.prefillChunk;
    const chats = Array.from({ length: reps + 1 }, (_, i) => chatPrompt(tok, i, PREFILL_TOKENS));
    const engineTtft = await phase('prefill_engine', async () => {
      const one: number[] = [];
      const chunked: number[] = [];
      for (const [i, c] of chats.entries()) {
        const a = await prefillRun(engine, sampler, c.ids);
        const b = await prefillRun(engine, sampler, c.ids, serviceChunk);
        if (i > 0) {
          one.push(a);
          chunked.push(b);
        }
      }
      return { one, chunked };
    });
    const backend = engine.backend;
    ourThreads = await engineThreads(engine);
    const loadMs = engine.loadMs;
    const weightsBytes = engine.memory().weightsBytes;
    engine.dispose();

    const http = await phase('ttft_http', async () => {
      const svc = await startService({ ...process.env, MODEL_DIR: dir, PORT: '0', LOG_LEVEL: 'silent' }, { handleSignals: false });
      try {
        const runs: { ttftMs: number; promptTokens: number }[] = [];
        for (const [i, c] of chats.entries()) {
          const r = await streamOnce(svc.url, svc.engine.modelId, c.messages);
          if (r.promptTokens !== c.ids.length) throw new Error(`the service templated ${r.promptTokens} tokens, the engine ${c.ids.length}`);
          if (i > 0) runs.push(r);
        }
        return runs;
      } finally {
        await svc.stop();
      }
    });

    const o = {
      prefill_tps: round((PREFILL_TOKENS * 1000) / median(ours.prefillMs), 1),
      decode_b1_tps: round((steps * 1000) / median(ours.b1)),
      decode_b8_aggregate_tps: round((SLOTS * steps * 1000) / median(ours.b8)),
      ttft_http_ms: round(median(http.map((r) => r.ttftMs)), 1),
      prefill_engine_ms: round(median(engineTtft.one), 1),
      prefill_engine_service_chunks_ms: round(median(engineTtft.chunked), 1),
      ttft_prompt_tokens: chats[1]!.ids.length,
    };
    const l = {
      prefill_tps: round((PREFILL_TOKENS * 1000) / median(llama.prefillMs), 1),
      decode_b1_tps: round((steps * 1000) / median(llama.decodeB1Ms)),
      decode_b8_aggregate_tps: round((SLOTS * steps * 1000) / median(llama.decodeB8Ms)),
    };
    result.ours = { ...o, ttft_http_over_prefill: round(o.ttft_http_ms / o.prefill_engine_ms, 3) };
    result[`llamacpp_${ggufType}`] = l;
    result.ratio = {
      prefill_tps: round(o.prefill_tps / l.prefill_tps, 3),
      decode_b1_tps: round(o.decode_b1_tps / l.decode_b1_tps, 3),
      decode_b8_aggregate_tps: round(o.decode_b8_aggregate_tps / l.decode_b8_aggregate_tps, 3),
    };
    result.runs_ms = {
      ours: { prefill: ours.prefillMs.map((x) => round(x, 1)), decode_b1: ours.b1.map((x) => round(x, 1)), decode_b8: ours.b8.map((x) => round(x, 1)),
        prefill_engine: engineTtft.one.map((x) => round(x, 1)), prefill_engine_service_chunks: engineTtft.chunked.map((x) => round(x, 1)),
        ttft_http: http.map((r) => round(r.ttftMs, 1)) },
      [`llamacpp_${ggufType}`]: { prefill: llama.prefillMs.map((x) => round(x, 1)), decode_b1: llama.decodeB1Ms.map((x) => round(x, 1)), decode_b8: llama.decodeB8Ms.map((x) => round(x, 1)) },
    };
    result.ours_setup = { backend: backend.name, backend_reason: backend.reason, linear: engine.linearKernels, threads: ourThreads, load_ms: Math.round(loadMs), weights_bytes: weightsBytes,
      slots: SLOTS, cache_capacity: CAPACITY, service_prefill_chunk: serviceChunk };
  } else {
    engine.dispose();
  }

  result.parity = parity;
  result.meta = {
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memory_gib: round(totalmem() / 2 ** 30, 1), node: process.version },
    threads: { llamacpp: THREADS, ours: ourThreads },
    model: {
      ...modelMeta(arch, preset, cfg),
      weights: `random (make-model), ${dtype} checkpoint; llama.cpp holds ${ggufType} (${ggufType === 'f32' || (ggufType === 'bf16' && dtype === 'BF16') ? 'exact' : 'rounded'}`
        + `${ggufType === 'f32' ? '' : `, and rounds activations to ${ggufType} for its matrix products`}), ours holds the checkpoint's values (${dtype === 'BF16' ? 'in 16 bits' : 'in 32 bits'}) `
        + 'and multiplies in float32',
    },
    prompts: { prefill_tokens: PREFILL_TOKENS, decode_prompt_tokens: DECODE_PROMPT_TOKENS, decode_steps: steps, concurrent_sequences: SLOTS,
      reps, statistic: 'median of reps, after one warm-up run', sampling: 'greedy' },
    llamacpp: {
      node_llama_cpp: llama.version, release: llama.llamaCppRelease, flash_attention: llama.flashAttention, context_per_sequence: CAPACITY,
      parity_kv_cache: parityKv === 'f32' ? 'F32, flash attention off' : 'F16 (default), flash attention auto', gguf_type: ggufType, gguf_bytes: gguf.bytes, gguf_cached: gguf.cached, install_ms: installMs === null ? null : Math.round(installMs), load_ms: Math.round(llama.loadMs),
      system_info: llama.systemInfo, logs: llama.logs,
    },
    phases_s: phases,
    elapsed_s: round((now() - started) / 1000, 1),
  };
  const text = JSON.stringify(result, null, 2);
  if (values.out) await writeFile(values.out, text + '\n');
  process.stdout.write(text + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
