/**
 * WebGPU in Node: the npm package `webgpu` (Dawn's `dawn.node`) provides
 * `navigator.gpu`, and `@tensorflow/tfjs-backend-webgpu` runs on the device it
 * gives. Both are optional dependencies, so they are loaded by name at run
 * time and typed here only as far as this module uses them.
 *
 * Finding out whether a GPU is there must cost nothing on machines without
 * one: Dawn prints a warning of its own to stderr when it cannot load the
 * Vulkan loader, so `auto` asks Dawn only when the machine has a GPU device
 * node and a Vulkan loader that the dynamic linker can find.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';

interface GpuAdapterInfo {
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}

/** The adapter limits the engine and tfjs depend on. */
export interface GpuLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeWorkgroupsPerDimension: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeInvocationsPerWorkgroup: number;
}

interface GpuAdapter {
  readonly features: { has(name: string): boolean };
  readonly limits: GpuLimits;
  readonly info?: GpuAdapterInfo;
  readonly isFallbackAdapter?: boolean;
  requestDevice(descriptor: { requiredFeatures?: string[]; requiredLimits?: Record<string, number> }): Promise<GpuDevice>;
}

interface GpuDevice {
  readonly limits: GpuLimits;
  readonly lost: Promise<{ reason: string; message: string }>;
  destroy(): void;
}

interface Gpu {
  requestAdapter(options?: { powerPreference?: 'high-performance' | 'low-power' }): Promise<GpuAdapter | null>;
}

interface DawnModule {
  create(flags: string[]): Gpu;
  globals: Record<string, unknown>;
}

/** What was found: an adapter to start the backend on, or why there is none. */
export type GpuProbe = { ok: true; gpu: Gpu; adapter: GpuAdapter; name: string } | { ok: false; reason: string };

/** How long `auto` waits for Dawn to enumerate adapters before it moves on. */
export const ADAPTER_TIMEOUT_MS = 5000;

/** Device nodes of a GPU driver: NVIDIA's own, or a DRM render node (AMD, Intel, NVIDIA open). */
export function gpuDeviceNode(dev = '/dev'): string | undefined {
  if (existsSync(join(dev, 'nvidiactl')) || existsSync(join(dev, 'nvidia0'))) return join(dev, 'nvidia0');
  try {
    const render = readdirSync(join(dev, 'dri')).find((n) => n.startsWith('renderD'));
    if (render) return join(dev, 'dri', render);
  } catch {
    // No DRM devices at all.
  }
  return undefined;
}

/**
 * Whether `libvulkan.so.1` can be loaded: on LD_LIBRARY_PATH, or in the
 * linker's cache (`ldconfig` writes the names it knows into /etc/ld.so.cache).
 */
export function vulkanLoaderFound(env: NodeJS.ProcessEnv = process.env, cacheFile = '/etc/ld.so.cache'): boolean {
  const lib = 'libvulkan.so.1';
  for (const dir of (env.LD_LIBRARY_PATH ?? '').split(':')) {
    if (dir !== '' && existsSync(join(dir, lib))) return true;
  }
  try {
    return readFileSync(cacheFile).includes(lib);
  } catch {
    return false;
  }
}

function adapterName(a: GpuAdapter): string {
  const i = a.info ?? {};
  return [i.vendor, i.architecture, i.device, i.description].filter((s) => s !== undefined && s !== '').join(' ') || 'unnamed adapter';
}

