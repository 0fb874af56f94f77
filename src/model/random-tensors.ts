/**
 * Deterministic random tensors streamed into a safetensors file: the weights
 * of the generated models (make-model). Each tensor draws from its own stream
 * (seeded by its name), chunk by chunk, so no model ever sits in memory and
 * a tensor's values do not depend on the file's order.
 */
import { SafetensorsWriter, type TensorSpec } from './safetensors.js';

/** A tensor to generate: Normal(mean, std) per element (std 0: every value `mean`). */
export interface GenSpec extends TensorSpec {
  mean: number;
  std: number;
}

/** FNV-1a of the name mixed with the seed: each tensor gets its own stream, independent of order. */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b9);
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** mulberry32 + Box-Muller; deterministic normal samples. */
class NormalStream {
  private s: number;
  constructor(seed: number) { this.s = seed | 0; }

  fill(out: Float32Array, mean: number, std: number): void {
    let a = this.s;
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      const u1 = 1 - ((t ^ (t >>> 14)) >>> 0) / 4294967296; // (0, 1]
      a = (a + 0x6d2b79f5) | 0;
      t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      const u2 = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      const r = Math.sqrt(-2 * Math.log(u1)) * std;
      const th = 2 * Math.PI * u2;
      out[i] = mean + r * Math.cos(th);
      if (i + 1 < n) out[i + 1] = mean + r * Math.sin(th);
    }
    this.s = a;
  }
}

const CHUNK = 1 << 20;

/** Writes `specs` with values drawn from `seed` into the safetensors file `file`. */
export async function writeRandomSafetensors(file: string, specs: GenSpec[], seed: number, metadata: Record<string, string>): Promise<void> {
  const w = await SafetensorsWriter.create(file, specs.map(({ name, dtype, shape }) => ({ name, dtype, shape })), metadata);
  try {
    const buf = new Float32Array(CHUNK);
    for (const t of specs) {
      const rng = new NormalStream(tensorSeed(seed, t.name));
      let left = t.shape.reduce((a, b) => a * b, 1);
      while (left > 0) {
        const chunk = left >= CHUNK ? buf : buf.subarray(0, left);
        rng.fill(chunk, t.mean, t.std);
        await w.append(chunk);
        left -= chunk.length;
      }
    }
  } finally {
    await w.close();
  }
}

/** Elements of every spec. */
export function specElements(specs: readonly TensorSpec[]): number {
  return specs.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
}
