// Backends the engine tests run on: wasm (one thread and two) and cpu everywhere, each with tfjs's matmuls and with the native kernels, and webgpu where a Vulkan driver is installed
// (.ci/run installs Mesa's lavapipe, a software Vulkan device, so the WGSL programs run in CI too).
import { existsSync, readdirSync } from 'node:fs';
import { vulkanLoaderFound } from '../../src/engine/webgpu/adapter.js';

function vulkanDriverInstalled(): boolean {
  const dirs = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'];
  return vulkanLoaderFound() && dirs.some((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith('.json')));
}

export const WEBGPU_TESTABLE = vulkanDriverInstalled();

/** An engine set-up under test: a backend, what runs the linear layers, and how many threads share them. */
export interface EngineVariant {
  label: string;
  backend: 'wasm' | 'cpu' | 'webgpu';
  kernels?: 'native' | 'tfjs';
  threads?: number;
}

export function engineBackends(): EngineVariant[] {
  const variants: EngineVariant[] = [
    { label: 'wasm', backend: 'wasm', kernels: 'tfjs' },
    { label: 'wasm, 2 threads', backend: 'wasm', kernels: 'tfjs', threads: 2 },
    { label: 'cpu', backend: 'cpu', kernels: 'tfjs' },
    // .ci/run builds the kernels (npm ci runs scripts/build-native.sh); 'native' fails the test where they are missing.
    { label: 'wasm, native kernels, 2 threads', backend: 'wasm', kernels: 'native', threads: 2 },
    { label: 'cpu, native kernels', backend: 'cpu', kernels: 'native' },
  ];
  if (WEBGPU_TESTABLE) variants.push({ label: 'webgpu', backend: 'webgpu' });
  return variants;
}
