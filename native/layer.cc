// One Gemma decoder layer on the CPU, the same arithmetic as the tfjs graph
// (src/engine/model.ts): norms, the fused q/k/v projection, q/k norm and
// rope, attention over the rows' cached keys plus their own, the cache
// write, the output projection, and the GeGLU MLP. A whole layer is one call,
// so a decode step costs a few dozen crossings instead of ~900 tfjs kernels.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace gemma {

#define KERNEL __attribute__((target("avx,fma")))

KERNEL float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
  float sum = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
  for (; i < n; i++) sum += a[i] * b[i];
  return sum;
}

// out[0, n) += p * v[0, n)
KERNEL void axpy(float p, const float* v, float* out, int64_t n) {
  const __m256 s = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(s, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
  for (; i < n; i++) out[i] += p * v[i];
}

// rotate_half rope in place: x * cos + [-x2, x1] * sin.
void rope(float* x, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; i++) {
    const float a = x[i], b = x[half + i];
    x[i] = a * cos[i] - b * sin[i];
    x[half + i] = b * cos[half + i] + a * sin[half + i];
  }
}

// Attention for every (row, query head, token): the visible cache entries,
// then the call's own keys up to the token.
KERNEL void attend(const AttentionInput& a, int64_t B, int64_t T, const RowCache* cache, float* out) {
  const int64_t hd = a.headDim, nq = a.heads, g = nq / a.kvHeads;
  int64_t maxKeys = T;
  for (int64_t b = 0; b < B; b++)
    if (cache[b].k) maxKeys = std::max(maxKeys, std::min(cache[b].entries, cache[b].start) + T);
#pragma omp parallel
  {
    // Scores over the cached entries [0, filled) (masked ones get exp = 0), then the row's own keys.
    float* scores = scratch(static_cast<size_t>(maxKeys), 0);
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < nq; h++)
        for (int64_t t = 0; t < T; t++) {
          const int64_t kvh = h / g;
          const RowCache& c = cache[b];
          const int64_t q = (c.k ? c.start : 0) + t;  // the query's position
          const float* query = a.q + (b * T + t) * a.qStride + h * hd;
          const int64_t filled = c.k ? std::min(c.entries, c.start) : 0;
          float best = -INFINITY;
          for (int64_t e = 0; e < filled; e++) {
            const int32_t p = c.positions[e];
            if (p < 0 || p > q || p <= q - a.window) {
              scores[e] = -INFINITY;
              continue;
            }
            float v = dot(query, c.k + (kvh * c.entries + e) * hd, hd);
            if (a.softcap > 0) v = std::tanh(v / a.softcap) * a.softcap;
            scores[e] = v;
            best = std::max(best, v);
          }
          const int64_t own0 = std::max<int64_t>(0, t - a.window + 1);
          float* own = scores + filled;
          for (int64_t u = own0; u <= t; u++) {
            float v = dot(query, a.k + (b * T + u) * a.kvStride + kvh * hd, hd);
            if (a.softcap > 0) v = std::tanh(v / a.softcap) * a.softcap;
            own[u - own0] = v;
            best = std::max(best, v);
          }
          const int64_t n = filled + t - own0 + 1;
          float sum = 0;
          for (int64_t i = 0; i < n; i++) sum += (scores[i] = std::exp(scores[i] - best));
          const float inv = 1.0f / sum;
          float* o = out + (b * T + t) * nq * hd + h * hd;
          // V^T rows are contiguous over entries: one dot per output dim.
          for (int64_t d = 0; d < hd; d++) o[d] = filled > 0 ? dot(scores, c.vT + (kvh * hd + d) * c.entries, filled) : 0.0f;
          for (int64_t u = own0; u <= t; u++) axpy(own[u - own0], a.v + (b * T + u) * a.kvStride + kvh * hd, o, hd);
          for (int64_t d = 0; d < hd; d++) o[d] *= inv;
        }
  }
}

void writeCache(const float* k, const float* v, int64_t stride, int64_t kvHeads, int64_t headDim, int64_t B, int64_t T, const RowCache* cache) {
  const int64_t hd = headDim;
  for (int64_t b = 0; b < B; b++) {
    const RowCache& c = cache[b];
    if (!c.k) continue;
    for (int64_t t = std::max<int64_t>(0, T - c.entries); t < T; t++) {
      const int64_t e = (c.start + t) % c.entries;
      const int64_t row = (b * T + t) * stride;
      for (int64_t h = 0; h < kvHeads; h++) {
        std::memcpy(c.k + (h * c.entries + e) * hd, k + row + h * hd, hd * sizeof(float));
        const float* vh = v + row + h * hd;
        for (int64_t d = 0; d < hd; d++) c.vT[(h * hd + d) * c.entries + e] = vh[d];
      }
    }
  }
}

void addNormed(float* x, float* y, int64_t M, int64_t n, const float* w, float eps) {
  rmsNorm(y, M, n, w, eps);
  for (int64_t i = 0; i < M * n; i++) x[i] += y[i];
}

void decoderLayer(const LayerShape& s, const LayerWeights& w, float* x, int64_t B, int64_t T, const float* cos, const float* sin, const RowCache* cache) {
  const int64_t M = B * T, H = s.hidden, hd = s.headDim, nq = s.heads, nkv = s.kvHeads, I = s.intermediate;
  const int64_t width = (nq + 2 * nkv) * hd;
  // The calling thread's scratch (slots 1-3; slot 0 is the matmul's and attention's), reused across calls.
  float* xn = scratch(static_cast<size_t>(M * std::max(H, nq * hd)) + static_cast<size_t>(M * H), 1);
  float* y = xn + M * std::max(H, nq * hd);
  float* qkv = scratch(static_cast<size_t>(M * width), 2);
  float* wide = scratch(static_cast<size_t>(M * 3 * I), 3);  // gate/up, then the activation after them
  float* gu = wide;
  float* act = wide + M * 2 * I;

  std::memcpy(xn, x, M * H * sizeof(float));
  rmsNorm(xn, M, H, w.inputNorm, s.eps);
  multiply(*w.qkv, xn, M, qkv);
  for (int64_t r = 0; r < M; r++) {
    for (int64_t h = 0; h < nq + nkv; h++) {
      float* v = qkv + r * width + h * hd;
      if (w.qkNorm) rmsNorm(v, 1, hd, w.qkNorm + h * hd, s.eps);
      rope(v, cos + r * hd, sin + r * hd, hd);
    }
  }
  // The fused rows hold q, then k, then v; the scale is folded into q's norm or Wq.
  const float *k = qkv + nq * hd, *v = k + nkv * hd;
  float* attn = xn;  // the normed input is spent
  attend({qkv, width, k, v, width, nq, nkv, hd, s.attnSoftcap, s.window}, B, T, cache, attn);
  writeCache(k, v, width, nkv, hd, B, T, cache);

  multiply(*w.o, attn, M, y);
  addNormed(x, y, M, H, w.postAttnNorm, s.eps);

  std::memcpy(xn, x, M * H * sizeof(float));
  rmsNorm(xn, M, H, w.preFfwNorm, s.eps);
  multiply(*w.gateUp, xn, M, gu);
  geglu(gu, M, I, act);
  multiply(*w.down, act, M, y);
  addNormed(x, y, M, H, w.postFfwNorm, s.eps);
}

}  // namespace gemma
