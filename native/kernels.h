// Shared declarations of the CPU kernels (matmul.cc, layer.cc) and the
// Node-API glue (addon.cc).
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

// Per row of logits [B, V]: the top K values and ids (largest first, ties to
// the lower id) and the log-sum-exp of x and of x * scales[b].
void reduceRows(const float* logits, int64_t B, int64_t V, int64_t K, const float* scales, float* values, int32_t* ids, double* lse, double* scaledLse);

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

// Runs one layer on x [B * T, hidden] in place. `cache` has B entries (null
// entries where a row has no cache); the rows' new keys and values are
// written into them after attention. cos/sin: [B * T, headDim].
void decoderLayer(const LayerShape& s, const LayerWeights& w, float* x, int64_t B, int64_t T, const float* cos, const float* sin, const RowCache* cache);

}  // namespace gemma