/** Software rasterizers expose Vulkan too; on them the wasm backend is faster. */
function isSoftwareAdapter(a: GpuAdapter): boolean {
  if (a.info?.isFallbackAdapter || a.isFallbackAdapter) return true;
  return /swiftshader|llvmpipe|lavapipe|software/i.test(adapterName(a));
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Looks for a hardware adapter. With `quiet` (the `auto` choice) it gives up
 * before touching Dawn unless the machine shows a GPU and a Vulkan loader.
 */
export async function probeWebGPU(opts: { quiet: boolean; timeoutMs?: number }): Promise<GpuProbe> {
  if (opts.quiet) {
    const node = gpuDeviceNode();
    if (!node) return { ok: false, reason: 'no GPU device node (/dev/nvidia0, /dev/dri/renderD*)' };
    if (!vulkanLoaderFound()) return { ok: false, reason: `${node} exists but no Vulkan loader (libvulkan.so.1) is installed` };
  }
  let dawn: DawnModule;
  try {
    const pkg = 'webgpu';
    dawn = (await import(pkg)) as DawnModule;
  } catch (err) {
    return { ok: false, reason: `the webgpu package does not load (${(err as Error).message.split('\n')[0]})` };
  }
  // tfjs-backend-webgpu refers to GPUBufferUsage and friends as globals.
  for (const [k, v] of Object.entries(dawn.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  const gpu = dawn.create([]);
  let adapter: GpuAdapter | null;
  try {
    adapter = await withTimeout(gpu.requestAdapter({ powerPreference: 'high-performance' }), opts.timeoutMs ?? ADAPTER_TIMEOUT_MS, 'navigator.gpu.requestAdapter()');
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
  if (!adapter) return { ok: false, reason: 'Dawn found no WebGPU adapter (is the Vulkan driver reachable? VK_DRIVER_FILES)' };
  const name = adapterName(adapter);
  if (opts.quiet && isSoftwareAdapter(adapter)) return { ok: false, reason: `the only adapter is a software one (${name})` };
  return { ok: true, gpu, adapter, name };
}

/**
 * The Dawn instance, adapter and device of the started backend. They are held
 * for as long as the backend runs: on an H200, dropping the reference to the
 * instance once the device existed ended every run within seconds in a
 * segmentation fault or an abort, and holding it fixed that. Holding it also
 * keeps Node's event loop alive, so `releaseWebGPU` lets go of it when the
 * engine is done.
 */
let held: { gpu: Gpu; adapter: GpuAdapter; device: GpuDevice; subgroups: SubgroupSizes | undefined } | undefined;

/** The subgroup sizes the device's shaders may see, where it has the `subgroups` feature. */
export interface SubgroupSizes {
  min: number;
  max: number;
}

/**
 * Registers and starts tfjs's `webgpu` backend on the probed adapter, with the
 * adapter's own buffer limits (Dawn's defaults cap a buffer at 256 MiB).
 */
export async function startWebGPU(probe: Extract<GpuProbe, { ok: true }>): Promise<void> {
  const { adapter, gpu } = probe;
  // The backend's constructor checks for navigator.gpu; Node 20 has no navigator.
  const nav = ((globalThis as { navigator?: { gpu?: Gpu } }).navigator ??= {} as { gpu?: Gpu });
  nav.gpu = gpu;
  const pkg = '@tensorflow/tfjs-backend-webgpu';
  const { WebGPUBackend } = (await import(pkg)) as { WebGPUBackend: new (device: GpuDevice, info?: GpuAdapterInfo) => tf.KernelBackend };
  const requiredFeatures = ['timestamp-query', 'subgroups'].filter((f) => adapter.features.has(f));
  const l = adapter.limits;
  const requiredLimits = {
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
  };
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  const info = adapter.info ?? {};
  const subgroups = requiredFeatures.includes('subgroups') && info.subgroupMinSize && info.subgroupMaxSize ? { min: info.subgroupMinSize, max: info.subgroupMaxSize } : undefined;
  held = { gpu, adapter, device, subgroups };
  // The backend package, once loaded with navigator.gpu set, registers a factory of its own; this one reuses the probed device.
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new WebGPUBackend(device, adapter.info), 0);
  if (!(await tf.setBackend('webgpu'))) throw new Error('tf.setBackend("webgpu") failed');
  await tf.ready();
}

/** Disposes the webgpu backend and its device and lets go of Dawn, so that the process can exit; a later start probes again. */
export function releaseWebGPU(): void {
  if (!held) return;
  if (tf.findBackend('webgpu')) tf.removeBackend('webgpu');
  held.device.destroy();
  const nav = (globalThis as { navigator?: { gpu?: Gpu } }).navigator;
  if (nav?.gpu === held.gpu) delete nav.gpu;
  held = undefined;
}

/** The started device's subgroup sizes; undefined without the feature (or before webgpu starts). */
export function webgpuSubgroups(): SubgroupSizes | undefined {
  return held?.subgroups;
}

/** Limits of the started device; undefined when webgpu has not been started. */
export function webgpuLimits(): GpuLimits | undefined {
  const l = held?.device.limits;
  if (!l) return undefined;
  // Dawn's limits are accessors on a prototype: copy them so they log and serialize.
  return {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
  };
}

/** Bytes on the device (webgpu's buffer manager): in use by tensors, and allocated including its pool of free buffers. */
export function webgpuMemory(): { inUse: number; allocated: number } | undefined {
  const m = tf.memory() as tf.MemoryInfo & { numBytesInGPU?: number; numBytesAllocatedInGPU?: number };
  if (m.numBytesInGPU === undefined) return undefined;
  return { inUse: m.numBytesInGPU, allocated: m.numBytesAllocatedInGPU ?? m.numBytesInGPU };
}
