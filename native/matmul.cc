// CPU matmul kernels for the linear layers: y[M, N] = x[M, K] * W[K, N] in
// float32, with AVX and FMA, on a pool of OpenMP threads.
//
// W is packed once into panels of 16 columns (K x 16 floats each, zero
// padded at the right edge), so a kernel reads one panel front to back while
// it keeps up to 6 rows x 16 columns of sums in 12 registers. Decode (M = 1 to
// 8) streams the weights once per step at memory speed; a prompt chunk reuses
// each panel from cache for all of its rows.
#include <node_api.h>
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cmath>
#include <cstring>

namespace {

// Only the kernels use AVX and FMA; the rest of the module runs on any x86-64,
// so `supported()` can answer on a CPU without them.
#define KERNEL __attribute__((target("avx,fma")))

constexpr int NR = 16;        // columns per panel: two 8-float registers
constexpr int MR = 6;         // rows per kernel call: 12 accumulators
constexpr int ROW_BLOCK = 48; // rows of x kept hot in cache while the panels go by

// A weight whose every value is a bfloat16 (a bf16 checkpoint, not rescaled)
// is stored in 16 bits: the same values at half the bytes a step streams.
struct Matrix {
  int64_t rows;    // K
  int64_t cols;    // N
  int64_t panels;  // ceil(N / 16)
  bool bf16;
  void* data;      // panels * rows * 16 values (float or bf16 bits), 64-byte aligned
  size_t bytes;
};

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
template <int M, int U, typename P>
KERNEL void kernel(const float* a, int64_t lda, const P* panel, int64_t K, float* c, int64_t ldc, int64_t ncols) {
  __m256 acc[U][M][2];
  for (int u = 0; u < U; u++)
    for (int r = 0; r < M; r++) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    for (int u = 0; u < U; u++) {
      __m256 b0, b1;
      loadRow(panel, k + u, b0, b1);
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
    for (int r = 0; r < M; r++) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
      acc[0][r][0] = _mm256_fmadd_ps(x, b0, acc[0][r][0]);
      acc[0][r][1] = _mm256_fmadd_ps(x, b1, acc[0][r][1]);
    }
  }
  for (int u = 1; u < U; u++)
    for (int r = 0; r < M; r++) {
      acc[0][r][0] = _mm256_add_ps(acc[0][r][0], acc[u][r][0]);
      acc[0][r][1] = _mm256_add_ps(acc[0][r][1], acc[u][r][1]);
    }
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
KERNEL void rows(int m, const float* a, int64_t lda, const P* panel, int64_t K, float* c, int64_t ldc, int64_t ncols) {
  switch (m) {
    case 1: return kernel<1, 4>(a, lda, panel, K, c, ldc, ncols);
    case 2: return kernel<2, 2>(a, lda, panel, K, c, ldc, ncols);
    case 3: return kernel<3, 1>(a, lda, panel, K, c, ldc, ncols);
    case 4: return kernel<4, 1>(a, lda, panel, K, c, ldc, ncols);
    case 5: return kernel<5, 1>(a, lda, panel, K, c, ldc, ncols);
    default: return kernel<6, 1>(a, lda, panel, K, c, ldc, ncols);
  }
}

// Rows [r0, r1) against one panel, in kernel calls of at most 6 rows split
// evenly (8 rows go as 4 + 4, not 6 + 2).
template <typename P>
KERNEL void panelRows(int64_t r0, int64_t r1, const float* x, int64_t K, const P* panel, float* y, int64_t N, int64_t col, int64_t ncols) {
  const int64_t calls = (r1 - r0 + MR - 1) / MR;
  for (int64_t i = 0, r = r0; i < calls; i++) {
    const int64_t m = (r1 - r + (calls - i) - 1) / (calls - i);
    rows(static_cast<int>(m), x + r * K, K, panel, K, y + r * N + col, N, ncols);
    r += m;
  }
}

KERNEL void multiply(const Matrix& w, const float* x, int64_t M, float* y) {
  const int64_t K = w.rows;
  const int64_t N = w.cols;
#pragma omp parallel
  {
    // A prompt chunk widens a bf16 panel once per row block, not once per 6 rows.
    float* wide = nullptr;
    if (w.bf16 && M > MR) wide = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(K) * NR * sizeof(float)));
    for (int64_t r0 = 0; r0 < M; r0 += ROW_BLOCK) {
      const int64_t r1 = r0 + ROW_BLOCK < M ? r0 + ROW_BLOCK : M;
#pragma omp for schedule(static) nowait
      for (int64_t p = 0; p < w.panels; p++) {
        const int64_t col = p * NR;
        const int64_t ncols = N - col < NR ? N - col : NR;
        if (!w.bf16) {
          panelRows(r0, r1, x, K, static_cast<const float*>(w.data) + p * K * NR, y, N, col, ncols);
        } else if (!wide) {
          panelRows(r0, r1, x, K, static_cast<const uint16_t*>(w.data) + p * K * NR, y, N, col, ncols);
        } else {
          const uint16_t* src = static_cast<const uint16_t*>(w.data) + p * K * NR;
          for (int64_t k = 0; k < K; k++) {
            __m256 b0, b1;
            loadRow(src, k, b0, b1);
            _mm256_store_ps(wide + k * NR, b0);
            _mm256_store_ps(wide + k * NR + 8, b1);
          }
          panelRows(r0, r1, x, K, wide, y, N, col, ncols);
        }
      }
    }
    std::free(wide);
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

// ---- Node-API glue ----

bool check(napi_env env, napi_status s, const char* what) {
  if (s == napi_ok) return true;
  napi_throw_error(env, nullptr, what);
  return false;
}

template <typename T>
bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, T** data, size_t* length) {
  napi_typedarray_type type;
  void* ptr;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, &ptr, &buffer, &offset) != napi_ok || type != want) {
    napi_throw_type_error(env, nullptr, want == napi_float32_array ? "expected a Float32Array" : "expected an Int32Array");
    return false;
  }
  *data = static_cast<T*>(ptr);
  return true;
}

