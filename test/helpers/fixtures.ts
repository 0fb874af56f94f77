import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
