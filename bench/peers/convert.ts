/**
 * A Hugging Face Gemma checkpoint -> GGUF for llama.cpp: the Gemma 2/3 table
 * (gguf.ts) or the Gemma 4 one (gguf-gemma4.ts), then the tokenizer and the
 * tensors through the one writer.
 *
 * usage: node dist/bench/peers/convert.js MODEL_DIR OUT.gguf [f32|f16|bf16]
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModelConfig } from '../../src/model/hf-config.js';
import { readSafetensors } from '../../src/model/safetensors.js';
import { gemma4Table } from './gguf-gemma4.js';
import { addTokenizer, gemma3Table, GGUF_TYPES, llamaOrder, Metadata, writeGguf, type ConvertResult, type GgufType } from './gguf.js';

export async function convertToGguf(modelDir: string, out: string, type: GgufType = 'f32'): Promise<ConvertResult> {
  const dir = resolve(modelDir);
  const c = await loadModelConfig(dir);
  const meta = new Metadata();
  const store = await readSafetensors(dir);
  try {
    const table = c.family === 'gemma4' ? await gemma4Table(dir, c, meta, store, type) : await gemma3Table(dir, c, meta, store, type);
    const special = await addTokenizer(meta, dir, c);
    const tensors = llamaOrder(table.tensors);
    const bytes = await writeGguf(out, meta, tensors, store);
    return { file: out, bytes, tensors: tensors.length, skipped: table.skipped, special };
  } finally {
    await store.close();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [dir, out, type = 'f32'] = process.argv.slice(2);
  if (!dir || !out || !GGUF_TYPES.includes(type as GgufType)) {
    console.error('usage: node dist/bench/peers/convert.js MODEL_DIR OUT.gguf [f32|f16|bf16]');
    process.exit(2);
  }
  convertToGguf(dir, out, type as GgufType).then(
    (r) => console.log(JSON.stringify({ ...r, skipped: r.skipped.length })),
    (err) => { console.error(err); process.exit(1); },
  );
}
