/**
 * The linear layers of the fused Gemma 2/3 programs, y = x @ W^T with W as
 * the checkpoint stores it, [out, in] (weights.ts here), in f32 or as the
 * bf16 bits of a bf16 checkpoint, two to a u32 and widened in the shader:
 * the same float32 arithmetic on the same values, in half the bytes.
 *
 * Two programs, by rows in the call:
 *  - GEMV (decode, up to GEMV_ROWS rows): a team of 32 threads per output
 *    column reads that weight row as consecutive 16-byte loads (coalesced),
 *    each thread keeping every call row's sums in registers; the team's
 *    sums meet through subgroup adds where the device has them.
 *  - GEMM (prompt chunks): 64 x 64 output tiles from x and W tiles staged in
 *    workgroup memory, 4 x 4 outputs per thread.
 * Both sum each group of 8 inputs as even then odd elements, so f32 and
 * bf16 storage of the same values give the same result.
 */
import { gelu, stepBinding, type Epilogue, f32 } from './kernels.js';

/** How a weight is held on the device. */
export type WeightStorage = 'f32' | 'bf16';

/** Subgroup adds in the GEMV's reduction: the smallest subgroup size the device may run (32 at most), or none. */
export type Subgroups = { min: number } | undefined;

export interface MatmulShape {
  /** Inputs per row (a multiple of 8). */
  K: number;
  /** Rows of W: the outputs, or with `geglu` gate rows then up rows (the output is M/2 wide). */
  M: number;
  /** The output's row stride and first column (an unembedding part writes its columns of the logits). */
  ld: number;
  col0: number;
  /** The header field holding the call's row count. */
  rowsAt: number;
  epilogue: Epilogue;
  storage: WeightStorage;
}

/** Most rows the GEMV takes; a call with more runs the GEMM. */
export const GEMV_ROWS = 8;
/** Rows per GEMV workgroup, by rows in the call. */
export const gemvRows = (n: number): number => (n <= 1 ? 1 : n <= 4 ? 4 : 8);
/** Output columns per GEMV workgroup: 8 teams of 32 threads, `cols` columns each. */
const TEAMS = 8;
export const gemvColumns = (rows: number): number => (rows === 1 ? 1 : 2);
/** The GEMM's output tiles: 64 x 64 (4 x 4 per thread) or 128 x 128 (8 x 8 per thread, half the staged loads per multiply-add). */
export type GemmTile = 64 | 128;

/** The larger tile where it still gives at least 128 workgroups (a device's worth), else the smaller. */
export function gemmTile(s: MatmulShape, rows: number): GemmTile {
  return Math.ceil(outputWidth(s) / 128) * Math.ceil(rows / 128) >= 128 ? 128 : 64;
}

/** The output's width (M, or M/2 for gate and up halves). */
export const outputWidth = (s: MatmulShape): number => (s.epilogue.kind === 'geglu' ? s.M / 2 : s.M);

/** Workgroups of a GEMV over `rows` rows. */
export function gemvGrid(s: MatmulShape, rows: number): [number, number] {
  const R = gemvRows(rows);
  return [Math.ceil(outputWidth(s) / (TEAMS * gemvColumns(R))), Math.ceil(rows / R)];
}

export function gemmGrid(s: MatmulShape, rows: number, tile: GemmTile): [number, number] {
  return [Math.ceil(outputWidth(s) / tile), Math.ceil(rows / tile)];
}

function storeExpr(e: Epilogue): string {
  if (e.kind === 'geglu') return 'gelu(v) * u';
  if (e.kind === 'softcap') return `tanh(clamp(v / ${f32(e.cap)}, -10.0, 10.0)) * ${f32(e.cap)}`;
  return 'v';
}

/** The bindings and the load of 8 consecutive weights of row m from input 8c, as even and odd elements. */
function weightSource(s: MatmulShape): string {
  const K8 = s.K / 8;
  const load =
    s.storage === 'bf16'
      ? `let q = W[m * ${K8}u + c];
  return Pair(bitcast<vec4f>(q << vec4u(16u)), bitcast<vec4f>(q & vec4u(0xffff0000u)));`
      : `let a = W[(m * ${K8}u + c) * 2u];
  let b = W[(m * ${K8}u + c) * 2u + 1u];
  return Pair(vec4f(a.x, a.z, b.x, b.z), vec4f(a.y, a.w, b.y, b.w));`;
  return `${stepBinding}
@group(0) @binding(1) var<storage, read> x: array<vec4f>;
@group(0) @binding(2) var<storage, read> W: array<${s.storage === 'bf16' ? 'vec4u' : 'vec4f'}>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
struct Pair { e: vec4f, o: vec4f }
fn w8(m: u32, c: u32) -> Pair {
  ${load}
}
fn x8(r: u32, c: u32) -> Pair {
  let a = x[(r * ${K8}u + c) * 2u];
  let b = x[(r * ${K8}u + c) * 2u + 1u];
  return Pair(vec4f(a.x, a.z, b.x, b.z), vec4f(a.y, a.w, b.y, b.w));
}
fn dot8(w: Pair, v: Pair) -> f32 { return dot(w.e, v.e) + dot(w.o, v.o); }`;
}

