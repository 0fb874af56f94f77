/**
 * Attention on the fused webgpu paths, for Gemma 2/3 (forward.ts) and Gemma 4
 * (gemma4.ts) alike: the first pass over blocks of keys, the combine pass,
 * and the cache write of a prompt chunk. The two paths differ only in where
 * a call's own q, K and V sit (`AttentionShape.layout`), in soft-capping, and
 * in how many threads stride a head; the programs are generated from one
 * source for both.
 *
 * The cache is KVPool's pooled layout: per layer K [slots, kvHeads, E, hd]
 * and V^T [slots, kvHeads, hd, E].
 */
import { f32, StepLayout, stepBinding } from './kernels.js';

/** Keys per workgroup of the attention's first pass. */
export const ATTENTION_BLOCK = 32;

/** The shapes one layer's attention programs are built for. */
export interface AttentionShape {
  headDim: number;
  numHeads: number;
  numKvHeads: number;
  /** Cache entries of the layer type, and its window (0 = global). */
  entries: number;
  window: number;
  softcap: number | null;
  /**
   * Where the call's q, K and V sit. 'fused': one [N, (heads + 2 kvHeads) * hd]
   * buffer (Gemma 2/3). 'split': q [N, heads * hd] apart from the call K/V
   * [N, 2 kvHeads * hd], K then V (Gemma 4, whose KV-shared layers read another layer's K/V).
   */
  layout: 'fused' | 'split';
  /** A decode step's attention writes the token's K/V into the cache. */
  writes: boolean;
  /** Threads per workgroup of the combine and cache-write programs; each strides the head. */
  threads: number;
  /** The first pass copies q into workgroup memory (heads up to 256 fit; Gemma 4's 512-wide ones not in the 16 KiB WebGPU guarantees). */
  stageQ: boolean;
}

/** The call's buffers as the programs bind them, their row strides and where K and V start in a row (floats). */
function callLayout(s: AttentionShape) {
  const hd = s.headDim;
  if (s.layout === 'fused') {
    const width = (s.numHeads + 2 * s.numKvHeads) * hd;
    return { q: 'qkv', kv: 'qkv', qStride: width, kvStride: width, kAt: s.numHeads * hd, vAt: (s.numHeads + s.numKvHeads) * hd };
  }
  return { q: 'qb', kv: 'kvc', qStride: s.numHeads * hd, kvStride: 2 * s.numKvHeads * hd, kAt: 0, vAt: s.numKvHeads * hd };
}

/** The first bindings of the attention and cache-write programs: the call's q and K/V (one buffer where fused). */
function callBindings(s: AttentionShape, withQ: boolean): string[] {
  const c = callLayout(s);
  const names = withQ && c.q !== c.kv ? [c.q, c.kv] : [c.kv];
  return names.map((name) => `var<storage, read> ${name}: array<f32>;`);
}

function declare(vars: string[]): string {
  return vars.map((v, i) => `@group(0) @binding(${i + 1}) ${v}`).join('\n');
}

/**
 * Attention, first pass (flash-decoding): one workgroup per (block of 32
 * keys, token of any row, KV head) covering the KV head's g query heads,
 * reading the row's slot of the pooled cache. It writes the block's
 * unnormalized output, max and sum of exp per query head; the combine pass
 * merges the blocks. Keys are the row's cache entries, then the call's own
 * keys.
 *
 * Entry e of a cache holding `start` tokens holds position
 * p = (start-1) - ((start-1-e) mod E): the ring invariant of KVPool. It is
 * visible to query position q when p >= 0 and, on a sliding layer,
 * p > q - window. The call's own token u is visible to its token t when
 * u <= t (and inside the window).
 */
