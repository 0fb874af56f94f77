/**
 * The llama.cpp side of bench/compare.ts, in a process of its own so that
 * llama.cpp's threads and memory stay out of the engine's. node-llama-cpp is
 * loaded from the scratch folder compare.ts installed it into (it is not a
 * project dependency). Reads a job (a JSON file named by argv[2]) and prints
 * one JSON line.
 *
 * Timing follows llama.cpp's own benchmark conventions: prefill is
 * evaluateWithoutGeneratingNewTokens over the whole prompt (batch 512);
 * decode is timed from the first sampled token to the (steps + 1)-th, i.e.
 * `steps` single-token forwards; 8 sequences decode concurrently on one
 * context, timed from the earliest first token to the latest last one.
 */
import { readFileSync } from 'node:fs';
import { decode, loadNodeLlamaCpp, now } from './llamacpp-api.js';

export interface LlamaJob {
  nlcDir: string;
  modelPath: string;
  threads: number;
  /** Run the throughput measurements (false: parity only). */
  bench: boolean;
  prefillPrompt: number[];
  /** One prompt per concurrent sequence; the first one is also the batch-1 prompt. */
  decodePrompts: number[][];
  steps: number;
  reps: number;
  /** Cache entries per sequence (our engine's cacheCapacity). */
  contextSize: number;
  parityPrompts: number[][];
  topK: number;
  /** Greedy tokens to record after decodePrompts[0]. */
  greedyTokens: number;
  texts: string[];
  /**
   * The K/V cache type and flash-attention setting of the parity and greedy
   * runs (llama.cpp's defaults, F16 and 'auto', when absent); timings always
   * use the defaults.
   */
  parityKv?: { type: 'F16' | 'F32'; flashAttention: boolean | 'auto' };
}

export interface LlamaResult {
  version: string;
  llamaCppRelease: string;
  systemInfo: string;
  loadMs: number;
  /** The context's setting ('auto' is resolved in the logs). */
  flashAttention: boolean | string;
  prefillMs: number[];
  decodeB1Ms: number[];
  decodeB8Ms: number[];
  /** Per parity prompt: the top-K next tokens as [id, log-probability at temperature 1]. */
  parity: [number, number][][];
  greedy: number[];
  tokenized: number[][];
  logs: string[];
}

/** llama.cpp's log lines (info and up); the last ones go to stderr when the run fails. */
const logs: string[] = [];

async function run(job: LlamaJob): Promise<LlamaResult> {
  const { nlc, version } = await loadNodeLlamaCpp(job.nlcDir);
  const llama = await nlc.getLlama({
    gpu: false, build: 'never', maxThreads: job.threads, progressLogs: false,
    logLevel: nlc.LlamaLogLevel.info, logger: (_: unknown, msg: string) => logs.push(String(msg).trimEnd()),
  });
  const t = now();
  const model = await llama.loadModel({ modelPath: job.modelPath, gpuLayers: 0 });
  const loadMs = now() - t;
  const res: LlamaResult = {
    version, llamaCppRelease: llama.llamaCppRelease.release, systemInfo: llama.systemInfo, loadMs, flashAttention: false,
    prefillMs: [], decodeB1Ms: [], decodeB8Ms: [], parity: [], greedy: [], tokenized: job.texts.map((s) => [...model.tokenize(s)]), logs: [],
  };

  const longest = Math.max(job.prefillPrompt.length, ...job.parityPrompts.map((p) => p.length)) + job.steps + 16;
  const single = { contextSize: Math.max(job.contextSize, longest), batchSize: 512, threads: job.threads, sequences: 1 };
  const pk = job.parityKv;
  const ctxP = pk
    ? await model.createContext({ ...single, flashAttention: pk.flashAttention, experimentalKvCacheKeyType: pk.type, experimentalKvCacheValueType: pk.type })
    : await model.createContext(single);
  let seq = ctxP.getSequence();
  for (const p of job.parityPrompts) {
    for await (const out of seq.evaluateWithMetadata(p, { probabilities: true }, { temperature: 1, topK: job.topK, topP: 1, minP: 0, yieldEogToken: true })) {
      res.parity.push([...out.probabilities.entries()].sort((a, b) => b[1] - a[1]).slice(0, job.topK).map(([id, pr]) => [id, Math.log(pr)]));
      break;
    }
    await seq.clearHistory();
  }
  res.greedy = (await decode(seq, job.decodePrompts[0]!, job.greedyTokens)).tokens;
  let ctx = ctxP;
  if (pk) {
    await ctxP.dispose();
    ctx = await model.createContext(single);
    seq = ctx.getSequence();
  }
  res.flashAttention = ctx.flashAttention;

  if (job.bench) {
    for (let r = 0; r <= job.reps; r++) {
      const a = now();
      await seq.evaluateWithoutGeneratingNewTokens(job.prefillPrompt);
      if (r > 0) res.prefillMs.push(now() - a); // the first run warms up
      await seq.clearHistory();
    }
    await decode(seq, job.decodePrompts[0]!, 8);
    for (let r = 0; r < job.reps; r++) {
      const d = await decode(seq, job.decodePrompts[0]!, job.steps);
      res.decodeB1Ms.push(d.t1 - d.t0);
    }
  }
  await ctx.dispose();

  if (job.bench) {
    const B = job.decodePrompts.length;
    const ctxB = await model.createContext({ contextSize: job.contextSize, batchSize: 512, threads: job.threads, sequences: B });
    const seqs = Array.from({ length: B }, () => ctxB.getSequence());
    const all = (n: number) => Promise.all(seqs.map((s, b) => decode(s, job.decodePrompts[b]!, n)));
    await all(8);
    for (let r = 0; r < job.reps; r++) {
      const ds = await all(job.steps);
      res.decodeB8Ms.push(Math.max(...ds.map((d) => d.t1)) - Math.min(...ds.map((d) => d.t0)));
    }
    await ctxB.dispose();
  }
  res.logs = [...new Set(logs.filter((l) => /flash|llama_kv_cache|n_ctx_seq |n_swa |n_batch|REPACK|file type|kv_unified|n_seq_max|n_embd_head|n_rot|n_layer_kv|shared|arch /i.test(l)))].slice(0, 48);
  await model.dispose();
  await llama.dispose();
  return res;
}

const job = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as LlamaJob;
run(job).then(
  (r) => process.stdout.write(JSON.stringify(r) + '\n'),
  (err) => {
    console.error(logs.slice(-20).join('\n'));
    console.error(err);
    process.exit(1);
  },
);
