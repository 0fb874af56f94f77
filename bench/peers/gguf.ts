/**
 * Hugging Face Gemma 3 text checkpoint -> GGUF (v3) as llama.cpp's `gemma3`
 * architecture loads it, so the peer benchmark runs llama.cpp on exactly the
 * weights our engine serves. Follows llama.cpp's own converter:
 *  - every `*norm.weight` gets +1: HF's Gemma3RMSNorm computes x * (1 + w),
 *    llama.cpp's RMS norm x * w;
 *  - tied embeddings: no output.weight (llama.cpp reuses token_embd);
 *  - 1-D tensors stay F32, 2-D tensors are F32, F16 or BF16;
 *  - the tokenizer is written SentencePiece-style (`llama`): tokens, scores
 *    (-rank of the first BPE merge that yields the token, 0 for none), token
 *    types, special ids, chat template.
 * Gemma 4 checkpoints go to llama.cpp's `gemma4` architecture
 * (gguf-gemma4.ts), through the same metadata, tokenizer and tensor writer;
 * convert.ts picks the table for the checkpoint's family. Tensors are
 * streamed from the checkpoint in chunks, so a multi-gigabyte table (Gemma
 * 4's per-layer embeddings) never sits in memory whole.
 */
import { open, readFile, rename, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { ModelConfig } from '../../src/model/hf-config.js';
import { bf16ToF32, f32ToBf16, type TensorStore } from '../../src/model/safetensors.js';

export type GgufType = 'f32' | 'f16' | 'bf16';
export const GGUF_TYPES: readonly GgufType[] = ['f32', 'f16', 'bf16'];

export interface ConvertResult {
  file: string;
  bytes: number;
  tensors: number;
  /** Checkpoint tensors with no llama.cpp counterpart (vision tower, tied lm_head). */
  skipped: string[];
  special: Record<string, number>;
}

const ALIGN = 32;
const GGUF_VERSION = 3;
// gguf metadata value types
const U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STR = 8, ARR = 9;
// ggml tensor types (ggml.h), and llama_ftype (llama.h) for general.file_type
const GGML = { f32: 0, f16: 1, bf16: 30 } as const;
const FTYPE = { f32: 0, f16: 1, bf16: 32 } as const;
const ELEMENT_BYTES: Record<GgufType, number> = { f32: 4, f16: 2, bf16: 2 };
// llama.cpp token types
const TOK = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** Per-layer tensors of a Gemma 3 checkpoint, by their name within the layer; gguf-gemma4.ts extends them. */
export const LAYER_NAMES: Readonly<Record<string, string>> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'self_attn.q_norm.weight': 'attn_q_norm.weight',
  'self_attn.k_norm.weight': 'attn_k_norm.weight',
  'post_attention_layernorm.weight': 'post_attention_norm.weight',
  'pre_feedforward_layernorm.weight': 'ffn_norm.weight',
  'post_feedforward_layernorm.weight': 'post_ffw_norm.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};
/** The model's other tensors, by their full name; gguf-gemma4.ts extends them. */
export const GLOBAL_NAMES: Readonly<Record<string, string>> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};

/** GGUF name of a checkpoint tensor under the given names (null: none); multimodal checkpoints keep the text model under language_model. */
export function mappedName(hf: string, globals: Readonly<Record<string, string>>, layers: Readonly<Record<string, string>>): string | null {
  const n = hf.replace(/^language_model\./, '').replace(/^model\.language_model\./, 'model.');
  if (Object.hasOwn(globals, n)) return globals[n]!;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(n);
  return m && Object.hasOwn(layers, m[2]!) ? `blk.${Number(m[1])}.${layers[m[2]!]}` : null;
}

/** GGUF name of a Gemma 3 checkpoint tensor (null: no llama.cpp counterpart). */
export function ggufName(hf: string): string | null {
  return mappedName(hf, GLOBAL_NAMES, LAYER_NAMES);
}

