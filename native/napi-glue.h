// Node-API argument helpers shared by the addon's bindings (addon.cc, addon-gemma4.cc).
#pragma once

#include <node_api.h>

#include <string>
#include <vector>

#include "compute-thread.h"
#include "kernels.h"

namespace glue {

inline bool check(napi_env env, napi_status s, const char* what) {
  if (s == napi_ok) return true;
  napi_throw_error(env, nullptr, what);
  return false;
}

template <typename T>
inline bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, T** data, size_t* length) {
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

// The call's first N arguments into argv; throws (and returns false) when fewer were passed.
template <size_t N>
inline bool args(napi_env env, napi_callback_info info, napi_value (&argv)[N], const char* name) {
  size_t argc = N;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc >= N) return true;
  const std::string message = std::string(name) + ": expected " + std::to_string(N) + " arguments";
  napi_throw_type_error(env, nullptr, message.c_str());
  return false;
}

inline bool integer(napi_env env, napi_value v, int64_t* out) {
  return check(env, napi_get_value_int64(env, v, out), "expected an integer");
}

inline bool boolean(napi_env env, napi_value v, bool* out) {
  return check(env, napi_get_value_bool(env, v, out), "expected a boolean");
}

inline bool matrix(napi_env env, napi_value v, gemma::Matrix** out) {
  void* handle;
  if (!check(env, napi_get_value_external(env, v, &handle), "expected a packed matrix")) return false;
  *out = static_cast<gemma::Matrix*>(handle);
  return true;
}

inline napi_value element(napi_env env, napi_value array, uint32_t i) {
  napi_value v = nullptr;
  napi_get_element(env, array, i, &v);
  return v;
}

inline bool isNull(napi_env env, napi_value v) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  return t == napi_null || t == napi_undefined;
}

// A layer's shape: a Float64Array of at least n numbers, else a TypeError naming `name` (and null).
inline const double* shapeArray(napi_env env, napi_value v, size_t n, const char* name) {
  napi_typedarray_type type;
  size_t length;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset) == napi_ok && type == napi_float64_array && length >= n)
    return static_cast<const double*>(data);
  const std::string message = std::string(name) + ": shape must be a Float64Array of " + std::to_string(n);
  napi_throw_type_error(env, nullptr, message.c_str());
  return nullptr;
}

// Head shapes the attention kernels take: an even head size up to 1024 (its scratch), whole query groups per K/V head.
inline bool headsSupported(int64_t heads, int64_t kvHeads, int64_t headDim) {
  return headDim <= 1024 && headDim % 2 == 0 && kvHeads > 0 && heads % kvHeads == 0;
}

// A layer call's rows: x [B * T, hidden] (updated in place), B, T, and the rope tables cos and sin [B * T, headDim].
struct LayerRows {
  float *x, *cos, *sin;
  int64_t B, T;
};

// LayerRows from argv[0..4]; throws (false) on a bad or short one.
inline bool layerRows(napi_env env, const napi_value* argv, int64_t hidden, int64_t headDim, const char* name, LayerRows* out) {
  size_t xl, cl, sl;
  if (!typedArray(env, argv[0], napi_float32_array, &out->x, &xl) || !integer(env, argv[1], &out->B) || !integer(env, argv[2], &out->T) ||
      !typedArray(env, argv[3], napi_float32_array, &out->cos, &cl) || !typedArray(env, argv[4], napi_float32_array, &out->sin, &sl))
    return false;
  const size_t M = static_cast<size_t>(out->B * out->T);
  const bool positive = out->B > 0 && out->T > 0;
  if (positive && xl >= M * hidden && cl >= M * headDim && sl >= M * headDim) return true;
  const std::string message = std::string(name) + (positive ? ": x, cos or sin is shorter than B * T rows" : ": B and T must be positive");
  napi_throw_range_error(env, nullptr, message.c_str());
  return false;
}

// caches: B x (null | [k, vT: Float32Array, positions: Int32Array, entries, start]) into out; throws (false) on a bad one.
inline bool rowCaches(napi_env env, napi_value list, int64_t B, int64_t kvHeads, int64_t headDim, std::vector<gemma::RowCache>& out) {
  out.assign(static_cast<size_t>(B), gemma::RowCache{nullptr, nullptr, nullptr, 0, 0});
  for (uint32_t b = 0; b < B; b++) {
    napi_value c = element(env, list, b);
    if (!c || isNull(env, c)) continue;
    gemma::RowCache& r = out[b];
    size_t kl, vl, pl;
    int32_t* positions;
    if (!typedArray(env, element(env, c, 0), napi_float32_array, &r.k, &kl) || !typedArray(env, element(env, c, 1), napi_float32_array, &r.vT, &vl) ||
        !typedArray(env, element(env, c, 2), napi_int32_array, &positions, &pl) || !integer(env, element(env, c, 3), &r.entries) ||
        !integer(env, element(env, c, 4), &r.start))
      return false;
    r.positions = positions;
    const size_t need = static_cast<size_t>(kvHeads * r.entries * headDim);
    if (r.entries <= 0 || kl < need || vl < need || pl < static_cast<size_t>(r.entries) || r.start < 0) {
      napi_throw_range_error(env, nullptr, "layer: a cache is shorter than its entries");
      return false;
    }
  }
  return true;
}

// A compute binding's argument checks: true and the job to run, or false with a pending exception.
using Parse = bool (*)(napi_env, const napi_value*, Job*);

// A compute binding of N arguments: checked by P, then run now or queued (finish).
template <size_t N, Parse P>
napi_value call(napi_env env, napi_callback_info info, const char* name) {
  napi_value argv[N];
  if (!args(env, info, argv, name)) return nullptr;
  Job job;
  if (!P(env, argv, &job)) return nullptr;
  return finish(env, info, argv, N, std::move(job));
}

// The Gemma 4 calls' checks (addon-gemma4.cc), for sequence in addon.cc.
bool parseGemma4Layer(napi_env env, const napi_value* argv, Job* job);
bool parseWriteKv(napi_env env, const napi_value* argv, Job* job);

// Defines the Gemma 4 bindings (addon-gemma4.cc) on exports.
void defineGemma4(napi_env env, napi_value exports);

}  // namespace glue
