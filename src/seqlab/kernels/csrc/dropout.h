// dropout_apply: inverted dropout y = x ⊙ m, m_i = [u_i >= p] / (1 - p), with the keep decisions u_i
// drawn from a counter-based generator instead of torch's CPU bernoulli_.
//
// Part of the compiled CPU recurrence's library (the map of the files is at the top of
// recurrent.cpp). Why: torch draws CPU dropout masks one mt19937 number per value, about 10 ns
// each, which in a 1M-parameter language model is a tenth of an LSTM training step and half of
// a transformer's (its attention weights are B*heads*T*T values per layer). Here each value is a
// 32-bit hash of its index, a loop the compiler vectorises, so a mask costs a fraction of a
// nanosecond per value and is the same for any number of threads. The mask is never stored:
// the product is formed in the same pass, and the backward (dropout is linear, dx = g ⊙ m) runs
// this op again on g with the same seed.
//
//   key_b = splitmix64(seed + (b + 1) γ)          one per block b of 2^20 values
//   u_i   = hash32(lo(key_b) + i mod 2^20) ^ hi(key_b)     ... in [0, 2^32)
//   keep  = u_i >= t, t = round(p 2^32), so P(keep) = q = 1 - t / 2^32 exactly,
//   y_i   = x_i · (keep ? 1/q : 0): E[y_i] = x_i, as torch's dropout scales by 1 / (1 - p).
//
// i counts x's values in row-major order of its shape (whatever its strides), so a value's
// decision depends on its position, the seed and p only. The product is formed in float (double
// for double) and rounded once to x's dtype: a bfloat16 x gets round(x_i / q), as torch's own
// dropout gives, not x_i times a rounded 1/q (which would bias E[y]).
//
// The seed is drawn by the caller from torch's generator (seqlab/nn/dropout.py), so
// torch.manual_seed and a checkpoint's saved RNG state fix the masks as they fix torch's own.
#pragma once

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace seqlab {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // γ: splitmix64's increment

// Steele, Lea & Flood (2014), "Fast splittable pseudorandom number generators": the output
// function of SplitMix64 on state z (passes BigCrush on consecutive states).
SEQLAB_INLINE uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Wellons's "lowbias32" (the hash prospector): a 32-bit integer hash whose output bits each flip
// with probability ~1/2 when any input bit flips, so consecutive counters give independent-looking
// values. Only 32-bit multiplies and shifts: one vector instruction per 8 or 16 values.
SEQLAB_INLINE uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x;
}

constexpr int64_t kMaskBlock = int64_t(1) << 20;  // values per key_b

// bfloat16 <-> float by bits, so the loop below stays vectorisable: bfloat16 is float's top half,
// and rounding to nearest even is c10::BFloat16's (a NaN stays a quiet NaN)
SEQLAB_INLINE float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

SEQLAB_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return f != f ? uint16_t(0x7FC0) : rounded;
}

// Storage S holds values computed in C (float for float and bfloat16, double for double).
template <typename S, typename C>
struct Values {
  static SEQLAB_INLINE C load(S v) { return static_cast<C>(v); }
  static SEQLAB_INLINE S store(C v) { return static_cast<S>(v); }
};
template <>
struct Values<uint16_t, float> {
  static SEQLAB_INLINE float load(uint16_t v) { return bf16_to_float(v); }
  static SEQLAB_INLINE uint16_t store(float v) { return float_to_bf16(v); }
};

template <typename S, typename C>
void apply_dropout(const S* x, S* y, int64_t n, uint64_t seed, uint32_t threshold, C scale) {
  const int64_t blocks = (n + kMaskBlock - 1) / kMaskBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint64_t key = splitmix64(seed + static_cast<uint64_t>(b + 1) * kGolden);
      const uint32_t lo = static_cast<uint32_t>(key), hi = static_cast<uint32_t>(key >> 32);
      const S* in = x + b * kMaskBlock;
      S* out = y + b * kMaskBlock;
      const uint32_t len = static_cast<uint32_t>(std::min(kMaskBlock, n - b * kMaskBlock));
      // local copies: through the lambda's references the stores to out might alias them, and
      // the loop would reload them every value instead of vectorising
      const uint32_t t = threshold;
      const C s = scale;
      for (uint32_t i = 0; i < len; ++i) {  // vectorised: no branch, 32-bit lanes
        // x · 0 for a dropped value, as torch's x * mask: a NaN or inf input still gives NaN
        const C m = (hash32(lo + i) ^ hi) >= t ? s : C(0);
        out[i] = Values<S, C>::store(Values<S, C>::load(in[i]) * m);
      }
    }
  });
}

// x: float, double or bfloat16 (CPU), any strides; p in [0, 1); seed any int64. Returns y,
// contiguous, of x's shape and dtype.
Tensor dropout_apply(const Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_apply: expected 0 <= p < 1, got p = ", p);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
              "dropout_apply: expected a float32, float64 or bfloat16 tensor, got ", x.scalar_type());
  // t = round(p 2^32) <= 2^32 - 1 (a p within 2^-33 of 1 drops all but 1 in 2^32)
  const uint32_t threshold = static_cast<uint32_t>(std::min(std::llround(std::ldexp(p, 32)), (1LL << 32) - 1));
  const double keep = 1.0 - std::ldexp(static_cast<double>(threshold), -32);
  const Tensor in = x.contiguous();
  Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const auto s = static_cast<uint64_t>(seed);
  if (x.scalar_type() == at::kBFloat16) {
    apply_dropout<uint16_t, float>(reinterpret_cast<const uint16_t*>(in.data_ptr<at::BFloat16>()),
                                   reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), y.numel(), s, threshold,
                                   static_cast<float>(1.0 / keep));
  } else if (x.scalar_type() == at::kFloat) {
    apply_dropout<float, float>(in.data_ptr<float>(), y.data_ptr<float>(), y.numel(), s, threshold,
                                static_cast<float>(1.0 / keep));
  } else {
    apply_dropout<double, double>(in.data_ptr<double>(), y.data_ptr<double>(), y.numel(), s, threshold, 1.0 / keep);
  }
  return y;
}

}  // namespace
}  // namespace seqlab