/** Metadata section: key/value pairs encoded as they are added. */
export class Metadata {
  readonly parts: Buffer[] = [];
  count = 0;
  private key(k: string, type: number): void {
    this.parts.push(str(k), u32(type));
    this.count++;
  }
  string(k: string, v: string): void { this.key(k, STR); this.parts.push(str(v)); }
  u32(k: string, v: number): void { this.key(k, U32); this.parts.push(u32(v)); }
  f32(k: string, v: number): void { this.key(k, F32); const b = Buffer.alloc(4); b.writeFloatLE(v); this.parts.push(b); }
  bool(k: string, v: boolean): void { this.key(k, BOOL); this.parts.push(Buffer.from([v ? 1 : 0])); }
  strings(k: string, v: string[]): void { this.key(k, ARR); this.parts.push(u32(STR), u64(v.length), Buffer.concat(v.map(str))); }
  f32s(k: string, v: Float32Array): void { this.key(k, ARR); this.parts.push(u32(F32), u64(v.length), Buffer.from(v.buffer, v.byteOffset, v.byteLength)); }
  i32s(k: string, v: Int32Array | readonly number[]): void {
    const a = v instanceof Int32Array ? v : Int32Array.from(v);
    this.key(k, ARR); this.parts.push(u32(I32), u64(a.length), Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  }
  bools(k: string, v: readonly boolean[]): void { this.key(k, ARR); this.parts.push(u32(BOOL), u64(v.length), Buffer.from(v.map((b) => (b ? 1 : 0)))); }
}

function u32(v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; }
function u64(v: number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; }
function str(s: string): Buffer { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); }
const padTo = (n: number) => (ALIGN - (n % ALIGN)) % ALIGN;

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; unk_token?: string };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}
type TokenRef = string | { content: string } | undefined;
interface TokenizerConfig {
  bos_token?: TokenRef; eos_token?: TokenRef; unk_token?: TokenRef; pad_token?: TokenRef;
  add_bos_token?: boolean; add_eos_token?: boolean;
  chat_template?: string | { name: string; template: string }[];
}

/** Writes the tokenizer keys; returns the special ids it chose. */
export async function addTokenizer(meta: Metadata, dir: string, c: ModelConfig): Promise<Record<string, number>> {
  const tj = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  const tc = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8').catch(() => '{}')) as TokenizerConfig;
  const model = tj.model ?? {};
  if (model.type !== 'BPE' || !model.vocab) throw new Error(`${dir}/tokenizer.json: model type ${String(model.type)} is not supported (BPE is)`);
  const vocab = model.vocab;
  const idToTok = new Map<number, string>();
  for (const [t, i] of Object.entries(vocab)) idToTok.set(i, t);
  const added = new Map((tj.added_tokens ?? []).map((a) => [a.id, a]));
  for (const [i, a] of added) if (!idToTok.has(i)) idToTok.set(i, a.content);

  // llama.cpp's SentencePiece tokenizer merges by score: the earlier a BPE merge, the higher.
  const firstRank = new Map<string, number>();
  (model.merges ?? []).forEach((m, r) => {
    const [a, b] = typeof m === 'string' ? [m.slice(0, m.indexOf(' ')), m.slice(m.indexOf(' ') + 1)] : m;
    const t = a + b;
    if (t in vocab && !firstRank.has(t)) firstRank.set(t, r);
  });

  const n = c.vocabSize;
  const tokens: string[] = new Array<string>(n);
  const scores = new Float32Array(n);
  const types = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const t = idToTok.get(i);
    if (t === undefined) {
      // The embedding has more rows than the tokenizer has ids.
      tokens[i] = `[PAD${i}]`; scores[i] = -1000; types[i] = TOK.unused;
      continue;
    }
    tokens[i] = t;
    scores[i] = firstRank.has(t) ? -firstRank.get(t)! : 0;
    const a = added.get(i);
    types[i] = /^<0x[0-9A-Fa-f]{2}>$/.test(t) ? TOK.byte
      : t === model.unk_token ? TOK.unknown
      : a ? (a.special ? TOK.control : TOK.userDefined)
      : TOK.normal;
  }

  const idOf = (ref: TokenRef): number | undefined => {
    const s = typeof ref === 'string' ? ref : ref?.content;
    if (s === undefined) return undefined;
    const id = vocab[s] ?? [...added.values()].find((a) => a.content === s)?.id;
    return id !== undefined && id < n ? id : undefined;
  };
  // tokenizer_config.json first, config.json as the fallback (as gguf-py's SpecialVocab does).
  const special: Record<string, number> = {};
  const pick = (key: string, ref: TokenRef, fallback?: number) => {
    const id = idOf(ref) ?? fallback;
    if (id !== undefined) special[key] = id;
  };
  pick('bos_token_id', tc.bos_token, c.bosId);
  pick('eos_token_id', tc.eos_token, c.eosIds[0]);
  pick('unknown_token_id', tc.unk_token);
  pick('padding_token_id', tc.pad_token, c.padId);

  meta.string('tokenizer.ggml.model', 'llama');
  meta.string('tokenizer.ggml.pre', 'default');
  meta.strings('tokenizer.ggml.tokens', tokens);
  meta.f32s('tokenizer.ggml.scores', scores);
  meta.i32s('tokenizer.ggml.token_type', types);
  for (const [k, v] of Object.entries(special)) meta.u32(`tokenizer.ggml.${k}`, v);
  if (typeof tc.add_bos_token === 'boolean') meta.bool('tokenizer.ggml.add_bos_token', tc.add_bos_token);
  if (typeof tc.add_eos_token === 'boolean') meta.bool('tokenizer.ggml.add_eos_token', tc.add_eos_token);
  // Gemma's normalizer turns spaces into '▁' but adds no leading one.
  meta.bool('tokenizer.ggml.add_space_prefix', false);
  const ct = tc.chat_template;
  const template = typeof ct === 'string' ? ct : (ct?.find((x) => x.name === 'default') ?? ct?.[0])?.template;
  if (template) meta.string('tokenizer.chat_template', template);
  return special;
}

