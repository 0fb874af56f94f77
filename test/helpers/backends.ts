// Backends the engine tests run on: wasm (one thread and two) and cpu everywhere, and webgpu where a Vulkan driver is installed
// (.ci/run installs Mesa's lavapipe, a software Vulkan device, so the WGSL programs run in CI too).
import { existsSync, readdirSync } from 'node:fs';
import { vulkanLoaderFound } from '../../src/engine/webgpu/adapter.js';

function vulkanDriverInstalled(): boolean {
  const dirs = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'];
  return vulkanLoaderFound() && dirs.some((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith('.json')));
}

export const WEBGPU_TESTABLE = vulkanDriverInstalled();

/** An engine set-up under test: a backend, and for wasm how many threads share the linear weights. */
export interface EngineVariant {
  label: string;
  backend: 'wasm' | 'cpu' | 'webgpu';
  threads?: number;
}

export function engineBackends(): EngineVariant[] {
  const variants: EngineVariant[] = [
    { label: 'wasm', backend: 'wasm' },
    { label: 'wasm, 2 threads', backend: 'wasm', threads: 2 },
    { label: 'cpu', backend: 'cpu' },
  ];
  if (WEBGPU_TESTABLE) variants.push({ label: 'webgpu', backend: 'webgpu' });
  return variants;
}
