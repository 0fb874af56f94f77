/**
 * The linear-layer programs alone (src/engine/webgpu/matmul.ts), on the
 * layer shapes of Gemma 3 1B and 4B, at 1, 8, 32 and 512 rows, with bf16
 * and f32 weights: milliseconds per product, GB/s of what it must move
 * (weights, input and output once), GFLOP/s, and beside them the card's own
 * copy and streaming-read bandwidth from the same process. Products run
 * back to back in one pass, as a forward pass records them.
 *
 *   node dist/bench/webgpu.js matmul     (BACKEND defaults to webgpu)
 *
 * MATMUL_MODELS picks the shapes (default "1b 4b"), MATMUL_ROWS the row
 * counts (default "1 8 32 512"), MATMUL_LAYERS the layers (default all),
 * MATMUL_STORAGE the weight storages (default "bf16 f32").
 */
import * as tf from '@tensorflow/tfjs-core';
import { webgpuSubgroups } from '../src/engine/webgpu/adapter.js';
import type { Epilogue } from '../src/engine/webgpu/kernels.js';
import { bandwidthProbe, MatmulRunner, type MatmulCase, type MatmulProgram } from '../src/engine/webgpu/matmul-runner.js';
import { PRESETS } from '../src/model/make-model.js';

interface Layer {
  name: string;
  K: number;
  M: number;
  epilogue: Epilogue;
}

/** The products of one layer, and the unembedding, of a Gemma 3 preset. */
function layers(preset: '1b' | '4b'): Layer[] {
  const s = PRESETS[preset];
  const plain: Epilogue = { kind: 'plain' };
  return [
    { name: 'qkv', K: s.hiddenSize, M: (s.numHeads + 2 * s.numKvHeads) * s.headDim, epilogue: plain },
    { name: 'o', K: s.numHeads * s.headDim, M: s.hiddenSize, epilogue: plain },
    { name: 'gate_up', K: s.hiddenSize, M: 2 * s.intermediateSize, epilogue: { kind: 'geglu' } },
    { name: 'down', K: s.intermediateSize, M: s.hiddenSize, epilogue: plain },
    { name: 'unembed', K: s.hiddenSize, M: s.vocabSize, epilogue: plain },
  ];
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
/** The largest buffer one binding takes on NVIDIA's Vulkan driver. */
const MAX_BINDING = 2 ** 31 - 4;

export async function matmulBench(note: (msg: string) => void): Promise<object> {
  const sg = webgpuSubgroups();
  const subgroups = sg && sg.max <= 32 ? { min: sg.min } : undefined;
  const bandwidth = await bandwidthProbe(Number(process.env.MATMUL_PROBE_BYTES ?? 1 << 30), 10);
  note(`bandwidth ${JSON.stringify(bandwidth)}`);
  const results: Record<string, unknown>[] = [];
  for (const preset of (process.env.MATMUL_MODELS ?? '1b 4b').split(/\s+/).filter(Boolean) as Array<'1b' | '4b'>) {
    const only = process.env.MATMUL_LAYERS?.split(/\s+/);
    for (const layer of layers(preset).filter((l) => !only || only.includes(l.name))) {
      for (const storage of (process.env.MATMUL_STORAGE ?? 'bf16 f32').split(/\s+/) as Array<'bf16' | 'f32'>) {
        if (layer.M * layer.K * (storage === 'bf16' ? 2 : 4) > MAX_BINDING) continue;
        for (const rows of (process.env.MATMUL_ROWS ?? '1 8 32 512').split(/\s+/).map(Number)) {
          // 32 rows run as the GEMM (what the forward pass picks) and as the GEMV in row blocks; 512 with both GEMM tiles.
          const programs: Array<MatmulProgram | undefined> = rows === 32 ? [undefined, 'gemv'] : rows === 512 ? ['gemm64', 'gemm128'] : [undefined];
          for (const program of programs) {
            const c: MatmulCase = { K: layer.K, M: layer.M, rows, epilogue: layer.epilogue, storage, program, subgroups };
            const run = new MatmulRunner(c, new Float32Array(rows * layer.K).fill(0.5), 'pattern');
            const first = await run.time(3);
            const times = Math.max(5, Math.min(200, Math.ceil(40 / first)));
            const ms = await run.time(times);
            results.push({
              model: preset, layer: layer.name, K: layer.K, M: layer.M, rows, storage, program: run.program,
              ms: round(ms, 4), gbps: round(run.bytes / ms / 1e6), gflops: round(run.flops / ms / 1e6), products: times,
            });
            note(JSON.stringify(results.at(-1)));
            run.dispose();
          }
        }
      }
    }
  }
  return { backend: tf.getBackend(), subgroups: sg ?? null, bandwidth, results };
}
