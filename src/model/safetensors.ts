/**
 * Reading and writing Hugging Face safetensors files.
 *
 * Reading parses only the headers up front; each tensor's bytes are read on
 * demand with positioned reads, so a multi-GB checkpoint never has to sit in
 * memory at once. Reads convert BF16/F16/F32 to float32.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { GemmaServeError } from '../errors.js';

/** A model file is missing, unreadable or malformed. Names the file (and tensor when there is one). */
export class ModelFileError extends GemmaServeError {
  readonly file: string;
  readonly tensor: string | null;
  constructor(message: string, file: string, tensor: string | null = null) {
    super(message, { status: 500, code: 'model_file_error' });
    this.file = file;
    this.tensor = tensor;
  }
}

/** A tensor asked for by name is not in the checkpoint. */
export class TensorNotFoundError extends ModelFileError {
  constructor(name: string, dir: string) {
    super(`tensor "${name}" not found in ${dir}`, dir, name);
  }
}

/** Bytes per element of every dtype the safetensors format defines. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
};

/** Dtypes `read` converts to float32. */
export const READABLE_DTYPES = ['BF16', 'F16', 'F32'] as const;

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute path of the file holding the tensor. */
  file: string;
  /** Absolute byte offset of the data in that file. */
  byteOffset: number;
  byteLength: number;
}

export interface TensorStore {
  /** Directory (or file) the store was opened from. */
  readonly source: string;
  /** `__metadata__` of the first file (string -> string). */
  readonly metadata: Record<string, string>;
  names(): string[];
  has(name: string): boolean;
  /** dtype/shape/location without reading data; throws TensorNotFoundError. */
  info(name: string): TensorInfo;
  /** The tensor's values as float32 (BF16, F16, F32). */
  read(name: string): Promise<Float32Array>;
  /** The tensor's raw little-endian bytes as stored. */
  readBytes(name: string): Promise<Uint8Array>;
  /** `length` of those bytes from `offset` (a part of a tensor too large for one array). */
  readRange(name: string, offset: number, length: number): Promise<Uint8Array>;
  /** Closes open file handles; the store may reopen them on a later read. */
  close(): Promise<void>;
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

interface ParsedFile {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
}

async function statOrThrow(file: string, what: string): Promise<number> {
  try {
    const st = await fsp.stat(file);
    if (!st.isFile()) throw new ModelFileError(`${what} ${file} is not a file`, file);
    return st.size;
  } catch (e) {
    if (e instanceof ModelFileError) throw e;
    throw new ModelFileError(`${what} ${file} cannot be read: ${(e as Error).message}`, file);
  }
}

async function readExactly(fh: FileHandle, into: Uint8Array, position: number, file: string, tensor: string | null): Promise<void> {
  let done = 0;
  while (done < into.length) {
    // Node caps one read at 2 GiB; read big tensors in pieces.
    const len = Math.min(into.length - done, 1 << 30);
    const { bytesRead } = await fh.read(into, done, len, position + done);
    if (bytesRead === 0) {
      throw new ModelFileError(`unexpected end of ${file} reading ${tensor ?? 'header'}`, file, tensor);
    }
    done += bytesRead;
  }
}

/** Parses and validates one file's header. */
async function parseFile(file: string): Promise<ParsedFile> {
  const size = await statOrThrow(file, 'safetensors file');
  const fh = await fsp.open(file, 'r');
  try {
    if (size < 8) throw new ModelFileError(`bad safetensors header in ${file}: file is ${size} bytes`, file);
    const lenBuf = new Uint8Array(8);
    await readExactly(fh, lenBuf, 0, file, null);
    const headerLen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
    if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > size) {
      throw new ModelFileError(`bad safetensors header in ${file}: header length ${headerLen} exceeds the file (${size} bytes)`, file);
    }
    const hb = new Uint8Array(headerLen);
    await readExactly(fh, hb, 8, file, null);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(hb));
    } catch (e) {
      throw new ModelFileError(`bad safetensors header in ${file}: ${(e as Error).message}`, file);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new ModelFileError(`bad safetensors header in ${file}: not a JSON object`, file);
    }
    const dataStart = 8 + headerLen;
    const dataLen = size - dataStart;
    const tensors: TensorInfo[] = [];
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      tensors.push(checkEntry(file, name, raw, dataStart, dataLen));
    }
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

function checkEntry(file: string, name: string, raw: unknown, dataStart: number, dataLen: number): TensorInfo {
  const bad = (why: string) => new ModelFileError(`bad safetensors header in ${file}: tensor "${name}" ${why}`, file, name);
  if (typeof raw !== 'object' || raw === null) throw bad('entry is not an object');
  const { dtype, shape, data_offsets: offs } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) {
    throw new ModelFileError(`unknown dtype ${JSON.stringify(dtype)} for tensor "${name}" in ${file}`, file, name);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw bad('has a bad shape');
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0) || offs[1] < offs[0]) {
    throw bad('has bad data_offsets');
  }
  const numel = (shape as number[]).reduce((a, b) => a * b, 1);
  const byteLength = offs[1] - offs[0];
  if (byteLength !== numel * DTYPE_BYTES[dtype]!) {
    throw bad(`has ${byteLength} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${numel * DTYPE_BYTES[dtype]!}`);
  }
  if (offs[1] > dataLen) {
    throw new ModelFileError(`tensor "${name}" data out of range in ${file}: ends at ${offs[1]}, data section is ${dataLen} bytes`, file, name);
  }
  return { name, dtype, shape: shape as number[], file, byteOffset: dataStart + offs[0], byteLength };
}

