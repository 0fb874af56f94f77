/**
 * The raw WebGPU side of tfjs's webgpu backend, as far as the fused forward
 * pass needs it: the device tfjs runs on, the GPU buffer behind a tensor,
 * compute pipelines built from WGSL, and bind groups cached per set of
 * buffers. Tensors stay tfjs tensors (tfjs owns and counts their memory);
 * the fused pass only records its own dispatches against their buffers, in
 * order with tfjs's own work (tfjs's pending commands are submitted first).
 */
import * as tf from '@tensorflow/tfjs-core';

/* Structural types for the parts of the WebGPU API used here (the `webgpu` package ships no typings). */
export interface GPUBufferLike {
  readonly size: number;
  destroy(): void;
}
interface GPUBindGroupLayoutLike {
  readonly label?: string;
}
export interface GPUBindGroupLike {
  readonly label?: string;
}
export interface GPUPipelineLike {
  getBindGroupLayout(i: number): GPUBindGroupLayoutLike;
}
interface GPUPassLike {
  setPipeline(p: GPUPipelineLike): void;
  setBindGroup(i: number, g: GPUBindGroupLike): void;
  dispatchWorkgroups(x: number, y?: number, z?: number): void;
  end(): void;
}
interface GPUEncoderLike {
  beginComputePass(): GPUPassLike;
  copyBufferToBuffer(src: GPUBufferLike, srcOffset: number, dst: GPUBufferLike, dstOffset: number, size: number): void;
  finish(): unknown;
}
interface GPUDeviceLike {
  createShaderModule(d: { code: string }): unknown;
  createComputePipeline(d: { layout: 'auto'; compute: { module: unknown; entryPoint: string } }): GPUPipelineLike;
  createBindGroup(d: { layout: GPUBindGroupLayoutLike; entries: Array<{ binding: number; resource: { buffer: GPUBufferLike; offset?: number; size?: number } }> }): GPUBindGroupLike;
  createBuffer(d: { size: number; usage: number }): GPUBufferLike;
  createCommandEncoder(): GPUEncoderLike;
  readonly queue: { writeBuffer(b: GPUBufferLike, offset: number, data: ArrayBufferView): void; submit(c: unknown[]): void; onSubmittedWorkDone(): Promise<void> };
}
interface WebGPUBackendInternals {
  device: GPUDeviceLike;
  tensorMap: { get(id: object): { resource: unknown } | undefined };
  commandEncoder: unknown;
  uploadToGPU(id: object): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  makeTensorInfo(shape: number[], dtype: 'float32'): tf.TensorInfo;
}

/* GPUBufferUsage bits (the constants are globals of the `webgpu` package). */
const STORAGE = 0x80;
const COPY_DST = 0x08;

/** One binding: a whole buffer, or a range of one. */
export type Binding = GPUBufferLike | { buffer: GPUBufferLike; offset: number; size: number };

export class GpuRuntime {
  private readonly backend: WebGPUBackendInternals;
  readonly device: GPUDeviceLike;
  private readonly pipelines = new Map<string, GPUPipelineLike>();
  private readonly groups = new Map<string, { pipeline: GPUPipelineLike; buffers: Binding[]; group: GPUBindGroupLike }>();
  private pass: GPUPassLike | undefined;
  private encoder: GPUEncoderLike | undefined;
  /** Dispatches recorded since the runtime was made (benchmarks report it per token). */
  dispatches = 0;
  /**
   * Dispatches per command buffer within one call (0: the whole call in one):
   * submitting the first layers while the host still records the rest lets
   * the device start before recording ends.
   */
  submitEvery = 0;
  private inBuffer = 0;

  constructor() {
    if (tf.getBackend() !== 'webgpu') throw new Error('the fused forward pass needs the webgpu backend');
    this.backend = tf.backend() as unknown as WebGPUBackendInternals;
    this.device = this.backend.device;
  }

  /** The GPU buffer holding a tensor's data (uploaded first if it still lives on the CPU). */
  bufferOf(t: tf.TensorInfo): GPUBufferLike {
    this.backend.uploadToGPU(t.dataId);
    const data = this.backend.tensorMap.get(t.dataId);
    if (!data?.resource) throw new Error('tensor has no GPU buffer');
    return data.resource as GPUBufferLike;
  }

