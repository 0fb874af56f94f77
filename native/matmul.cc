// CPU matmul kernels for the linear layers: y[M, N] = x[M, K] * W[K, N] in
// float32, with AVX and FMA, on a pool of OpenMP threads.
//
// W is packed once into panels of 16 columns (K x 16 floats each, zero
// padded at the right edge), so a kernel reads one panel front to back while
// it keeps up to 6 rows x 16 columns of sums in 12 registers. Decode (M = 1 to
// 8) streams the weights once per step at memory speed; a prompt chunk reuses
// each panel from cache for all of its rows.
#include "kernels.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <vector>

namespace gemma {
namespace {

// Only the kernels use AVX and FMA; the rest of the module runs on any x86-64,
// so `supported()` can answer on a CPU without them.
#define KERNEL __attribute__((target("avx,fma")))

constexpr int NR = 16;        // columns per panel: two 8-float registers
constexpr int MR = 6;         // rows per kernel call: 12 accumulators
constexpr int ROW_BLOCK = 48; // rows of x kept hot in cache while the panels go by


// Row k of a panel as 16 floats in two registers.
KERNEL inline void loadRow(const float* panel, int64_t k, __m256& b0, __m256& b1) {
  b0 = _mm256_load_ps(panel + k * NR);
  b1 = _mm256_load_ps(panel + k * NR + 8);
}

// bf16 bits are the high half of a float: interleave zeros below them.
KERNEL inline void loadRow(const uint16_t* panel, int64_t k, __m256& b0, __m256& b1) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i lo = _mm_load_si128(reinterpret_cast<const __m128i*>(panel + k * NR));
  const __m128i hi = _mm_load_si128(reinterpret_cast<const __m128i*>(panel + k * NR + 8));
  b0 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, lo))), _mm_castsi128_ps(_mm_unpackhi_epi16(zero, lo)), 1);
  b1 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, hi))), _mm_castsi128_ps(_mm_unpackhi_epi16(zero, hi)), 1);
}

// M rows of x against one panel. U independent accumulator sets hide the FMA
// latency when there are too few rows to do it (U = 4 for one row).
// `ahead` (or nullptr): the panel this thread reads next, `stride` bytes per
// row of it, fetched into cache while this one is multiplied; streaming
// weights from memory otherwise stalls at every panel's start.
template <int M, int U, typename P>
KERNEL void kernel(const float* a, int64_t lda, const P* panel, int64_t K, float* c, int64_t ldc, int64_t ncols, const char* ahead, int64_t stride) {
  __m256 acc[U][M][2];
#pragma GCC unroll 8
  for (int u = 0; u < U; u++)
#pragma GCC unroll 8
    for (int r = 0; r < M; r++) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + U <= K; k += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; u++) {
      if (ahead) _mm_prefetch(ahead + (k + u) * stride, _MM_HINT_T0);
      __m256 b0, b1;
      loadRow(panel, k + u, b0, b1);
#pragma GCC unroll 8
      for (int r = 0; r < M; r++) {
        const __m256 x = _mm256_broadcast_ss(a + r * lda + k + u);
        acc[u][r][0] = _mm256_fmadd_ps(x, b0, acc[u][r][0]);
        acc[u][r][1] = _mm256_fmadd_ps(x, b1, acc[u][r][1]);
      }
    }
  }
  for (; k < K; k++) {
    __m256 b0, b1;
    loadRow(panel, k, b0, b1);
#pragma GCC unroll 8
    for (int r = 0; r < M; r++) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
      acc[0][r][0] = _mm256_fmadd_ps(x, b0, acc[0][r][0]);
      acc[0][r][1] = _mm256_fmadd_ps(x, b1, acc[0][r][1]);
    }
  }
#pragma GCC unroll 8
  for (int u = 1; u < U; u++)
#pragma GCC unroll 8
    for (int r = 0; r < M; r++) {
      acc[0][r][0] = _mm256_add_ps(acc[0][r][0], acc[u][r][0]);
      acc[0][r][1] = _mm256_add_ps(acc[0][r][1], acc[u][r][1]);
    }
