// A float64 JavaScript decoder for Gemma 3 / Gemma 2, independent of the engine: it reads the checkpoint as Hugging Face stores it
// and does its own arithmetic over K/V caches given as plain arrays.
import type { LayerType, ModelConfig, RopeSettings } from '../../src/model/hf-config.js';
import { readSafetensors } from '../../src/model/safetensors.js';

/** One cached token of one layer: its position and its K and V, [kvHeads * headDim] each. */
export interface RefEntry {
  pos: number;
  k: Float64Array;
  v: Float64Array;
}

/** One layer's weights in the checkpoint's layout: linear weights [out, in], norms as `w` (applied as 1 + w). */
interface RefLayer {
  inputNorm: Float64Array;
  postAttnNorm: Float64Array;
  preFfwNorm: Float64Array;
  postFfwNorm: Float64Array;
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  qNorm?: Float64Array;
  kNorm?: Float64Array;
  o: Float64Array;
  gate: Float64Array;
  up: Float64Array;
  down: Float64Array;
}

/**
 * Rotates `x` (one head, length headDim) in place by the RoPE angle of
 * `pos` under `rope` (HF convention: halves rotated as pairs (i, i + hd/2),
 * positions divided by the linear factor). A negative `pos` rotates back.
 */
export function rotate(x: Float64Array, offset: number, headDim: number, pos: number, rope: RopeSettings): void {
  const half = headDim / 2;
  for (let i = 0; i < half; i++) {
    const angle = (pos / rope.factor) * Math.pow(rope.base, (-2 * i) / headDim);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    const a = x[offset + i];
    const b = x[offset + half + i];
    x[offset + i] = a * c - b * s;
    x[offset + half + i] = b * c + a * s;
  }
}

export class ReferenceDecoder {
  private constructor(
    readonly c: ModelConfig,
    /** [vocab, hidden], tied: the embedding and the unembedding. */
    private readonly embed: Float64Array,
    private readonly finalNorm: Float64Array,
    private readonly layers: RefLayer[],
  ) {}

  /** Reads `config`'s checkpoint from `dir` (the text model's tensors, whatever their prefix). */
  static async load(dir: string, config: ModelConfig): Promise<ReferenceDecoder> {
    const store = await readSafetensors(dir);
    try {
      const embedName = store.names().find((n) => n.endsWith('embed_tokens.weight'))!;
      const prefix = embedName.slice(0, -'embed_tokens.weight'.length);
      const get = async (name: string) => Float64Array.from(await store.read(prefix + name));
      const layers: RefLayer[] = [];
      for (let i = 0; i < config.numLayers; i++) {
        const p = `layers.${i}.`;
        layers.push({
          inputNorm: await get(`${p}input_layernorm.weight`),
          postAttnNorm: await get(`${p}post_attention_layernorm.weight`),
          preFfwNorm: await get(`${p}pre_feedforward_layernorm.weight`),
          postFfwNorm: await get(`${p}post_feedforward_layernorm.weight`),
          q: await get(`${p}self_attn.q_proj.weight`),
          k: await get(`${p}self_attn.k_proj.weight`),
          v: await get(`${p}self_attn.v_proj.weight`),
          qNorm: config.qkNorm ? await get(`${p}self_attn.q_norm.weight`) : undefined,
          kNorm: config.qkNorm ? await get(`${p}self_attn.k_norm.weight`) : undefined,
          o: await get(`${p}self_attn.o_proj.weight`),
          gate: await get(`${p}mlp.gate_proj.weight`),
          up: await get(`${p}mlp.up_proj.weight`),
          down: await get(`${p}mlp.down_proj.weight`),
        });
      }
      return new ReferenceDecoder(config, await get('embed_tokens.weight'), await get('norm.weight'), layers);
    } finally {
      await store.close();
    }
  }

  /**
   * Runs `token` at position `pos` over `caches[layer]` (entries visible to
   * it: global layers all, sliding layers those within the window), appends
   * its K/V to every layer's cache, and returns the logits when asked.
   */
  step(token: number, pos: number, caches: RefEntry[][], wantLogits: boolean): Float64Array | undefined {
    const c = this.c;
    const H = c.hiddenSize;
    const V = c.vocabSize;
    let x: Float64Array = new Float64Array(H);
    const scale = Math.sqrt(H);
    for (let i = 0; i < H; i++) x[i] = this.embed[token * H + i] * scale;
    this.layers.forEach((w, l) => {
      x = this.layer(x, w, c.layerTypes[l], pos, caches[l]);
    });
    if (!wantLogits) return undefined;
    const logits = linear(this.rmsNorm(x, this.finalNorm), this.embed, H, V);
    if (c.finalLogitSoftcap) for (let i = 0; i < V; i++) logits[i] = Math.tanh(logits[i] / c.finalLogitSoftcap) * c.finalLogitSoftcap;
    return logits;
  }

