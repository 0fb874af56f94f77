// The native CPU kernels against float64 references: packed matmuls (float32 and bf16 storage, every row tiling),
// the embedding lookup, the decode step's reduction, and their argument checks.
import t from 'tap';
import { initBackend } from '../src/engine/backend.js';
import { NativeKernels, nativeAddon } from '../src/engine/native/kernels.js';
import { createRng } from '../src/engine/rng.js';
import { reduceNative } from '../src/engine/native/reduce.js';
import { checkReduction } from './helpers/top-k-reference.js';

const { addon, reason } = nativeAddon();
if (!addon) throw new Error(`the native kernels are not available: ${reason}`);
const kernels = new NativeKernels(addon, 2);
const rng = createRng(5);
const random = (n: number) => new Float32Array(n).map(() => rng.next() - 0.5);
/** Values that bfloat16 holds exactly (as a bf16 checkpoint's). */
const bf16Exact = (a: Float32Array) => {
  const bits = new Uint32Array(a.buffer);
  for (let i = 0; i < bits.length; i++) bits[i] &= 0xffff0000;
  return a;
};

/** y = x W in float64, W given as [K, N] (or [N, K] when transposed). */
function reference(w: Float32Array, K: number, N: number, transposed: boolean, x: Float32Array, M: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * (transposed ? w[n * K + k] : w[k * N + n]);
      y[m * N + n] = s;
    }
  return y;
}

t.test('matmul equals a float64 product for every storage, layout and row count', async (t) => {
  // N = 37 ends in a partial panel; M covers the one-row kernel, 2 to 6 rows, uneven splits (7, 13) and row blocks past 48.
  for (const [K, N] of [[40, 37], [64, 48]]) {
    for (const storage of ['f32', 'bf16', 'bf16 refused'] as const) {
      for (const transposed of [false, true]) {
        const w = storage === 'f32' ? random(K * N) : bf16Exact(random(K * N));
        const packed = kernels.pack(w, K, N, transposed, storage !== 'bf16 refused');
        t.equal(packed.bf16, storage === 'bf16', `${storage}: held in ${storage === 'bf16' ? 16 : 32} bits`);
        t.equal(packed.bytes, Math.ceil(N / 16) * 16 * K * (packed.bf16 ? 2 : 4), `${storage}: bytes in panels of 16 columns`);
        for (const M of [1, 2, 5, 7, 8, 13, 100]) {
          const x = random(M * K);
          const y = kernels.multiply(packed, x, M);
          const want = reference(w, K, N, transposed, x, M);
          const worst = want.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
          t.ok(worst < 1e-5, `K=${K} N=${N} M=${M} ${storage}${transposed ? ' transposed' : ''}: worst error ${worst.toExponential(2)}`);
        }
      }
    }
  }
});

t.test('columns of a packed matrix are the rows of its transpose, scaled', async (t) => {
  const K = 24;
  const N = 50;
  const wT = bf16Exact(random(N * K));
  const packed = kernels.pack(wT, K, N, true);
  const ids = [0, 49, 17, 17, 16];
  const rows = kernels.columns(packed, ids, 2.5);
  ids.forEach((id, i) => {
    const want = Array.from(wT.subarray(id * K, (id + 1) * K), (v) => Math.fround(v * 2.5));
    t.same(Array.from(rows.subarray(i * K, (i + 1) * K)), want, `id ${id}`);
  });
});

t.test('the native reduction equals the reduction in JS', async (t) => {
  await initBackend('wasm');
  await checkReduction(t, (logits, rows) => reduceNative(logits, rows, kernels), 1e-4);
});

t.test('bad arguments throw instead of reading or writing past an array', async (t) => {
  const packed = kernels.pack(random(8 * 16), 8, 16, false);
  t.throws(() => kernels.pack(random(10), 4, 4, false), /K \* N must equal/);
  t.throws(() => addon.multiply(packed.handle, random(7), 1, new Float32Array(16)), /shorter/);
  t.throws(() => addon.multiply(packed.handle, random(8), 1, new Float32Array(15)), /shorter/);
  t.throws(() => addon.multiply({}, random(8), 1, new Float32Array(16)), /packed matrix/);
  t.throws(() => addon.gather(packed.handle, Int32Array.of(16), 1, new Float32Array(8)), /out of range/);
  t.throws(() => kernels.reduce(random(10), 1, 10, 11, [1]).now(), /K is not in 1\.\.V/);
  t.throws(() => kernels.reduce(random(10), 1, 10, 11, [1]).later(), /K is not in 1\.\.V/, 'the worker-thread call checks its arguments before it is queued');
  t.throws(() => kernels.reduce(random(10), 1, 10, 3, [0]).now(), /positive/);
});

