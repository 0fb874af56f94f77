// Node-API glue for the CPU kernels: argument checks and conversions only.
#include <node_api.h>

#include <cmath>
#include <omp.h>
#include <string>
#include <vector>

#include "kernels.h"
#include "napi-glue.h"

namespace {

using gemma::Matrix;
using namespace glue;

void freeMatrix(napi_env env, void* data, void*) {
  Matrix* m = static_cast<Matrix*>(data);
  int64_t adjusted;
  napi_adjust_external_memory(env, -static_cast<int64_t>(m->bytes), &adjusted);
  gemma::release(m);
}

// supported(): whether this CPU runs the kernels (AVX and FMA).
napi_value Supported(napi_env env, napi_callback_info) {
  napi_value out;
  napi_get_boolean(env, gemma::cpuSupported(), &out);
  return out;
}

// setThreads(n): the number of threads every later call uses.
napi_value SetThreads(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, argv, "setThreads")) return nullptr;
  int64_t n;
  if (!integer(env, argv[0], &n)) return nullptr;
  threadCount() = n < 1 ? 1 : static_cast<int>(n);
  return nullptr;
}

// pack(w: Float32Array, K, N, transposed, allowBf16): W [K, N] in panels, as
// an opaque handle. `transposed`: w holds W^T ([N, K], PyTorch's [out, in]).
napi_value Pack(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, argv, "pack")) return nullptr;
  float* w;
  size_t length;
  int64_t K, N;
  bool transposed, allowBf16;
  if (!typedArray(env, argv[0], napi_float32_array, &w, &length) || !integer(env, argv[1], &K) || !integer(env, argv[2], &N) ||
      !boolean(env, argv[3], &transposed) || !boolean(env, argv[4], &allowBf16))
    return nullptr;
  if (K <= 0 || N <= 0 || static_cast<size_t>(K * N) != length) {
    napi_throw_range_error(env, nullptr, "pack: K * N must equal the array's length");
    return nullptr;
  }
  Matrix* m = nullptr;
  ComputeThread::get().run([&] {
    m = gemma::pack(w, K, N, transposed, allowBf16);
  });
  if (!m) {
    napi_throw_error(env, nullptr, "pack: out of memory");
    return nullptr;
  }
  const size_t bytes = m->bytes;
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
  napi_value argv[1];
  if (!args(env, info, argv, "describe")) return nullptr;
  Matrix* w;
  if (!matrix(env, argv[0], &w)) return nullptr;
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
  napi_value argv[4];
  if (!args(env, info, argv, "multiply")) return nullptr;
  Matrix* w;
  float *x, *y;
  size_t xl, yl;
  int64_t M;
  if (!matrix(env, argv[0], &w) || !typedArray(env, argv[1], napi_float32_array, &x, &xl) || !integer(env, argv[2], &M) ||
      !typedArray(env, argv[3], napi_float32_array, &y, &yl))
    return nullptr;
  if (M <= 0 || static_cast<size_t>(M * w->rows) > xl || static_cast<size_t>(M * w->cols) > yl) {
    napi_throw_range_error(env, nullptr, "multiply: x or y is shorter than M times the matrix's sides");
    return nullptr;
  }
  ComputeThread::get().run([&] {
    gemma::multiply(*w, x, M, y);
  });
  return nullptr;
}

// gather(handle, ids: Int32Array, scale, out: Float32Array [ids, K]).
napi_value Gather(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, argv, "gather")) return nullptr;
  Matrix* w;
  int32_t* ids;
  float* out;
  size_t n, ol;
  double scale;
  if (!matrix(env, argv[0], &w) || !typedArray(env, argv[1], napi_int32_array, &ids, &n) ||
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
  gemma::gatherColumns(*w, ids, static_cast<int64_t>(n), static_cast<float>(scale), out);
  return nullptr;
}

