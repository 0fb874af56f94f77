// One Gemma 4 decoder layer on the CPU, the arithmetic of the tfjs graph
// (src/engine/graph/gemma4.ts): norms multiply by w; q and k normed per head
// then rotated, v normed without a weight (keys doubling as values where
// kEqV); unscaled scores; a KV-shared layer attends over its source layer's
// cache and that layer's K/V of this call; the dense GeGLU MLP and, beside
// it, the experts (each chosen expert multiplies only its rows); the gated
// per-layer input; the layer scalar. One call per layer, as layer.cc, whose
// attention and cache write it shares.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace gemma {
namespace {

// This thread's buffers, slot `which`, grown on demand and kept (scratch() holds slots 0-3 for the matmuls and layer.cc).
float* buffer(int which, size_t floats) {
  thread_local std::vector<float> buffers[10];
  std::vector<float>& b = buffers[which];
  if (b.size() < floats) b.resize(floats);
  return b.data();
}

// A weightless norm's w: ones.
const float* ones(int64_t n) {
  thread_local std::vector<float> w;
  if (static_cast<int64_t>(w.size()) < n) w.assign(static_cast<size_t>(n), 1.0f);
  return w.data();
}

float geluTanh(float x) {
  const float c2 = 2.0f * 0.7978845608028654f;
  return x / (1.0f + std::exp(-(c2 * x + c2 * 0.044715f * x * x * x)));
}

// The MoE block on the residual h [M, H], into out [M, H]: router softmax on
// the weightless norm of h, the top k renormalized and scaled per expert; each
// chosen expert runs on its rows only. Returns the experts run.
int64_t experts(const Gemma4Shape& s, const Gemma4Weights& w, const float* h, int64_t M, float* out) {
  const int64_t H = s.hidden, E = s.experts, Im = s.expertIntermediate;
  float* normed = buffer(4, static_cast<size_t>(M * H));
  float* probs = buffer(5, static_cast<size_t>(M * E));
  std::memcpy(normed, h, M * H * sizeof(float));
  rmsNorm(normed, M, H, ones(H), s.eps);
  multiply(*w.router, normed, M, probs);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(E));
  std::vector<std::vector<float>> weights(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t r = 0; r < M; r++) {
    float* p = probs + r * E;
    const float best = *std::max_element(p, p + E);
    float sum = 0;
    for (int64_t e = 0; e < E; e++) sum += (p[e] = std::exp(p[e] - best));
    for (int64_t e = 0; e < E; e++) p[e] /= sum;
    for (int64_t e = 0; e < E; e++) order[e] = e;
    // Largest first, ties to the lower expert (as the graph's sort).
    std::stable_sort(order.begin(), order.end(), [p](int64_t a, int64_t b) { return p[a] > p[b]; });
    float chosen = 0;
    for (int64_t i = 0; i < s.topK; i++) chosen += p[order[i]];
    for (int64_t i = 0; i < s.topK; i++) {
      const int64_t e = order[i];
      rows[e].push_back(r);
      weights[e].push_back(p[e] / chosen * w.expertScale[e]);
    }
  }
  // The expert input: the norm of h with pre_feedforward_layernorm_2.
  std::memcpy(normed, h, M * H * sizeof(float));
  rmsNorm(normed, M, H, w.preNorm2, s.eps);
  std::memset(out, 0, M * H * sizeof(float));
  int64_t run = 0;
  for (int64_t e = 0; e < E; e++) {
    const int64_t n = static_cast<int64_t>(rows[e].size());
    if (n == 0) continue;
    float* xe = buffer(6, static_cast<size_t>(n * H));
    float* gu = buffer(7, static_cast<size_t>(n * 2 * Im));
    float* act = buffer(8, static_cast<size_t>(n * Im));
    float* ye = buffer(9, static_cast<size_t>(n * H));
    for (int64_t i = 0; i < n; i++) std::memcpy(xe + i * H, normed + rows[e][i] * H, H * sizeof(float));
    multiply(*w.experts[2 * e], xe, n, gu);
    geglu(gu, n, Im, act);
    multiply(*w.experts[2 * e + 1], act, n, ye);
    for (int64_t i = 0; i < n; i++) axpy(weights[e][i], ye + i * H, out + rows[e][i] * H, H);
    run++;
  }
  return run;
}

}  // namespace

