// The per-cell step functions: one batch row of one step, forward and backward, for the LSTM,
// the GRU and the Elman RNN. They mirror fused.py's _lstm_* / _gru_* / _rnn_* (which do the same
// over all rows at once) and use the symbols of kernels/common.py.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
//
// What is common to the cells stays in the loops of forward.h and backward.h: the input and
// recurrent products, LN_ih and LN_hh (and their backward), recurrent dropout, the zoneout and
// padding of h, and dh_{t-1}. These functions take a row whose pre-activations are complete and
// do the cell's own equations; they are forced inline (SEQLAB_INLINE) so that each loop compiles
// to the same code as if the equations were written in it.
#pragma once

#include "pointwise.h"

#include <cstring>

namespace seqlab {
namespace {

// ---- forward ----------------------------------------------------------------------------

// LSTM. a (4H) = [a_i | a_f | a_g | a_o] on entry, the gates i, f, g, o after (saved for the
// backward); c_prev (H) = c_{t-1}.
//   c̃_t = f ⊙ c_{t-1} + i ⊙ g        -> c_tilde (H)
//   τ   = tanh(LN_c(c̃_t))             -> tau (H)     (LN_c when ln_c)
//   q   = o ⊙ τ                       -> q (H)       (then W_hr, or keep, or h_t itself)
//   c_t = kc ⊙ c_{t-1} + (1 - kc) ⊙ c̃_t -> c_t (H)   only with a zoneout / padding mask kc (else
//                                                     c_tilde is c_t)
template <typename T>
SEQLAB_INLINE void lstm_forward_row(T* a, const T* c_prev, T* c_tilde, T* tau, T* q, bool ln_c, const T* lnc_w,
                                    const T* lnc_b, T* c_t, const T* kc, int64_t kcs, int64_t H) {
  T *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
  sigmoid_row(a, 2 * H);
  tanh_row(g, H);
  sigmoid_row(o, H);
  for (int64_t j = 0; j < H; ++j) c_tilde[j] = f[j] * c_prev[j] + i[j] * g[j];
  if (ln_c) ln_apply<T, false>(tau, c_tilde, H, lnc_w, lnc_b);
  else std::memcpy(tau, c_tilde, H * sizeof(T));
  tanh_row(tau, H);
  for (int64_t j = 0; j < H; ++j) q[j] = o[j] * tau[j];
  if (kc) lerp_row(c_t, c_tilde, c_prev, kc, kcs, H);
}

// GRU. a (3H) = xw_t = [xw_r | xw_z | xw_n] on entry, [r | z | n] after; hw (3H) = LN_hh(W_hh h_in)
// + b_hh, whose n block r multiplies (the GRU keeps b_hh there, torch.nn's convention).
//   r, z = σ(xw_rz + hw_rz);  n = tanh(xw_n + r ⊙ hw_n)
//   h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}   -> h_tilde (H);  hw_n -> hw_n (H), saved for the backward
template <typename T>
SEQLAB_INLINE void gru_forward_row(T* a, const T* hw, const T* h_prev, T* hw_n, T* h_tilde, int64_t H) {
  for (int64_t j = 0; j < 2 * H; ++j) a[j] += hw[j];
  sigmoid_row(a, 2 * H);
  T *r = a, *z = a + H, *n = a + 2 * H;
  const T* hn = hw + 2 * H;
  for (int64_t j = 0; j < H; ++j) n[j] += r[j] * hn[j];
  tanh_row(n, H);
  std::memcpy(hw_n, hn, H * sizeof(T));
  lerp_row(h_tilde, n, h_prev, z, 1, H);
}

// Elman RNN. a (H) = xw_t + hw_t on entry, h̃_t = tanh(a) or relu(a) after.
template <typename T>
SEQLAB_INLINE void rnn_forward_row(T* a, bool relu, int64_t H) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) a[j] = a[j] > T(0) ? a[j] : T(0);
  } else {
    tanh_row(a, H);
  }
}

// ---- backward ---------------------------------------------------------------------------

