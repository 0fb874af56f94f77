// Gemma chat-template token ids and a seeded generator, for tests that build conversations by hand.
import { Xoshiro128 } from '../../src/engine/rng.js';

export const BOS = 2;
export const SOT = 105;
export const EOT = 106;
export const NL = 108;
export const USER = 2364;
export const MODEL = 4368;

/** Uniform numbers in [0, 1) from a fixed seed. */
export function rng(seed: number): () => number {
  const r = new Xoshiro128(seed);
  return () => r.next();
}
