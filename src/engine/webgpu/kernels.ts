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

/** The header binding every program starts with. */
export const stepBinding = '@group(0) @binding(0) var<storage, read> step: array<u32>;';

/** Sum of `v` over a workgroup of `threads` (a power of two); every thread gets the total. */
export function groupSum(threads: number): string {
  return `
var<workgroup> red: array<f32, ${threads}>;
fn groupSum(v: f32, i: u32) -> f32 {
  red[i] = v;
  workgroupBarrier();
  for (var s = ${threads / 2}u; s > 0u; s >>= 1u) {
    if (i < s) { red[i] += red[i + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}`;
}

/** gelu(tanh) as g * sigmoid(2u); exp of a large positive gives inf and a 0 result, as it should. */
export const gelu = `fn gelu(v: f32) -> f32 {
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  return v / (1.0 + exp(-2.0 * u));
}`;

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

/**
 * x[n, :] = row ids[n] of a [count, H] embedding part * sqrt(H), for ids in
 * [v0, v0 + count): f32 rows, or bf16 rows as two values per u32.
 */
export function embedRowsKernel(o: { H: number; count: number; v0: number; scale: number; bf16: boolean }): string {
  const value = o.bf16 ? 'bitcast<f32>(select(table[(row + i) / 2u] << 16u, table[(row + i) / 2u] & 0xffff0000u, (i & 1u) == 1u))' : 'table[row + i]';
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> table: array<${o.bf16 ? 'u32' : 'f32'}>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
const H = ${o.H}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  if (n >= step[${StepLayout.N}]) { return; }
  let id = step[step[${StepLayout.IDS_AT}] + n];
  if (id < ${o.v0}u || id >= ${o.v0 + o.count}u) { return; }
  let row = (id - ${o.v0}u) * H;
  for (var i = lid.x; i < H; i += 64u) {
    x[n * H + i] = ${value} * ${f32(o.scale)};
  }
}`;
}

/**
 * RMSNorm of rows, one workgroup of `threads` per output row: every row, or
 * the rows that get logits (header OUT_*). With `weight`, times `w`
 * (Gemma 2/3 fold the other norms' weights into the next projection).
 */
export function normKernel(o: { H: number; eps: number; rows: 'all' | 'logits'; weight: boolean; threads: number }): string {
  const n = o.threads;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${o.weight ? '@group(0) @binding(3) var<storage, read> w: array<f32>;' : ''}
const H = ${o.H}u;
${groupSum(n)}
@compute @workgroup_size(${n})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = wg.x;
  ${o.rows === 'logits' ? `if (r >= step[${StepLayout.OUT_ROWS}]) { return; }
  let src = (r * step[${StepLayout.OUT_STRIDE}] + step[${StepLayout.OUT_OFFSET}]) * H;` : `if (r >= step[${StepLayout.N}]) { return; }
  let src = r * H;`}
  var ss = 0.0;
  for (var i = lid.x; i < H; i += ${n}u) { let v = x[src + i]; ss += v * v; }
  let inv = inverseSqrt(groupSum(ss, lid.x) / f32(H) + ${f32(o.eps)});
  for (var i = lid.x; i < H; i += ${n}u) { y[r * H + i] = x[src + i] * inv${o.weight ? ' * w[i]' : ''}; }
}`;
}

/**
 * The residual step after attention or the MLP: x += rms(y) * w, then
 * xn = rms(x) * wn, the next projection's input (wn: its norm weight).
 */
