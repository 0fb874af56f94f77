/**
 * The fused Gemma 2/3 programs' weights: each linear weight as the
 * checkpoint stores it, [out, in] (what matmul.ts reads coalesced), and the
 * embedding as [vocab, hidden] rows in parts that fit one binding. A matrix
 * whose values are all bfloat16 (a bf16 checkpoint's) is held as those bits,
 * two to an int32 element, so a decode step streams half the bytes; others
 * stay float32. The input and pre-feedforward norms are not folded into the
 * weights (that would leave bf16 values), so the norm programs apply them.
 */
import * as tf from '@tensorflow/tfjs-core';
import { concat, embeddingPartSize, tensorOf, type Keep, type Linear, type WeightLayout } from '../weights.js';
import type { WeightStorage } from './matmul.js';

/** Which storage the layout may pick: bf16 where every value is one ('auto'), or always float32. */
export type StoragePolicy = 'auto' | 'float32';

/** A weight as the programs bind it. */
export interface GpuMatrix {
  tensor: tf.Tensor2D;
  storage: WeightStorage;
  /** Rows (outputs) and inputs per row. */
  rows: number;
  K: number;
}

/** Whether every value is a bfloat16 (its low 16 bits are zero). */
export function allBf16(values: Float32Array): boolean {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0xffff) !== 0) return false;
  return true;
}

/** bfloat16 values as their bits, two to an element: value 2j in the low half of element j. */
export function packBf16(values: Float32Array): Int32Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Int32Array(values.length / 2);
  for (let j = 0; j < out.length; j++) out[j] = (bits[2 * j] >>> 16) | (bits[2 * j + 1] & 0xffff0000);
  return out;
}

/** [rows, K] values as a tensor in the storage the policy picks. */
function matrix(values: Float32Array, rows: number, K: number, policy: StoragePolicy, keep: Keep): tf.Tensor2D {
  if (K % 8 !== 0) throw new Error(`the webgpu programs need layer widths in multiples of 8, not ${K}`);
  if (policy === 'auto' && allBf16(values)) return keep(tf.tensor2d(packBf16(values), [rows, K / 2], 'int32'));
  return keep(tf.tensor2d(values, [rows, K]));
}

/** How a weight of this layout is stored (int32 elements hold bf16 pairs). */
export function gpuMatrix(w: Linear): GpuMatrix {
  const tensor = tensorOf(w);
  const [rows, cols] = tensor.shape;
  const storage: WeightStorage = tensor.dtype === 'int32' ? 'bf16' : 'f32';
  return { tensor, storage, rows, K: storage === 'bf16' ? 2 * cols : cols };
}

/** The layout of the fused programs; embedding parts hold at most `maxPartBytes`. */
export function gpuLayout(policy: StoragePolicy, maxPartBytes?: number): WeightLayout {
  return {
    foldNorms: false,
    linear: (parts, outs, inDim, keep) => ({ t: matrix(concat(parts), outs.reduce((a, b) => a + b, 0), inDim, policy, keep) }),
    embedding: (embed, c, keep) => {
      const H = c.hiddenSize;
      const half = policy === 'auto' && allBf16(embed);
      // A part's bytes: bf16 rows are half as wide, so twice the rows fit.
      const part = embeddingPartSize(c, maxPartBytes === undefined ? undefined : half ? 2 * maxPartBytes : maxPartBytes);
      const embedParts = [];
      for (let from = 0; from < c.vocabSize; from += part) {
        const count = Math.min(part, c.vocabSize - from);
        embedParts.push({ table: matrix(embed.subarray(from * H, (from + count) * H), count, H, half ? 'auto' : 'float32', keep), from });
      }
      return { embedT: embedParts[0]!.table, embedParts };
    },
  };
}
