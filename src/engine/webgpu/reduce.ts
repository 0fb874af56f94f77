/**
 * The decode step's reduction on webgpu as three WGSL programs instead of
 * tfjs's bitonic top-k (dozens of passes over [B, V]): the sparse bias and
 * penalty edits in place, then per chunk of 4096 logits its top-K and
 * log-sum-exp partials, then per row the merge of the chunks' candidates.
 * Only [B, 2K + 2] floats come back. Same result as top-k.ts's graph.
 */
import * as tf from '@tensorflow/tfjs-core';
import { reduceOnGraph } from '../graph/reduce.js';
import { edits, rowMasks, stepK, temperatureScales, type RowLogitsInput } from '../reduce.js';
import type { TopK } from '../types.js';
import { GpuRuntime, type GPUBufferLike } from './gpu.js';

/** Logits per chunk of the first pass. */
const CHUNK = 4096;
/** Largest K the programs are built for; beyond it the tfjs graph runs. */
export const FUSED_TOP_K_MAX = 256;

/** One sparse edit: logits[row, id] = rep(old) - sub + add (top-k.ts's rule). */
export interface LogitEdit {
  row: number;
  id: number;
  rep: number;
  sub: number;
  add: number;
}

const NEG = '-3.0e38';

/** Argmax over a 256-thread workgroup, ties to the lower index. */
const argmax256 = `
var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
fn argmax256(v: f32, idx: u32, i: u32) {
  rv[i] = v;
  ri[i] = idx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (i < s) {
      let ov = rv[i + s];
      let oi = ri[i + s];
      if (ov > rv[i] || (ov == rv[i] && oi < ri[i])) { rv[i] = ov; ri[i] = oi; }
    }
    workgroupBarrier();
  }
}
var<workgroup> red: array<f32, 256>;
fn reduce256(v: f32, i: u32, isMax: bool) -> f32 {
  red[i] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (i < s) { red[i] = select(red[i] + red[i + s], max(red[i], red[i + s]), isMax); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;

/**
 * K rounds of: every thread offers the best of its PER values, the
 * workgroup picks one, its owner drops it. `load(j)` gives value and index
 * of the thread's j-th value; `emit(r, v, idx)` stores round r's pick.
 */
function selectTopK(per: number, K: number, emit: string): string {
  return `
  var bestJ = 0u;
  for (var j = 1u; j < ${per}u; j++) {
    if (vals[j] > vals[bestJ] || (vals[j] == vals[bestJ] && ids[j] < ids[bestJ])) { bestJ = j; }
  }
  for (var r = 0u; r < ${K}u; r++) {
    argmax256(vals[bestJ], ids[bestJ], i);
    let winV = rv[0];
    let winI = ri[0];
    if (i == 0u) { ${emit} }
    if (ids[bestJ] == winI && vals[bestJ] == winV) {
      vals[bestJ] = -3.4e38;
      ids[bestJ] = 0xffffffffu;
      bestJ = 0u;
      for (var j = 1u; j < ${per}u; j++) {
        if (vals[j] > vals[bestJ] || (vals[j] == vals[bestJ] && ids[j] < ids[bestJ])) { bestJ = j; }
      }
    }
    workgroupBarrier();
  }`;
}

function editKernel(V: number): string {
  return `@group(0) @binding(0) var<storage, read> edits: array<f32>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x;
  if (e >= u32(edits[0])) { return; }
  let base = 1u + 5u * e;
  let at = u32(edits[base]) * ${V}u + u32(edits[base + 1u]);
  let old = logits[at];
  let rep = edits[base + 2u];
  let repeated = select(old * rep, old / rep, old > 0.0);
  logits[at] = repeated - edits[base + 3u] + edits[base + 4u];
}`;
}

/** Sets the logits a row's mask ([B, W] words, bit set: allowed) leaves out to the lowest float; one thread per logit. */
function maskKernel(V: number, W: number): string {
  return `@group(0) @binding(0) var<storage, read> mask: array<u32>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i >= ${V}u) { return; }
  if (((mask[gid.y * ${W}u + i / 32u] >> (i % 32u)) & 1u) == 0u) { logits[gid.y * ${V}u + i] = ${NEG}; }
}`;
}

/** Per (chunk, row): candidates [B, C, K] and partials [B, C, 4] (max, sum, scaled max, scaled sum). */
function chunkKernel(V: number, C: number, K: number): string {
  const per = CHUNK / 256;
  return `@group(0) @binding(0) var<storage, read> scale: array<f32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> cand: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;
