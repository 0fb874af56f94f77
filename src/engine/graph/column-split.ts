/**
 * The second core on wasm. tfjs runs wasm on one thread under Node (its
 * threaded build made small ops 10-40x slower here), so the engine starts a
 * worker thread with a wasm backend of its own and splits every linear
 * weight by output columns: this thread multiplies by the first part while
 * the worker multiplies by the rest, and the two results are concatenated.
 * Requests and results cross through one SharedArrayBuffer, with Atomics for
 * the hand-off (a round trip costs microseconds, a postMessage much more).
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { fuseTransposedArray, tensorOf, type RemoteColumns, type WeightLayout } from '../weights.js';

/** Where a weight's remaining columns live in the worker. */
export type { RemoteColumns };

const IDLE = 0;
const REQUEST = 1;
const DONE = 2;
const EXIT = 3;
const FAILED = 4;

/* The worker, as CommonJS source: it must run the same way from the TypeScript sources (tests) and from dist. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const tf = require(workerData.core);
require(workerData.wasm);
const ctrl = new Int32Array(workerData.sab, 0, 8);
const data = new Float32Array(workerData.sab, 32);
const pending = [];
const weights = new Map();
parentPort.on('message', async (m) => {
  if (m.type === 'weight') {
    pending.push(m);
    return;
  }
  await tf.setBackend('wasm');
  await tf.ready();
  for (const w of pending.splice(0)) weights.set(w.id, tf.tensor2d(new Float32Array(w.data), [w.rows, w.cols]));
  // Pack every weight once (XNNPACK keeps a packed copy), as the engine's warm-up does on its side.
  for (const w of weights.values()) tf.tidy(() => tf.matMul(tf.zeros([1, w.shape[0]]), w)).dispose();
  parentPort.postMessage({ type: 'ready', bytes: tf.memory().numBytes });
  for (;;) {
    Atomics.wait(ctrl, 0, ${IDLE});
    const state = Atomics.load(ctrl, 0);
    if (state === ${EXIT}) break;
    if (state !== ${REQUEST}) continue;
    try {
      const w = weights.get(ctrl[1]);
      const rows = ctrl[2];
      const k = ctrl[3];
      const y = tf.tidy(() => tf.matMul(tf.tensor2d(data.subarray(0, rows * k), [rows, k]), w));
      data.set(y.dataSync(), workerData.inputFloats);
      y.dispose();
      Atomics.store(ctrl, 0, ${DONE});
    } catch (err) {
      Atomics.store(ctrl, 0, ${FAILED});
    }
    Atomics.notify(ctrl, 0);
  }
  parentPort.close();
});
`;

export class ColumnSplit {
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly data: Float32Array;
  private next = 0;
  private ready: Promise<void> | undefined;
  /** Bytes the worker's backend holds once started (its weights and their packed copies). */
  workerBytes = 0;

  /**
   * @param inputFloats largest x ([rows, in]) a call passes
   * @param outputFloats largest remote result ([rows, remote cols]); larger calls run in row blocks
   */
  constructor(
    private readonly inputFloats: number,
    private readonly outputFloats: number,
  ) {
    const sab = new SharedArrayBuffer(32 + 4 * (inputFloats + outputFloats));
    this.ctrl = new Int32Array(sab, 0, 8);
    this.data = new Float32Array(sab, 32);
    const require = createRequire(import.meta.url);
    const workerData = { sab, inputFloats, core: require.resolve('@tensorflow/tfjs-core'), wasm: require.resolve('@tensorflow/tfjs-backend-wasm') };
    // No inherited flags: the source is CommonJS whatever the main thread was started with (--input-type, loaders).
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData, execArgv: [] });
    this.worker.unref();
  }

  /**
   * Splits `w` ([rows, cols], row-major) by columns: returns the first
   * `cols - remote` columns (for this thread) and sends the rest to the worker.
   */
  add(w: Float32Array, rows: number, cols: number): { local: Float32Array; localCols: number; remote: RemoteColumns } {
    const remoteCols = Math.floor(cols / 2);
    const localCols = cols - remoteCols;
    const local = new Float32Array(rows * localCols);
    const rest = new Float32Array(rows * remoteCols);
    for (let r = 0; r < rows; r++) {
      local.set(w.subarray(r * cols, r * cols + localCols), r * localCols);
      rest.set(w.subarray(r * cols + localCols, (r + 1) * cols), r * remoteCols);
    }
    const id = this.next++;
    this.worker.postMessage({ type: 'weight', id, rows, cols: remoteCols, data: rest.buffer }, [rest.buffer]);
    return { local, localCols, remote: { id, cols: remoteCols } };
  }

  /** Starts serving once every weight was added. */
  start(): Promise<void> {
    this.ready ??= new Promise<void>((resolve, reject) => {
      this.worker.once('error', reject);
      this.worker.once('message', (m: { bytes: number }) => {
        this.workerBytes = m.bytes;
        resolve();
      });
      this.worker.postMessage({ type: 'serve' });
    });
    return this.ready;
  }

  /** x [rows, in] times the whole weight: `local` here, the remote columns in the worker at the same time. */
  matMul(x: tf.Tensor2D, local: tf.Tensor2D, remote: RemoteColumns): tf.Tensor2D {
    return tf.tidy(() => tf.concat(this.matMulParts(x, local, remote), 1) as tf.Tensor2D);
  }

  /** The two column blocks of x times the weight, [rows, local cols] and [rows, remote cols], not yet joined. */
  matMulParts(x: tf.Tensor2D, local: tf.Tensor2D, remote: RemoteColumns): [tf.Tensor2D, tf.Tensor2D] {
    const [rows, k] = x.shape;
    const block = Math.max(1, Math.min(rows, Math.floor(this.inputFloats / k), Math.floor(this.outputFloats / remote.cols)));
    if (block < rows) {
      return tf.tidy(() => {
        const parts: Array<[tf.Tensor2D, tf.Tensor2D]> = [];
        for (let r = 0; r < rows; r += block) parts.push(this.matMulParts(tf.slice(x, [r, 0], [Math.min(block, rows - r), k]), local, remote));
        return [tf.concat(parts.map((p) => p[0]), 0) as tf.Tensor2D, tf.concat(parts.map((p) => p[1]), 0) as tf.Tensor2D];
      });
    }
    this.data.set(x.dataSync(), 0);
    this.ctrl[1] = remote.id;
    this.ctrl[2] = rows;
    this.ctrl[3] = k;
    Atomics.store(this.ctrl, 0, REQUEST);
    Atomics.notify(this.ctrl, 0);
    const mine = tf.matMul(x, local) as tf.Tensor2D;
    while (Atomics.load(this.ctrl, 0) === REQUEST) Atomics.wait(this.ctrl, 0, REQUEST);
    const state = Atomics.load(this.ctrl, 0);
    Atomics.store(this.ctrl, 0, IDLE);
    if (state !== DONE) {
      mine.dispose();
      throw new Error('the matmul worker failed');
    }
    return [mine, tf.tensor2d(this.data.slice(this.inputFloats, this.inputFloats + rows * remote.cols), [rows, remote.cols])];
  }

  dispose(): void {
    Atomics.store(this.ctrl, 0, EXIT);
    Atomics.notify(this.ctrl, 0);
    void this.worker.terminate();
  }
}

/** The graph's weights with a worker thread: each linear weight and the embedding split by columns, norms folded. */
export function splitLayout(split: ColumnSplit): WeightLayout {
  const layout: WeightLayout = {
    foldNorms: true,
    linear: (parts, outs, inDim, keep) => {
      const total = outs.reduce((a, b) => a + b, 0);
      const { local, localCols, remote } = split.add(fuseTransposedArray(parts, outs, inDim), inDim, total);
      return { t: keep(tf.tensor2d(local, [inDim, localCols])), remote };
    },
    embedding: (embed, c, keep) => {
      const e = layout.linear([embed], [c.vocabSize], c.hiddenSize, keep);
      // The rows stay in JS for lookups: a gather over split columns would need the worker too.
      return { embedT: e.t, embedParts: [{ table: tensorOf(e.t), from: 0 }], embedRemote: e.remote, embedRows: embed };
    },
  };
  return layout;
}