#pragma GCC unroll 8
  for (int r = 0; r < M; r++) {
    float* row = c + r * ldc;
    if (ncols == NR) {
      _mm256_storeu_ps(row, acc[0][r][0]);
      _mm256_storeu_ps(row + 8, acc[0][r][1]);
    } else {
      alignas(32) float tmp[NR];
      _mm256_store_ps(tmp, acc[0][r][0]);
      _mm256_store_ps(tmp + 8, acc[0][r][1]);
      std::memcpy(row, tmp, sizeof(float) * ncols);
    }
  }
}

template <typename P>
KERNEL void rows(int m, const float* a, int64_t lda, const P* panel, int64_t K, float* c, int64_t ldc, int64_t ncols, const char* ahead, int64_t stride) {
  switch (m) {
    case 1: return kernel<1, 4>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
    case 2: return kernel<2, 2>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
    case 3: return kernel<3, 1>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
    case 4: return kernel<4, 1>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
    case 5: return kernel<5, 1>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
    default: return kernel<6, 1>(a, lda, panel, K, c, ldc, ncols, ahead, stride);
  }
}

// Rows [r0, r1) against one panel, in kernel calls of at most 6 rows split
// evenly (8 rows go as 4 + 4, not 6 + 2).
template <typename P>
KERNEL void panelRows(int64_t r0, int64_t r1, const float* x, int64_t K, const P* panel, float* y, int64_t N, int64_t col, int64_t ncols,
                      const char* ahead, int64_t stride) {
  const int64_t calls = (r1 - r0 + MR - 1) / MR;
  for (int64_t i = 0, r = r0; i < calls; i++) {
    const int64_t m = (r1 - r + (calls - i) - 1) / (calls - i);
    rows(static_cast<int>(m), x + r * K, K, panel, K, y + r * N + col, N, ncols, i == 0 ? ahead : nullptr, stride);
    r += m;
  }
}

}  // namespace

float* scratch(size_t floats, int which) {
  // Kept per thread and never shrunk: freeing large blocks unmaps pages, and
  // every unmap interrupts the other threads to flush their TLBs.
  struct Buffer {
    float* data = nullptr;
    size_t size = 0;
    ~Buffer() { ::operator delete(data, std::align_val_t(64)); }
  };
  thread_local Buffer buffers[4];
  Buffer& b = buffers[which];
  if (b.size < floats) {
    ::operator delete(b.data, std::align_val_t(64));
    b.data = static_cast<float*>(::operator new(floats * sizeof(float), std::align_val_t(64)));
    b.size = floats;
  }
  return b.data;
}

KERNEL void multiply(const Matrix& w, const float* x, int64_t M, float* y) {
  const int64_t K = w.rows;
  const int64_t N = w.cols;
  // Panels are handed out in chunks as threads ask for them: a thread the OS
  // has descheduled (GC, the event loop) leaves its share to the others
  // instead of holding the whole step up.
  const int64_t chunk = w.panels / (8 * omp_get_max_threads()) > 1 ? w.panels / (8 * omp_get_max_threads()) : 1;
#pragma omp parallel
  {
    // A prompt chunk widens a bf16 panel once per row block, not once per 6 rows.
    float* wide = w.bf16 && M > MR ? scratch(static_cast<size_t>(K) * NR) : nullptr;
    for (int64_t r0 = 0; r0 < M; r0 += ROW_BLOCK) {
      const int64_t r1 = r0 + ROW_BLOCK < M ? r0 + ROW_BLOCK : M;
#pragma omp for schedule(dynamic, chunk) nowait
      for (int64_t p = 0; p < w.panels; p++) {
        const int64_t col = p * NR;
        const int64_t ncols = N - col < NR ? N - col : NR;
        const int64_t stride = NR * (w.bf16 ? 2 : 4);
        const char* ahead = p + 1 < w.panels ? static_cast<const char*>(w.data) + (p + 1) * K * stride : nullptr;
        if (!w.bf16) {
          panelRows(r0, r1, x, K, static_cast<const float*>(w.data) + p * K * NR, y, N, col, ncols, ahead, stride);
        } else if (!wide) {
          panelRows(r0, r1, x, K, static_cast<const uint16_t*>(w.data) + p * K * NR, y, N, col, ncols, ahead, stride);
        } else {
          const uint16_t* src = static_cast<const uint16_t*>(w.data) + p * K * NR;
          for (int64_t k = 0; k < K; k++) {
            __m256 b0, b1;
            loadRow(src, k, b0, b1);
            _mm256_store_ps(wide + k * NR, b0);
            _mm256_store_ps(wide + k * NR + 8, b1);
          }
          panelRows(r0, r1, x, K, wide, y, N, col, ncols, ahead, stride);
        }
      }
    }
  }
}

