// The decode step's reduction on the CPU: per row of logits, the top K
// (ties to the lower id) and the log-sum-exp at temperature 1 and at the
// row's own temperature, in one pass for the maximum and one for the sums,
// with a vectorized exp.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace gemma {
namespace {

#define KERNEL __attribute__((target("avx,fma")))

// exp(x) for x <= 0 (Cephes' polynomial on [-ln2/2, ln2/2], then 2^n); below -87 it returns ~0.
KERNEL inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  // 2^n in the exponent bits; AVX without AVX2 shifts integers 128 bits at a time.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m128i bias = _mm_set1_epi32(127);
  const __m128i lo = _mm_slli_epi32(_mm_add_epi32(_mm256_castsi256_si128(ni), bias), 23);
  const __m128i hi = _mm_slli_epi32(_mm_add_epi32(_mm256_extractf128_si256(ni, 1), bias), 23);
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_insertf128_si256(_mm256_castsi128_si256(lo), hi, 1));
  return _mm256_mul_ps(y, pow2n);
}

// log(sum(exp(s * (x - max)))) + s * max, summed in float per block of 4096 and in double across blocks.
KERNEL double logSumExp(const float* x, int64_t V, float max, float s) {
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 vm = _mm256_set1_ps(max);
  double total = 0;
  for (int64_t b0 = 0; b0 < V; b0 += 4096) {
    const int64_t b1 = std::min(V, b0 + 4096);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 8 <= b1; i += 8) acc = _mm256_add_ps(acc, exp256(_mm256_mul_ps(vs, _mm256_sub_ps(_mm256_loadu_ps(x + i), vm))));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    double block = 0;
    for (float l : lanes) block += l;
    for (; i < b1; i++) block += std::exp(static_cast<double>(s) * (x[i] - max));
    total += block;
  }
  return std::log(total) + static_cast<double>(s) * max;
}

// The K largest of x with their ids, largest first, ties to the lower id.
void topK(const float* x, int64_t V, int64_t K, float* values, int32_t* ids) {
  // A min-heap of the best K so far: (value, id), worst at the front.
  std::vector<std::pair<float, int32_t>> heap;
  heap.reserve(static_cast<size_t>(K));
  const auto worse = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  for (int64_t i = 0; i < V; i++) {
    if (static_cast<int64_t>(heap.size()) < K) {
      heap.emplace_back(x[i], static_cast<int32_t>(i));
      std::push_heap(heap.begin(), heap.end(), worse);
    } else if (x[i] > heap.front().first) {  // an equal value has a higher id: it loses the tie
      std::pop_heap(heap.begin(), heap.end(), worse);
      heap.back() = {x[i], static_cast<int32_t>(i)};
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), worse);
  for (size_t j = 0; j < heap.size(); j++) {
    values[j] = heap[j].first;
    ids[j] = heap[j].second;
  }
}

}  // namespace

void reduceRows(float* logits, int64_t B, int64_t V, int64_t K, const float* scales, const int32_t* masks, float* values, int32_t* ids, double* lse, double* scaledLse) {
  const int64_t words = (V + 31) / 32;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; b++) {
    float* x = logits + b * V;
    if (masks) {
      const uint32_t* m = reinterpret_cast<const uint32_t*>(masks + b * words);
      for (int64_t w = 0; w < words; w++) {
        if (m[w] == 0xffffffffu) continue;
        const int64_t end = std::min(V, (w + 1) * 32);
        for (int64_t i = w * 32; i < end; i++)
          if (!((m[w] >> (i & 31)) & 1u)) x[i] = -INFINITY;
      }
    }
    float max = -INFINITY;
    for (int64_t i = 0; i < V; i++) max = std::max(max, x[i]);
    lse[b] = logSumExp(x, V, max, 1.0f);
    scaledLse[b] = scales[b] == 1.0f ? lse[b] : logSumExp(x, V, max, scales[b]);
    topK(x, V, K, values + b * K, ids + b * K);
  }
}

}  // namespace gemma
