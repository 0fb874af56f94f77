/**
 * The native path's weights: every linear weight and the embedding packed by
 * the kernels (held in 16 bits where every value is a bfloat16), the input
 * norms left unfolded so a bf16 checkpoint's values stay exact. Gemma 4
 * loads its own way (gemma4-weights.ts here).
 */
import { concat, type WeightLayout } from '../weights.js';
import { loadGemma4Native } from './gemma4-weights.js';
import type { NativeKernels } from './kernels.js';

export function nativeLayout(kernels: NativeKernels): WeightLayout {
  return {
    foldNorms: false,
    linear: (parts, outs, inDim) => ({ t: kernels.pack(concat(parts), inDim, outs.reduce((a, b) => a + b, 0), true) }),
    embedding: (embed, c) => ({ embedT: kernels.pack(embed, c.hiddenSize, c.vocabSize, true), embedParts: [] }),
    loadGemma4: (c, src) => loadGemma4Native(c, src, kernels),
  };
}
