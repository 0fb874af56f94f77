/**
 * The WGSL programs of the fused forward pass on webgpu: a handful of kernels
 * per layer instead of the ~80 tfjs ops of the graph path, because on a GPU
 * each dispatch costs more than the work of a small op.
 *
 * Every program reads the call's header from `step` (u32): see `StepLayout`.
 * Shapes that are fixed for a model (hidden size, head counts, cache entries)
 * are baked into the source as constants, so the only per-call data is that
 * header, the token ids and the rope tables.
 */

/** Offsets into the u32 `step` buffer written once per call. */
export const StepLayout = {
  /** Tokens in the call (B * T). */
  N: 0,
  B: 1,
  T: 2,
  /** Rows that get logits, and where they are in the hidden state: row r is token r * OUT_STRIDE + OUT_OFFSET. */
  OUT_ROWS: 3,
  OUT_STRIDE: 4,
  OUT_OFFSET: 5,
  /** Where the token ids start in `step`. */
  IDS_AT: 6,
  /** Attention blocks per (token, head) in the partials buffer. */
  BLOCKS: 7,
  /**
   * Per row b, at ROWS + 4b: tokens already in the row's cache, 1 if the row attends over a cache, 1 if it
   * writes to one, and its slot in the pooled cache. Attention scans the cache's first min(E, tokens)
   * entries: until a ring wraps, the rest are empty.
   */
  ROWS: 8,
  ROW_FIELDS: 4,
} as const;

