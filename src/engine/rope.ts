/**
 * Rotary position embeddings in the Hugging Face convention (rotate_half over
 * two halves of the head). The rotation is applied as
 * `x * cos + (x @ R) * sin`, with R the constant rotate_half matrix, so it is
 * three kernels and a small matmul instead of slices and concats. Rotations
 * compose, so re-numbering cached keys by -d is the same call with -d.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RopeSettings } from '../model/hf-config.js';

export function inverseFrequencies(headDim: number, rope: RopeSettings): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  // Proportional RoPE (Gemma 4): pairs past the rotated share keep frequency 0 (cos 1, sin 0).
  const rotated = rope.partialFactor === undefined ? half : Math.floor((rope.partialFactor * headDim) / 2);
  for (let i = 0; i < rotated; i++) inv[i] = 1 / rope.base ** ((2 * i) / headDim) / rope.factor;
  return inv;
}

/** The positions of a forward call's rows: row b's T new tokens follow its `starts[b]` cached ones. */
export function callPositions(starts: number[], T: number): Float32Array {
  const positions = new Float32Array(starts.length * T);
  starts.forEach((s, b) => {
    for (let t = 0; t < T; t++) positions[b * T + t] = s + t;
  });
  return positions;
}

/** cos and sin tables, one row of `headDim` per position (positions may be negative: a rotation back). */
export function ropeTables(positions: ArrayLike<number>, headDim: number, rope: RopeSettings): { cos: Float32Array; sin: Float32Array } {
  const inv = inverseFrequencies(headDim, rope);
  const half = headDim / 2;
  const cos = new Float32Array(positions.length * headDim);
  const sin = new Float32Array(positions.length * headDim);
  for (let p = 0; p < positions.length; p++) {
    const base = p * headDim;
    for (let i = 0; i < half; i++) {
      const angle = positions[p] * inv[i];
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[base + i] = c;
      cos[base + half + i] = c;
      sin[base + i] = s;
      sin[base + half + i] = s;
    }
  }
  return { cos, sin };
}

/** The [headDim, headDim] matrix R with x @ R = rotate_half(x) = [-x2, x1]. */
export function rotateHalfMatrix(headDim: number): tf.Tensor2D {
  const half = headDim / 2;
  const m = new Float32Array(headDim * headDim);
  for (let j = 0; j < half; j++) {
    m[(j + half) * headDim + j] = -1;
    m[j * headDim + j + half] = 1;
  }
  return tf.tensor2d(m, [headDim, headDim]);
}

/**
 * Rotates `x` (last axis headDim) by tables broadcastable to it.
 * `cos`/`sin` must broadcast against x; R is rotateHalfMatrix(headDim).
 */
export function applyRope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, R: tf.Tensor2D): tf.Tensor {
  const hd = x.shape[x.shape.length - 1];
  const rows = x.size / hd;
  // The matmul is one kernel but costs hd^2 per row: worth it for a few rows (decode), not for a prompt.
  let rotated: tf.Tensor;
  if (rows <= 64) {
    rotated = tf.reshape(tf.matMul(tf.reshape(x, [-1, hd]), R), x.shape);
  } else {
    const [x1, x2] = tf.split(x, 2, -1);
    rotated = tf.concat([tf.neg(x2), x1], -1);
  }
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}
