// dropout_mask: the scaled keep mask of inverted dropout, m_i = [u_i >= p] / (1 - p), drawn from a
// counter-based generator instead of torch's CPU bernoulli_.
//
// Part of the compiled CPU recurrence's library (the map of the files is at the top of
// recurrent.cpp). Why: torch draws CPU dropout masks one mt19937 number per value, about 10 ns
// each, which in a 1M-parameter language model is a tenth of an LSTM training step and half of
// a transformer's (its attention weights are B*heads*T*T values per layer). Here each value is a
// 32-bit hash of its index, a loop the compiler vectorises, so a mask costs a fraction of a
// nanosecond per value and is the same for any number of threads.
//
//   key_b = splitmix64(seed + (b + 1) γ)          one per block b of 2^20 values
//   u_i   = hash32(lo(key_b) + i mod 2^20) ^ hi(key_b)     ... in [0, 2^32)
//   keep  = u_i >= t, t = round(p 2^32), so P(keep) = q = 1 - t / 2^32 exactly,
//   m_i   = keep / q: E[m_i] = 1, as torch's dropout scales by 1 / (1 - p).
//
// The seed is drawn by the caller from torch's generator (seqlab/nn/dropout.py), so
// torch.manual_seed and a checkpoint's saved RNG state fix the masks as they fix torch's own.
#pragma once

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

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

template <typename T>
void fill_dropout_mask(T* m, int64_t n, uint64_t seed, uint32_t threshold, T scale) {
  const int64_t blocks = (n + kMaskBlock - 1) / kMaskBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint64_t key = splitmix64(seed + static_cast<uint64_t>(b + 1) * kGolden);
      const uint32_t lo = static_cast<uint32_t>(key), hi = static_cast<uint32_t>(key >> 32);
      T* out = m + b * kMaskBlock;
      const uint32_t len = static_cast<uint32_t>(std::min(kMaskBlock, n - b * kMaskBlock));
      // local copies: through the lambda's references the stores to out might alias them, and
      // the loop would reload them every value instead of vectorising
      const uint32_t t = threshold;
      const T s = scale;
      for (uint32_t i = 0; i < len; ++i) {  // vectorised: no branch, 32-bit lanes
        out[i] = (hash32(lo + i) ^ hi) >= t ? s : T(0);
      }
    }
  });
}

// like: the tensor whose shape, dtype and device the mask takes; p in [0, 1); seed any int64.
Tensor dropout_mask(const Tensor& like, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_mask: expected 0 <= p < 1, got p = ", p);
  // t = round(p 2^32) <= 2^32 - 1 (a p within 2^-33 of 1 drops all but 1 in 2^32)
  const uint32_t threshold = static_cast<uint32_t>(std::min(std::llround(std::ldexp(p, 32)), (1LL << 32) - 1));
  const double keep = 1.0 - std::ldexp(static_cast<double>(threshold), -32);
  Tensor m = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "dropout_mask", [&] {
    fill_dropout_mask<scalar_t>(m.data_ptr<scalar_t>(), m.numel(), static_cast<uint64_t>(seed), threshold,
                                static_cast<scalar_t>(1.0 / keep));
  });
  return m;
}

}  // namespace
}  // namespace seqlab
