// RowTable: a bf16 table kept as its bits in blocks of whole rows, widened a row at a time exactly as float32 reads it.
import t from 'tap';
import { RowTable } from '../src/engine/row-table.js';
import { bf16ToF32 } from '../src/model/safetensors.js';
import type { TensorSource } from '../src/engine/weights.js';

function source(bits: Uint16Array, rows: number, cols: number, dtype = 'BF16'): TensorSource & { reads: Array<[number, number]> } {
  const bytes = new Uint8Array(bits.buffer);
  const reads: Array<[number, number]> = [];
  return {
    reads,
    names: () => ['table'],
    has: (n) => n === 'table',
    info: () => ({ dtype, shape: [rows, cols] }),
    read: async () => bf16ToF32(bits),
    readRange: async (_n, offset, length) => {
      reads.push([offset, length]);
      return bytes.slice(offset, offset + length);
    },
  };
}

t.test('rows of a bf16 table read in blocks equal the float32 values', async (t) => {
  const [rows, cols] = [37, 24];
  const bits = Uint16Array.from({ length: rows * cols }, (_, i) => (0x3f80 + ((i * 7919) % 0x7f)) ^ (i % 3 === 0 ? 0x8000 : 0));
  const whole = bf16ToF32(bits);
  // Blocks of 5 rows: 8 reads, the last one of 2 rows.
  const src = source(bits, rows, cols);
  const table = await RowTable.load(src, 'table', 5 * cols * 2);
  t.equal(src.reads.length, 8, 'read block by block');
  t.same(src.reads.at(-1), [35 * cols * 2, 2 * cols * 2]);
  t.equal(table.byteLength, rows * cols * 2, 'held in 16 bits');
  const ids = [0, 4, 5, 36, 17, 5];
  const got = table.gather(ids);
  ids.forEach((id, n) => t.same(Array.from(got.subarray(n * cols, (n + 1) * cols)), Array.from(whole.subarray(id * cols, (id + 1) * cols)), `row ${id}`));
  t.throws(() => table.gather([37]), RangeError, 'a row past the table');
  t.throws(() => table.gather([-1]), RangeError);
});

t.test('a table not stored as BF16 is read whole as float32', async (t) => {
  const bits = Uint16Array.from({ length: 12 }, (_, i) => 0x4000 + i);
  const src = source(bits, 3, 4, 'F32');
  const table = await RowTable.load(src, 'table');
  t.equal(src.reads.length, 0);
  t.equal(table.byteLength, 12 * 4);
  t.same(Array.from(table.gather([2])), Array.from(bf16ToF32(bits).subarray(8, 12)));
});