// layer(shape: Float64Array [hidden, heads, kvHeads, headDim, intermediate, eps, attnSoftcap, window],
//       matrices: [qkv, o, gateUp, down], norms: [input, postAttn, preFfw, postFfw, qkNorm | null],
//       x: Float32Array [B*T, hidden] (updated in place), B, T, cos, sin: Float32Array [B*T, headDim],
//       caches: B x (null | [k, vT: Float32Array, positions: Int32Array, entries, start]))
bool parseLayer(napi_env env, const napi_value* argv, Job* job) {
  const double* d = shapeArray(env, argv[0], 8, "layer");
  if (!d) return false;
  gemma::LayerShape s{static_cast<int64_t>(d[0]), static_cast<int64_t>(d[1]), static_cast<int64_t>(d[2]), static_cast<int64_t>(d[3]),
                      static_cast<int64_t>(d[4]), static_cast<float>(d[5]), static_cast<float>(d[6]), static_cast<int64_t>(d[7])};
  if (!headsSupported(s.heads, s.kvHeads, s.headDim)) {
    napi_throw_range_error(env, nullptr, "layer: unsupported head shape");
    return false;
  }
  Matrix* m[4];
  for (uint32_t i = 0; i < 4; i++)
    if (!matrix(env, element(env, argv[1], i), &m[i])) return false;
  float* norms[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  size_t len;
  for (uint32_t i = 0; i < 5; i++) {
    napi_value v = element(env, argv[2], i);
    if (i == 4 && isNull(env, v)) break;
    if (!typedArray(env, v, napi_float32_array, &norms[i], &len)) return false;
    if (len < static_cast<size_t>(i == 4 ? (s.heads + s.kvHeads) * s.headDim : s.hidden)) {
      napi_throw_range_error(env, nullptr, "layer: a norm weight is too short");
      return false;
    }
  }
  LayerRows r;
  if (!layerRows(env, argv + 3, s.hidden, s.headDim, "layer", &r)) return false;
  std::vector<gemma::RowCache> caches;
  if (!rowCaches(env, argv[8], r.B, s.kvHeads, s.headDim, caches)) return false;
  const gemma::LayerWeights w{m[0], m[1], m[2], m[3], norms[0], norms[1], norms[2], norms[3], norms[4]};
  const int64_t width = (s.heads + 2 * s.kvHeads) * s.headDim;
  if (m[0]->rows != s.hidden || m[0]->cols != width || m[1]->rows != s.heads * s.headDim || m[1]->cols != s.hidden ||
      m[2]->rows != s.hidden || m[2]->cols != 2 * s.intermediate || m[3]->rows != s.intermediate || m[3]->cols != s.hidden) {
    napi_throw_range_error(env, nullptr, "layer: a weight's shape does not match the layer");
    return false;
  }
  *job = [=]() {
    gemma::decoderLayer(s, w, r.x, r.B, r.T, r.cos, r.sin, caches.data());
    return NAN;
  };
  return true;
}

napi_value Layer(napi_env env, napi_callback_info info) { return call<9, parseLayer>(env, info, "layer"); }

// logits(x: Float32Array [M, hidden], M, norm: Float32Array [hidden], eps, embed, softcap (0: none), out: Float32Array [M, vocab]).
// x is normalized in place.
bool parseLogits(napi_env env, const napi_value* argv, Job* job) {
  float *x, *norm, *out;
  size_t xl, nl, ol;
  int64_t M;
  double eps, cap;
  Matrix* w;
  if (!typedArray(env, argv[0], napi_float32_array, &x, &xl) || !integer(env, argv[1], &M) ||
      !typedArray(env, argv[2], napi_float32_array, &norm, &nl) || !check(env, napi_get_value_double(env, argv[3], &eps), "expected a number") ||
      !matrix(env, argv[4], &w) || !check(env, napi_get_value_double(env, argv[5], &cap), "expected a number") ||
      !typedArray(env, argv[6], napi_float32_array, &out, &ol))
    return false;
  if (M <= 0 || xl < static_cast<size_t>(M * w->rows) || nl < static_cast<size_t>(w->rows) || ol < static_cast<size_t>(M * w->cols)) {
    napi_throw_range_error(env, nullptr, "logits: an array is shorter than its shape");
    return false;
  }
  *job = [=]() {
    gemma::rmsNorm(x, M, w->rows, norm, static_cast<float>(eps));
    gemma::multiply(*w, x, M, out);
    if (cap > 0) {
      const float c = static_cast<float>(cap);
      for (size_t i = 0; i < static_cast<size_t>(M * w->cols); i++) out[i] = std::tanh(out[i] / c) * c;
    }
    return NAN;
  };
  return true;
}

napi_value Logits(napi_env env, napi_callback_info info) { return call<7, parseLogits>(env, info, "logits"); }

// reduce(logits: Float32Array [B, V], B, V, K, scales: Float32Array [B],
//        values: Float32Array [B, K], ids: Int32Array [B, K], lse, scaledLse: Float64Array [B],
//        masks: Int32Array [B, ceil(V / 32)] | null: bit i % 32 of word i / 32 set where token i is allowed; the
//        others are set to -inf in place before anything is reduced, so every candidate is an allowed token)
bool parseReduce(napi_env env, const napi_value* argv, Job* job) {
  float *logits, *scales, *values;
  int32_t* ids;
  double *lse, *scaled;
  size_t ll, sl, vl, il, el, scl;
  int64_t B, V, K;
  if (!typedArray(env, argv[0], napi_float32_array, &logits, &ll) || !integer(env, argv[1], &B) || !integer(env, argv[2], &V) ||
      !integer(env, argv[3], &K) || !typedArray(env, argv[4], napi_float32_array, &scales, &sl) ||
      !typedArray(env, argv[5], napi_float32_array, &values, &vl) || !typedArray(env, argv[6], napi_int32_array, &ids, &il) ||
      !typedArray(env, argv[7], napi_float64_array, &lse, &el) || !typedArray(env, argv[8], napi_float64_array, &scaled, &scl))
    return false;
  const int64_t words = (V + 31) / 32;
  int32_t* masks = nullptr;
  size_t ml = 0;
  if (!isNull(env, argv[9]) && !typedArray(env, argv[9], napi_int32_array, &masks, &ml)) return false;
  if (B <= 0 || V <= 0 || K <= 0 || K > V || ll < static_cast<size_t>(B * V) || sl < static_cast<size_t>(B) || vl < static_cast<size_t>(B * K) ||
      il < static_cast<size_t>(B * K) || el < static_cast<size_t>(B) || scl < static_cast<size_t>(B)) {
    napi_throw_range_error(env, nullptr, "reduce: an array is shorter than its shape, or K is not in 1..V");
    return false;
  }
  if (masks && ml < static_cast<size_t>(B * words)) {
    napi_throw_range_error(env, nullptr, "reduce: masks is shorter than B rows of ceil(V / 32) words");
    return false;
  }
  for (int64_t b = 0; b < B; b++) {
    if (!(scales[b] > 0)) {
      napi_throw_range_error(env, nullptr, "reduce: scales must be positive");
      return false;
    }
  }
  *job = [=]() {
    gemma::reduceRows(logits, B, V, K, scales, masks, values, ids, lse, scaled);
    return NAN;
  };
  return true;
}

napi_value Reduce(napi_env env, napi_callback_info info) { return call<10, parseReduce>(env, info, "reduce"); }

// sequence(calls: Array<[name, args]>): the calls (layer, logits, reduce, gemma4Layer, writeKv) one after another,
// every call's arguments checked before any runs; the sum of their numeric results (gemma4Layer's experts run).
// sequenceAsync runs them as one job on the compute thread: one hand-over per forward pass, not one per layer.
napi_value Sequence(napi_env env, napi_callback_info info) {
  struct Entry {
    const char* name;
    size_t arity;
    Parse parse;
  };
  static const Entry entries[] = {{"layer", 9, parseLayer},          {"logits", 7, parseLogits}, {"reduce", 10, parseReduce},
                                  {"gemma4Layer", 12, parseGemma4Layer}, {"writeKv", 6, parseWriteKv}};
  napi_value argv[1];
  if (!args(env, info, argv, "sequence")) return nullptr;
  uint32_t n = 0;
  if (!check(env, napi_get_array_length(env, argv[0], &n), "sequence: expected an array of calls")) return nullptr;
  std::vector<Job> jobs;
  for (uint32_t i = 0; i < n; i++) {
    napi_value entry = element(env, argv[0], i);
    char name[32] = {0};
    size_t length = 0;
    napi_value list = entry ? element(env, entry, 1) : nullptr;
    if (!entry || napi_get_value_string_utf8(env, element(env, entry, 0), name, sizeof(name), &length) != napi_ok || !list) {
      napi_throw_type_error(env, nullptr, "sequence: each call is [name, args]");
      return nullptr;
    }
    const Entry* e = nullptr;
    for (const Entry& candidate : entries)
      if (std::string(candidate.name) == name) e = &candidate;
    if (!e) {
      napi_throw_type_error(env, nullptr, (std::string("sequence: unknown call ") + name).c_str());
      return nullptr;
    }
    napi_value a[12];
    for (uint32_t j = 0; j < e->arity; j++) a[j] = element(env, list, j);
    Job job;
    if (!e->parse(env, a, &job)) return nullptr;
    jobs.push_back(std::move(job));
  }
  return finish(env, info, argv, 1, [jobs = std::move(jobs)]() {
    double sum = 0;
    for (const Job& job : jobs) {
      const double r = job();
      if (!std::isnan(r)) sum += r;
    }
    return sum;
  });
}

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"supported", nullptr, Supported, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"pack", nullptr, Pack, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"describe", nullptr, Describe, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"multiply", nullptr, Multiply, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"gather", nullptr, Gather, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"layer", nullptr, Layer, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"logits", nullptr, Logits, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"reduce", nullptr, Reduce, nullptr, nullptr, nullptr, napi_default, nullptr},
      // The same three on a worker thread, each returning a Promise (finish in napi-glue.h).
      {"layerAsync", nullptr, Layer, nullptr, nullptr, nullptr, napi_default, kAsync},
      {"logitsAsync", nullptr, Logits, nullptr, nullptr, nullptr, napi_default, kAsync},
      {"reduceAsync", nullptr, Reduce, nullptr, nullptr, nullptr, napi_default, kAsync},
      {"sequence", nullptr, Sequence, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"sequenceAsync", nullptr, Sequence, nullptr, nullptr, nullptr, napi_default, kAsync},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  glue::defineGemma4(env, exports);
  return exports;
}

}  // namespace

NAPI_MODULE(gemma_cpu, Init)