let f16Table: Float32Array | null = null;
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = s * m * 2 ** -24;
    else if (e === 31) t[h] = m ? NaN : s * Infinity;
    else t[h] = s * (1 + m / 1024) * 2 ** (e - 15);
  }
  f16Table = t;
  return t;
}

/** bf16 bits -> float32: the bf16 pattern is the high half of the float32. */
export function bf16ToF32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const u32 = new Uint32Array(out.buffer, out.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) u32[i] = src[i]! << 16;
  return out;
}

/** float32 -> bf16 bits with round-to-nearest-even (NaN stays a quiet NaN). */
export function f32ToBf16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const u32 = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const u = u32[i]!;
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x40;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

function toFloat32(info: TensorInfo, bytes: Uint8Array): Float32Array {
  const n = info.byteLength / DTYPE_BYTES[info.dtype]!;
  switch (info.dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    case 'BF16':
      return bf16ToF32(new Uint16Array(bytes.buffer, bytes.byteOffset, n));
    case 'F16': {
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const t = halfTable();
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = t[src[i]!]!;
      return out;
    }
    default:
      throw unreadable(info);
  }
}

function unreadable(info: TensorInfo): ModelFileError {
  return new ModelFileError(
    `tensor "${info.name}" in ${info.file} has dtype ${info.dtype}; only ${READABLE_DTYPES.join(', ')} can be read as float32`,
    info.file, info.name);
}

class FileTensorStore implements TensorStore {
  private handles = new Map<string, Promise<FileHandle>>();
  constructor(
    readonly source: string,
    readonly metadata: Record<string, string>,
    private readonly byName: Map<string, TensorInfo>,
  ) {}

  names(): string[] { return [...this.byName.keys()]; }
  has(name: string): boolean { return this.byName.has(name); }

  info(name: string): TensorInfo {
    const i = this.byName.get(name);
    if (!i) throw new TensorNotFoundError(name, this.source);
    return i;
  }

  private handle(file: string): Promise<FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = fsp.open(file, 'r').catch((e: Error) => {
        this.handles.delete(file);
        throw new ModelFileError(`cannot open ${file}: ${e.message}`, file);
      });
      this.handles.set(file, h);
    }
    return h;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    // A fresh ArrayBuffer keeps the data aligned for typed-array views.
    const bytes = new Uint8Array(new ArrayBuffer(info.byteLength));
    await readExactly(await this.handle(info.file), bytes, info.byteOffset, info.file, name);
    return bytes;
  }

  async readRange(name: string, offset: number, length: number): Promise<Uint8Array> {
    const info = this.info(name);
    if (!(offset >= 0 && length >= 0 && offset + length <= info.byteLength)) {
      throw new ModelFileError(`bytes [${offset}, ${offset + length}) are outside tensor "${name}" (${info.byteLength} bytes)`, info.file, name);
    }
    const bytes = new Uint8Array(new ArrayBuffer(length));
    await readExactly(await this.handle(info.file), bytes, info.byteOffset + offset, info.file, name);
    return bytes;
  }

  async read(name: string): Promise<Float32Array> {
    const info = this.info(name);
    if (!(READABLE_DTYPES as readonly string[]).includes(info.dtype)) throw unreadable(info);
    return toFloat32(info, await this.readBytes(name));
  }

  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map(async (h) => (await h.catch(() => null))?.close()));
  }
}

async function exists(p: string): Promise<boolean> {
  return fsp.stat(p).then(() => true, () => false);
}

/**
 * Opens a model directory (`model.safetensors`, or shards listed by
 * `model.safetensors.index.json`) or a single `.safetensors` file.
 */
