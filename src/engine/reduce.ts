/**
 * What every path's reduction of a decode step shares: logits [B, V] ->
 * logit bias and penalties -> top-K and log-normalizers, all where the
 * logits are (each path has its own: graph/reduce.ts, native/reduce.ts,
 * webgpu/reduce.ts). Only [B, K] values and ids (and two numbers per row) are
 * read back; the [B, V] tensor never leaves the step.
 */
import type { SamplingParams } from './types.js';

/** What the reduction needs to know about one row. */
export interface RowLogitsInput {
  params: SamplingParams;
  /** How often each token was generated so far in this row (penalties use it). */
  counts: ReadonlyMap<number, number>;
  /** Candidates this row needs. */
  k: number;
  /**
   * The tokens a grammar allows next (structured outputs): bit i % 32 of
   * word i / 32 set where token i is allowed. Applied after bias and
   * penalties and before top-K, so every candidate is allowed.
   */
  mask?: Int32Array;
}

function hasPenalties(p: SamplingParams): boolean {
  return p.presencePenalty !== 0 || p.frequencyPenalty !== 0 || p.repetitionPenalty !== 1;
}

/** The K a step takes from the device: the largest any row needs. */
export function stepK(rows: RowLogitsInput[]): number {
  return Math.max(1, ...rows.map((r) => r.k));
}

/** Per row, the factor logits are multiplied by before the scaled log-sum-exp (1 / temperature; greedy counts as 1). */
export function temperatureScales(rows: RowLogitsInput[]): number[] {
  return rows.map((r) => (r.params.temperature > 0 ? 1 / r.params.temperature : 1));
}

/**
 * Sparse edits for bias and penalties: one entry per (row, token) touched,
 * applied as new = rep(old) - presence - frequency * count + bias.
 */
export function edits(rows: RowLogitsInput[]) {
  const idx: number[] = [];
  const rep: number[] = [];
  const sub: number[] = [];
  const add: number[] = [];
  rows.forEach((r, b) => {
    const p = r.params;
    const touched = new Set<number>(Object.keys(p.logitBias).map(Number));
    if (hasPenalties(p)) for (const id of r.counts.keys()) touched.add(id);
    for (const id of touched) {
      const count = hasPenalties(p) ? r.counts.get(id) ?? 0 : 0;
      idx.push(b, id);
      rep.push(count > 0 ? p.repetitionPenalty : 1);
      sub.push((count > 0 ? p.presencePenalty : 0) + p.frequencyPenalty * count);
      add.push(p.logitBias[id] ?? 0);
    }
  });
  return { idx, rep, sub, add };
}


/**
 * The rows' masks as one [B, ceil(V / 32)] array (a row without one allows
 * everything; words past a mask's end allow nothing), or null when no row has
 * one.
 */
export function rowMasks(rows: RowLogitsInput[], V: number): Int32Array | null {
  if (!rows.some((r) => r.mask)) return null;
  const W = Math.ceil(V / 32);
  const out = new Int32Array(rows.length * W);
  rows.forEach((r, b) => {
    if (!r.mask) out.fill(-1, b * W, (b + 1) * W);
    else out.set(r.mask.subarray(0, W), b * W);
  });
  return out;
}
