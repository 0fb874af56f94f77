/**
 * What a weight loader reads a checkpoint through (the safetensors reader
 * implements it), and the error a checkpoint that does not fit the model gets.
 */
import { GemmaServeError } from '../errors.js';

/** What the weight loader needs from a safetensors reader. */
export interface TensorSource {
  names(): string[];
  has(name: string): boolean;
  info(name: string): { dtype: string; shape: number[] };
  read(name: string): Promise<Float32Array>;
  /** Part of a tensor's bytes as stored (Gemma 4's per-layer table is kept as its bf16 bits, in blocks). */
  readRange?(name: string, offset: number, length: number): Promise<Uint8Array>;
}

export class WeightError extends GemmaServeError {
  constructor(message: string) {
    super(message, { status: 500, code: 'model_weights' });
  }
}
