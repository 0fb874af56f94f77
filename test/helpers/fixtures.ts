import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import type { Test } from 'tap';
import type { ForwardPath } from '../../src/engine/forward.js';
import type { KVPool } from '../../src/engine/kv-pool.js';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'hf-reference');
export const MODELS = ['gemma3-tiny', 'gemma3-tiny-scaled', 'gemma2-tiny'] as const;

export interface ReferenceCase {
  name: string;
  input_ids: number[];
  top_k: number;
  top_ids: number[][];
  top_logits: number[][];
  logsumexp: number[];
  greedy_new_ids: number[];
  greedy_top5_ids: number[][];
  greedy_top5_logits: number[][];
}

export function modelDir(name: string): string {
  return join(FIXTURES, name);
}

export function reference(name: string): { cases: ReferenceCase[] } {
  return JSON.parse(readFileSync(join(FIXTURES, name, 'reference.json'), 'utf8')) as { cases: ReferenceCase[] };
}

/** Ids may differ only where the reference itself has a near-tie at that rank. */
export function idsMatchUpToTies(ours: number[], ref: number[], refLogits: number[], tol: number): boolean {
  return ours.every((id, j) => {
    if (id === ref[j]) return true;
    const prev = j > 0 ? Math.abs(refLogits[j - 1] - refLogits[j]) : Infinity;
    const next = j + 1 < refLogits.length ? Math.abs(refLogits[j + 1] - refLogits[j]) : Infinity;
    return Math.min(prev, next) < tol;
  });
}

/**
 * A case's greedy continuation through the cached decode path of slot 0,
 * teacher-forced (a near-tie could go either way): each step's top-5 logits
 * within `tol` of the reference, and its greedy id where the reference
 * margin is above 1e-2. Returns the worst difference; leaves slot 0 reset.
 */
export async function checkGreedyDecode(t: Test, path: ForwardPath, pool: KVPool, c: ReferenceCase, tol: number): Promise<number> {
  pool.reset(0);
  let logits = path.prefill(c.input_ids, { pool, slots: [0] }) as tf.Tensor2D;
  let worstAll = 0;
  for (let s = 0; s < c.greedy_new_ids.length; s++) {
    const top = tf.topk(logits, 5);
    const ids = Array.from(await top.indices.data());
    const vals = Array.from(await top.values.data());
    tf.dispose([top.values, top.indices, logits]);
    const refVals = c.greedy_top5_logits[s];
    const worst = Math.max(...vals.map((v, j) => Math.abs(v - refVals[j])));
    worstAll = Math.max(worstAll, worst);
    t.ok(worst < tol, `step ${s}: top-5 logits within ${tol} (worst ${worst.toExponential(2)})`);
    if (refVals[0] - refVals[1] > 1e-2) t.equal(ids[0], c.greedy_new_ids[s], `step ${s}: greedy id`);
    logits = path.forward([[c.greedy_new_ids[s]]], { pool, slots: [0] });
  }
  logits.dispose();
  pool.reset(0);
  return worstAll;
}
