// Pointwise math: exp, σ, tanh, LayerNorm rows and their backward, lerp, step masks, rows over threads.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace seqlab {
namespace {

// ---------------------------------------------------------------------------------------
// Scalar math. exp_f: Cephes' expf (range reduction to [-ln2/2, ln2/2], degree-6
// polynomial, 2^n by exponent bits): about 1 ulp, and branch-free so loops of it vectorise,
// which glibc's expf does not. Inputs are clamped to where expf is finite and normal.

SEQLAB_INLINE float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

SEQLAB_INLINE float exp_(float x) { return exp_f(x); }
inline double exp_(double x) { return std::exp(x); }

template <typename T>
SEQLAB_INLINE T sigmoid_(T v) { return T(1) / (T(1) + exp_(-v)); }

template <typename T>
inline T tanh_(T v) { return T(2) / (T(1) + exp_(T(-2) * v)) - T(1); }  // 2σ(2v) - 1

// ---------------------------------------------------------------------------------------
// Row helpers: n contiguous values.

template <typename T>
void sigmoid_row(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = sigmoid_(p[j]);
}

template <typename T>
void tanh_row(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = tanh_(p[j]);
}

// Row reductions (the LayerNorm statistics and the sums of its backward) are plain loops that
// the compiler may reassociate, in these functions only (SEQLAB_REASSOCIATE). Without that, and
// without -ffast-math, it must keep one running sum in program order, which is scalar and bound
// by the add latency, and the LayerNorm rows become the largest cost of the LayerNorm LSTM's
// step after the products. Reassociated, the loop keeps a vector of partial sums and folds it in
// registers (partial sums in a local array would be folded through the stack). They
// accumulate in double, also for float rows (the widening vectorises too): float sums would
// change the rounding that the float32 tests measure against the reference. The backward's two
// sums share one pass. Another compiler runs the loops in order: slower, same contract.
#if defined(__clang__)
#define SEQLAB_REASSOCIATE
#define SEQLAB_REASSOCIATE_BODY _Pragma("clang fp reassociate(on)")
#elif defined(__GNUC__)
#define SEQLAB_REASSOCIATE __attribute__((optimize("associative-math", "no-signed-zeros")))
#define SEQLAB_REASSOCIATE_BODY
#else
#define SEQLAB_REASSOCIATE
#define SEQLAB_REASSOCIATE_BODY
#endif

// mean and rstd = (var + eps)^{-1/2} of v[0:n]: two passes (the variance of v - mean)
template <typename T>
SEQLAB_REASSOCIATE void ln_stats(const T* v, int64_t n, T& mean, T& rstd) {
  SEQLAB_REASSOCIATE_BODY
  double s = 0, q = 0;
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(v[j]);
  const double m = s / n;
  for (int64_t j = 0; j < n; ++j) {
    const double d = v[j] - m;
    q += d * d;
  }
  mean = static_cast<T>(m);
  rstd = static_cast<T>(1.0 / std::sqrt(q / n + LN_EPS));
}

// s1 = Σ dv̂ and s2 = Σ dv̂ ⊙ v̂ of one row in one pass, dv̂ = dout ⊙ w, v̂ = (v - m) r
template <typename T>
SEQLAB_REASSOCIATE void ln_backward_sums(const T* dout, const T* v, int64_t n, const T* w, T m, T r, double& s1,
                                         double& s2) {
  SEQLAB_REASSOCIATE_BODY
  double a = 0, b = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T g = dout[j] * w[j];
    a += static_cast<double>(g);
    b += static_cast<double>(g * ((v[j] - m) * r));
  }
  s1 = a;
  s2 = b;
}

// out[j] (+)= (v[j] - mean) rstd w[j] + b[j]   (b may be null: 0); the row's mean and rstd
// go to *mean_out / *rstd_out when given (the backward of LN_ih reads them)
template <typename T, bool ACCUMULATE>
void ln_apply(T* out, const T* v, int64_t n, const T* w, const T* b, T* mean_out = nullptr,
              T* rstd_out = nullptr) {
  T m, r;
  ln_stats(v, n, m, r);
  if (mean_out) { *mean_out = m; *rstd_out = r; }
  if (b) {
    for (int64_t j = 0; j < n; ++j) {
      const T y = (v[j] - m) * r * w[j] + b[j];
      if (ACCUMULATE) out[j] += y; else out[j] = y;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T y = (v[j] - m) * r * w[j];
      if (ACCUMULATE) out[j] += y; else out[j] = y;
    }
  }
}