/** f32 literal for WGSL (a JS number printed in full, with a decimal point). */
export function f32(x: number): string {
  const s = Math.fround(x).toString();
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

const stepBinding = '@group(0) @binding(0) var<storage, read> step: array<u32>;';

/** x[n, :] = embedding row of ids[n] * sqrt(H), for ids inside this chunk [v0, v0 + vc) of the [H, V] table. */
export function embedKernel(o: { H: number; vc: number; v0: number; scale: number }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
const H = ${o.H}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  if (n >= step[${StepLayout.N}]) { return; }
  let id = step[step[${StepLayout.IDS_AT}] + n];
  if (id < ${o.v0}u || id >= ${o.v0 + o.vc}u) { return; }
  for (var i = lid.x; i < H; i += 64u) {
    x[n * H + i] = table[i * ${o.vc}u + id - ${o.v0}u] * ${f32(o.scale)};
  }
}`;
}

/** Sum of `v` over a 256-thread workgroup (every thread gets the total). */
const reduce256 = `
var<workgroup> red: array<f32, 256>;
fn sum256(v: f32, i: u32) -> f32 {
  red[i] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (i < s) { red[i] += red[i + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}
fn max256(v: f32, i: u32) -> f32 {
  red[i] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (i < s) { red[i] = max(red[i], red[i + s]); }
    workgroupBarrier();
  }
  let m = red[0];
  workgroupBarrier();
  return m;
}`;

/**
 * RMSNorm of rows, one workgroup per output row. `final`: the rows that get
 * logits (header OUT_*), scaled by `w`; otherwise every row, unscaled (the
 * norm's weight is folded into the next projection).
 */
export function normKernel(o: { H: number; eps: number; final: boolean }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${o.final ? '@group(0) @binding(3) var<storage, read> w: array<f32>;' : ''}
const H = ${o.H}u;
${reduce256}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = wg.x;
  ${o.final ? `if (r >= step[${StepLayout.OUT_ROWS}]) { return; }
  let src = (r * step[${StepLayout.OUT_STRIDE}] + step[${StepLayout.OUT_OFFSET}]) * H;` : `if (r >= step[${StepLayout.N}]) { return; }
  let src = r * H;`}
  var ss = 0.0;
  for (var i = lid.x; i < H; i += 256u) { let v = x[src + i]; ss += v * v; }
  let inv = inverseSqrt(sum256(ss, lid.x) / f32(H) + ${f32(o.eps)});
  for (var i = lid.x; i < H; i += 256u) { y[r * H + i] = x[src + i] * inv${o.final ? ' * w[i]' : ''}; }
}`;
}

/**
 * The residual step after attention or the MLP: x += rms(y) * w, then
 * xn = rms(x) for the next projection (its norm weight is folded into it).
 */
export function residualKernel(o: { H: number; eps: number }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> xn: array<f32>;
const H = ${o.H}u;
${reduce256}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = wg.x;
  if (r >= step[${StepLayout.N}]) { return; }
  let base = r * H;
  var ss = 0.0;
  for (var i = lid.x; i < H; i += 256u) { let v = y[base + i]; ss += v * v; }
  let inv = inverseSqrt(sum256(ss, lid.x) / f32(H) + ${f32(o.eps)});
  var hs = 0.0;
  for (var i = lid.x; i < H; i += 256u) {
    let h = x[base + i] + y[base + i] * inv * w[i];
    x[base + i] = h;
    hs += h * h;
  }
  let inv2 = inverseSqrt(sum256(hs, lid.x) / f32(H) + ${f32(o.eps)});
  for (var i = lid.x; i < H; i += 256u) { xn[base + i] = x[base + i] * inv2; }
}`;
}

/** What a matmul writes: the product, gelu(gate) * up of its two column halves, or soft-capped logits. */
export type Epilogue = { kind: 'plain' } | { kind: 'geglu' } | { kind: 'softcap'; cap: number };

/**
 * y[r, col0 + c] = x[r, :] . W[:, c] for W [K, M] (the engine's [in, out]
 * layout). A workgroup is 32 columns x 8 slices of K, each thread keeping
 * `R` rows in registers: adjacent threads read adjacent columns (coalesced),
 * and the K slices give a GEMV enough threads to stream the weight.
 * With `geglu`, columns c and c + M/2 are gate and up, and the output is
 * M/2 wide. Rows come from the header (N, or OUT_ROWS for the logits).
 */
export function matmulKernel(o: { K: number; M: number; ld: number; col0: number; R: number; rowsAt: number; epilogue: Epilogue }): string {
  const geglu = o.epilogue.kind === 'geglu';
  const width = geglu ? o.M / 2 : o.M;
  const parts = geglu ? 2 : 1;
  let store = 'v';
  if (geglu) store = 'gelu(v) * u';
  else if (o.epilogue.kind === 'softcap') store = `tanh(clamp(v / ${f32(o.epilogue.cap)}, -10.0, 10.0)) * ${f32(o.epilogue.cap)}`;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
const K = ${o.K}u;
const M = ${o.M}u;
const WIDTH = ${width}u;
const R = ${o.R}u;
const KS = 8u;
const KCHUNK = ${Math.ceil(o.K / 8)}u;
var<workgroup> part: array<f32, ${8 * 32 * o.R * parts}>;
fn gelu(g: f32) -> f32 {
  // gelu(tanh) as g * sigmoid(2u); exp of a large positive gives inf and a 0 result, as it should.
  let u = 0.7978845608028654 * (g + 0.044715 * g * g * g);
  return g / (1.0 + exp(-2.0 * u));
}
@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let rows = step[${o.rowsAt}];
  let r0 = wg.y * R;
  if (r0 >= rows) { return; }
  let col = wg.x * 32u + lid.x;
  let k0 = lid.y * KCHUNK;
  let k1 = min(K, k0 + KCHUNK);
  var acc: array<f32, ${o.R}>;
  ${geglu ? `var accU: array<f32, ${o.R}>;` : ''}
  if (col < WIDTH) {
    for (var k = k0; k < k1; k++) {
      let w = W[k * M + col];
      ${geglu ? 'let wu = W[k * M + WIDTH + col];' : ''}
      for (var r = 0u; r < R; r++) {
        let xv = x[min(r0 + r, rows - 1u) * K + k];
        acc[r] += xv * w;
        ${geglu ? 'accU[r] += xv * wu;' : ''}
      }
    }
  }
  for (var r = 0u; r < R; r++) {
    part[(lid.y * R + r) * 32u + lid.x] = acc[r];
    ${geglu ? `part[${8 * 32 * o.R}u + (lid.y * R + r) * 32u + lid.x] = accU[r];` : ''}
  }
  workgroupBarrier();
  let t = lid.y * 32u + lid.x;
  for (var o = t; o < R * 32u; o += 256u) {
    let r = o / 32u;
    let c = o % 32u;
    let outCol = wg.x * 32u + c;
    if (r0 + r < rows && outCol < WIDTH) {
      var v = 0.0;
      ${geglu ? 'var u = 0.0;' : ''}
      for (var s = 0u; s < KS; s++) {
        v += part[(s * R + r) * 32u + c];
        ${geglu ? `u += part[${8 * 32 * o.R}u + (s * R + r) * 32u + c];` : ''}
      }
      y[(r0 + r) * ${o.ld}u + ${o.col0}u + outCol] = ${store};
    }
  }
}`;
}