// Gemma's GeGLU on a fused gate/up product: act[r, i] = gelu_tanh(g) * u,
// with g = y[r, i] and u = y[r, I + i]. gelu_tanh(g) = g * sigmoid(2 * c * (g + 0.044715 g^3)).
void geglu(const float* y, int64_t M, int64_t I, float* act) {
  const float c2 = 2.0f * 0.7978845608028654f;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < M; r++) {
    const float* g = y + r * 2 * I;
    const float* u = g + I;
    float* out = act + r * I;
    for (int64_t i = 0; i < I; i++) {
      const float x = g[i];
      const float inner = c2 * x + c2 * 0.044715f * x * x * x;
      out[i] = x / (1.0f + std::exp(-inner)) * u[i];
    }
  }
}

// Columns `ids` of W as rows of `out` ([ids, K]), times `scale`: the
// embedding lookup on the tied [hidden, vocab] matrix.
void gatherColumns(const Matrix& w, const int32_t* ids, int64_t n, float scale, float* out) {
  const int64_t K = w.rows;
  for (int64_t i = 0; i < n; i++) {
    const int64_t p = ids[i] / NR;
    const int64_t j = ids[i] % NR;
    for (int64_t k = 0; k < K; k++) {
      const int64_t at = (p * K + k) * NR + j;
      float v;
      if (w.bf16) {
        const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(w.data)[at]) << 16;
        std::memcpy(&v, &bits, 4);
      } else {
        v = static_cast<const float*>(w.data)[at];
      }
      out[i * K + k] = v * scale;
    }
  }
}

Matrix* pack(const float* w, int64_t K, int64_t N, bool transposed, bool allowBf16) {
  const size_t length = static_cast<size_t>(K * N);
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(w);
  bool bf16 = allowBf16;
  for (size_t i = 0; bf16 && i < length; i++) bf16 = (bits[i] & 0xffff) == 0;
  const int64_t panels = (N + NR - 1) / NR;
  const size_t bytes = static_cast<size_t>(panels * K * NR) * (bf16 ? 2 : 4);
  // Large weights go on 2 MiB pages where the kernel offers them: a decode
  // step streams every page, and 4 KiB pages cost a TLB miss each.
  const size_t huge = size_t{2} << 20;
  const size_t align = bytes >= huge ? huge : 64;
  const size_t size = (bytes + align - 1) / align * align;
  void* data = std::aligned_alloc(align, size);
  if (!data) return nullptr;
  if (align == huge) madvise(data, size, MADV_HUGEPAGE);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; p++) {
    for (int64_t k = 0; k < K; k++) {
      for (int64_t j = 0; j < NR; j++) {
        const int64_t n = p * NR + j;
        const size_t at = static_cast<size_t>((p * K + k) * NR + j);
        const uint32_t v = n >= N ? 0 : transposed ? bits[n * K + k] : bits[k * N + n];
        if (bf16) static_cast<uint16_t*>(data)[at] = static_cast<uint16_t>(v >> 16);
        else static_cast<uint32_t*>(data)[at] = v;
      }
    }
  }
  return new Matrix{K, N, panels, bf16, data, bytes};
}

void release(Matrix* m) {
  std::free(m->data);
  delete m;
}

void rmsNorm(float* x, int64_t M, int64_t n, const float* w, float eps) {
  for (int64_t r = 0; r < M; r++) {
    float* row = x + r * n;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += row[i] * row[i];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; i++) row[i] = row[i] * scale * w[i];
  }
}

bool cpuSupported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma");
}

}  // namespace gemma