bool integer(napi_env env, napi_value v, int64_t* out) {
  return check(env, napi_get_value_int64(env, v, out), "expected an integer");
}

bool boolean(napi_env env, napi_value v, bool* out) {
  return check(env, napi_get_value_bool(env, v, out), "expected a boolean");
}

bool matrix(napi_env env, napi_value v, Matrix** out) {
  void* handle;
  if (!check(env, napi_get_value_external(env, v, &handle), "expected a packed matrix")) return false;
  *out = static_cast<Matrix*>(handle);
  return true;
}

void freeMatrix(napi_env env, void* data, void*) {
  Matrix* m = static_cast<Matrix*>(data);
  int64_t adjusted;
  napi_adjust_external_memory(env, -static_cast<int64_t>(m->bytes), &adjusted);
  std::free(m->data);
  delete m;
}

// supported(): whether this CPU runs the kernels (AVX and FMA).
napi_value Supported(napi_env env, napi_callback_info) {
  __builtin_cpu_init();
  napi_value out;
  napi_get_boolean(env, __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma"), &out);
  return out;
}

// setThreads(n): the number of threads every later call uses.
napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int64_t n;
  if (argc < 1 || !integer(env, argv[0], &n)) return nullptr;
  omp_set_num_threads(n < 1 ? 1 : static_cast<int>(n));
  return nullptr;
}

// pack(w: Float32Array, K, N, transposed, allowBf16): W [K, N] in panels, as
// an opaque handle. `transposed`: w holds W^T ([N, K], PyTorch's [out, in]).
napi_value Pack(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  float* w;
  size_t length;
  int64_t K, N;
  bool transposed, allowBf16;
  if (argc < 5 || !typedArray(env, argv[0], napi_float32_array, &w, &length) || !integer(env, argv[1], &K) || !integer(env, argv[2], &N) ||
      !boolean(env, argv[3], &transposed) || !boolean(env, argv[4], &allowBf16))
    return nullptr;
  if (K <= 0 || N <= 0 || static_cast<size_t>(K * N) != length) {
    napi_throw_range_error(env, nullptr, "pack: K * N must equal the array's length");
    return nullptr;
  }
  bool bf16 = allowBf16;
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(w);
  for (size_t i = 0; bf16 && i < length; i++) bf16 = (bits[i] & 0xffff) == 0;
  const int64_t panels = (N + NR - 1) / NR;
  const size_t bytes = static_cast<size_t>(panels * K * NR) * (bf16 ? 2 : 4);
  void* data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!data) {
    napi_throw_error(env, nullptr, "pack: out of memory");
    return nullptr;
  }
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
  Matrix* m = new Matrix{K, N, panels, bf16, data, bytes};
  int64_t adjusted;
  napi_adjust_external_memory(env, static_cast<int64_t>(bytes), &adjusted);
  napi_value out;
  if (!check(env, napi_create_external(env, m, freeMatrix, nullptr, &out), "pack: cannot create the handle")) {
    freeMatrix(env, m, nullptr);
    return nullptr;
  }
  return out;
}

