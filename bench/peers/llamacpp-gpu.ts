/**
 * llama.cpp on the GPU machine, beside bench/webgpu.ts's `decode` on the same
 * model: node-llama-cpp's prebuilt Vulkan (or CUDA) binaries, every layer
 * offloaded, never a build from source. Prints one JSON object; when the GPU
 * backend does not load, finds no GPU, a later step fails or SIGTERM (from
 * `timeout`) comes, the object carries what was measured so far with `error`,
 * `message`, `stage` and llama.cpp's last log lines, and the exit status is 1.
 *
 * usage: node dist/bench/peers/llamacpp-gpu.js MODEL.gguf [--nlc DIR] [--gpu vulkan|cuda] [--steps N] [--reps N]
 *   --nlc    the folder holding node_modules/node-llama-cpp and its prebuilt
 *            @node-llama-cpp/linux-x64-<gpu> package (default $NLC_DIR)
 *   --steps  timed decode steps (default 128, llama-bench's tg128 and
 *            llama-batched-bench's -ntg 128)
 *   --reps   timed runs of each measurement after one warm-up (default 3); medians are reported
 *
 * Timing follows llama.cpp's own benchmark conventions, as llamacpp-child.ts
 * does on the CPU, with bench/webgpu.ts's prompts (model-dir.ts promptIds):
 *   prefill   a 512-token prompt through evaluateWithoutGeneratingNewTokens, batch 512 (llama-bench pp512)
 *   decode b1 after a 64-token prompt, `steps` single-token forwards, timed from the first sampled token
 *   b8, b32   like `llama-batched-bench -npp 64 -ntg 128 -npl 8,32`: B sequences on one context
 *             (batch B*64, so the prompts go in one batch), each generating after its 64-token prompt;
 *             B*steps tokens over the span from the earliest first token to the latest last one
 */
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { promptIds } from '../model-dir.js';
import { decode, loadNodeLlamaCpp, now, type Context, type Llama, type Model } from './llamacpp-api.js';