export async function readSafetensors(dir: string): Promise<TensorStore> {
  const abs = path.resolve(dir);
  const st = await fsp.stat(abs).catch(() => null);
  if (!st) throw new ModelFileError(`model path ${abs} does not exist`, abs);
  const byName = new Map<string, TensorInfo>();
  const add = (t: TensorInfo) => {
    if (byName.has(t.name)) throw new ModelFileError(`tensor "${t.name}" appears twice (${byName.get(t.name)!.file}, ${t.file})`, t.file, t.name);
    byName.set(t.name, t);
  };
  if (st.isFile()) {
    const p = await parseFile(abs);
    p.tensors.forEach(add);
    return new FileTensorStore(abs, p.metadata, byName);
  }
  const indexFile = path.join(abs, 'model.safetensors.index.json');
  const single = path.join(abs, 'model.safetensors');
  if (await exists(indexFile)) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(await fsp.readFile(indexFile, 'utf8')) as typeof index;
    } catch (e) {
      throw new ModelFileError(`bad index ${indexFile}: ${(e as Error).message}`, indexFile);
    }
    const wm = index.weight_map;
    if (!wm || typeof wm !== 'object') throw new ModelFileError(`bad index ${indexFile}: no weight_map`, indexFile);
    const shards = [...new Set(Object.values(wm))];
    const parsed = await Promise.all(shards.map(async (s) => {
      const f = path.join(abs, s);
      if (!(await exists(f))) throw new ModelFileError(`shard ${f} listed in ${indexFile} is missing`, f);
      return parseFile(f);
    }));
    parsed.forEach((p) => p.tensors.forEach(add));
    for (const [name, shard] of Object.entries(wm)) {
      const t = byName.get(name);
      const f = path.join(abs, shard);
      if (!t || t.file !== f) {
        throw new ModelFileError(`tensor "${name}" is mapped to ${f} by ${indexFile} but is not in that file`, f, name);
      }
    }
    return new FileTensorStore(abs, parsed[0]?.metadata ?? {}, byName);
  }
  if (await exists(single)) {
    const p = await parseFile(single);
    p.tensors.forEach(add);
    return new FileTensorStore(abs, p.metadata, byName);
  }
  throw new ModelFileError(`no model.safetensors or model.safetensors.index.json in ${abs}`, single);
}

export type WritableDType = 'BF16' | 'F32';

export interface TensorSpec {
  name: string;
  dtype: WritableDType;
  shape: number[];
}

export interface TensorData extends TensorSpec {
  data: Float32Array;
}

/** Builds the padded header for tensors laid out in the given order. */
export function encodeHeader(specs: TensorSpec[], metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[s.dtype]!;
    header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + n] };
    off += n;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  // The spec pads the header with spaces so data starts 8-byte aligned.
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/**
 * Streams tensors into a safetensors file: the header is written first (shapes
 * are known), then data is appended in order, chunk by chunk.
 */
export class SafetensorsWriter {
  private idx = 0;
  private left: number;
  private constructor(private readonly fh: FileHandle, readonly file: string, private readonly specs: TensorSpec[]) {
    this.left = specs.length ? numel(specs[0]!) : 0;
  }

  static async create(file: string, specs: TensorSpec[], metadata?: Record<string, string>): Promise<SafetensorsWriter> {
    const names = new Set<string>();
    for (const s of specs) {
      if (names.has(s.name)) throw new ModelFileError(`tensor "${s.name}" given twice for ${file}`, file, s.name);
      if (s.dtype !== 'BF16' && s.dtype !== 'F32') throw new ModelFileError(`cannot write dtype ${String(s.dtype)} for "${s.name}"`, file, s.name);
      names.add(s.name);
    }
    const fh = await fsp.open(file, 'w');
    const w = new SafetensorsWriter(fh, file, specs);
    await fh.write(encodeHeader(specs, metadata));
    w.skipEmpty();
    return w;
  }

  private skipEmpty(): void {
    while (this.idx < this.specs.length && this.left === 0) {
      this.idx++;
      if (this.idx < this.specs.length) this.left = numel(this.specs[this.idx]!);
    }
  }

  /** Appends the next `data.length` values of the current tensor (a chunk never spans two tensors). */
  async append(data: Float32Array): Promise<void> {
    const spec = this.specs[this.idx];
    if (!spec) throw new ModelFileError(`more data than the tensors of ${this.file} hold`, this.file);
    if (data.length > this.left) {
      throw new ModelFileError(`chunk of ${data.length} values overruns tensor "${spec.name}" (${this.left} left)`, this.file, spec.name);
    }
    const bytes = spec.dtype === 'BF16'
      ? new Uint8Array(f32ToBf16(data).buffer)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    await this.fh.write(bytes);
    this.left -= data.length;
    this.skipEmpty();
  }

  /** Closes the file; fails when some tensor got fewer values than its shape holds. */
  async close(): Promise<void> {
    await this.fh.close();
    if (this.idx < this.specs.length) {
      const s = this.specs[this.idx]!;
      throw new ModelFileError(`${this.file} closed before tensor "${s.name}" was complete`, this.file, s.name);
    }
  }
}

function numel(s: TensorSpec): number {
  return s.shape.reduce((a, b) => a * b, 1);
}

/** Writes a whole safetensors file at once. */
export async function writeSafetensors(file: string, tensors: TensorData[], metadata?: Record<string, string>): Promise<void> {
  for (const t of tensors) {
    if (t.data.length !== numel(t)) {
      throw new ModelFileError(`tensor "${t.name}" has ${t.data.length} values, shape [${t.shape.join(', ')}] needs ${numel(t)}`, file, t.name);
    }
  }
  const w = await SafetensorsWriter.create(file, tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape })), metadata);
  try {
    for (const t of tensors) if (t.data.length) await w.append(t.data);
  } finally {
    await w.close();
  }
}