// describe(handle): { bytes, bf16 }.
napi_value Describe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Matrix* w;
  if (argc < 1 || !matrix(env, argv[0], &w)) return nullptr;
  napi_value out, bytes, bf16;
  napi_create_object(env, &out);
  napi_create_double(env, static_cast<double>(w->bytes), &bytes);
  napi_get_boolean(env, w->bf16, &bf16);
  napi_set_named_property(env, out, "bytes", bytes);
  napi_set_named_property(env, out, "bf16", bf16);
  return out;
}

// multiply(handle, x: Float32Array [M, K], M, y: Float32Array [M, N]).
napi_value Multiply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Matrix* w;
  float *x, *y;
  size_t xl, yl;
  int64_t M;
  if (argc < 4 || !matrix(env, argv[0], &w) || !typedArray(env, argv[1], napi_float32_array, &x, &xl) || !integer(env, argv[2], &M) ||
      !typedArray(env, argv[3], napi_float32_array, &y, &yl))
    return nullptr;
  if (M <= 0 || static_cast<size_t>(M * w->rows) > xl || static_cast<size_t>(M * w->cols) > yl) {
    napi_throw_range_error(env, nullptr, "multiply: x or y is shorter than M times the matrix's sides");
    return nullptr;
  }
  multiply(*w, x, M, y);
  return nullptr;
}

// geglu(y: Float32Array [M, 2I], M, I, act: Float32Array [M, I]).
napi_value Geglu(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  float *y, *act;
  size_t yl, al;
  int64_t M, I;
  if (argc < 4 || !typedArray(env, argv[0], napi_float32_array, &y, &yl) || !integer(env, argv[1], &M) || !integer(env, argv[2], &I) ||
      !typedArray(env, argv[3], napi_float32_array, &act, &al))
    return nullptr;
  if (M <= 0 || I <= 0 || static_cast<size_t>(M * 2 * I) > yl || static_cast<size_t>(M * I) > al) {
    napi_throw_range_error(env, nullptr, "geglu: y or act is shorter than its shape");
    return nullptr;
  }
  geglu(y, M, I, act);
  return nullptr;
}

// gather(handle, ids: Int32Array, scale, out: Float32Array [ids, K]).
napi_value Gather(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Matrix* w;
  int32_t* ids;
  float* out;
  size_t n, ol;
  double scale;
  if (argc < 4 || !matrix(env, argv[0], &w) || !typedArray(env, argv[1], napi_int32_array, &ids, &n) ||
      !check(env, napi_get_value_double(env, argv[2], &scale), "expected a number") || !typedArray(env, argv[3], napi_float32_array, &out, &ol))
    return nullptr;
  if (static_cast<size_t>(n * w->rows) > ol) {
    napi_throw_range_error(env, nullptr, "gather: out is shorter than ids times K");
    return nullptr;
  }
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= w->cols) {
      napi_throw_range_error(env, nullptr, "gather: id out of range");
      return nullptr;
    }
  }
  gatherColumns(*w, ids, static_cast<int64_t>(n), static_cast<float>(scale), out);
  return nullptr;
}

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"supported", nullptr, Supported, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"pack", nullptr, Pack, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"describe", nullptr, Describe, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"multiply", nullptr, Multiply, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"geglu", nullptr, Geglu, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"gather", nullptr, Gather, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
