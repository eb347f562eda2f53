// The compiled CPU recurrence: the time loops of forward and backward for the Elman RNN,
// the GRU and the LSTM, with every variant of the kernel contract (kernels/common.py):
// LayerNorm (LN_ih, LN_hh, LN_c), recurrent dropout (rec), zoneout and padding (keep,
// keep_c), output masks (out) and the LSTM projection (w_hr).
//
// It is the same algorithm as kernels/fused.py (read its docstring first), moved to C++ so
// that a step costs its two matrix products plus ONE pass over the B*G*H pointwise values
// instead of a dozen dispatcher calls:
//
//   forward   xp = X W_ih^T                              one product over all T*B rows
//             per step: W_hh (m ⊙ h_{t-1})               BLAS or brgemm on raw pointers (StepLinear)
//                       LN_ih, gates, c_t, h_t, masks, LN_hh, LN_c   one loop per batch row
//   backward  per step: da_t from the saved gates, LN_hh', LN_c', LN_ih'   one loop per row
//                       dh_{t-1} = (dhp_t W_hh) ⊙ m + …   BLAS (StepLinear)
//             after the loop: dW_ih, dW_hh, dW_hr, biases, dx, each ONE product or reduction
//             over all T*B rows; the LN weights' gradients are summed in the loop, where the
//             normalised rows are at hand (no second pass over T*B rows to rebuild them).
//
// Pointwise rows are written as short loops over contiguous memory so that the compiler
// vectorises them (-O3); float uses an exp that vectorises (exp_f, pointwise.h), double std::exp.
// tanh(v) = 2σ(2v) - 1, like the fused path. The products use BLAS or oneDNN threads; the
// pointwise rows of a step are split over torch's threads when there are enough of them
// (for_rows), except in a backward that sums LayerNorm weight gradients over the rows.
//
// The ops are registered with the dispatcher (TORCH_LIBRARY) rather than through pybind11:
// the translation unit then needs no Python headers and builds in about half the time, and
// the ops are visible to torch.library (see kernels/compiled.py).
//
// Symbols (as common.py): T steps, B batch, I input size, H hidden, P = proj or H, G gates
// (4 LSTM i|f|g|o, 3 GRU r|z|n, 1 RNN), GH = G*H. All tensors are CPU, one dtype
// (float32 or float64); compiled.py checks shapes, dtypes and devices before calling.
//
// The files (one translation unit: this file includes the others; each header says its part):
//
//   common.h        tensor aliases, cell ids (as kernels/common.py), LN_EPS, optional-tensor helpers
//   pointwise.h     exp / σ / tanh, LayerNorm rows and their backward, lerp, step masks, for_rows
//   cells.h         the per-cell step functions (one row, forward and backward) for the LSTM,
//                   GRU and Elman RNN, as fused.py's _lstm_* / _gru_* / _rnn_*
//   buffer_pool.h   the loop's private pool of large buffers (loop_buffer)
//   products.h      matrix products and their policy: MKL, direct BLAS, oneDNN linear, brgemm,
//                   StepLinear (one product of the time loop) and the switches tests move
//   forward.h       rnn_forward: one layer, one direction, every variant of the contract
//   backward.h      rnn_backward: the reversed loop, then the weight gradients in one product each
//   minrnn_scan.h   min_forward / min_backward: the minGRU / minLSTM sequential scan
//   dropout.h       dropout_apply: inverted dropout, masks from a counter-based generator
//   recurrent.cpp   this file: the build stamp and the op registration

#include "backward.h"
#include "buffer_pool.h"
#include "cells.h"
#include "common.h"
#include "dropout.h"
#include "forward.h"
#include "minrnn_scan.h"
#include "pointwise.h"
#include "products.h"

#include <torch/library.h>

#include <string>

namespace seqlab {
namespace {

// What compiled.py stamps this build with (a hash of the sources, flags, torch and Python), so
// that a library left on disk by another build can be told apart after loading it
#ifndef SEQLAB_BUILD_STAMP
#define SEQLAB_BUILD_STAMP unstamped
#endif
#define SEQLAB_STR2(x) #x
#define SEQLAB_STR(x) SEQLAB_STR2(x)
std::string build_stamp() { return SEQLAB_STR(SEQLAB_BUILD_STAMP); }

}  // namespace

TORCH_LIBRARY(seqlab_compiled, m) {
  m.def("rnn_forward(int cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? w_hr, Tensor? ln_ih_w, Tensor? ln_ih_b, Tensor? ln_hh_w, Tensor? ln_hh_b, "
        "Tensor? ln_c_w, Tensor? ln_c_b, Tensor? keep, Tensor? keep_c, Tensor? out, Tensor? rec, bool save) "
        "-> Tensor[]");
  m.def("rnn_backward(int cell, Tensor?[] saved, Tensor x, Tensor h0, Tensor? c0, Tensor?[] weights, "
        "Tensor?[] masks, Tensor dy, Tensor? dh_T, Tensor? dc_T, int[] need) -> Tensor[]");
  m.def("min_forward(int cell, Tensor x, Tensor w, Tensor? b, Tensor h0) -> Tensor[]");
  m.def("min_backward(int cell, Tensor x, Tensor w, Tensor pre, Tensor h, Tensor h0, Tensor dh, Tensor? dh_n, "
        "int[] need) -> Tensor[]");
  m.def("dropout_apply(Tensor x, float p, int seed) -> Tensor");
  m.def("set_gemm_threshold(int n) -> int", &set_gemm_threshold);
  m.def("has_onednn() -> bool", &has_onednn);
  m.def("set_direct_blas(bool on) -> bool", &set_direct_blas);
  m.def("has_direct_blas() -> bool", &has_direct_blas);
  m.def("set_brgemm(int mode) -> int", &set_brgemm);
  m.def("build_stamp() -> str", &build_stamp);
  m.def("brgemm_auto() -> bool", &brgemm_auto);
}

TORCH_LIBRARY_IMPL(seqlab_compiled, CPU, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
  m.impl("min_forward", &min_forward);
  m.impl("min_backward", &min_backward);
  m.impl("dropout_apply", &dropout_apply);
}

}  // namespace seqlab
