// Shared names: tensor aliases, the cell ids, LN_EPS, the inlining macro, optional-tensor helpers.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace seqlab {
namespace {

using at::Tensor;
using OptT = c10::optional<Tensor>;

constexpr double LN_EPS = 1e-5;  // common.LN_EPS
enum Cell : int64_t { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

// Loops of these functions vectorise only when every call is inlined; in the larger loop bodies
// (minLSTM's backward) GCC's size heuristics stopped inlining them, leaving the loop scalar.
#if defined(__GNUC__)
#define SEQLAB_INLINE inline __attribute__((always_inline))
#else
#define SEQLAB_INLINE inline
#endif

template <typename T>
const T* ptr_or_null(const OptT& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

bool given(const OptT& t) { return t.has_value() && t->defined(); }

Tensor contiguous_or_undef(const OptT& t) { return given(t) ? t->contiguous() : Tensor(); }

OptT opt(const Tensor& t) { return t.defined() ? OptT(t) : OptT(); }

Tensor add_opt(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

}  // namespace
}  // namespace seqlab