export function residualKernel(o: { H: number; eps: number }): string {
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> xn: array<f32>;
@group(0) @binding(5) var<storage, read> wn: array<f32>;
const H = ${o.H}u;
${groupSum(256)}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = wg.x;
  if (r >= step[${StepLayout.N}]) { return; }
  let base = r * H;
  var ss = 0.0;
  for (var i = lid.x; i < H; i += 256u) { let v = y[base + i]; ss += v * v; }
  let inv = inverseSqrt(groupSum(ss, lid.x) / f32(H) + ${f32(o.eps)});
  var hs = 0.0;
  for (var i = lid.x; i < H; i += 256u) {
    let h = x[base + i] + y[base + i] * inv * w[i];
    x[base + i] = h;
    hs += h * h;
  }
  let inv2 = inverseSqrt(groupSum(hs, lid.x) / f32(H) + ${f32(o.eps)});
  for (var i = lid.x; i < H; i += 256u) { xn[base + i] = x[base + i] * inv2 * wn[i]; }
}`;
}

/** What a matmul writes: the product, gelu(gate) * up of its two column halves, or soft-capped logits. */
export type Epilogue = { kind: 'plain' } | { kind: 'geglu' } | { kind: 'softcap'; cap: number };

/** Whether any of the workgroup's R rows was routed to expert e (the same answer for every thread; `route` is [rows, E]). */
export const anyRow = (R: number) => `fn anyRow(r0: u32, rows: u32, e: u32) -> bool {
  for (var r = 0u; r < ${R}u; r++) {
    if (r0 + r < rows && route[(r0 + r) * E + e] != 0.0) { return true; }
  }
  return false;
}`;

/**
 * The second stage of a 32-column x 8-slice tile (matmulKernel's): each K
 * slice leaves its R rows of sums `acc` (and `accU`, the up half) in `part`,
 * then thread t adds up outputs (r, c) over the slices and runs `store` with
 * `v` (and `u`) for the rows below `rows` and the columns below `width`.
 */
export function tileSums(o: { R: number; geglu: boolean; width: string; store: string }): string {
  const up = 8 * 32 * o.R;
  return `for (var r = 0u; r < R; r++) {
    part[(lid.y * R + r) * 32u + lid.x] = acc[r];
    ${o.geglu ? `part[${up}u + (lid.y * R + r) * 32u + lid.x] = accU[r];` : ''}
  }
  workgroupBarrier();
  let t = lid.y * 32u + lid.x;
  for (var o = t; o < R * 32u; o += 256u) {
    let r = o / 32u;
    let c = o % 32u;
    let outCol = wg.x * 32u + c;
    if (r0 + r < rows && outCol < ${o.width}) {
      var v = 0.0;
      ${o.geglu ? 'var u = 0.0;' : ''}
      for (var s = 0u; s < 8u; s++) {
        v += part[(s * R + r) * 32u + c];
        ${o.geglu ? `u += part[${up}u + (s * R + r) * 32u + c];` : ''}
      }
      ${o.store}
    }
  }`;
}

/**
 * y[r, col0 + c] = x[r, :] . W[:, c] for W [K, M] (the engine's [in, out]
 * layout). A workgroup is 32 columns x 8 slices of K, each thread keeping
 * `R` rows in registers: adjacent threads read adjacent columns (coalesced),
 * and the K slices give a GEMV enough threads to stream the weight.
 * With `geglu`, columns c and c + M/2 are gate and up, and the output is
 * M/2 wide. Rows come from the header (N, or OUT_ROWS for the logits).
 * With `experts` (E), W is [E, K, M], the expert is the grid's third
 * dimension, y is [E, rows, ld], and a workgroup none of whose rows was
 * routed to its expert (`route` [rows, E], binding 3) does nothing.
 */
export function matmulKernel(o: { K: number; M: number; ld: number; col0: number; R: number; rowsAt: number; epilogue: Epilogue; experts?: number }): string {
  const geglu = o.epilogue.kind === 'geglu';
  const width = geglu ? o.M / 2 : o.M;
  const parts = geglu ? 2 : 1;
  const E = o.experts;
  let store = 'v';
  if (geglu) store = 'gelu(v) * u';
  else if (o.epilogue.kind === 'softcap') store = `tanh(clamp(v / ${f32(o.epilogue.cap)}, -10.0, 10.0)) * ${f32(o.epilogue.cap)}`;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
${E ? '@group(0) @binding(3) var<storage, read> route: array<f32>;' : ''}
@group(0) @binding(${E ? 4 : 3}) var<storage, read_write> y: array<f32>;
const K = ${o.K}u;
const M = ${o.M}u;
const WIDTH = ${width}u;
const R = ${o.R}u;
const KCHUNK = ${Math.ceil(o.K / 8)}u;
var<workgroup> part: array<f32, ${8 * 32 * o.R * parts}>;
${geglu ? gelu : ''}
${E ? `const E = ${E}u;\n${anyRow(o.R)}` : ''}
@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let rows = step[${o.rowsAt}];
  let r0 = wg.y * R;
  ${E ? 'let e = wg.z;' : ''}
  if (r0 >= rows${E ? ' || !anyRow(r0, rows, e)' : ''}) { return; }
  let col = wg.x * 32u + lid.x;
  let k0 = lid.y * KCHUNK;
  let k1 = min(K, k0 + KCHUNK);
  let wb = ${E ? 'e * K * M' : '0u'};
  var acc: array<f32, ${o.R}>;
  ${geglu ? `var accU: array<f32, ${o.R}>;` : ''}
  if (col < WIDTH) {
    for (var k = k0; k < k1; k++) {
      let w = W[wb + k * M + col];
      ${geglu ? 'let wu = W[wb + k * M + WIDTH + col];' : ''}
      for (var r = 0u; r < R; r++) {
        let xv = x[min(r0 + r, rows - 1u) * K + k];
        acc[r] += xv * w;
        ${geglu ? 'accU[r] += xv * wu;' : ''}
      }
    }
  }
  ${tileSums({ R: o.R, geglu, width: 'WIDTH', store: `y[(${E ? 'e * rows + ' : ''}r0 + r) * ${o.ld}u + ${o.col0}u + outCol] = ${store};` })}
}`;
}

/** Gemma 2/3's per-head programs: the head shapes, the q/k norm (Gemma 3) and which rope table a layer type reads. */
export interface RopeShape {
  headDim: number;
  numHeads: number;
  numKvHeads: number;
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
export function qkRopeKernel(s: RopeShape): string {
  const hd = s.headDim;
  const qkvWidth = (s.numHeads + 2 * s.numKvHeads) * hd;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> rope: array<f32>;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
${s.qkNorm ? `@group(0) @binding(3) var<storage, read> qkn: array<f32>;\n${groupSum(hd)}` : ''}
const HD = ${hd}u;
const HALF = ${hd / 2}u;
var<workgroup> vals: array<f32, ${hd}>;
@compute @workgroup_size(${hd})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let n = wg.x;
  let h = wg.y;
  let d = lid.x;
  let N = step[${StepLayout.N}];
  let at = n * ${qkvWidth}u + h * HD + d;
  var v = qkv[at];
  ${s.qkNorm ? `v = v * inverseSqrt(groupSum(v * v, d) / f32(HD) + ${f32(s.eps)}) * qkn[h * HD + d];` : ''}
  vals[d] = v;
  workgroupBarrier();
  let rot = select(vals[d - HALF], -vals[d + HALF], d < HALF);
  let table = ${s.ropeTable * 2}u * N * HD + n * HD + d;
  qkv[at] = v * rope[table] + rot * rope[table + N * HD];
}`;
}