  /** Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w). */
  private rmsNorm(x: Float64Array, w: Float64Array, offset = 0, n = x.length): Float64Array {
    let ms = 0;
    for (let i = 0; i < n; i++) ms += x[offset + i] ** 2;
    const r = 1 / Math.sqrt(ms / n + this.c.rmsNormEps);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = x[offset + i] * r * (1 + w[i]);
    return out;
  }

  private layer(x: Float64Array, w: RefLayer, type: LayerType, pos: number, cache: RefEntry[]): Float64Array {
    const c = this.c;
    const H = c.hiddenSize;
    const hd = c.headDim;
    const nq = c.numHeads;
    const nkv = c.numKvHeads;
    const g = nq / nkv;
    const xn = this.rmsNorm(x, w.inputNorm);
    const q = linear(xn, w.q, H, nq * hd);
    const k = linear(xn, w.k, H, nkv * hd);
    const v = linear(xn, w.v, H, nkv * hd);
    // Gemma 3 normalizes each q and k head; then RoPE; scores are scaled by query_pre_attn_scalar^-0.5.
    const heads = (t: Float64Array, n: number, norm?: Float64Array) => {
      for (let h = 0; h < n; h++) {
        if (norm) t.set(this.rmsNorm(t, norm, h * hd, hd), h * hd);
        rotate(t, h * hd, hd, pos, c.rope[type]);
      }
    };
    heads(q, nq, w.qNorm);
    heads(k, nkv, w.kNorm);
    const scale = c.queryPreAttnScalar ** -0.5;
    const entry: RefEntry = { pos, k, v };
    const window = type === 'sliding' ? c.slidingWindow : Infinity;
    const visible = [...cache.filter((e) => e.pos < pos && e.pos > pos - window), entry];
    const attn = new Float64Array(nq * hd);
    for (let h = 0; h < nq; h++) {
      const kvh = Math.floor(h / g);
      const scores = visible.map((e) => {
        let s = 0;
        for (let d = 0; d < hd; d++) s += q[h * hd + d] * e.k[kvh * hd + d];
        s *= scale;
        return c.attnLogitSoftcap ? Math.tanh(s / c.attnLogitSoftcap) * c.attnLogitSoftcap : s;
      });
      const max = Math.max(...scores);
      const p = scores.map((s) => Math.exp(s - max));
      const sum = p.reduce((a, b) => a + b, 0);
      visible.forEach((e, j) => {
        for (let d = 0; d < hd; d++) attn[h * hd + d] += (p[j] / sum) * e.v[kvh * hd + d];
      });
    }
    cache.push(entry);
    const hAttn = this.rmsNorm(linear(attn, w.o, nq * hd, H), w.postAttnNorm);
    const h1 = new Float64Array(H);
    for (let i = 0; i < H; i++) h1[i] = x[i] + hAttn[i];

    const I = c.intermediateSize;
    const hn = this.rmsNorm(h1, w.preFfwNorm);
    const gate = linear(hn, w.gate, H, I);
    const up = linear(hn, w.up, H, I);
    const act = new Float64Array(I);
    for (let i = 0; i < I; i++) {
      const a = gate[i];
      act[i] = 0.5 * a * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (a + 0.044715 * a ** 3))) * up[i];
    }
    const mlp = this.rmsNorm(linear(act, w.down, I, H), w.postFfwNorm);
    const out = new Float64Array(H);
    for (let i = 0; i < H; i++) out[i] = h1[i] + mlp[i];
    return out;
  }
}

/** PyTorch's linear: W [m, n] (row-major) applied to x [n]. */
function linear(x: Float64Array, W: Float64Array, n: number, m: number): Float64Array {
  const out = new Float64Array(m);
  for (let j = 0; j < m; j++) {
    let sum = 0;
    const row = j * n;
    for (let i = 0; i < n; i++) sum += W[row + i] * x[i];
    out[j] = sum;
  }
  return out;
}