/** Model shapes the attention kernels are built for. */
export interface AttentionShape {
  headDim: number;
  numHeads: number;
  numKvHeads: number;
  /** Cache entries of this layer type, and its window (0 = global). */
  entries: number;
  window: number;
  softcap: number | null;
  eps: number;
  /** q/k carry a per-head RMSNorm (Gemma 3). */
  qkNorm: boolean;
  /** 0 = global rope table, 1 = sliding. */
  ropeTable: number;
}

/**
 * Per (token, q or k head): Gemma 3's q/k RMSNorm, then the rotary embedding,
 * in place in the fused q/k/v activations. One workgroup of headDim threads.
 */
export function qkRopeKernel(s: AttentionShape): string {
  const hd = s.headDim;
  const qkvWidth = (s.numHeads + 2 * s.numKvHeads) * hd;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> rope: array<f32>;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
${s.qkNorm ? '@group(0) @binding(3) var<storage, read> qkn: array<f32>;' : ''}
const HD = ${hd}u;
const HALF = ${hd / 2}u;
var<workgroup> sh: array<f32, ${hd}>;
var<workgroup> vals: array<f32, ${hd}>;
@compute @workgroup_size(${hd})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let h = wg.y;
  let d = lid.x;
  let N = step[${StepLayout.N}];
  let at = n * ${qkvWidth}u + h * HD + d;
  var v = qkv[at];
  ${
    s.qkNorm
      ? `sh[d] = v * v;
  workgroupBarrier();
  for (var k = HALF; k > 0u; k >>= 1u) {
    if (d < k) { sh[d] += sh[d + k]; }
    workgroupBarrier();
  }
  v = v * inverseSqrt(sh[0] / f32(HD) + ${f32(s.eps)}) * qkn[h * HD + d];`
      : ''
  }
  vals[d] = v;
  workgroupBarrier();
  let rot = select(vals[d - HALF], -vals[d + HALF], d < HALF);
  let table = ${s.ropeTable * 2}u * N * HD + n * HD + d;
  qkv[at] = v * rope[table] + rot * rope[table + N * HD];
}`;
}

/** Keys per workgroup of the attention's first pass. */
export const ATTENTION_BLOCK = 32;

/**
 * Attention, first pass (flash-decoding): one workgroup per (block of 32
 * keys, token of any row, KV head) covering the KV head's g query heads,
 * reading the row's slot of the pooled cache. It writes the
 * block's unnormalized output, max and sum of exp per query head; the
 * combine pass merges the blocks. Keys are the row's cache entries, then
 * the call's own tokens.
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
  const qkvWidth = (s.numHeads + 2 * s.numKvHeads) * hd;
  const BLK = ATTENTION_BLOCK;
  const visible = (p: string) => (s.window > 0 ? `(${p} > q - ${s.window})` : 'true');
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;
@group(0) @binding(3) var<storage, read_write> vtc: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
const HD = ${hd}u;
const G = ${g}u;
const E = ${s.entries}u;
const BLK = ${BLK}u;
const QKVW = ${qkvWidth}u;
const NQ = ${s.numHeads}u;
const NKV = ${s.numKvHeads}u;
const SLICE = ${hd / 8}u;
var<workgroup> qs: array<f32, ${g * hd}>;
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
  for (var j = i; j < G * HD; j += 256u) {
    qs[j] = qkv[n * QKVW + (h * G + j / HD) * HD + j % HD];
  }
  // Thread i: key kk of the block, slice p of its head dimension.
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
      kbase = (b * T + u) * QKVW + (NQ + h) * HD;
      fromCache = false;
    }
  }
  if (p8 == 0u) { valid[kk] = select(0u, 1u, ok); }
  workgroupBarrier();
  var dots: array<f32, ${g}>;
  if (ok) {
    for (var d = p8 * SLICE; d < (p8 + 1u) * SLICE; d++) {
      var kv = 0.0;
      if (fromCache) { kv = kc[kbase + d]; } else { kv = qkv[kbase + d]; }
      for (var hh = 0u; hh < G; hh++) { dots[hh] += qs[hh * HD + d] * kv; }
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
          acc += w * qkv[(b * T + jj - cached) * QKVW + (NQ + NKV + h) * HD + d];
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
  // A decode step writes its token's key and value here (one dispatch fewer per layer). The entry it
  // takes, start mod E, holds position start - E, which no query of this step sees, so no workgroup reads it.
  if (T == 1u && blk == 0u && step[${StepLayout.ROWS} + 4u * b + 2u] != 0u) {
    let e = start % E;
    for (var d = i; d < HD; d += 256u) {
      kc[(kv * E + e) * HD + d] = qkv[n * QKVW + (NQ + h) * HD + d];
      vtc[(kv * HD + d) * E + e] = qkv[n * QKVW + (NQ + NKV + h) * HD + d];
    }
  }
}`;
}

