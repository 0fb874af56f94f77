// The webgpu backend choice where no GPU is reachable (CI, this machine): `auto` moves on quietly, a forced choice fails clearly.
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadConfig, ConfigError } from '../config/index.js';
import { initBackend } from '../src/engine/backend.js';
import { gpuDeviceNode, probeWebGPU, vulkanLoaderFound } from '../src/engine/webgpu/adapter.js';
import { WEBGPU_TESTABLE } from './helpers/backends.js';

const run = promisify(execFile);
const noGpuHere = gpuDeviceNode() === undefined;

t.test('BACKEND=webgpu is a configuration choice', async (t) => {
  t.equal(loadConfig({ BACKEND: 'webgpu' }).model.backend, 'webgpu');
  t.equal(loadConfig({ BACKEND: 'WebGPU' }).model.backend, 'webgpu');
  t.throws(() => loadConfig({ BACKEND: 'vulkan' }), ConfigError);
});

t.test('GPU device nodes', async (t) => {
  const dev = mkdtempSync(join(tmpdir(), 'gs-dev-'));
  t.equal(gpuDeviceNode(dev), undefined, 'none in an empty /dev');
  mkdirSync(join(dev, 'dri'));
  writeFileSync(join(dev, 'dri', 'card0'), '');
  t.equal(gpuDeviceNode(dev), undefined, 'a display-only DRM card is not a render node');
  writeFileSync(join(dev, 'dri', 'renderD128'), '');
  t.equal(gpuDeviceNode(dev), join(dev, 'dri', 'renderD128'));
  writeFileSync(join(dev, 'nvidiactl'), '');
  t.equal(gpuDeviceNode(dev), join(dev, 'nvidia0'), 'NVIDIA first');
});

t.test('Vulkan loader lookup', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gs-lib-'));
  const cache = join(dir, 'ld.so.cache');
  writeFileSync(cache, 'glibc-ld.so.cache1.1\0libc.so.6\0/usr/lib/x86_64-linux-gnu/libc.so.6\0');
  t.equal(vulkanLoaderFound({}, cache), false);
  t.equal(vulkanLoaderFound({}, join(dir, 'missing')), false);
  writeFileSync(cache, 'glibc-ld.so.cache1.1\0libvulkan.so.1\0/usr/lib/x86_64-linux-gnu/libvulkan.so.1\0');
  t.equal(vulkanLoaderFound({}, cache), true, 'in the linker cache');
  const lib = join(dir, 'lib');
  mkdirSync(lib);
  writeFileSync(join(lib, 'libvulkan.so.1'), '');
  t.equal(vulkanLoaderFound({ LD_LIBRARY_PATH: `/nowhere::${lib}` }, join(dir, 'missing')), true, 'on LD_LIBRARY_PATH');
});

t.test('the quiet probe does not touch Dawn without a GPU', { skip: noGpuHere ? false : 'this machine has a GPU device node' }, async (t) => {
  const t0 = performance.now();
  const probe = await probeWebGPU({ quiet: true });
  const ms = performance.now() - t0;
  t.equal(probe.ok, false);
  t.match(probe, { reason: /no GPU device node/ });
  t.ok(ms < 50, `answered in ${ms.toFixed(1)} ms`);
});

t.test('auto picks wasm without a word on stderr', { skip: noGpuHere ? false : 'this machine has a GPU device node' }, async (t) => {
  // A child process, because Dawn writes its warnings to file descriptor 2 from native code.
  const helper = fileURLToPath(new URL('./helpers/auto-backend.ts', import.meta.url));
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const { stdout, stderr } = await run(process.execPath, [...loader, helper], { env: { ...process.env, NODE_OPTIONS: '' } });
  t.equal(stderr, '', 'nothing on stderr');
  const chosen = JSON.parse(stdout) as { name: string; reason: string; ms: number };
  t.equal(chosen.name, 'wasm');
  t.match(chosen.reason, /tensorflow: tfjs-node not available; webgpu: no GPU device node .*; wasm is the fastest backend that started/);
});

t.test('BACKEND=webgpu fails with the reason when no adapter answers', async (t) => {
  // A child with the Vulkan loader pointed at no driver: Dawn finds no adapter, GPU or software.
  const helper = fileURLToPath(new URL('./helpers/auto-backend.ts', import.meta.url));
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const env = { ...process.env, NODE_OPTIONS: '', VK_DRIVER_FILES: '/nonexistent/icd.json', VK_ICD_FILENAMES: '/nonexistent/icd.json' };
  const { stdout } = await run(process.execPath, [...loader, helper, 'webgpu'], { env });
  const out = JSON.parse(stdout) as { error?: string; name?: string };
  t.equal(out.name, 'BackendError');
  t.match(out.error, /BACKEND=webgpu but .*(no WebGPU adapter|does not load|did not answer)/);
});

t.test('BACKEND=webgpu takes a software Vulkan device when it is the only one', { skip: WEBGPU_TESTABLE ? false : 'no Vulkan driver installed' }, async (t) => {
  const helper = fileURLToPath(new URL('./helpers/auto-backend.ts', import.meta.url));
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const { stdout } = await run(process.execPath, [...loader, helper, 'webgpu'], { env: { ...process.env, NODE_OPTIONS: '' } });
  const out = JSON.parse(stdout) as { name: string; reason: string };
  t.equal(out.name, 'webgpu');
  t.match(out.reason, /forced by configuration; GPU adapter: /);
});