/**
 * y[r, col0 + c] = store(x[r, :] . W[c, :]) for the call's rows r (at most
 * GEMV_ROWS per workgroup row): workgroup (i, j) has rows j*R.. and columns
 * of teams 8i..8i+7, each team `CT` adjacent columns.
 */
export function gemvKernel(s: MatmulShape, R: number, subgroups: Subgroups): string {
  if (s.K % 8 !== 0) throw new Error(`the webgpu matmul needs inputs in multiples of 8, not ${s.K}`);
  const geglu = s.epilogue.kind === 'geglu';
  const CT = gemvColumns(R);
  const outs = R * CT * (geglu ? 2 : 1);
  const slots = subgroups ? 32 / subgroups.min : 1;
  const sums = subgroups
    ? `for (var o = 0u; o < OUTS; o++) {
    let t = subgroupAdd(sum(o));
    if (sgid == 0u) { red[(team * OUTS + o) * SLOTS + lane / sgsize] = t; }
  }
  workgroupBarrier();
  let parts = 32u / sgsize;`
    : `for (var o = 0u; o < OUTS; o++) {
    tree[lid.x] = sum(o);
    workgroupBarrier();
    for (var h = 16u; h > 0u; h >>= 1u) {
      if (lane < h) { tree[lid.x] += tree[lid.x + h]; }
      workgroupBarrier();
    }
    if (lane == 0u) { red[team * OUTS + o] = tree[lid.x]; }
    workgroupBarrier();
  }
  let parts = 1u;`;
  return `${subgroups ? 'enable subgroups;\n' : ''}${weightSource(s)}
${geglu ? gelu : ''}
const K8 = ${s.K / 8}u;
const WIDTH = ${outputWidth(s)}u;
const R = ${R}u;
const CT = ${CT}u;
const OUTS = ${outs}u;
const SLOTS = ${slots}u;
var<workgroup> red: array<f32, ${TEAMS * outs * slots}>;
${subgroups ? '' : 'var<workgroup> tree: array<f32, 256>;'}
var<private> acc: array<f32, ${R * CT}>;
${geglu ? `var<private> accU: array<f32, ${R * CT}>;` : ''}
fn sum(o: u32) -> f32 { ${geglu ? `if (o >= R * CT) { return accU[o - R * CT]; }` : ''} return acc[o]; }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u${subgroups ? ', @builtin(subgroup_invocation_id) sgid: u32, @builtin(subgroup_size) sgsize: u32' : ''}) {
  let rows = step[${s.rowsAt}];
  let r0 = wg.y * R;
  if (r0 >= rows) { return; }
  let lane = lid.x % 32u;
  let team = lid.x / 32u;
  let c0 = (wg.x * ${TEAMS}u + team) * CT;
  for (var c = lane; c < K8; c += 32u) {
    var xs: array<Pair, ${R}>;
    for (var r = 0u; r < R; r++) { xs[r] = x8(min(r0 + r, rows - 1u), c); }
    for (var j = 0u; j < CT; j++) {
      // Columns past the width read the last one; their sums are not stored.
      let col = min(c0 + j, WIDTH - 1u);
      let w = w8(col, c);
      ${geglu ? 'let wu = w8(WIDTH + col, c);' : ''}
      for (var r = 0u; r < R; r++) {
        acc[r * CT + j] += dot8(w, xs[r]);
        ${geglu ? 'accU[r * CT + j] += dot8(wu, xs[r]);' : ''}
      }
    }
  }
  ${sums}
  for (var t = lid.x; t < ${TEAMS}u * R * CT; t += 256u) {
    let tm = t / (R * CT);
    let o = t % (R * CT);
    let r = o / CT;
    let col = (wg.x * ${TEAMS}u + tm) * CT + o % CT;
    if (r0 + r < rows && col < WIDTH) {
      var v = 0.0;
      ${geglu ? 'var u = 0.0;' : ''}
      for (var p = 0u; p < parts; p++) {
        v += red[(tm * OUTS + o) * SLOTS + p];
        ${geglu ? 'u += red[(tm * OUTS + R * CT + o) * SLOTS + p];' : ''}
      }
      y[(r0 + r) * ${s.ld}u + ${s.col0}u + col] = ${storeExpr(s.epilogue)};
    }
  }
}`;
}