/** Attention, second pass: merges a token's blocks per query head (all rows in one dispatch). */
export function attentionCombineKernel(s: AttentionShape): string {
  const hd = s.headDim;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const HD = ${hd}u;
const E = ${s.entries}u;
const NQ = ${s.numHeads}u;
@compute @workgroup_size(${hd})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let hq = wg.y;
  let d = lid.x;
  if (n >= step[${StepLayout.N}]) { return; }
  let T = step[${StepLayout.T}];
  let b = n / T;
  let start = step[${StepLayout.ROWS} + 4u * b];
  let cached = select(0u, min(E, start), step[${StepLayout.ROWS} + 4u * b + 1u] != 0u);
  let blocks = (cached + T + ${ATTENTION_BLOCK - 1}u) / ${ATTENTION_BLOCK}u;
  let base = (n * NQ + hq) * step[${StepLayout.BLOCKS}];
  var M = -1e30;
  for (var k = 0u; k < blocks; k++) { M = max(M, part[(base + k) * (HD + 2u) + HD]); }
  var acc = 0.0;
  var z = 0.0;
  for (var k = 0u; k < blocks; k++) {
    let at = (base + k) * (HD + 2u);
    let l = part[at + HD + 1u];
    if (l > 0.0) {
      let f = exp(part[at + HD] - M);
      acc += f * part[at + d];
      z += f * l;
    }
  }
  out[n * NQ * HD + hq * HD + d] = acc / z;
}`;
}

/**
 * Writes a prompt chunk's new keys and values into each row's slot of the pooled cache, after its
 * attention (a decode step's attention writes its own): token t goes to entry (start + t) mod E,
 * K as [slots, kvHeads, E, headDim] and V^T as [slots, kvHeads, headDim, E].
 * Only the last E tokens of a long chunk land (older ones would be overwritten).
 */
export function kvWriteKernel(s: AttentionShape): string {
  const hd = s.headDim;
  const qkvWidth = (s.numHeads + 2 * s.numKvHeads) * hd;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;
@group(0) @binding(3) var<storage, read_write> vtc: array<f32>;
const HD = ${hd}u;
const E = ${s.entries}u;
const NKV = ${s.numKvHeads}u;
@compute @workgroup_size(${hd})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let h = wg.y;
  let d = lid.x;
  let T = step[${StepLayout.T}];
  if (n >= step[${StepLayout.N}]) { return; }
  let b = n / T;
  let t = n % T;
  if (t + E < T || step[${StepLayout.ROWS} + 4u * b + 2u] == 0u) { return; }
  let e = (step[${StepLayout.ROWS} + 4u * b] + t) % E;
  let kv = step[${StepLayout.ROWS} + 4u * b + 3u] * NKV + h;
  let src = n * ${qkvWidth}u;
  kc[(kv * E + e) * HD + d] = qkv[src + (${s.numHeads}u + h) * HD + d];
  vtc[(kv * HD + d) * E + e] = qkv[src + (${s.numHeads + s.numKvHeads}u + h) * HD + d];
}`;
}
