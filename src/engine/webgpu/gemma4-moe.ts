/**
 * Gemma 4's mixture-of-experts block as WGSL programs, with no readback:
 * the router writes each token's routing weights as a dense [N, E] row
 * (zero for experts it did not pick), and the expert programs are
 * dispatched over every expert but skip, per workgroup, the experts none of
 * its rows was routed to. A decode step so reads only its top-k experts'
 * weights; a prompt chunk reads each expert once for the rows it routed.
 *
 * Expert weights are packed per layer as [E, H, 2 * Im] (gate columns, then
 * up) and [E, Im, H] (gemma4.ts packs them at load).
 */
import { anyRow, f32, groupSum, matmulKernel, StepLayout, stepBinding, tileSums } from './kernels.js';
import { LayerVec } from './gemma4-kernels.js';

/**
 * Per token: softmax(rms(h) @ router) over E experts, the top-k (ties to the
 * lower index) renormalized and times the per-expert scale (from the layer's
 * vector buffer, after the layer scalar), the rest 0.
 */
export function routeKernel(o: { H: number; E: number; topK: number; eps: number }): string {
  const scales = (LayerVec.SCALAR * o.H + 1).toString();
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> router: array<f32>;
@group(0) @binding(3) var<storage, read> vec: array<f32>;
@group(0) @binding(4) var<storage, read_write> route: array<f32>;
const H = ${o.H}u;
const E = ${o.E}u;
${groupSum(64)}
var<workgroup> logits: array<f32, ${o.E}>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let i = lid.x;
  if (n >= step[${StepLayout.N}]) { return; }
  var ss = 0.0;
  for (var k = i; k < H; k += 64u) { let v = x[n * H + k]; ss += v * v; }
  let inv = inverseSqrt(groupSum(ss, i) / f32(H) + ${f32(o.eps)});
  for (var e = i; e < E; e += 64u) {
    var acc = 0.0;
    for (var k = 0u; k < H; k++) { acc += x[n * H + k] * router[k * E + e]; }
    logits[e] = acc * inv;
  }
  workgroupBarrier();
  if (i != 0u) { return; }
  var m = -3.0e38;
  for (var e = 0u; e < E; e++) { m = max(m, logits[e]); }
  var z = 0.0;
  for (var e = 0u; e < E; e++) { let p = exp(logits[e] - m); logits[e] = p; z += p; }
  for (var e = 0u; e < E; e++) { logits[e] = logits[e] / z; route[n * E + e] = 0.0; }
  // Top-k by repeated selection; route[] marks the picked ones (weights go in after the sum is known).
  var picked: array<u32, ${o.topK}>;
  var sum = 0.0;
  for (var r = 0u; r < ${o.topK}u; r++) {
    var best = 0u;
    var bp = -1.0;
    for (var e = 0u; e < E; e++) {
      if (route[n * E + e] == 0.0 && logits[e] > bp) { bp = logits[e]; best = e; }
    }
    picked[r] = best;
    route[n * E + best] = 1.0;
    sum += bp;
  }
  for (var r = 0u; r < ${o.topK}u; r++) {
    let e = picked[r];
    route[n * E + e] = logits[e] / sum * vec[${scales}u + e];
  }
}`;
}

/**
 * act[e, n, :] = gelu(x[n] @ gate_e) * (x[n] @ up_e) for the rows routed to
 * e: kernels.ts's matmul with the expert as the third grid dimension.
 */
export function expertGateUpKernel(o: { H: number; Im: number; E: number; R: number }): string {
  return matmulKernel({ K: o.H, M: 2 * o.Im, ld: o.Im, col0: 0, R: o.R, rowsAt: StepLayout.N, epilogue: { kind: 'geglu' }, experts: o.E });
}

/**
 * y[n, :] = sum over experts e routed from n of route[n, e] * (act[e, n] @
 * down_e): one dispatch over the output columns, the experts looped inside
 * (skipping those no row of the workgroup was routed to, and never reading
 * an unrouted row's activations, which hold stale values).
 */
export function expertDownKernel(o: { H: number; Im: number; E: number; R: number }): string {
  const R = o.R;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> act: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> route: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
const K = ${o.Im}u;
const M = ${o.H}u;
const E = ${o.E}u;
const R = ${R}u;
const KCHUNK = ${Math.ceil(o.Im / 8)}u;
var<workgroup> part: array<f32, ${8 * 32 * R}>;
${anyRow(R)}
@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let rows = step[${StepLayout.N}];
  let r0 = wg.y * R;
  if (r0 >= rows) { return; }
  let col = wg.x * 32u + lid.x;
  let k0 = lid.y * KCHUNK;
  let k1 = min(K, k0 + KCHUNK);
  var acc: array<f32, ${R}>;
  var ae: array<f32, ${R}>;
  for (var e = 0u; e < E; e++) {
    if (!anyRow(r0, rows, e) || col >= M) { continue; }
    for (var r = 0u; r < R; r++) { ae[r] = 0.0; }
    for (var k = k0; k < k1; k++) {
      let w = W[(e * K + k) * M + col];
      for (var r = 0u; r < R; r++) { ae[r] += act[(e * rows + min(r0 + r, rows - 1u)) * K + k] * w; }
    }
    for (var r = 0u; r < R; r++) {
      let wr = route[min(r0 + r, rows - 1u) * E + e];
      if (wr != 0.0) { acc[r] += wr * ae[r]; }
    }
  }
  ${tileSums({ R, geglu: false, width: 'M', store: 'y[(r0 + r) * M + outCol] = v;' })}
}`;
}