const PREFILL_TOKENS = 512;
const PROMPT_TOKENS = 64;
const BATCHES = [8, 32] as const;
/** GGUF general.file_type -> our name for it (llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32). */
const FILE_TYPES: Record<number, string> = { 0: 'f32', 1: 'f16', 32: 'bf16', 7: 'q8_0' };

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    nlc: { type: 'string', default: process.env.NLC_DIR },
    gpu: { type: 'string', default: 'vulkan' },
    steps: { type: 'string', default: '128' },
    reps: { type: 'string', default: '3' },
  },
});
const modelPath = positionals[0];
const gpu = values.gpu;
const steps = Number(values.steps);
const reps = Number(values.reps);
if (!modelPath || !values.nlc || (gpu !== 'vulkan' && gpu !== 'cuda') || !(steps > 0) || !(reps > 0)) {
  console.error('usage: node dist/bench/peers/llamacpp-gpu.js MODEL.gguf [--nlc DIR (default $NLC_DIR)] [--gpu vulkan|cuda] [--steps N] [--reps N]');
  process.exit(2);
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const tps = (tokens: number, ms: number[]) => round((tokens * 1000) / median(ms));
const mib = (bytes: number) => round(bytes / 2 ** 20);

/** llama.cpp's log lines (info and up): a few go into the result, the last ones into an error. */
const logs: string[] = [];
/** The result, filled in as the run goes, so a failure still reports what was measured. */
const out: Record<string, unknown> = { engine: 'llama.cpp', backend: gpu, model: resolve(modelPath), model_file: basename(modelPath), steps, reps };
let stage = 'load node-llama-cpp';

/** One context of `sequences` sequences, each with `perSeq` cache cells. */
const context = (model: Model, sequences: number, perSeq: number, batchSize: number): Promise<Context> =>
  model.createContext({ contextSize: perSeq, batchSize, sequences });

async function run(): Promise<void> {
  const { nlc, version } = await loadNodeLlamaCpp(values.nlc!);
  out.node_llama_cpp = version;
  stage = `getLlama gpu=${gpu}`;
  // Prebuilt binaries only: no network and no build time on the GPU machine.
  const llama: Llama = await nlc.getLlama({
    gpu, build: 'never', skipDownload: true, usePrebuiltBinaries: true, progressLogs: false,
    logLevel: nlc.LlamaLogLevel.info, logger: (_: unknown, msg: string) => logs.push(String(msg).trimEnd()),
  });
  out.llama_cpp_release = llama.llamaCppRelease.release;
  out.build_type = llama.buildType;
  if (llama.gpu !== gpu) throw new Error(`node-llama-cpp loaded the ${String(llama.gpu)} build, not ${gpu}`);
  const names = await llama.getGpuDeviceNames();
  out.gpu_device = names.join(', ');
  const vram0 = await llama.getVramState();
  const vram = { total_mib: mib(vram0.total), used_before_mib: mib(vram0.used), after_load_mib: 0, peak_mib: mib(vram0.used) };
  out.vram = vram;
  const peak = async () => (vram.peak_mib = Math.max(vram.peak_mib, mib((await llama.getVramState()).used)));

  stage = 'load model';
  let t = now();
  const model = await llama.loadModel({ modelPath, gpuLayers: 'max' });
  out.load_ms = round(now() - t);
  out.gpu_layers = model.gpuLayers;
  // A GPU build without a usable device ("ggml_vulkan: No devices found.") runs on the CPU: not a GPU measurement.
  if (names.length === 0 || model.gpuLayers === 0) throw new Error(`llama.cpp's ${gpu} backend found no GPU device (gpuLayers ${model.gpuLayers})`);
  out.model_bytes = model.size;
  out.type_description = model.typeDescription;
  const ft = model.fileInfo.metadata.general?.file_type;
  out.type = ft === undefined ? null : (FILE_TYPES[Number(ft)] ?? `file_type ${ft}`);
  vram.after_load_mib = mib((await llama.getVramState()).used);
  await peak();

  // prefill and batch-1 decode on one context of one sequence
  stage = 'prefill';
  const prefillPrompt = promptIds(PREFILL_TOKENS);
  const prompts = Array.from({ length: Math.max(...BATCHES) }, (_, b) => promptIds(PROMPT_TOKENS, b + 2));
  const ctx = await context(model, 1, PREFILL_TOKENS + steps + PROMPT_TOKENS, 512);
  out.flash_attention = ctx.flashAttention;
  const seq = ctx.getSequence();
  const prefillMs: number[] = [];
  for (let r = 0; r <= reps; r++) {
    t = now();
    await seq.evaluateWithoutGeneratingNewTokens(prefillPrompt);
    if (r > 0) prefillMs.push(now() - t); // the first run warms up
    await seq.clearHistory();
  }
  out.prefill_512_ms = prefillMs.map((x) => round(x, 2));
  out.prefill_512_tps = tps(PREFILL_TOKENS, prefillMs);

  stage = 'decode b1';
  await decode(seq, prompts[0]!, 8);
  const b1Ms: number[] = [];
  for (let r = 0; r < reps; r++) {
    const d = await decode(seq, prompts[0]!, steps);
    b1Ms.push(d.t1 - d.t0);
  }
  out.decode_b1_ms = b1Ms.map((x) => round(x, 2));
  out.decode_b1_tps = tps(steps, b1Ms);
  await peak();
  await ctx.dispose();

  for (const B of BATCHES) {
    stage = `decode b${B}`;
    const ctxB = await context(model, B, PROMPT_TOKENS + steps + 16, Math.max(512, B * PROMPT_TOKENS));
    const seqs = Array.from({ length: B }, () => ctxB.getSequence());
    const all = (n: number) => Promise.all(seqs.map((s, b) => decode(s, prompts[b]!, n)));
    await all(8);
    const ms: number[] = [];
    for (let r = 0; r < reps; r++) {
      const ds = await all(steps);
      ms.push(Math.max(...ds.map((d) => d.t1)) - Math.min(...ds.map((d) => d.t0)));
    }
    out[`decode_b${B}_ms`] = ms.map((x) => round(x, 2));
    out[`decode_b${B}_aggregate_tps`] = tps(B * steps, ms);
    await peak();
    await ctxB.dispose();
  }

  stage = 'dispose';
  out.logs = [...new Set(logs.filter((l) => /flash|llama_kv_cache|offload|ggml_vulkan|CUDA|Vulkan|buffer size|file type|n_ctx_seq|n_batch|n_ubatch/i.test(l)))].slice(0, 40);
  await model.dispose();
  await llama.dispose();
}

/** Prints what was measured with the failure and exits 1. */
function fail(error: string, message: string): never {
  process.stdout.write(JSON.stringify({ ...out, error, message, stage, logs_tail: logs.slice(-20) }) + '\n');
  process.exit(1);
}
// `timeout` (the device script's) sends SIGTERM: report the partial result rather than nothing.
process.on('SIGTERM', () => fail('Timeout', `terminated during ${stage}`));
run().then(
  () => {
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  },
  (err: unknown) => fail((err as Error)?.name ?? 'Error', (err as Error)?.message ?? String(err)),
);
