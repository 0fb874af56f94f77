/**
 * Seeded pseudo-random numbers for sampling. Each request owns one generator,
 * so a given seed yields the same stream whatever else runs in the batch.
 * Algorithm: xoshiro128** (Blackman & Vigna), state seeded through splitmix32.
 */
import { randomBytes } from 'node:crypto';

/** A stream of uniform numbers in [0, 1). */
export interface Rng {
  /** The seed the stream started from (reported back so a run can be replayed). */
  readonly seed: number;
  next(): number;
}

const TWO_POW_32 = 2 ** 32;
const TWO_POW_53 = 2 ** 53;

/** A random seed in [0, 2^53) for requests that give none. */
export function randomSeed(): number {
  const b = randomBytes(8);
  return (b.readUInt32LE(0) & 0x1fffff) * TWO_POW_32 + b.readUInt32LE(4);
}

/** splitmix32's finalizer: a bijection on 32-bit words with good avalanche. */
function mix32(z: number): number {
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export class Xoshiro128 implements Rng {
  readonly seed: number;
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** `seed` may be any finite number (negative and above 2^32 included); its integer part is used. */
  constructor(seed: number = randomSeed()) {
    if (!Number.isFinite(seed)) throw new RangeError(`rng seed must be a finite number, got ${seed}`);
    this.seed = Math.trunc(seed);
    // Both 32-bit halves feed the state (s0 from the low word, s1 from the high
    // one, each through a bijection), so distinct seeds give distinct states.
    const lo = this.seed >>> 0;
    const hi = Math.floor(this.seed / TWO_POW_32) >>> 0;
    const g = 0x9e3779b9;
    this.s0 = mix32((lo + g) | 0);
    this.s1 = mix32((hi + 2 * g) | 0);
    this.s2 = mix32(((this.s0 ^ this.s1) + 3 * g) | 0);
    this.s3 = mix32((this.s2 + 4 * g) | 0);
    // The all-zero state is a fixed point of xoshiro.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next 32 random bits as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 bits of precision, so tiny probabilities still get sampled. */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / TWO_POW_53;
  }
}

/** A request's generator: seeded when `seed` is given, random otherwise. */
export function createRng(seed?: number): Rng {
  return new Xoshiro128(seed ?? randomSeed());
}