  /** A float32 tensor with storage on the device and no defined contents (an output or scratch). */
  emptyTensor(shape: number[]): tf.Tensor {
    const info = this.backend.makeTensorInfo(shape, 'float32');
    this.backend.uploadToGPU(info.dataId);
    return tf.engine().makeTensorFromTensorInfo(info, this.backend as unknown as tf.KernelBackend);
  }

  /** A buffer the runtime owns (headers, tables), written with `write`. */
  createBuffer(bytes: number): GPUBufferLike {
    return this.device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 4) * 4), usage: STORAGE | COPY_DST });
  }

  write(buffer: GPUBufferLike, data: ArrayBufferView, offset = 0): void {
    this.device.queue.writeBuffer(buffer, offset, data);
  }

  /** Submits tfjs's recorded work, so that buffer writes and the fused dispatches come after it. */
  flushTfjs(): void {
    if (!this.backend.commandEncoder) return;
    this.backend.endComputePassEncoder();
    this.backend.submitQueue();
  }

  pipeline(key: string, code: () => string): GPUPipelineLike {
    let p = this.pipelines.get(key);
    if (!p) {
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module: this.device.createShaderModule({ code: code() }), entryPoint: 'main' } });
      this.pipelines.set(key, p);
    }
    return p;
  }

  /** The bind group for `buffers` (bindings 0..n-1), reused while the pipeline and buffers are the same (an 'auto' layout belongs to its pipeline). */
  bindGroup(key: string, pipeline: GPUPipelineLike, buffers: Binding[]): GPUBindGroupLike {
    const hit = this.groups.get(key);
    if (hit && hit.pipeline === pipeline && hit.buffers.length === buffers.length && hit.buffers.every((b, i) => sameBinding(b, buffers[i]))) return hit.group;
    const group = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((b, binding) => ({ binding, resource: 'buffer' in b ? b : { buffer: b } })),
    });
    this.groups.set(key, { pipeline, buffers, group });
    return group;
  }

  begin(): void {
    this.inBuffer = 0;
    this.encoder = this.device.createCommandEncoder();
    this.pass = this.encoder.beginComputePass();
  }

  dispatch(pipeline: GPUPipelineLike, group: GPUBindGroupLike, x: number, y = 1, z = 1): void {
    if (!this.pass) throw new Error('dispatch outside begin()/submit()');
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, group);
    this.pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
    if (this.submitEvery > 0 && ++this.inBuffer >= this.submitEvery) {
      this.submit();
      this.begin();
    }
  }

  /** Copies `bytes` from one buffer to another (its own submit). */
  copyBuffers(src: GPUBufferLike, dst: GPUBufferLike, bytes: number): void {
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(src, 0, dst, 0, bytes);
    this.device.queue.submit([encoder.finish()]);
  }

  /** Copies a tensor's bytes into another tensor at a byte offset, in order with tfjs's work and the fused passes. */
  copyInto(dst: tf.TensorInfo, offsetBytes: number, src: tf.TensorInfo): void {
    const from = this.bufferOf(src);
    const to = this.bufferOf(dst);
    this.flushTfjs();
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(from, 0, to, offsetBytes, 4 * src.shape.reduce((a, b) => a * b, 1));
    this.device.queue.submit([encoder.finish()]);
  }

  /** Resolves when the device has finished everything submitted so far. */
  done(): Promise<void> {
    return this.device.queue.onSubmittedWorkDone();
  }

  submit(): void {
    if (!this.pass || !this.encoder) return;
    this.pass.end();
    // Tensors first touched while recording were uploaded by copies in tfjs's encoder: those must run first.
    this.flushTfjs();
    this.device.queue.submit([this.encoder.finish()]);
    this.pass = undefined;
    this.encoder = undefined;
  }
}

function sameBinding(a: Binding, b: Binding): boolean {
  if ('buffer' in a && 'buffer' in b) return a.buffer === b.buffer && a.offset === b.offset && a.size === b.size;
  return a === b;
}
