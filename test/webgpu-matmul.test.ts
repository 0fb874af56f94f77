// The fused path's linear-layer programs (GEMV and tiled GEMM, f32 and bf16 weights) against the product computed in JS.
import t from 'tap';
import { initBackend, releaseBackend } from '../src/engine/backend.js';
import { webgpuSubgroups } from '../src/engine/webgpu/adapter.js';
import type { Epilogue } from '../src/engine/webgpu/kernels.js';
import { MatmulRunner, type MatmulCase } from '../src/engine/webgpu/matmul-runner.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';

/** Deterministic values in [-1, 1), rounded to bfloat16 so that both storages hold them exactly. */
function bf16Values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
    bits[i] &= 0xffff0000;
  }
  return out;
}

const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)));

function reference(c: MatmulCase, x: Float32Array, w: Float32Array): Float64Array {
  const width = c.epilogue.kind === 'geglu' ? c.M / 2 : c.M;
  const dot = (r: number, m: number) => {
    let s = 0;
    for (let k = 0; k < c.K; k++) s += x[r * c.K + k] * w[m * c.K + k];
    return s;
  };
  const y = new Float64Array(c.rows * width);
  for (let r = 0; r < c.rows; r++) {
    for (let m = 0; m < width; m++) {
      const v = dot(r, m);
      const e = c.epilogue;
      y[r * width + m] = e.kind === 'geglu' ? gelu(v) * dot(r, width + m) : e.kind === 'softcap' ? Math.tanh(v / e.cap) * e.cap : v;
    }
  }
  return y;
}

/** Runs a product on the device (recorded `times` times) and compares it with the JS product: its output and worst error. */
async function check(c: MatmulCase, x: Float32Array, w: Float32Array, times = 1): Promise<{ got: Float32Array; worst: number }> {
  const run = new MatmulRunner(c, x, w);
  run.record(times);
  const out = await run.output();
  run.dispose();
  const want = reference(c, x, w);
  const got = out.slice(0, want.length);
  let worst = 0;
  want.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - got[i]))));
  return { got, worst };
}

t.test('linear-layer programs on webgpu', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  await initBackend('webgpu');
  t.teardown(() => releaseBackend());
  const sg = webgpuSubgroups();
  const reductions = [undefined, ...(sg && sg.max <= 32 ? [{ min: sg.min }] : [])];
  t.ok(reductions.length === 2 || !sg, 'the device offers subgroups up to 32 wide, or none');
  const epilogues: Epilogue[] = [{ kind: 'plain' }, { kind: 'geglu' }, { kind: 'softcap', cap: 2 }];
  // rows 1 / 3 / 8 take the GEMV's three row classes; 9 and 70 the GEMM (70: a partial second row tile).
  for (const rows of [1, 3, 8, 9, 70]) {
    // Every epilogue on one GEMV and one GEMM row class; plain and geglu on the others.
    for (const epilogue of rows === 1 || rows === 70 ? epilogues : epilogues.slice(0, 2)) {
      for (const subgroups of rows <= 8 ? reductions : [undefined]) {
        // 136 outputs (68 with geglu): partial column blocks of both programs. K 200 is 25 groups of 8 (the GEMM
        // stages one group per barrier), K 256 is 32 (four per barrier).
        const base = { K: rows === 70 ? 256 : 200, M: 136, rows, epilogue, subgroups };
        const x = bf16Values(rows * base.K, rows * 7 + 1);
        const w = bf16Values(base.M * base.K, 99);
        const outs: Float32Array[] = [];
        for (const storage of ['f32', 'bf16'] as const) {
          const { got, worst } = await check({ ...base, storage }, x, w);
          t.ok(worst < 1e-4, `${storage} rows=${rows} ${epilogue.kind} subgroups=${subgroups?.min ?? 'off'}: max error ${worst.toExponential(2)}`);
          outs.push(got);
        }
        t.same(outs[1], outs[0], `rows=${rows} ${epilogue.kind}: bf16 storage gives the f32 storage's result exactly`);
      }
    }
  }
  // The 128-row tile (8 x 8 outputs per thread), plain and geglu, over a partial row and column tile.
  for (const epilogue of epilogues.slice(0, 2)) {
    const c: MatmulCase = { K: 256, M: 272, rows: 150, epilogue, storage: 'bf16', program: 'gemm128', subgroups: undefined };
    const { worst } = await check(c, bf16Values(150 * 256, 3), bf16Values(272 * 256, 4));
    t.ok(worst < 1e-4, `128 x 128 tile, ${epilogue.kind}: max error ${worst.toExponential(2)}`);
  }
  // A GEMV over more rows than one workgroup row holds (32 rows as 4 blocks of 8), as the microbenchmark runs it.
  const c: MatmulCase = { K: 64, M: 40, rows: 32, epilogue: { kind: 'plain' }, storage: 'bf16', program: 'gemv', subgroups: reductions.at(-1) };
  const { worst } = await check(c, bf16Values(32 * 64, 5), bf16Values(40 * 64, 6), 3);
  t.ok(worst < 1e-4, 'GEMV in row blocks, recorded three times');
});