int64_t gemma4Layer(const Gemma4Shape& s, const Gemma4Weights& w, float* x, int64_t B, int64_t T, const float* cos, const float* sin, float* kv,
                    const float* pli, const RowCache* cache) {
  const int64_t M = B * T, H = s.hidden, hd = s.headDim, nq = s.heads, nkv = s.kvHeads, I = s.intermediate;
  const int64_t kvw = nkv * hd;
  float* xn = buffer(0, static_cast<size_t>(M * std::max(H, nq * hd)));
  float* q = buffer(1, static_cast<size_t>(M * nq * hd));
  float* y = buffer(2, static_cast<size_t>(M * std::max(H, 2 * kvw)));
  // Gate/up then the activation; before them the call's K/V where kv is null; after them the per-layer gate.
  float* wide = buffer(3, static_cast<size_t>(M * std::max({3 * I, 2 * kvw, s.perLayer})));

  std::memcpy(xn, x, M * H * sizeof(float));
  rmsNorm(xn, M, H, w.inputNorm, s.eps);
  multiply(*w.q, xn, M, q);
  for (int64_t r = 0; r < M; r++)
    for (int64_t h = 0; h < nq; h++) {
      float* v = q + (r * nq + h) * hd;
      rmsNorm(v, 1, hd, w.qNorm, s.eps);
      rope(v, cos + r * hd, sin + r * hd, hd);
    }
  if (s.ownKv) {
    // The raw projection (k, then v unless keys are the values) in y, normed into kv as [k heads, v heads] per token.
    if (!kv) kv = wide;
    const int64_t rawW = (s.kEqV ? 1 : 2) * kvw;
    multiply(*w.kv, xn, M, y);
    for (int64_t r = 0; r < M; r++) {
      const float* raw = y + r * rawW;
      float* k = kv + r * 2 * kvw;
      std::memcpy(k, raw, kvw * sizeof(float));
      std::memcpy(k + kvw, s.kEqV ? raw : raw + kvw, kvw * sizeof(float));
      for (int64_t h = 0; h < nkv; h++) {
        rmsNorm(k + h * hd, 1, hd, w.kNorm, s.eps);
        rope(k + h * hd, cos + r * hd, sin + r * hd, hd);
        rmsNorm(k + kvw + h * hd, 1, hd, ones(hd), s.eps);
      }
    }
  }
  float* attn = xn;  // the normed input is spent
  attend({q, nq * hd, kv, kv + kvw, 2 * kvw, nq, nkv, hd, 0.0f, s.window}, B, T, cache, attn);
  if (s.ownKv && s.writeCache) writeKv(nkv, hd, kv, B, T, cache);
  multiply(*w.o, attn, M, y);
  addNormed(x, y, M, H, w.postAttnNorm, s.eps);

  // Dense MLP into y; beside it the experts (routed on the residual x, here h).
  float* gu = wide;
  float* act = wide + M * 2 * I;
  std::memcpy(xn, x, M * H * sizeof(float));
  rmsNorm(xn, M, H, w.preFfwNorm, s.eps);
  multiply(*w.gateUp, xn, M, gu);
  geglu(gu, M, I, act);
  multiply(*w.down, act, M, y);
  int64_t run = 0;
  if (w.router) {
    rmsNorm(y, M, H, w.postNorm1, s.eps);
    run = experts(s, w, x, M, xn);
    addNormed(y, xn, M, H, w.postNorm2, s.eps);
  }
  addNormed(x, y, M, H, w.postFfwNorm, s.eps);

  // Per-layer input: gelu(x @ gate) * pli, projected back, normed, added.
  if (w.pleGate && pli) {
    const int64_t P = s.perLayer;
    float* g = wide;
    multiply(*w.pleGate, x, M, g);
    for (int64_t i = 0; i < M * P; i++) g[i] = geluTanh(g[i]) * pli[i];
    multiply(*w.pleProj, g, M, y);
    addNormed(x, y, M, H, w.plePostNorm, s.eps);
  }
  for (int64_t i = 0; i < M * H; i++) x[i] *= s.layerScalar;
  return run;
}

}  // namespace gemma
