/**
 * The attention programs of Gemma 4's layer on the fused webgpu path
 * (gemma4.ts): the per-head norms and rotary embedding, attention in two
 * passes over the pooled cache and the call's own K/V, and the cache write of
 * a prompt chunk. Unlike kernels.ts's Gemma 2/3 programs, q and K/V live in
 * two buffers (q [N, heads * hd]; a layer's call K/V [N, 2 * kvHeads * hd],
 * kept for the KV-shared layers that read it), v is normed without a weight
 * (from the raw keys where keys are the values), and head sizes go up to 512:
 * every program strides the head with its threads, and none holds a head per
 * query in workgroup memory (16 KiB is all WebGPU guarantees).
 */
import { ATTENTION_BLOCK, f32, StepLayout } from './kernels.js';
import { reduce64, stepBinding } from './gemma4-kernels.js';

/** The shapes one layer's attention programs are built for. */
export interface Gemma4AttentionShape {
  headDim: number;
  numHeads: number;
  numKvHeads: number;
  /** Cache entries of the layer type, and its window (0 = global). */
  entries: number;
  window: number;
  eps: number;
  /** Offset of the layer type's cos table in the rope buffer, as a WGSL expression of N. */
  ropeAt: string;
  /** The layer computes K/V (not KV-shared); with kEqV its keys are its values. */
  own: boolean;
  kEqV: boolean;
  /** A decode step's attention writes the token's K/V into the layer's cache (own layers with a pool). */
  writes: boolean;
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
${reduce64}
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
  let inv = inverseSqrt(sum64(ss, i) / f32(HD) + ${f32(s.eps)});
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

/**
 * Attention, first pass (flash-decoding), as kernels.ts's attentionKernel:
 * one workgroup per (block of 32 keys, token, KV head) over the KV head's g
 * query heads; keys are the row's cache entries (the source layer's cache
 * for a KV-shared layer), then the call's own keys from `kvc` (the source
 * layer's call K/V). Queries are read from `q` directly, so head sizes up to
 * 512 fit the 16 KiB of workgroup memory WebGPU guarantees.
 */
export function attentionKernel4(s: Gemma4AttentionShape): string {
  const hd = s.headDim;
  const g = s.numHeads / s.numKvHeads;
  const BLK = ATTENTION_BLOCK;
  const visible = (p: string) => (s.window > 0 ? `(${p} > q - ${s.window})` : 'true');
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> qb: array<f32>;
@group(0) @binding(2) var<storage, read> kvc: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vtc: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
const HD = ${hd}u;
const G = ${g}u;
const E = ${s.entries}u;
const BLK = ${BLK}u;
const KVW = ${2 * s.numKvHeads * hd}u;
const NQ = ${s.numHeads}u;
const NKV = ${s.numKvHeads}u;
const SLICE = ${hd / 8}u;
var<workgroup> pd: array<f32, ${BLK * 8 * g}>;
var<workgroup> sc: array<f32, ${g * BLK}>;
var<workgroup> valid: array<u32, ${BLK}>;
var<workgroup> stat: array<f32, ${2 * g}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let blk = wg.x;
  let n = wg.y;
  let h = wg.z;
  let i = lid.x;
  let T = step[${StepLayout.T}];
  let b = n / T;
  let t = n % T;
  let start = step[${StepLayout.ROWS} + 4u * b];
  let cached = select(0u, min(E, start), step[${StepLayout.ROWS} + 4u * b + 1u] != 0u);
  let slot = step[${StepLayout.ROWS} + 4u * b + 3u];
  let q = i32(start + t);
  let L = cached + T;
  if (blk * BLK >= L) { return; }
  let kv = slot * NKV + h;
  let NBS = step[${StepLayout.BLOCKS}];
  let qbase = n * NQ * HD + h * G * HD;
  let kk = i / 8u;
  let p8 = i % 8u;
  let j = blk * BLK + kk;
  var ok = false;
  var kbase = 0u;
  var fromCache = true;
  if (j < L) {
    if (j < cached) {
      let s1 = i32(start) - 1;
      let pos = s1 - (((s1 - i32(j)) % i32(E)) + i32(E)) % i32(E);
      ok = pos >= 0 && ${visible('pos')};
      kbase = (kv * E + j) * HD;
    } else {
      let u = j - cached;
      let pos = i32(start + u);
      ok = u <= t && ${visible('pos')};
      kbase = (b * T + u) * KVW + h * HD;
      fromCache = false;
    }
  }
  if (p8 == 0u) { valid[kk] = select(0u, 1u, ok); }
  workgroupBarrier();
  var dots: array<f32, ${g}>;
  if (ok) {
    for (var d = p8 * SLICE; d < (p8 + 1u) * SLICE; d++) {
      var kv = 0.0;
      if (fromCache) { kv = kc[kbase + d]; } else { kv = kvc[kbase + d]; }
      for (var hh = 0u; hh < G; hh++) { dots[hh] += qb[qbase + hh * HD + d] * kv; }
    }
  }
  for (var hh = 0u; hh < G; hh++) { pd[(kk * 8u + p8) * G + hh] = dots[hh]; }
  workgroupBarrier();
  if (i < BLK * G) {
    let k2 = i / G;
    let hh = i % G;
    var dot = 0.0;
    for (var x = 0u; x < 8u; x++) { dot += pd[(k2 * 8u + x) * G + hh]; }
    sc[hh * BLK + k2] = select(-1e30, dot, valid[k2] != 0u);
  }
  workgroupBarrier();
  if (i < G) {
    var m = -1e30;
    for (var x = 0u; x < BLK; x++) { m = max(m, sc[i * BLK + x]); }
    var l = 0.0;
    if (m > -1e29) {
      for (var x = 0u; x < BLK; x++) { l += select(0.0, exp(sc[i * BLK + x] - m), sc[i * BLK + x] > -1e29); }
    }
    stat[i] = m;
    stat[G + i] = l;
  }
  workgroupBarrier();
  if (i < G * BLK) {
    let hh = i / BLK;
    sc[i] = select(0.0, exp(sc[i] - stat[hh]), sc[i] > -1e29);
  }
  workgroupBarrier();
  for (var o = i; o < G * HD; o += 256u) {
    let hh = o / HD;
    let d = o % HD;
    var acc = 0.0;
    for (var x = 0u; x < BLK; x++) {
      let w = sc[hh * BLK + x];
      if (w != 0.0) {
        let jj = blk * BLK + x;
        if (jj < cached) {
          acc += w * vtc[(kv * HD + d) * E + jj];
        } else {
          acc += w * kvc[(b * T + jj - cached) * KVW + (NKV + h) * HD + d];
        }
      }
    }
    let at = ((n * NQ + h * G + hh) * NBS + blk) * (HD + 2u);
    part[at + d] = acc;
    if (d == 0u) {
      part[at + HD] = stat[hh];
      part[at + HD + 1u] = stat[G + hh];
    }
  }
  ${
    s.writes
      ? `// A decode step writes its token's K/V here: entry start mod E holds position start - E, which no query of this
  // step (nor a layer sharing this cache later in the step) sees.
  if (T == 1u && blk == 0u && step[${StepLayout.ROWS} + 4u * b + 2u] != 0u) {
    let e = start % E;
    for (var d = i; d < HD; d += 256u) {
      kc[(kv * E + e) * HD + d] = kvc[n * KVW + h * HD + d];
      vtc[(kv * HD + d) * E + e] = kvc[n * KVW + (NKV + h) * HD + d];
    }
  }`
      : ''
  }
}`;
}

/** Attention, second pass: merges a token's blocks per query head; 64 threads stride the head. */
export function combineKernel4(s: Gemma4AttentionShape): string {
  const hd = s.headDim;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const HD = ${hd}u;
const E = ${s.entries}u;
const NQ = ${s.numHeads}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let hq = wg.y;
  if (n >= step[${StepLayout.N}]) { return; }
  let T = step[${StepLayout.T}];
  let b = n / T;
  let start = step[${StepLayout.ROWS} + 4u * b];
  let cached = select(0u, min(E, start), step[${StepLayout.ROWS} + 4u * b + 1u] != 0u);
  let blocks = (cached + T + ${ATTENTION_BLOCK - 1}u) / ${ATTENTION_BLOCK}u;
  let base = (n * NQ + hq) * step[${StepLayout.BLOCKS}];
  var M = -1e30;
  for (var k = 0u; k < blocks; k++) { M = max(M, part[(base + k) * (HD + 2u) + HD]); }
  var z = 0.0;
  for (var k = 0u; k < blocks; k++) {
    let at = (base + k) * (HD + 2u);
    if (part[at + HD + 1u] > 0.0) { z += exp(part[at + HD] - M) * part[at + HD + 1u]; }
  }
  for (var d = lid.x; d < HD; d += 64u) {
    var acc = 0.0;
    for (var k = 0u; k < blocks; k++) {
      let at = (base + k) * (HD + 2u);
      if (part[at + HD + 1u] > 0.0) { acc += exp(part[at + HD] - M) * part[at + d]; }
    }
    out[n * NQ * HD + hq * HD + d] = acc / z;
  }
}`;
}

/** A prompt chunk's K/V from the layer's call buffer into each row's slot (only the last E tokens land). */
export function kvWriteKernel4(s: Gemma4AttentionShape): string {
  const hd = s.headDim;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> kvc: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;
@group(0) @binding(3) var<storage, read_write> vtc: array<f32>;
const HD = ${hd}u;
const E = ${s.entries}u;
const NKV = ${s.numKvHeads}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let h = wg.y;
  let T = step[${StepLayout.T}];
  if (n >= step[${StepLayout.N}]) { return; }
  let b = n / T;
  let t = n % T;
  if (t + E < T || step[${StepLayout.ROWS} + 4u * b + 2u] == 0u) { return; }
  let e = (step[${StepLayout.ROWS} + 4u * b] + t) % E;
  let kv = step[${StepLayout.ROWS} + 4u * b + 3u] * NKV + h;
  for (var d = lid.x; d < HD; d += 64u) {
    kc[(kv * E + e) * HD + d] = kvc[n * ${2 * s.numKvHeads * hd}u + h * HD + d];
    vtc[(kv * HD + d) * E + e] = kvc[n * ${2 * s.numKvHeads * hd}u + (NKV + h) * HD + d];
  }
}`;
}