/** Groups of 8 inputs the GEMM stages per barrier: 4 where K allows (fewer barriers per multiply-add), else 2 or 1. */
export const gemmGroups = (K: number): number => [4, 2, 1].find((g) => (K / 8) % g === 0)!;

/**
 * The same product for prompt chunks: a T x T tile of outputs per workgroup
 * of 16 x 16 threads, each U x U of them (U = T / 16), over K in steps of
 * 8 * G inputs staged (as even and odd elements) in workgroup memory.
 */
export function gemmKernel(s: MatmulShape, T: GemmTile): string {
  if (s.K % 8 !== 0) throw new Error(`the webgpu matmul needs inputs in multiples of 8, not ${s.K}`);
  const geglu = s.epilogue.kind === 'geglu';
  const U = T / 16;
  const V = U / 4;
  // 24 KiB of staged tiles at most: T = 128 stages 16 inputs per barrier (12 with geglu would not divide; 8 then).
  const G = T === 64 ? gemmGroups(s.K) : geglu ? 1 : [2, 1].find((g) => (s.K / 8) % g === 0)!;
  const Q = T / 4;
  // Tiles as [input k of 8G][row or column / 4] vec4s: xt = x rows, wt = W rows (gate), ut = up rows.
  const tile = (name: string) => `var<workgroup> ${name}: array<vec4f, ${8 * G * Q}>;`;
  const tiles = geglu ? 3 : 2;
  return `${weightSource(s)}
${geglu ? gelu : ''}
const K8 = ${s.K / 8}u;
const WIDTH = ${outputWidth(s)}u;
${tile('xt')}
${tile('wt')}
${geglu ? tile('ut') : ''}
fn put(which: u32, k: u32, n: u32, v: f32) {
  let at = k * ${Q}u + n / 4u;
  switch (which) {
    case 0u: { xt[at][n % 4u] = v; }
    case 1u: { wt[at][n % 4u] = v; }
    default: { ${geglu ? 'ut[at][n % 4u] = v;' : ''} }
  }
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let rows = step[${s.rowsAt}];
  let r0 = wg.y * ${T}u;
  if (r0 >= rows) { return; }
  let n0 = wg.x * ${T}u;
  let tx = lid.x % 16u;
  let ty = lid.x / 16u;
  var acc: array<array<vec4f, ${V}>, ${U}>;
  ${geglu ? `var accU: array<array<vec4f, ${V}>, ${U}>;` : ''}
  for (var kc = 0u; kc < K8; kc += ${G}u) {
    // ${tiles} x ${T} rows (x, W${geglu ? ', up' : ''}) of 8G inputs each, a row per thread and step.
    for (var job = lid.x; job < ${tiles * T}u; job += 256u) {
      let which = job / ${T}u;
      let n = job % ${T}u;
      for (var g = 0u; g < ${G}u; g++) {
        var p: Pair;
        if (which == 0u) {
          p = x8(min(r0 + n, rows - 1u), kc + g);
        } else {
          p = w8(select(0u, WIDTH, which == 2u) + min(n0 + n, WIDTH - 1u), kc + g);
        }
        for (var i = 0u; i < 4u; i++) {
          put(which, g * 8u + 2u * i, n, p.e[i]);
          put(which, g * 8u + 2u * i + 1u, n, p.o[i]);
        }
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < ${8 * G}u; k++) {
      for (var a4 = 0u; a4 < ${V}u; a4++) {
        let a = xt[k * ${Q}u + ty * ${V}u + a4];
        for (var b4 = 0u; b4 < ${V}u; b4++) {
          let b = wt[k * ${Q}u + tx * ${V}u + b4];
          ${geglu ? `let bu = ut[k * ${Q}u + tx * ${V}u + b4];` : ''}
          for (var i = 0u; i < 4u; i++) {
            acc[a4 * 4u + i][b4] += a[i] * b;
            ${geglu ? 'accU[a4 * 4u + i][b4] += a[i] * bu;' : ''}
          }
        }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${U}u; i++) {
    let r = r0 + ty * ${U}u + i;
    if (r >= rows) { break; }
    for (var j = 0u; j < ${U}u; j++) {
      let col = n0 + tx * ${U}u + j;
      if (col < WIDTH) {
        let v = acc[i][j / 4u][j % 4u];
        ${geglu ? 'let u = accU[i][j / 4u][j % 4u];' : ''}
        y[r * ${s.ld}u + ${s.col0}u + col] = ${storeExpr(s.epilogue)};
      }
    }
  }
}`;
}
