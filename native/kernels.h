// Shared declarations of the CPU kernels (matmul.cc, layer.cc, gemma4.cc) and the
// Node-API glue (addon.cc, addon-gemma4.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace gemma {

// A weight W [K, N] in panels of 16 columns (see matmul.cc). A weight whose
// every value is a bfloat16 (a bf16 checkpoint, not rescaled) is stored in
// 16 bits: the same values at half the bytes a step streams.
struct Matrix {
  int64_t rows;    // K
  int64_t cols;    // N
  int64_t panels;  // ceil(N / 16)
  bool bf16;
  void* data;      // panels * rows * 16 values (float or bf16 bits), 64-byte aligned
  size_t bytes;
};

// A scratch buffer of at least `floats` floats, this thread's own, slot `which` (0-3): valid until the next call with that slot.
float* scratch(size_t floats, int which = 0);

// Packs w ([K, N] row-major, or [N, K] when transposed) into a new Matrix; nullptr when out of memory.
Matrix* pack(const float* w, int64_t K, int64_t N, bool transposed, bool allowBf16);
void release(Matrix* m);

// y [M, N] = x [M, K] * W.
void multiply(const Matrix& w, const float* x, int64_t M, float* y);
// act [M, I] = gelu_tanh(y[:, :I]) * y[:, I:], y [M, 2I].
void geglu(const float* y, int64_t M, int64_t I, float* act);
// Columns `ids` of W as rows of out [n, K], times scale.
void gatherColumns(const Matrix& w, const int32_t* ids, int64_t n, float scale, float* out);
// x [M, n] <- x / rms(x) * w, row by row.
void rmsNorm(float* x, int64_t M, int64_t n, const float* w, float eps);
bool cpuSupported();

// Small vector helpers of layer.cc: a . b, out += p * v, and rotate_half rope in place.
float dot(const float* a, const float* b, int64_t n);
void axpy(float p, const float* v, float* out, int64_t n);
void rope(float* x, const float* cos, const float* sin, int64_t hd);

// Per row of logits [B, V]: the top K values and ids (largest first, ties to
// the lower id) and the log-sum-exp of x and of x * scales[b].
void reduceRows(float* logits, int64_t B, int64_t V, int64_t K, const float* scales, const int32_t* masks, float* values, int32_t* ids, double* lse, double* scaledLse);

// One decoder layer's shapes (Gemma 2 and 3).
struct LayerShape {
  int64_t hidden, heads, kvHeads, headDim, intermediate;
  float eps;
  float attnSoftcap;  // 0: none
  int64_t window;     // keys a query sees on this layer: positions > q - window
};

struct LayerWeights {
  const Matrix *qkv, *o, *gateUp, *down;
  const float *inputNorm, *postAttnNorm, *preFfwNorm, *postFfwNorm;
  const float* qkNorm;  // [heads + kvHeads, headDim], or nullptr (Gemma 2)
};

// One row's KV slot for this layer: K [kvHeads, entries, headDim] and
// V^T [kvHeads, headDim, entries], the position each entry holds (-1: empty),
// and the row's cached length before the call.
struct RowCache {
  float* k;
  float* vT;
  const int32_t* positions;
  int64_t entries;
  int64_t start;
};

// Where one call's queries, keys and values lie: row r's query head h at
// q + r * qStride + h * headDim, its key and value head j at k and v + r *
// kvStride + j * headDim (Gemma 2/3: fused q/k/v rows; Gemma 4: q apart from
// its layer's, or its source layer's, [k heads, v heads] rows).
struct AttentionInput {
  const float* q;
  int64_t qStride;
  const float *k, *v;
  int64_t kvStride;
  int64_t heads, kvHeads, headDim;
  float softcap;   // 0: none
  int64_t window;  // keys a query sees: positions > q - window
};

// out [B * T, heads * headDim]: for every (row, query head, token), attention
// over the row's visible cache entries, then the call's own keys up to the
// token. Scores come scaled (the scale is folded into a weight, or is 1).
void attend(const AttentionInput& a, int64_t B, int64_t T, const RowCache* cache, float* out);

// The call's keys and values (rows of `stride` floats, as above) into the rows' caches: the last `entries` tokens of a row.
void writeCache(const float* k, const float* v, int64_t stride, int64_t kvHeads, int64_t headDim, int64_t B, int64_t T, const RowCache* cache);

// y <- rmsNorm(y) * w, then x += y (row by row).
void addNormed(float* x, float* y, int64_t M, int64_t n, const float* w, float eps);

// Runs one layer on x [B * T, hidden] in place. `cache` has B entries (null
// entries where a row has no cache); the rows' new keys and values are
// written into them after attention. cos/sin: [B * T, headDim].
void decoderLayer(const LayerShape& s, const LayerWeights& w, float* x, int64_t B, int64_t T, const float* cos, const float* sin, const RowCache* cache);

// One Gemma 4 decoder layer's shapes (gemma4.cc).
struct Gemma4Shape {
  int64_t hidden, heads, kvHeads, headDim, intermediate;
  float eps;
  int64_t window;
  int64_t experts, topK, expertIntermediate;  // experts 0: no MoE block
  int64_t perLayer;                            // per-layer input size, 0: none
  float layerScalar;
  bool ownKv;       // computes its K/V (else reads the source layer's from kv)
  bool kEqV;        // keys double as values
  bool writeCache;  // writes its new K/V into the caches after attention
};

struct Gemma4Weights {
  const Matrix *q, *kv, *o, *gateUp, *down;  // kv: null on KV-shared layers
  const Matrix *pleGate, *pleProj;           // null without per-layer inputs
  const Matrix* router;                      // null without MoE
  const Matrix* const* experts;              // per expert: gate/up [H, 2 Im], then down [Im, H]
  const float *inputNorm, *postAttnNorm, *preFfwNorm, *postFfwNorm, *qNorm, *kNorm;
  const float* plePostNorm;
  const float *preNorm2, *postNorm1, *postNorm2, *expertScale;
};

// Runs one Gemma 4 layer on x [B * T, hidden] in place. kv [B * T, 2 * kvHeads
// * headDim] holds the call's keys then values per token: written by a layer
// that owns its K/V (may be null then, if no later layer needs them), read by
// a KV-shared layer. pli: this layer's per-layer inputs [B * T, perLayer].
// Returns the number of expert products run (one per expert with routed rows).
int64_t gemma4Layer(const Gemma4Shape& s, const Gemma4Weights& w, float* x, int64_t B, int64_t T, const float* cos, const float* sin, float* kv,
                    const float* pli, const RowCache* cache);

// Writes the call's keys and values kv (layout as above) into the rows' caches.
inline void writeKv(int64_t kvHeads, int64_t headDim, const float* kv, int64_t B, int64_t T, const RowCache* cache) {
  writeCache(kv, kv + kvHeads * headDim, 2 * kvHeads * headDim, kvHeads, headDim, B, T, cache);
}

}  // namespace gemma