${argmax256}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let c = wg.x;
  let b = wg.y;
  let i = lid.x;
  var vals: array<f32, ${per}>;
  var ids: array<u32, ${per}>;
  var m = ${NEG};
  for (var j = 0u; j < ${per}u; j++) {
    let idx = c * ${CHUNK}u + j * 256u + i;
    ids[j] = idx;
    vals[j] = ${NEG};
    if (idx < ${V}u) { vals[j] = logits[b * ${V}u + idx]; }
    m = max(m, vals[j]);
  }
  let M = reduce256(m, i, true);
  let sc = scale[b];
  var s = 0.0;
  var ss = 0.0;
  for (var j = 0u; j < ${per}u; j++) {
    if (ids[j] < ${V}u) {
      s += exp(vals[j] - M);
      ss += exp((vals[j] - M) * sc);
    }
  }
  s = reduce256(s, i, false);
  ss = reduce256(ss, i, false);
  let slot = b * ${C}u + c;
  if (i == 0u) {
    part[slot * 4u] = M;
    part[slot * 4u + 1u] = s;
    part[slot * 4u + 2u] = M * sc;
    part[slot * 4u + 3u] = ss;
  }
  ${selectTopK(per, K, `cand[(slot * ${K}u + r) * 2u] = winV; cand[(slot * ${K}u + r) * 2u + 1u] = bitcast<f32>(winI);`)}
}`;
}

/** Per row: the merged top-K, then the two log-sum-exps, as [B, 2K + 2] (ids as exact floats). */
function mergeKernel(C: number, K: number): string {
  const n = C * K;
  const per = Math.ceil(n / 256);
  return `@group(0) @binding(0) var<storage, read> cand: array<f32>;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${argmax256}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let b = wg.x;
  let i = lid.x;
  let o = b * ${2 * K + 2}u;
  var vals: array<f32, ${per}>;
  var ids: array<u32, ${per}>;
  for (var j = 0u; j < ${per}u; j++) {
    let k = j * 256u + i;
    vals[j] = -3.4e38;
    ids[j] = 0xffffffffu;
    if (k < ${n}u) {
      vals[j] = cand[(b * ${n}u + k) * 2u];
      ids[j] = bitcast<u32>(cand[(b * ${n}u + k) * 2u + 1u]);
    }
  }
  ${selectTopK(per, K, `out[o + r] = winV; out[o + ${K}u + r] = f32(winI);`)}
  if (i == 0u) {
    var M = ${NEG};
    var Ms = ${NEG};
    for (var c = 0u; c < ${C}u; c++) {
      M = max(M, part[(b * ${C}u + c) * 4u]);
      Ms = max(Ms, part[(b * ${C}u + c) * 4u + 2u]);
    }
    var s = 0.0;
    var ss = 0.0;
    for (var c = 0u; c < ${C}u; c++) {
      let p = (b * ${C}u + c) * 4u;
      s += part[p + 1u] * exp(part[p] - M);
      ss += part[p + 3u] * exp(part[p + 2u] - Ms);
    }
    out[o + ${2 * K}u] = M + log(s);
    out[o + ${2 * K + 1}u] = Ms + log(ss);
  }
}`;
}

export class FusedTopK {
  private readonly gpu = new GpuRuntime();
  private buffers:
    | { rows: number; k: number; scale: GPUBufferLike; cand: GPUBufferLike; part: GPUBufferLike; edits: GPUBufferLike; editCap: number; mask: GPUBufferLike; maskCap: number }
    | undefined;

  /** The backend this reducer was built on (a new webgpu backend needs a new one). */
  readonly backend = tf.backend();

  /**
   * Reduces logits [B, V] (edited in place, then disposed) to each row's
   * top-K with the log-sum-exp of the raw and of the temperature-scaled
   * logits. `scales` holds 1 / temperature per row.
   */
  async reduce(logits: tf.Tensor2D, K: number, scales: number[], edits: LogitEdit[], masks: Int32Array | null = null): Promise<TopK[]> {
    const [B, V] = logits.shape;
    const C = Math.ceil(V / CHUNK);
    const W = Math.ceil(V / 32);
    const g = this.gpu;
    const bufs = this.ensure(B, K, C, edits.length, masks ? B * W : 0);
    if (masks) g.write(bufs.mask, masks);
    g.flushTfjs();
    g.write(bufs.scale, Float32Array.from(scales));
    if (edits.length > 0) {
      const data = new Float32Array(1 + 5 * edits.length);
      data[0] = edits.length;
      edits.forEach((e, i) => data.set([e.row, e.id, e.rep, e.sub, e.add], 1 + 5 * i));
      g.write(bufs.edits, data);
    }
    const out = g.emptyTensor([B, 2 * K + 2]);
    const lb = g.bufferOf(logits);
    g.begin();
    try {
      if (edits.length > 0) {
        const p = g.pipeline(`edit:${V}`, () => editKernel(V));
        g.dispatch(p, g.bindGroup('edit', p, [bufs.edits, lb]), Math.ceil(edits.length / 64));
      }
      if (masks) {
        const p = g.pipeline(`mask:${V}`, () => maskKernel(V, W));
        g.dispatch(p, g.bindGroup('mask', p, [bufs.mask, lb]), Math.ceil(V / 256), B);
      }
      const chunk = g.pipeline(`chunk:${V}:${K}`, () => chunkKernel(V, C, K));
      g.dispatch(chunk, g.bindGroup(`chunk:${K}`, chunk, [bufs.scale, lb, bufs.cand, bufs.part]), C, B);
      const merge = g.pipeline(`merge:${C}:${K}`, () => mergeKernel(C, K));
      g.dispatch(merge, g.bindGroup(`merge:${K}`, merge, [bufs.cand, bufs.part, g.bufferOf(out)]), B);
    } finally {
      g.submit();
    }
    logits.dispose();
    const data = (await out.data()) as Float32Array;
    out.dispose();
    const w = 2 * K + 2;
    return Array.from({ length: B }, (_, b) => ({
      ids: Int32Array.from(data.subarray(b * w + K, b * w + 2 * K)),
      logits: Float32Array.from(data.subarray(b * w, b * w + K)),
      logsumexp: data[b * w + 2 * K],
      scaledLogsumexp: data[b * w + 2 * K + 1],
    }));
  }

  private ensure(B: number, K: number, C: number, edits: number, maskWords: number) {
    const b = this.buffers;
    if (b && b.rows >= B && b.k >= K && b.editCap >= edits && b.maskCap >= maskWords) return b;
    if (b) for (const x of [b.scale, b.cand, b.part, b.edits, b.mask]) x.destroy();
    const rows = Math.max(B, b?.rows ?? 0);
    const k = Math.max(K, b?.k ?? 0);
    const editCap = Math.max(edits, b?.editCap ?? 0, 64);
    const maskCap = Math.max(maskWords, b?.maskCap ?? 0, 1);
    const g = this.gpu;
    this.buffers = {
      rows,
      k,
      editCap,
      maskCap,
      scale: g.createBuffer(4 * rows),
      cand: g.createBuffer(8 * rows * C * k),
      part: g.createBuffer(16 * rows * C),
      edits: g.createBuffer(4 * (1 + 5 * editCap)),
      mask: g.createBuffer(4 * maskCap),
    };
    return this.buffers;
  }
}

let shared: FusedTopK | undefined;

/** The reducer of the current webgpu backend. */
export function fusedTopK(): FusedTopK {
  if (!shared || shared.backend !== tf.backend()) shared = new FusedTopK();
  return shared;
}

/** The decode step's reduction on webgpu: no [B, V] tensor op of tfjs runs. Disposes `logits`. */
export async function reduceFused(logits: tf.Tensor2D, rows: RowLogitsInput[]): Promise<TopK[]> {
  const K = stepK(rows);
  if (K > FUSED_TOP_K_MAX) return reduceOnGraph(logits, rows);
  const e = edits(rows);
  const list = e.rep.map((rep, i) => ({ row: e.idx[2 * i]!, id: e.idx[2 * i + 1]!, rep, sub: e.sub[i]!, add: e.add[i]! }));
  const tops = await fusedTopK().reduce(logits, K, temperatureScales(rows), list, rowMasks(rows, logits.shape[1]));
  return tops.map((t, b) => ({ ...t, ids: t.ids.slice(0, rows[b]!.k), logits: t.logits.slice(0, rows[b]!.k) }));
}
