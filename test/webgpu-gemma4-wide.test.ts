// Gemma 4's real head sizes on the fused webgpu programs: a synthetic Gemma 4 (random weights) with 256-wide sliding heads
// and 512-wide global heads (E2B's shapes: 8 query heads over 1 global KV head, keys as values, 8 query heads per
// workgroup of the attention), per-layer embeddings and KV-shared layers, against the tfjs graph over the same weights.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, releaseBackend } from '../src/engine/backend.js';
import { loadGemma4Weights } from '../src/engine/gemma4-weights.js';
import { Gemma4GraphPath } from '../src/engine/graph/gemma4.js';
import { Gemma4WebGPUPath } from '../src/engine/webgpu/gemma4.js';
import { reduceFused } from '../src/engine/webgpu/reduce.js';
import { disposeWeights, tensorLayout, type TensorSource } from '../src/engine/weights.js';
import { parseModelConfig } from '../src/model/hf-config.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';

const TOL = 1e-3;
const [H, NQ, NKV, HD, GHD, I, P, V, L] = [64, 8, 2, 256, 512, 64, 8, 512, 4];
const CONFIG = {
  architectures: ['Gemma4ForCausalLM'],
  model_type: 'gemma4_text',
  hidden_size: H,
  num_attention_heads: NQ,
  num_key_value_heads: NKV,
  head_dim: HD,
  global_head_dim: GHD,
  attention_k_eq_v: true,
  num_global_key_value_heads: 1,
  intermediate_size: I,
  num_hidden_layers: L,
  layer_types: ['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention'],
  num_kv_shared_layers: 2,
  use_double_wide_mlp: true,
  hidden_size_per_layer_input: P,
  vocab_size: V,
  vocab_size_per_layer_input: V,
  sliding_window: 6,
  final_logit_softcapping: 30,
  rms_norm_eps: 1e-6,
};

/** A checkpoint of seeded random tensors with the names and shapes the Gemma 4 loader reads. */
function randomCheckpoint(): TensorSource {
  const shapes = new Map<string, number[]>();
  const add = (name: string, shape: number[]) => shapes.set(`model.${name}`, shape);
  const own = [0, 1];
  for (let l = 0; l < L; l++) {
    const hd = l % 2 ? GHD : HD;
    const p = `layers.${l}.`;
    for (const n of ['input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm', 'post_feedforward_layernorm', 'post_per_layer_input_norm']) add(`${p}${n}.weight`, [H]);
    add(`${p}layer_scalar`, [1]);
    add(`${p}self_attn.q_proj.weight`, [NQ * hd, H]);
    add(`${p}self_attn.q_norm.weight`, [hd]);
    add(`${p}self_attn.o_proj.weight`, [H, NQ * hd]);
    const wide = l >= 2 ? 2 : 1;
    add(`${p}mlp.gate_proj.weight`, [I * wide, H]);
    add(`${p}mlp.up_proj.weight`, [I * wide, H]);
    add(`${p}mlp.down_proj.weight`, [H, I * wide]);
    add(`${p}per_layer_input_gate.weight`, [P, H]);
    add(`${p}per_layer_projection.weight`, [H, P]);
    if (own.includes(l)) {
      add(`${p}self_attn.k_proj.weight`, [(l % 2 ? 1 : NKV) * hd, H]);
      if (l % 2 === 0) add(`${p}self_attn.v_proj.weight`, [NKV * hd, H]);
      add(`${p}self_attn.k_norm.weight`, [hd]);
    }
  }
  add('embed_tokens.weight', [V, H]);
  add('embed_tokens_per_layer.weight', [V, L * P]);
  add('per_layer_model_projection.weight', [L * P, H]);
  add('per_layer_projection_norm.weight', [P]);
  add('norm.weight', [H]);
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  return {
    names: () => [...shapes.keys()],
    has: (n) => shapes.has(n),
    info: (n) => ({ dtype: 'F32', shape: shapes.get(n)! }),
    read: async (n) => {
      const shape = shapes.get(n)!;
      const size = shape.reduce((a, b) => a * b, 1);
      // Norms and scalars near 1, projections small (so activations stay in range over the layers).
      const vector = shape.length === 1;
      const scale = n.includes('embed_tokens') ? 1 : 0.5 / Math.sqrt(shape[1]);
      return Float32Array.from({ length: size }, () => (vector ? 1 + 0.2 * rand() : scale * rand()));
    },
  };
}

t.test('256- and 512-wide heads on the fused webgpu programs equal the tfjs graph', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  await initBackend('webgpu');
  t.teardown(() => releaseBackend());
  const config = parseModelConfig(CONFIG);
  t.same(config.gemma4!.layers.map((s) => [s.headDim, s.numKvHeads, s.kvSource, s.kEqV]), [[256, 2, 0, false], [512, 1, 1, true], [256, 2, 0, false], [512, 1, 1, true]], 'E2B-like shapes');
  const weights = await loadGemma4Weights(config, randomCheckpoint(), tensorLayout());
  // The fused path first: it takes the per-layer table's host rows before the graph uploads it.
  const fused = new Gemma4WebGPUPath(config, weights);
  const graph = new Gemma4GraphPath(config, weights, { reduce: reduceFused, inPlaceCache: false });
  const pools = { fused: fused.createPool(2, 64), graph: graph.createPool(2, 64) };
  t.teardown(() => {
    for (const p of [...Object.values(pools), fused, graph]) p.dispose();
    disposeWeights(weights);
  });
  const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 3 + ((i * 37 + seed * 101) % (V - 3)));
  let spread = 0;
  const worst = async (a: tf.Tensor, b: tf.Tensor) => {
    const [x, y] = [(await a.data()) as Float32Array, (await b.data()) as Float32Array];
    tf.dispose([a, b]);
    spread = Math.max(spread, ...y.map(Math.abs));
    return x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
  };

  const full = await worst(fused.forward([ids(9, 1)], { allPositions: true }), graph.forward([ids(9, 1)], { allPositions: true }));
  t.ok(full < TOL, `a full pass of 9 tokens: every position's logits within ${TOL} (worst ${full.toExponential(2)})`);

  const baseline = tf.memory().numTensors;
  let prefill = 0;
  for (const [slot, n] of [[0, 20], [1, 11]] as const) {
    for (const [i, chunk] of [ids(n, slot), ids(7, slot + 5)].entries()) {
      const a = fused.prefill(chunk, { pool: pools.fused, slots: [slot], noLogits: i === 0 });
      const b = graph.prefill(chunk, { pool: pools.graph, slots: [slot], noLogits: i === 0 });
      if (a && b) prefill = Math.max(prefill, await worst(a, b));
    }
  }
  t.ok(prefill > 0 && prefill < TOL, `two prompt chunks per slot (the second past the window): last logits within ${TOL} (worst ${prefill.toExponential(2)})`);
  let decode = 0;
  for (let s = 0; s < 3; s++) {
    const rows = [[40 + s], [90 + s]];
    decode = Math.max(decode, await worst(fused.forward(rows, { pool: pools.fused, slots: [0, 1] }), graph.forward(rows, { pool: pools.graph, slots: [0, 1] })));
  }
  t.ok(decode < TOL, `3 batched decode steps of 2 rows at lengths 27 and 18: logits within ${TOL} (worst ${decode.toExponential(2)})`);
  t.ok(spread > 1, `the logits spread enough for ${TOL} to be sharp (largest |logit| ${spread.toFixed(2)})`);
  t.equal(tf.memory().numTensors, baseline, 'no tensor leaked');
});
