/**
 * A large [rows, cols] table read a row at a time: Gemma 4's per-layer
 * embeddings (on E2B 262,144 x 35 x 256 values, 4.7 GB as bf16, nearly half
 * of the checkpoint). It stays in host memory as the checkpoint stores it,
 * bf16 bits where it is BF16 (never widened whole), in blocks of whole rows
 * under 1 GiB each (a typed array holds at most 4 GiB, a file read 2 GiB);
 * a forward call widens only its tokens' rows. Every path reads it the same
 * way, so no backend ever holds the whole table.
 */
import { WeightError, type TensorSource } from './tensor-source.js';

const BLOCK_BYTES = 1 << 30;

export class RowTable {
  private constructor(
    readonly rows: number,
    readonly cols: number,
    /** Rows per block (the last block may hold fewer). */
    private readonly blockRows: number,
    private readonly blocks: Array<Uint16Array | Float32Array>,
  ) {}

  /** Reads tensor `name` [rows, cols]: its bf16 bits where stored as BF16 and the source reads ranges, else float32 values. */
  static async load(src: TensorSource, name: string, blockBytes = BLOCK_BYTES): Promise<RowTable> {
    const { dtype, shape } = src.info(name);
    if (shape.length !== 2) throw new WeightError(`tensor "${name}" has shape [${shape.join(', ')}], expected 2 dimensions`);
    const [rows, cols] = shape;
    if (dtype === 'BF16' && src.readRange) {
      const blockRows = Math.max(1, Math.floor(blockBytes / (2 * cols)));
      const blocks: Uint16Array[] = [];
      for (let r = 0; r < rows; r += blockRows) {
        const n = Math.min(blockRows, rows - r);
        const bytes = await src.readRange(name, 2 * r * cols, 2 * n * cols);
        blocks.push(new Uint16Array(bytes.buffer, bytes.byteOffset, n * cols));
      }
      return new RowTable(rows, cols, blockRows, blocks);
    }
    // Small or not bf16 (a fixture stored as F32): float32 values, read whole.
    return new RowTable(rows, cols, rows, [await src.read(name)]);
  }

  /** Bytes held. */
  get byteLength(): number {
    return this.blocks.reduce((sum, b) => sum + b.byteLength, 0);
  }

  /** Row `id` widened to float32 into `out` at `offset`. */
  row(id: number, out: Float32Array, offset = 0): void {
    if (!(id >= 0 && id < this.rows)) throw new RangeError(`row ${id} is outside the table's ${this.rows} rows`);
    const block = this.blocks[Math.floor(id / this.blockRows)];
    const at = (id % this.blockRows) * this.cols;
    if (block instanceof Float32Array) {
      out.set(block.subarray(at, at + this.cols), offset);
      return;
    }
    // bf16 bits are the high half of a float32.
    const bits = new Uint32Array(out.buffer, out.byteOffset + 4 * offset, this.cols);
    for (let i = 0; i < this.cols; i++) bits[i] = block[at + i] << 16;
  }

  /** The rows of `ids`, [ids.length, cols]. */
  gather(ids: readonly number[]): Float32Array {
    const out = new Float32Array(ids.length * this.cols);
    ids.forEach((id, n) => this.row(id, out, n * this.cols));
    return out;
  }
}