/** llama.cpp's gemma3 hard-codes what HF's config can vary; refuse checkpoints it would compute differently. */
function checkSupported(c: ModelConfig, dir: string): void {
  const why: string[] = [];
  if (c.family !== 'gemma3') why.push(`family ${c.family} is not gemma3`);
  if (c.layerTypes.some((t, i) => t !== ((i + 1) % 6 === 0 ? 'global' : 'sliding'))) why.push('layers are not 5 sliding : 1 global');
  if (c.queryPreAttnScalar !== c.headDim) why.push(`query_pre_attn_scalar ${c.queryPreAttnScalar} != head_dim ${c.headDim}`);
  if (c.attnLogitSoftcap !== null) why.push('attention logit soft-capping is set');
  if (c.rope.sliding.factor !== 1) why.push('sliding layers use RoPE scaling');
  if (why.length) throw new Error(`${dir}: llama.cpp's gemma3 cannot express this checkpoint: ${why.join('; ')}`);
}

const f32Bits = new Float32Array(1);
const u32Bits = new Uint32Array(f32Bits.buffer);
/** float32 -> IEEE half bits, round to nearest even (as numpy's astype(float16)). */
export function toHalf(x: number): number {
  f32Bits[0] = x;
  const u = u32Bits[0]!;
  const sign = (u >>> 16) & 0x8000;
  const e = ((u >>> 23) & 0xff) - 127 + 15;
  const m = u & 0x7fffff;
  if (((u >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  if (e >= 0x1f) return sign | 0x7c00;
  let half: number, rem: number, mid: number;
  if (e <= 0) {
    if (e < -10) return sign;
    const shift = 14 - e;
    half = (m | 0x800000) >>> shift;
    rem = (m | 0x800000) & ((1 << shift) - 1);
    mid = 1 << (shift - 1);
  } else {
    half = (e << 10) | (m >>> 13);
    rem = m & 0x1fff;
    mid = 0x1000;
  }
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  return sign | (half + (rem > mid || (rem === mid && half & 1) ? 1 : 0));
}

/** One tensor of the GGUF: its name, PyTorch-order shape, storage type, and where its values come from. */
export interface PlannedTensor {
  name: string;
  /** Dimensions slowest-varying first (PyTorch's order); ggml's is the reverse. */
  shape: number[];
  type: GgufType;
  /** A checkpoint tensor (plus `add` on every element), or values computed here. */
  source: { hf: string; add?: number } | { values: Float32Array };
}

/** The checkpoint tensors a conversion reads, by name, and those with no llama.cpp counterpart. */
export interface TensorTable {
  tensors: PlannedTensor[];
  skipped: string[];
}

/** The storage of a 2-D-or-more tensor; 1-D tensors (norms, scales) stay float32, as llama.cpp's converter keeps them. */
export const storageType = (shape: number[], type: GgufType): GgufType => (shape.length === 1 ? 'f32' : type);

/** llama.cpp's order: embeddings first, blocks in index order, output norm and head last; by name within a block. */
export function llamaOrder(tensors: PlannedTensor[]): PlannedTensor[] {
  const rank = (n: string) => (/^(token_embd|per_layer|rope_freqs)/.test(n) ? -1 : n.startsWith('output') ? 1e9 : Number(/^blk\.(\d+)\./.exec(n)?.[1] ?? 1e8));
  return [...tensors].sort((a, b) => rank(a.name) - rank(b.name) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

const CHUNK_ELEMENTS = 1 << 22;

/** float32 values -> the bytes of `type`. */
function encode(x: Float32Array, type: GgufType): Uint8Array {
  if (type === 'f32') return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (type === 'bf16') return new Uint8Array(f32ToBf16(x).buffer);
  const h = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) h[i] = toHalf(x[i]!);
  return new Uint8Array(h.buffer);
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** A checkpoint tensor's bytes as `type`, in chunks of CHUNK_ELEMENTS, read straight from its file. */
async function* tensorChunks(store: TensorStore, hf: string, add: number, type: GgufType): AsyncGenerator<Uint8Array> {
  const info = store.info(hf);
  const inBytes = ({ F32: 4, BF16: 2, F16: 2 } as Record<string, number>)[info.dtype];
  if (!inBytes) throw new Error(`${hf}: dtype ${info.dtype} cannot be converted (BF16, F16, F32 can)`);
  // Stored as wanted and unchanged: copy the bytes.
  const copy = add === 0 && ((info.dtype === 'F32' && type === 'f32') || (info.dtype === 'BF16' && type === 'bf16'));
  const fh: FileHandle = await open(info.file, 'r');
  try {
    for (let done = 0; done < info.byteLength;) {
      const len = Math.min(info.byteLength - done, CHUNK_ELEMENTS * inBytes);
      const raw = new Uint8Array(len);
      for (let got = 0; got < len;) {
        const { bytesRead } = await fh.read(raw, got, len - got, info.byteOffset + done + got);
        if (bytesRead === 0) throw new Error(`${info.file}: unexpected end reading ${hf}`);
        got += bytesRead;
      }
      done += len;
      if (copy) {
        yield raw;
        continue;
      }
      let x: Float32Array;
      if (info.dtype === 'F32') x = new Float32Array(raw.buffer, 0, len / 4);
      else if (info.dtype === 'BF16') x = bf16ToF32(new Uint16Array(raw.buffer, 0, len / 2));
      else x = Float32Array.from(new Uint16Array(raw.buffer, 0, len / 2), halfToFloat);
      if (add !== 0) for (let i = 0; i < x.length; i++) x[i] += add;
      yield encode(x, type);
    }
  } finally {
    await fh.close();
  }
}

/** Writes a GGUF v3 file: header, metadata, tensor infos, then the tensors' data, each aligned; returns its size. */
export async function writeGguf(out: string, meta: Metadata, tensors: PlannedTensor[], store: TensorStore): Promise<number> {
  const infos: Buffer[] = [];
  const sizes: number[] = [];
  let off = 0;
  for (const t of tensors) {
    off += padTo(off);
    // ggml lists dimensions fastest-varying first, the reverse of PyTorch's order.
    infos.push(str(t.name), u32(t.shape.length), ...[...t.shape].reverse().map(u64), u32(GGML[t.type]), u64(off));
    const bytes = t.shape.reduce((a, b) => a * b, 1) * ELEMENT_BYTES[t.type];
    sizes.push(bytes);
    off += bytes;
  }
  const head = Buffer.concat([Buffer.from('GGUF'), u32(GGUF_VERSION), u64(tensors.length), u64(meta.count), ...meta.parts, Buffer.concat(infos)]);

  const tmp = `${out}.partial-${process.pid}`;
  const fh = await open(tmp, 'w');
  let size = 0;
  const write = async (b: Uint8Array) => { await fh.write(b); size += b.length; };
  try {
    await write(Buffer.concat([head, Buffer.alloc(padTo(head.length))]));
    let pos = 0;
    for (const [i, t] of tensors.entries()) {
      const pad = padTo(pos);
      if (pad) await write(Buffer.alloc(pad));
      pos += pad;
      let n = 0;
      const src = t.source;
      if ('values' in src) {
        const data = encode(src.values, t.type);
        await write(data);
        n = data.length;
      } else {
        for await (const data of tensorChunks(store, src.hf, src.add ?? 0, t.type)) {
          await write(data);
          n += data.length;
        }
      }
      if (n !== sizes[i]) throw new Error(`${t.name}: ${n} bytes, expected ${sizes[i]}`);
      pos += n;
    }
    // Flushed now, the gigabytes of dirty pages are not written back while a benchmark runs.
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, out);
  return size;
}

/** The general.* keys every conversion writes. */
export function addGeneral(meta: Metadata, arch: string, dir: string, type: GgufType): void {
  meta.string('general.architecture', arch);
  meta.string('general.type', 'model');
  meta.string('general.name', basename(dir));
  meta.u32('general.file_type', FTYPE[type]);
  meta.u32('general.quantization_version', 2);
}

/** `tie_word_embeddings` as config.json states it (true when absent, as transformers defaults it for Gemma). */
export async function tiedEmbeddings(dir: string): Promise<boolean> {
  const raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as { tie_word_embeddings?: boolean; text_config?: { tie_word_embeddings?: boolean } };
  return (raw.text_config?.tie_word_embeddings ?? raw.tie_word_embeddings) !== false;
}

/**
 * The checkpoint's tensors under their GGUF names (`name`; null: none), with
 * `add` on every element where given, and those left out: no counterpart, or
 * an lm_head tied to the embedding.
 */
export async function checkpointTensors(dir: string, store: TensorStore, type: GgufType, name: (hf: string) => string | null, add?: (hf: string) => number): Promise<TensorTable> {
  const tied = await tiedEmbeddings(dir);
  const skipped: string[] = [];
  const tensors: PlannedTensor[] = [];
  for (const hf of store.names()) {
    const n = name(hf);
    if (n === null || (n === 'output.weight' && tied)) {
      skipped.push(hf);
      continue;
    }
    const shape = store.info(hf).shape;
    tensors.push({ name: n, shape, type: storageType(shape, type), source: add ? { hf, add: add(hf) } : { hf } });
  }
  return { tensors, skipped };
}

/** Gemma 3 metadata and tensor table. */
export async function gemma3Table(dir: string, c: ModelConfig, meta: Metadata, store: TensorStore, type: GgufType): Promise<TensorTable> {
  checkSupported(c, dir);
  const A = 'gemma3';
  addGeneral(meta, A, dir, type);
  meta.u32(`${A}.context_length`, c.maxPositions);
  meta.u32(`${A}.embedding_length`, c.hiddenSize);
  meta.u32(`${A}.block_count`, c.numLayers);
  meta.u32(`${A}.feed_forward_length`, c.intermediateSize);
  meta.u32(`${A}.attention.head_count`, c.numHeads);
  meta.u32(`${A}.attention.head_count_kv`, c.numKvHeads);
  meta.u32(`${A}.attention.key_length`, c.headDim);
  meta.u32(`${A}.attention.value_length`, c.headDim);
  meta.f32(`${A}.attention.layer_norm_rms_epsilon`, c.rmsNormEps);
  meta.f32(`${A}.rope.freq_base`, c.rope.global.base);
  // llama.cpp defaults the sliding layers' RoPE base to 10000 and knows the key only in newer builds.
  if (c.rope.sliding.base !== 10_000) meta.f32(`${A}.rope.freq_base_swa`, c.rope.sliding.base);
  if (c.layerTypes.includes('sliding')) meta.u32(`${A}.attention.sliding_window`, c.slidingWindow);
  if (c.finalLogitSoftcap !== null) meta.f32(`${A}.final_logit_softcapping`, c.finalLogitSoftcap);
  if (c.rope.global.factor !== 1) {
    meta.string(`${A}.rope.scaling.type`, 'linear');
    meta.f32(`${A}.rope.scaling.factor`, c.rope.global.factor);
  }
  // Gemma3RMSNorm computes x * (1 + w); llama.cpp's RMS norm x * w.
  return checkpointTensors(dir, store, type, ggufName, (hf) => (hf.endsWith('norm.weight') ? 1 : 0));
}
