// Node-API glue for the Gemma 4 layer (gemma4.cc): argument checks and conversions only.
#include <node_api.h>

#include <vector>

#include "kernels.h"
#include "napi-glue.h"

namespace glue {
namespace {

bool range(napi_env env, bool ok, const char* what) {
  if (!ok) napi_throw_range_error(env, nullptr, what);
  return ok;
}

// A Float32Array of at least n values, or (where allowed) null.
bool floats(napi_env env, napi_value v, size_t n, bool nullable, float** out) {
  *out = nullptr;
  if (nullable && (!v || isNull(env, v))) return true;
  size_t len;
  if (!typedArray(env, v, napi_float32_array, out, &len)) return false;
  return range(env, len >= n, "gemma4Layer: an array is shorter than its shape");
}

// A packed matrix of K x N, or (where allowed) null.
bool sized(napi_env env, napi_value v, int64_t K, int64_t N, bool nullable, gemma::Matrix** out) {
  *out = nullptr;
  if (nullable && (!v || isNull(env, v))) return true;
  if (!matrix(env, v, out)) return false;
  return range(env, (*out)->rows == K && (*out)->cols == N, "gemma4Layer: a weight's shape does not match the layer");
}

}  // namespace

// gemma4Layer(shape: Float64Array [hidden, heads, kvHeads, headDim, intermediate, eps, window, experts, topK,
//               expertIntermediate, perLayer, layerScalar, ownKv, kEqV, writeCache],
//             matrices: [q, kv | null, o, gateUp, down, pleGate | null, pleProj | null, router | null],
//             experts: [gateUp_0, down_0, ...], norms: [input, postAttn, preFfw, postFfw, qNorm, kNorm | null,
//               plePost | null, preNorm2 | null, postNorm1 | null, postNorm2 | null, expertScale | null],
//             x: Float32Array [B*T, hidden] (in place), B, T, cos, sin: Float32Array [B*T, headDim],
//             kv: Float32Array [B*T, 2 * kvHeads * headDim] | null, pli: Float32Array [B*T, perLayer] | null,
//             caches: B x (null | [k, vT, positions, entries, start])): the number of experts run.
bool parseGemma4Layer(napi_env env, const napi_value* argv, Job* job) {
  const double* d = shapeArray(env, argv[0], 15, "gemma4Layer");
  if (!d) return false;
  const auto i64 = [d](int i) { return static_cast<int64_t>(d[i]); };
  gemma::Gemma4Shape s{i64(0), i64(1), i64(2), i64(3), i64(4), static_cast<float>(d[5]), i64(6), i64(7), i64(8), i64(9), i64(10),
                       static_cast<float>(d[11]), d[12] != 0, d[13] != 0, d[14] != 0};
  if (!headsSupported(s.heads, s.kvHeads, s.headDim) || s.topK > s.experts || s.experts < 0) {
    napi_throw_range_error(env, nullptr, "gemma4Layer: unsupported head or expert shape");
    return false;
  }
  const int64_t H = s.hidden, qDim = s.heads * s.headDim, kvDim = s.kvHeads * s.headDim, P = s.perLayer;
  gemma::Matrix *q, *kv, *o, *gateUp, *down, *pleGate, *pleProj, *router;
  const napi_value m = argv[1];
  if (!sized(env, element(env, m, 0), H, qDim, false, &q) || !sized(env, element(env, m, 1), H, (s.kEqV ? 1 : 2) * kvDim, !s.ownKv, &kv) ||
      !sized(env, element(env, m, 2), qDim, H, false, &o) || !sized(env, element(env, m, 3), H, 2 * s.intermediate, false, &gateUp) ||
      !sized(env, element(env, m, 4), s.intermediate, H, false, &down) || !sized(env, element(env, m, 5), H, P, true, &pleGate) ||
      !sized(env, element(env, m, 6), P, H, true, &pleProj) || !sized(env, element(env, m, 7), H, s.experts, true, &router))
    return false;
  if (!range(env, (pleGate == nullptr) == (pleProj == nullptr) && (router != nullptr) == (s.experts > 0) && (!s.ownKv || kv),
             "gemma4Layer: the weights do not match the layer's shape"))
    return false;
  std::vector<gemma::Matrix*> experts(static_cast<size_t>(2 * s.experts));
  for (int64_t e = 0; e < s.experts; e++) {
    if (!sized(env, element(env, argv[2], static_cast<uint32_t>(2 * e)), H, 2 * s.expertIntermediate, false, &experts[2 * e]) ||
        !sized(env, element(env, argv[2], static_cast<uint32_t>(2 * e + 1)), s.expertIntermediate, H, false, &experts[2 * e + 1]))
      return false;
  }
  // Norm weights: length, and whether the layer needs it.
  const size_t lengths[11] = {size_t(H), size_t(H), size_t(H), size_t(H), size_t(s.headDim), size_t(s.headDim), size_t(H), size_t(H), size_t(H), size_t(H), size_t(s.experts)};
  const bool needed[11] = {true, true, true, true, true, s.ownKv, pleGate != nullptr, router != nullptr, router != nullptr, router != nullptr, router != nullptr};
  float* norms[11];
  for (uint32_t i = 0; i < 11; i++)
    if (!floats(env, element(env, argv[3], i), lengths[i], !needed[i], &norms[i])) return false;
  LayerRows r;
  if (!layerRows(env, argv + 4, H, s.headDim, "gemma4Layer", &r)) return false;
  const size_t M = static_cast<size_t>(r.B * r.T);
  float *kvBuf, *pli;
  if (!floats(env, argv[9], M * 2 * kvDim, s.ownKv, &kvBuf) || !floats(env, argv[10], M * P, pleGate == nullptr, &pli)) return false;
  std::vector<gemma::RowCache> caches;
  if (!rowCaches(env, argv[11], r.B, s.kvHeads, s.headDim, caches)) return false;
  const gemma::Gemma4Weights w{q,        kv,       o,        gateUp,   down,     pleGate,  pleProj,  router,   experts.data(), norms[0],
                               norms[1], norms[2], norms[3], norms[4], norms[5], norms[6], norms[7], norms[8], norms[9],      norms[10]};
  // experts: the Gemma4Weights above point into it, so the job owns it.
  *job = [=, experts = std::move(experts)]() mutable {
    gemma::Gemma4Weights wj = w;
    wj.experts = experts.data();
    return static_cast<double>(gemma::gemma4Layer(s, wj, r.x, r.B, r.T, r.cos, r.sin, kvBuf, pli, caches.data()));
  };
  return true;
}

namespace {
napi_value Gemma4Layer(napi_env env, napi_callback_info info) { return call<12, parseGemma4Layer>(env, info, "gemma4Layer"); }
}  // namespace

// writeKv(kvHeads, headDim, kv: Float32Array [B*T, 2 * kvHeads * headDim], B, T, caches): the call's K/V into the caches.
bool parseWriteKv(napi_env env, const napi_value* argv, Job* job) {
  int64_t nkv, hd, B, T;
  float* kv;
  if (!integer(env, argv[0], &nkv) || !integer(env, argv[1], &hd) || !integer(env, argv[3], &B) || !integer(env, argv[4], &T) ||
      !range(env, nkv > 0 && hd > 0 && B > 0 && T > 0, "writeKv: sizes must be positive") || !floats(env, argv[2], static_cast<size_t>(B * T * 2 * nkv * hd), false, &kv))
    return false;
  std::vector<gemma::RowCache> caches;
  if (!rowCaches(env, argv[5], B, nkv, hd, caches)) return false;
  *job = [=]() {
    gemma::writeKv(nkv, hd, kv, B, T, caches.data());
    return NAN;
  };
  return true;
}

namespace {
napi_value WriteKv(napi_env env, napi_callback_info info) { return call<6, parseWriteKv>(env, info, "writeKv"); }
}  // namespace

void defineGemma4(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"gemma4Layer", nullptr, Gemma4Layer, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"writeKv", nullptr, WriteKv, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"gemma4LayerAsync", nullptr, Gemma4Layer, nullptr, nullptr, nullptr, napi_default, kAsync},
      {"writeKvAsync", nullptr, WriteKv, nullptr, nullptr, nullptr, napi_default, kAsync},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}

}  // namespace glue
