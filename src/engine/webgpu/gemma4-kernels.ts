/**
 * The per-token WGSL programs of Gemma 4's layer on the fused webgpu path
 * (gemma4.ts), beside its attention (gemma4-attention.ts) and experts
 * (gemma4-moe.ts); kernels.ts's embedding, matmul, norms and unembedding
 * serve Gemma 4 as they are. Gemma 4's norms multiply by their
 * weights, read from one vector buffer per layer (`LayerVec`), so that a
 * residual step binds few buffers.
 */
import { f32, gelu, groupSum, StepLayout, stepBinding } from './kernels.js';

/** Slots of a layer's packed vector buffer, each H floats; then the layer scalar, then the per-expert scales. */
export const LayerVec = { POST_ATTN: 0, PRE_FFW: 1, POST_FFW: 2, POST_FFW_1: 3, POST_FFW_2: 4, PRE_FFW_2: 5, PLE_POST: 6, NEXT_INPUT: 7, SCALAR: 8 } as const;

/**
 * The residual steps of a layer, per token (64 threads): f = rms(y) * w_a
 * (with `mix`, rms(y) * w_a + rms(y2) * w_b, the dense MLP beside the
 * experts, and then f = rms(f) * w_c); x = (x + f) [* layer scalar]; then
 * xn = rms(x) * w_n and, with `second`, xm = rms(x) * w_m. Weights are slots
 * of the layer's vector buffer (LayerVec).
 */
export function residualKernel4(o: { H: number; eps: number; mix?: { a: number; b: number; c: number }; post?: number; scale: boolean; next?: number; second?: number }): string {
  // Bindings in this order: step, y, vec, x, [xn], [xm], [y2].
  const names: Array<[string, string]> = [['read', 'y'], ['read', 'vec'], ['read_write', 'x']];
  if (o.next !== undefined) names.push(['read_write', 'xn']);
  if (o.second !== undefined) names.push(['read_write', 'xm']);
  if (o.mix) names.push(['read', 'y2']);
  const bindings = names.map(([access, name], i) => `@group(0) @binding(${i + 1}) var<storage, ${access}> ${name}: array<f32>;`);
  const eps = f32(o.eps);
  const H = o.H;
  const rms = (expr: string, name: string) => `var ${name}s = 0.0;
  for (var i = lid.x; i < H; i += 64u) { let v = ${expr}; ${name}s += v * v; }
  let ${name} = inverseSqrt(groupSum(${name}s, lid.x) / f32(H) + ${eps});`;
  const f = o.mix ? `(y[base + i] * iy * vec[${o.mix.a * H}u + i] + y2[base + i] * iy2 * vec[${o.mix.b * H}u + i])` : '';
  return `${stepBinding}
${bindings.join('\n')}
const H = ${H}u;
${groupSum(64)}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = wg.x;
  if (r >= step[${StepLayout.N}]) { return; }
  let base = r * H;
  ${rms('y[base + i]', 'iy')}
  ${o.mix ? `${rms('y2[base + i]', 'iy2')}\n  ${rms(f, 'iff')}` : ''}
  var hs = 0.0;
  for (var i = lid.x; i < H; i += 64u) {
    var h = x[base + i] + ${o.mix ? `${f} * iff * vec[${o.mix.c * H}u + i]` : `y[base + i] * iy * vec[${o.post! * H}u + i]`};
    ${o.scale ? `h = h * vec[${LayerVec.SCALAR * H}u];` : ''}
    x[base + i] = h;
    hs += h * h;
  }
  ${
    o.next !== undefined
      ? `let inv = inverseSqrt(groupSum(hs, lid.x) / f32(H) + ${eps});
  for (var i = lid.x; i < H; i += 64u) {
    xn[base + i] = x[base + i] * inv * vec[${o.next * H}u + i];
    ${o.second !== undefined ? `xm[base + i] = x[base + i] * inv * vec[${o.second * H}u + i];` : ''}
  }`
      : ''
  }
}`;
}

/**
 * Per-layer inputs, per (token, layer): the projection of the embedding
 * (x H^-0.5, normed over P with w) plus the token's own rows (x sqrt(P)),
 * times 2^-0.5, in place over the projection.
 */
export function pleCombineKernel(o: { L: number; P: number; H: number; eps: number }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> own: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> proj: array<f32>;
const P = ${o.P}u;
${groupSum(64)}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let l = wg.y;
  if (n >= step[${StepLayout.N}]) { return; }
  let base = (n * ${o.L}u + l) * P;
  var ss = 0.0;
  for (var i = lid.x; i < P; i += 64u) { let v = proj[base + i] * ${f32(o.H ** -0.5)}; ss += v * v; }
  let inv = inverseSqrt(groupSum(ss, lid.x) / f32(P) + ${f32(o.eps)});
  for (var i = lid.x; i < P; i += 64u) {
    let normed = proj[base + i] * ${f32(o.H ** -0.5)} * inv * w[i];
    proj[base + i] = (normed + own[base + i] * ${f32(Math.sqrt(o.P))}) * ${f32(2 ** -0.5)};
  }
}`;
}

/** g = gelu_tanh(g) * (layer l's per-layer input), in place over [N, P]. */
export function pleGateKernel(o: { L: number; P: number; layer: number }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> pli: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
${gelu}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let l = ${o.layer}u;
  if (n >= step[${StepLayout.N}]) { return; }
  for (var i = lid.x; i < ${o.P}u; i += 64u) {
    g[n * ${o.P}u + i] = gelu(g[n * ${o.P}u + i]) * pli[(n * ${o.L}u + l) * ${o.P}u + i];
  }
}`;
}