// LayerNorm's backward for one row, exact with eps, from v and its (mean m, rstd r):
//   dv = r (dv̂ - mean(dv̂) - v̂ mean(dv̂ ⊙ v̂)),  v̂ = (v - m) r,  dv̂ = dout ⊙ w
// dv may alias dout. The weight and bias gradients, reductions over all T*B rows, are
// accumulated here while the row is in cache (dw += dout ⊙ v̂, db += dout; db only with dw;
// either may be null), in double: a float running sum over thousands of rows would lose digits.
template <typename T>
void ln_backward_row(T* dv, const T* dout, const T* v, int64_t n, const T* w, T m, T r, double* dw,
                     double* db) {
  double s1, s2;  // Σ dv̂, Σ dv̂ ⊙ v̂
  ln_backward_sums(dout, v, n, w, m, r, s1, s2);
  const T m1 = static_cast<T>(s1 / n), m2 = static_cast<T>(s2 / n);
  if (dw && db) {
    for (int64_t j = 0; j < n; ++j) {
      dw[j] += static_cast<double>(dout[j] * ((v[j] - m) * r));
      db[j] += static_cast<double>(dout[j]);
    }
  } else if (dw) {
    for (int64_t j = 0; j < n; ++j) dw[j] += static_cast<double>(dout[j] * ((v[j] - m) * r));
  }
  for (int64_t j = 0; j < n; ++j) dv[j] = r * (dout[j] * w[j] - m1 - (v[j] - m) * r * m2);
}

// the same, with the row's statistics recomputed from v (LN_hh and LN_c: saving them would
// cost more memory traffic than one vectorised pass over a row in cache)
template <typename T>
void ln_backward_row(T* dv, const T* dout, const T* v, int64_t n, const T* w, double* dw, double* db) {
  T m, r;
  ln_stats(v, n, m, r);
  ln_backward_row(dv, dout, v, n, w, m, r, dw, db);
}

// dst = a + k ⊙ (prev - a) = (1 - k) ⊙ a + k ⊙ prev, with k a row of n values or one
// value broadcast (ks = 0: the (T, B, 1) masks of eval-mode zoneout and padding)
template <typename T>
void lerp_row(T* dst, const T* a, const T* prev, const T* k, int64_t ks, int64_t n) {
  if (ks == 0) {
    const T kk = k[0];
    for (int64_t j = 0; j < n; ++j) dst[j] = a[j] + kk * (prev[j] - a[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = a[j] + k[j] * (prev[j] - a[j]);
  }
}

// A (T, B, n) or (T, B, 1) mask, contiguous: row(t, b) and its stride ks (0 when broadcast).
template <typename T>
struct StepMask {
  const T* p = nullptr;
  int64_t n = 0, B = 0;
  StepMask(const OptT& t, int64_t B_) : B(B_) {
    if (given(t)) { p = t->data_ptr<T>(); n = t->size(2); }
  }
  explicit operator bool() const { return p != nullptr; }
  const T* row(int64_t t, int64_t b) const { return p + (t * B + b) * n; }
  int64_t ks() const { return n == 1 ? 0 : 1; }
};

// The pointwise work of one step, f(b0, b1) over batch rows [b0, b1), on torch's intra-op threads
// when the step has enough of it: a chunk gets at least kRowValues values (rows x width), so
// that the fork and join (about 1-2 us) stay small against it; fewer rows run in this thread.
// Each row is computed alone, so the result does not depend on the thread count. Parallel only
// when the extension is built with OpenMP (compiled.py: Linux), which then shares torch's own
// runtime; else at::parallel_for runs f(0, B) here.
constexpr int64_t kRowValues = 16384;

template <typename F>
void for_rows(int64_t B, int64_t width, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, kRowValues / std::max<int64_t>(width, 1)), f);
}

}  // namespace
}  // namespace seqlab