// LSTM. a (4H): the saved gates i, f, g, o; dq (H) = dL/dq (W_hr^T dh̃ under the projection,
// else dh̃); tau (H), c_tilde (H, read under LN_c), c_prev (H) as saved; dc (H) = dL/dc_t on
// entry, dL/dc_{t-1} after; d (4H) <- dL/da; dct (H), dtau (H, LN_c only) are scratch.
//   dτ' = dq ⊙ o ⊙ (1 - τ²), then LN_c' (its weight and bias gradients summed into dw_c, db_c)
//   da_o = dq ⊙ τ ⊙ o(1 - o)
//   dc̃ = dτ'' + (1 - kc) ⊙ dc_t
//   da_i = dc̃ g i(1-i),  da_f = dc̃ c_{t-1} f(1-f),  da_g = dc̃ i (1-g²)
//   dc_{t-1} = f ⊙ dc̃ + kc ⊙ dc_t
template <typename T>
SEQLAB_INLINE void lstm_backward_row(const T* a, const T* dq, const T* tau, const T* c_prev, T* d, T* dct,
                                     bool ln_c, T* dtau, const T* c_tilde, const T* lnc_w, double* dw_c,
                                     double* db_c, T* dc, const T* kc, int64_t kcs, int64_t H) {
  const T *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
  T *d_i = d, *d_f = d + H, *d_g = d + 2 * H, *d_o = d + 3 * H;
  T* dtp = ln_c ? dtau : dct;
  for (int64_t j = 0; j < H; ++j) {
    dtp[j] = dq[j] * o[j] * (T(1) - tau[j] * tau[j]);
    d_o[j] = dq[j] * tau[j] * o[j] * (T(1) - o[j]);
  }
  if (ln_c) ln_backward_row(dct, dtp, c_tilde, H, lnc_w, dw_c, db_c);
  for (int64_t j = 0; j < H; ++j) {
    const T kk = kc ? kc[j * kcs] : T(0);
    const T dctj = dct[j] + (T(1) - kk) * dc[j];  // dc̃_t
    d_i[j] = dctj * g[j] * i[j] * (T(1) - i[j]);
    d_f[j] = dctj * c_prev[j] * f[j] * (T(1) - f[j]);
    d_g[j] = dctj * i[j] * (T(1) - g[j] * g[j]);
    dc[j] = f[j] * dctj + kk * dc[j];  // dc_{t-1}
  }
}

// GRU. a (3H): the saved r, z, n; dh (H) = dL/dh̃_t; hw_n (H), h_prev (H) as saved.
//   dn' = dh̃ (1-z)(1-n²);  dr' = dn' hw_n r(1-r);  dz' = dh̃ (h_{t-1} - n) z(1-z)
//   d (3H) <- dL/dxw = [dr' | dz' | dn'];  e (3H) <- dL/dhw = [dr' | dz' | dn' ⊙ r]
//   direct (H) <- z ⊙ dh̃, the path to h_{t-1} that does not go through W_hh
template <typename T>
SEQLAB_INLINE void gru_backward_row(const T* a, const T* dh, const T* hw_n, const T* h_prev, T* d, T* e,
                                    T* direct, int64_t H) {
  const T *r = a, *z = a + H, *n = a + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T dn = dh[j] * (T(1) - z[j]) * (T(1) - n[j] * n[j]);  // dn'
    const T drr = dn * hw_n[j] * r[j] * (T(1) - r[j]);
    const T dzz = dh[j] * (h_prev[j] - n[j]) * z[j] * (T(1) - z[j]);
    d[j] = drr; d[H + j] = dzz; d[2 * H + j] = dn;
    e[j] = drr; e[H + j] = dzz; e[2 * H + j] = dn * r[j];
    direct[j] = z[j] * dh[j];
  }
}

// Elman RNN. h_tilde (H): the saved h̃_t; dh (H) = dL/dh̃_t; d (H) <- dL/da = dh̃ ⊙ act'(h̃)
// (1 - h̃² for tanh; 1 where h̃ > 0 for relu).
template <typename T>
SEQLAB_INLINE void rnn_backward_row(const T* h_tilde, const T* dh, T* d, bool relu, int64_t H) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) d[j] = h_tilde[j] > T(0) ? dh[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) d[j] = dh[j] * (T(1) - h_tilde[j] * h_tilde[j]);
  }
}

}  // namespace
}  // namespace seqlab
