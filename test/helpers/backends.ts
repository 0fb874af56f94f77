// Backends the engine tests run on: wasm and cpu everywhere, and webgpu where a Vulkan driver is installed
// (.ci/run installs Mesa's lavapipe, a software Vulkan device, so the WGSL programs run in CI too).
import { existsSync, readdirSync } from 'node:fs';
import { vulkanLoaderFound } from '../../src/engine/webgpu/adapter.js';

function vulkanDriverInstalled(): boolean {
  const dirs = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'];
  return vulkanLoaderFound() && dirs.some((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith('.json')));
}

export const WEBGPU_TESTABLE = vulkanDriverInstalled();

export function engineBackends(): Array<'wasm' | 'cpu' | 'webgpu'> {
  return WEBGPU_TESTABLE ? ['wasm', 'cpu', 'webgpu'] : ['wasm', 'cpu'];
}
