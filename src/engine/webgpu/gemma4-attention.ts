/**
 * The per-head norms and rotary embedding of Gemma 4's layer on the fused
 * webgpu path (gemma4.ts); its attention is attention.ts's, on the 'split'
 * layout. Unlike kernels.ts's Gemma 2/3 program, q and K/V live in two
 * buffers (q [N, heads * hd]; a layer's call K/V [N, 2 * kvHeads * hd], kept
 * for the KV-shared layers that read it), v is normed without a weight (from
 * the raw keys where keys are the values), and heads go up to 512 wide, so
 * 64 threads stride a head instead of one thread per element.
 */
import type { AttentionShape } from './attention.js';
import { f32, groupSum, StepLayout, stepBinding } from './kernels.js';

/** The shapes one Gemma 4 layer's attention programs are built for. */
export interface Gemma4AttentionShape extends AttentionShape {
  eps: number;
  /** Offset of the layer type's cos table in the rope buffer, as a WGSL expression of N. */
  ropeAt: string;
  /** The layer computes K/V (not KV-shared); with kEqV its keys are its values. */
  own: boolean;
  kEqV: boolean;
}

/**
 * Per (token, head): RMSNorm of q heads (times q_norm, then rotated), k heads
 * (times k_norm, rotated) and v heads (no weight, not rotated); with kEqV the
 * k program writes v from the raw keys first. In place, 64 threads per head.
 */
export function headNormKernel(s: Gemma4AttentionShape): string {
  const hd = s.headDim;
  const kvw = 2 * s.numKvHeads * hd;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> rope: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read> qn: array<f32>;
${s.own ? '@group(0) @binding(4) var<storage, read_write> kv: array<f32>;\n@group(0) @binding(5) var<storage, read> kn: array<f32>;' : ''}
const HD = ${hd}u;
const HALF = ${hd / 2}u;
const NQ = ${s.numHeads}u;
const NKV = ${s.numKvHeads}u;
${groupSum(64)}
var<workgroup> vals: array<f32, ${hd}>;
// q heads, then k heads, then v heads (the call K/V buffer holds K then V).
fn at(h: u32, n: u32) -> u32 {
  if (h < NQ) { return n * NQ * HD + h * HD; }
  return n * ${kvw}u + (h - NQ) * HD;
}
fn load(h: u32, i: u32) -> f32 {
  ${s.own ? 'if (h >= NQ) { return kv[i]; }' : ''}
  return q[i];
}
fn store(h: u32, i: u32, v: f32) {
  ${s.own ? 'if (h >= NQ) { kv[i] = v; return; }' : ''}
  q[i] = v;
}
fn weight(h: u32, d: u32) -> f32 {
  if (h < NQ) { return qn[d]; }
  ${s.own ? 'if (h < NQ + NKV) { return kn[d]; }' : ''}
  return 1.0;
}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let h = wg.y;
  let i = lid.x;
  let N = step[${StepLayout.N}];
  if (n >= N) { return; }
  let base = at(h, n);
  var ss = 0.0;
  for (var d = i; d < HD; d += 64u) { let v = load(h, base + d); vals[d] = v; ss += v * v; }
  let inv = inverseSqrt(groupSum(ss, i) / f32(HD) + ${f32(s.eps)});
  ${s.own && s.kEqV ? 'if (h >= NQ) { for (var d = i; d < HD; d += 64u) { kv[base + NKV * HD + d] = vals[d] * inv; } }' : ''}
  for (var d = i; d < HD; d += 64u) { vals[d] = vals[d] * inv * weight(h, d); }
  workgroupBarrier();
  let rotate = h < NQ + NKV;
  let cosAt = ${s.ropeAt} + n * HD;
  for (var d = i; d < HD; d += 64u) {
    var v = vals[d];
    if (rotate) {
      let rot = select(vals[d - HALF], -vals[d + HALF], d < HALF);
      v = v * rope[cosAt + d] + rot * rope[cosAt + N * HD + d];
    }
    store(h, base + d, v);
  }
}`;
}
