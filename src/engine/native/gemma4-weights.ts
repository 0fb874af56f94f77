/**
 * Gemma 4's weights for the native kernels, read by the walk every path
 * shares (../gemma4-weights.ts): every linear weight packed (held in 16 bits
 * where each value is a bfloat16), each expert's gate/up and down packed on
 * their own so a token streams only its chosen experts, norms as
 * Float32Arrays (Gemma 4 multiplies by w), and the per-layer embedding table
 * kept as the checkpoint's bf16 bits: on E2B it is 262,144 x 35 x 256
 * values, 4.7 GB in 16 bits, and a call reads only its tokens' rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/hf-config.js';
import { readGemma4 } from '../gemma4-weights.js';
import { concat, type TensorSource, type Weights } from '../weights.js';
import type { NativeGemma4Weights, NativeKernels, NativeMatrix } from './kernels.js';


export async function loadGemma4Native(c: ModelConfig, src: TensorSource, kernels: NativeKernels): Promise<Weights> {
  // Host bytes of every packed matrix, for memory().
  let packed = 0;
  const pack = (w: Float32Array, K: number, N: number): NativeMatrix => {
    const m = kernels.pack(w, K, N, true);
    packed += m.bytes;
    return m;
  };
  const w = await readGemma4(c, src, {
    linear: (parts, outs, inDim) => pack(concat(parts), inDim, outs.reduce((a, b) => a + b, 0)),
    vector: (v) => v,
  });
  const embedT = pack(w.embedding, c.hiddenSize, c.vocabSize);
  const gemma4Native: NativeGemma4Weights = { layers: w.layers, perLayer: w.perLayer, finalNorm: w.finalNorm };
  const finalNorm = tf.tensor1d(w.finalNorm);
  const packedBytes = packed + (w.perLayer?.table.byteLength ?? 0);
  return { embedT, embedParts: [], finalNorm, layers: [], bytes: finalNorm.size * 4, packedBytes, gemma4Native };
}