export function attentionKernel(s: AttentionShape): string {
  const hd = s.headDim;
  const g = s.numHeads / s.numKvHeads;
  const BLK = ATTENTION_BLOCK;
  const c = callLayout(s);
  const visible = (p: string) => (s.window > 0 ? `(${p} > q - ${s.window})` : 'true');
  const query = (i: string) => (s.stageQ ? `qs[${i}]` : `${c.q}[qbase + ${i}]`);
  const bindings = [...callBindings(s, true), 'var<storage, read_write> kc: array<f32>;', 'var<storage, read_write> vtc: array<f32>;', 'var<storage, read_write> part: array<f32>;'];
  return `${stepBinding}
${declare(bindings)}
const HD = ${hd}u;
const G = ${g}u;
const E = ${s.entries}u;
const BLK = ${BLK}u;
const QW = ${c.qStride}u;
const KVW = ${c.kvStride}u;
const KAT = ${c.kAt}u;
const VAT = ${c.vAt}u;
const NQ = ${s.numHeads}u;
const NKV = ${s.numKvHeads}u;
const SLICE = ${hd / 8}u;
${s.stageQ ? `var<workgroup> qs: array<f32, ${g * hd}>;` : ''}
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
  // Rows have different lengths; the grid covers the longest.
  if (blk * BLK >= L) { return; }
  let kv = slot * NKV + h;
  let NBS = step[${StepLayout.BLOCKS}];
  let qbase = n * QW + h * G * HD;
  ${s.stageQ ? `for (var j = i; j < G * HD; j += 256u) { qs[j] = ${c.q}[qbase + j]; }` : ''}
  // Thread i: key kk of the block, slice p8 of its head dimension.
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
      kbase = (b * T + u) * KVW + KAT + h * HD;
      fromCache = false;
    }
  }
  if (p8 == 0u) { valid[kk] = select(0u, 1u, ok); }
  workgroupBarrier();
  var dots: array<f32, ${g}>;
  if (ok) {
    for (var d = p8 * SLICE; d < (p8 + 1u) * SLICE; d++) {
      var kv = 0.0;
      if (fromCache) { kv = kc[kbase + d]; } else { kv = ${c.kv}[kbase + d]; }
      for (var hh = 0u; hh < G; hh++) { dots[hh] += ${query('hh * HD + d')} * kv; }
    }
  }
  for (var hh = 0u; hh < G; hh++) { pd[(kk * 8u + p8) * G + hh] = dots[hh]; }
  workgroupBarrier();
  if (i < BLK * G) {
    let k2 = i / G;
    let hh = i % G;
    var dot = 0.0;
    for (var x = 0u; x < 8u; x++) { dot += pd[(k2 * 8u + x) * G + hh]; }
    ${s.softcap ? `dot = tanh(clamp(dot / ${f32(s.softcap)}, -10.0, 10.0)) * ${f32(s.softcap)};` : ''}
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
          acc += w * ${c.kv}[(b * T + jj - cached) * KVW + VAT + h * HD + d];
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
      ? `// A decode step writes its token's K/V here (one dispatch fewer per layer): entry start mod E holds
  // position start - E, which no query of this step (nor a layer sharing this cache later in the step) sees.
  if (T == 1u && blk == 0u && step[${StepLayout.ROWS} + 4u * b + 2u] != 0u) {
    let e = start % E;
    for (var d = i; d < HD; d += 256u) {
      kc[(kv * E + e) * HD + d] = ${c.kv}[n * KVW + KAT + h * HD + d];
      vtc[(kv * HD + d) * E + e] = ${c.kv}[n * KVW + VAT + h * HD + d];
    }
  }`
      : ''
  }
}`;
}

/** Attention, second pass: merges a token's blocks per query head (all rows in one dispatch). */
export function attentionCombineKernel(s: AttentionShape): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const HD = ${s.headDim}u;
const E = ${s.entries}u;
const NQ = ${s.numHeads}u;
@compute @workgroup_size(${s.threads})
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
  for (var d = lid.x; d < HD; d += ${s.threads}u) {
    var acc = 0.0;
    for (var k = 0u; k < blocks; k++) {
      let at = (base + k) * (HD + 2u);
      if (part[at + HD + 1u] > 0.0) { acc += exp(part[at + HD] - M) * part[at + d]; }
    }
    out[n * NQ * HD + hq * HD + d] = acc / z;
  }
}`;
}

/**
 * Writes a prompt chunk's new keys and values into each row's slot of the
 * pooled cache, after its attention (a decode step's attention writes its
 * own): token t goes to entry (start + t) mod E. Only the last E tokens of a
 * long chunk land (older ones would be overwritten).
 */
export function kvWriteKernel(s: AttentionShape): string {
  const c = callLayout(s);
  const bindings = [...callBindings(s, false), 'var<storage, read_write> kc: array<f32>;', 'var<storage, read_write> vtc: array<f32>;'];
  return `${stepBinding}
${declare(bindings)}
const HD = ${s.headDim}u;
const E = ${s.entries}u;
const NKV = ${s.numKvHeads}u;
@compute @workgroup_size(${s.threads})
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
  let src = n * ${c.kvStride}u + h * HD;
  for (var d = lid.x; d < HD; d += ${s.threads}u) {
    kc[(kv * E + e) * HD + d] = ${c.kv}[src + ${c.kAt}u + d];
    vtc[(kv * HD + d) * E + e] = ${c.kv}[src + ${c.vAt}u + d];
  }
}`;
}