t.test('writeKv puts the last `entries` tokens of a call at their ring entries, V transposed', async (t) => {
  const [nkv, hd, T, E, start] = [2, 4, 5, 3, 1];
  const kv = random(T * 2 * nkv * hd);
  const k = new Float32Array(nkv * E * hd);
  const vT = new Float32Array(nkv * hd * E);
  kernels.writeKv(nkv, hd, kv, 1, T, [[k, vT, new Int32Array(E).fill(-1), E, start]]).now();
  let same = true;
  for (let tok = T - E; tok < T; tok++) {
    const e = (start + tok) % E;
    for (let h = 0; h < nkv; h++)
      for (let d = 0; d < hd; d++) {
        same &&= k[(h * E + e) * hd + d] === kv[tok * 2 * nkv * hd + h * hd + d];
        same &&= vT[(h * hd + d) * E + e] === kv[tok * 2 * nkv * hd + (nkv + h) * hd + d];
      }
  }
  t.ok(same, 'every held key and value where the ring puts it');
  t.throws(() => kernels.writeKv(nkv, hd, kv.subarray(1), 1, T, [null]).now(), /shorter/);
});

t.test('the Gemma 4 layer refuses weights that do not match its shape', async (t) => {
  const [H, nq, nkv, hd, I] = [8, 2, 1, 4, 6];
  const m = (K: number, N: number) => kernels.pack(random(K * N), K, N, false);
  const layer = { q: m(H, nq * hd), kv: m(H, 2 * nkv * hd), o: m(nq * hd, H), gateUp: m(H, 2 * I), down: m(I, H), inputNorm: random(H), postAttnNorm: random(H), preFfwNorm: random(H), postFfwNorm: random(H), qNorm: random(hd), kNorm: random(hd), layerScalar: 1 };
  const shape = { hidden: H, heads: nq, kvHeads: nkv, headDim: hd, intermediate: I, eps: 1e-6, window: 4, experts: 0, topK: 0, expertIntermediate: 0, perLayer: 0, layerScalar: 1, ownKv: true, kEqV: false, writeCache: true };
  const run = (s: typeof shape, w: typeof layer) => kernels.gemma4Layer(s, w, random(2 * H), 1, 2, random(2 * hd), random(2 * hd), null, null, [null]).now();
  t.equal(run(shape, layer), 0, 'a dense layer runs no experts');
  t.throws(() => run({ ...shape, intermediate: I + 1 }, layer), /does not match/);
  t.throws(() => run({ ...shape, kEqV: true }, layer), /does not match/);
  t.throws(() => run({ ...shape, ownKv: false }, layer), /shorter|Float32Array/, 'a KV-shared layer needs its source K/V');
});

t.test('a call on a worker thread writes what the same call on this thread writes, and the event loop runs meanwhile', async (t) => {
  // Big enough (2 x 256 tokens) that the call is still running when the event loop turns.
  const [H, nq, nkv, hd, I, B, T, E] = [128, 4, 1, 32, 384, 2, 256, 256];
  const m = (K: number, N: number) => kernels.pack(random(K * N), K, N, false);
  const w = { qkv: m(H, (nq + 2 * nkv) * hd), o: m(nq * hd, H), gateUp: m(H, 2 * I), down: m(I, H), norms: [random(H), random(H), random(H), random(H), null] as [Float32Array, Float32Array, Float32Array, Float32Array, null] };
  const shape = { hidden: H, heads: nq, kvHeads: nkv, headDim: hd, intermediate: I, eps: 1e-6, attnSoftcap: 0, window: 1e9 };
  const x = random(B * T * H);
  const [cos, sin] = [random(B * T * hd), random(B * T * hd)];
  const cache = () => Array.from({ length: B }, () => [new Float32Array(nkv * E * hd), new Float32Array(nkv * E * hd), new Int32Array(E).fill(-1), E, 0] as [Float32Array, Float32Array, Int32Array, number, number]);
  const [xNow, cachesNow] = [x.slice(), cache()];
  kernels.layer(shape, w, xNow, B, T, cos, sin, cachesNow).now();
  const [xLater, cachesLater] = [x.slice(), cache()];
  let ticks = 0;
  let running = true;
  const tick = () => {
    if (!running) return;
    ticks++;
    setImmediate(tick);
  };
  setImmediate(tick);
  const pending = kernels.layer(shape, w, xLater, B, T, cos, sin, cachesLater).later();
  t.ok(pending instanceof Promise, 'the worker-thread call returns a promise');
  await pending;
  running = false;
  t.ok(ticks > 0, `the event loop turned while the call ran (${ticks} times)`);
  t.same(xLater, xNow, 'the hidden state is the same');
  t.same(cachesLater, cachesNow, 'the K/V written are the same');
  const logitsNow = kernels.logits(xNow.slice(0, H), 1, w.norms[0], 1e-6, w.gateUp, 30, new Float32Array(2 * I)).now();
  const logitsLater = await kernels.logits(xNow.slice(0, H), 1, w.norms[0], 1e-6, w.gateUp, 30, new Float32Array(2 * I)).later();
  t.same(logitsLater, logitsNow, 'the logits are the same');
  const reducedNow = kernels.reduce(logitsNow, 1, 2 * I, 5, [0.7]).now();
  t.same(await kernels.reduce(logitsNow, 1, 2 * I, 5, [0.7]).later(), reducedNow, 'the reduction is the same');
});
