// rnn_backward: the reversed time loop, and the weight gradients after it.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "cells.h"
#include "forward.h"

#include <vector>

namespace seqlab {
namespace {

// ---------------------------------------------------------------------------------------
// backward
//
// saved: the N_SAVED tensors of the forward; x, h0, c0 and the 11 weights and 4 masks as
// given to the forward; dy (T, B, P), dh_T (B, P), dc_T (B, H) (each may be undefined:
// zero); need: 14 flags (0/1) for x, h0, c0 and the 11 weights in LayerWeights order.
// Returns the 14 gradients in that order, undefined where not needed.
//
//   dL/dh_t = dy_t ⊙ o_t + dL/dh_t from step t+1;   dh̃_t = (1 - k_t) ⊙ dL/dh_t
//   LSTM  dq = W_hr^T dh̃ (projection) or dh̃;  dτ' = dq ⊙ o ⊙ (1 - τ²), LN_c' on it
//         dc̃ = dτ'' + (1 - kc) ⊙ dc_t;  da_i = dc̃ g i(1-i), da_f = dc̃ c_{t-1} f(1-f),
//         da_g = dc̃ i (1-g²), da_o = dq τ o(1-o);  dc_{t-1} = f ⊙ dc̃ + kc ⊙ dc_t
//   GRU   dn' = dh̃ (1-z)(1-n²);  da = [dr', dz', dn'],  dhw = [dr', dz', dn' ⊙ r],
//         dr' = dn' hw_n r(1-r), dz' = dh̃ (h_{t-1} - n) z(1-z);  direct z ⊙ dh̃ to h_{t-1}
//   RNN   da = dh̃ ⊙ act'(h̃)
//   all   dhp = LN_hh'(dhw);  dh_{t-1} = (dhp W_hh) ⊙ m + k ⊙ dL/dh_t (+ GRU direct)
//
// One long function for the forward's reason (forward.h): the buffers and their raw pointers
// are shared by the loop and by the weight gradients after it; the cells' rows are in cells.h.

std::vector<Tensor> rnn_backward(
    int64_t cell, c10::List<c10::optional<Tensor>> saved_l, const Tensor& x, const Tensor& h0,
    const OptT& c0_, c10::List<c10::optional<Tensor>> w_l, c10::List<c10::optional<Tensor>> m_l,
    const Tensor& dy, const OptT& dh_T, const OptT& dc_T, c10::ArrayRef<int64_t> need) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in the forward
  auto get = [](const c10::List<c10::optional<Tensor>>& l, size_t k) -> Tensor {
    c10::optional<Tensor> v = l.get(k);
    return v.has_value() ? *v : Tensor();
  };
  TORCH_CHECK(saved_l.size() == N_SAVED && w_l.size() == 11 && m_l.size() == 4 && need.size() == 14,
              "seqlab compiled backward: expected 12 saved, 11 weights, 4 masks and 14 flags, got ",
              saved_l.size(), ", ", w_l.size(), ", ", m_l.size(), ", ", need.size());
  const Tensor h_all = get(saved_l, S_H_ALL), act = get(saved_l, S_ACT), c_all = get(saved_l, S_C_ALL);
  const Tensor tau = get(saved_l, S_TAU), q = get(saved_l, S_Q), hw_n = get(saved_l, S_HW_N);
  const Tensor h_in = get(saved_l, S_H_IN), hp = get(saved_l, S_HP), xp = get(saved_l, S_XP);
  const Tensor c_tilde = get(saved_l, S_C_TILDE).defined() ? get(saved_l, S_C_TILDE) : c_all;
  const Tensor w_ih = get(w_l, 0), w_hh = get(w_l, 1), w_hr = get(w_l, 4);
  const Tensor ln_ih_w = get(w_l, 5), ln_hh_w = get(w_l, 7), ln_c_w = get(w_l, 9);
  const Tensor keep = contiguous_or_undef(opt(get(m_l, 0))), keep_c = contiguous_or_undef(opt(get(m_l, 1)));
  const Tensor out = get(m_l, 2), rec = contiguous_or_undef(opt(get(m_l, 3)));
  enum { N_X = 0, N_H0, N_C0, N_W_IH, N_W_HH, N_B_IH, N_B_HH, N_W_HR, N_LN_IH_W, N_LN_IH_B, N_LN_HH_W, N_LN_HH_B,
         N_LN_C_W, N_LN_C_B };

  const int64_t T = act.size(0), B = act.size(1), GH = act.size(2), P = h_all.size(2), I = x.size(2);
  const bool lstm = cell == LSTM, gru = cell == GRU;
  const int64_t H = GH / (lstm ? 4 : gru ? 3 : 1);
  const bool proj = w_hr.defined(), ln_hh = ln_hh_w.defined(), ln_c = ln_c_w.defined();
  const auto opts = act.options();
  const Tensor h0c = h0.contiguous();
  const Tensor c0 = lstm ? c0_->contiguous() : Tensor();

  // dL/dh_t arriving from y_t; the loop adds what comes back from t+1 in place
  // owned and contiguous: the loop adds into it in place through raw pointers (dy is often a
  // strided view, e.g. the transposed output of a batch_first layer, and mul keeps its strides)
  Tensor dY = out.defined() ? at::mul(dy.contiguous(), out).contiguous() : dy.contiguous().clone();
  Tensor dh = given(dh_T) ? dh_T->contiguous().clone() : at::zeros({B, P}, opts);  // ends as dL/dh0
  Tensor dc = lstm ? (given(dc_T) ? dc_T->contiguous().clone() : at::zeros({B, H}, opts)) : Tensor();
  Tensor da = loop_buffer({T, B, GH}, opts);                    // dL/dxw_t
  Tensor dhw = gru ? loop_buffer({T, B, GH}, opts) : da;        // dL/dhw_t (after LN_hh and b_hh)
  Tensor dhp = ln_hh ? loop_buffer({T, B, GH}, opts) : dhw;     // dL/d(W_hh h_in)_t
  // dh̃_t per step: kept for dW_hr under the projection (dY itself holds it without keep)
  Tensor dht_all = keep.defined() ? (proj ? at::empty({T, B, P}, opts) : at::empty({1, B, P}, opts)) : dY;
  Tensor dq = (lstm && proj) ? at::empty({B, H}, opts) : Tensor();
  // dh = dhp W_hh is a linear with weight W_hh^T (P, GH), passed as a view (see StepLinear)
  const StepLinear lin_dh(w_hh.t(), B, T), lin_dq = (lstm && proj) ? StepLinear(w_hr.t(), B, T) : StepLinear();
  // dL/d LN_c(c̃_t) and dL/dc̃_t of a step, a row each (rows may run on different threads)
  Tensor dtau = ln_c ? at::empty({B, H}, opts) : Tensor();
  Tensor dct = lstm ? at::empty({B, H}, opts) : Tensor();
  // LN_ih's backward runs in the loop too, on each step's rows of da while they are in cache,
  // in place (da becomes dL/dxp) unless the recurrent side still reads da after the loop
  // (dhp is da without LN_hh)
  const bool ln_ih = ln_ih_w.defined();
  Tensor dxp = !ln_ih ? da : (dhp.is_same(da) ? loop_buffer({T, B, GH}, opts) : da);
  const Tensor xpc = ln_ih ? xp.contiguous() : Tensor();
  const Tensor x_mean = ln_ih ? get(saved_l, S_XP_MEAN).contiguous() : Tensor();
  const Tensor x_rstd = ln_ih ? get(saved_l, S_XP_RSTD).contiguous() : Tensor();
  // the LayerNorm weight and bias gradients, summed over all rows in the loop (double):
  // db_x = Σ da (b_ih, ln_ih_b: da is overwritten), dw_x = Σ da ⊙ x̂p, dw_h = Σ dhw ⊙ ĥp,
  // dw_c / db_c for LN_c
  std::vector<double> db_x(ln_ih ? GH : 0), dw_x(ln_ih ? GH : 0), dw_h(ln_hh ? GH : 0);
  std::vector<double> dw_c(ln_c ? H : 0), db_c(ln_c ? H : 0);
  Tensor direct = gru ? at::empty({B, H}, opts) : Tensor();      // z ⊙ dh̃ of the GRU

  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "seqlab_rnn_backward", [&] {
    using T_ = scalar_t;
    const StepMask<T_> mk(keep, B), mkc(keep_c, B);
    const T_* rec_p = rec.defined() ? rec.data_ptr<T_>() : nullptr;
    const T_* lnh_w = ln_hh ? ln_hh_w.data_ptr<T_>() : nullptr;
    const T_* lnc_w = ln_c ? ln_c_w.data_ptr<T_>() : nullptr;
    T_* dh_p = dh.data_ptr<T_>();
    T_* dct_p = lstm ? dct.data_ptr<T_>() : nullptr;
    T_* dtau_p = ln_c ? dtau.data_ptr<T_>() : nullptr;
    const T_* lnx_w = ln_ih ? ln_ih_w.data_ptr<T_>() : nullptr;
    const T_* xp_p = ln_ih ? xpc.data_ptr<T_>() : nullptr;
    const T_* xm_p = ln_ih ? x_mean.data_ptr<T_>() : nullptr;
    const T_* xr_p = ln_ih ? x_rstd.data_ptr<T_>() : nullptr;

    // the loop's tensors as raw pointers: step t's rows of a (T, B, n) buffer start at t * B * n
    auto ptr = [](const Tensor& v) { return v.defined() ? v.data_ptr<T_>() : nullptr; };
    const T_* h0_p = h0c.data_ptr<T_>();
    const T_* c0_p = ptr(c0);
    const T_ *act_p = act.data_ptr<T_>(), *h_all_p = h_all.data_ptr<T_>(), *c_all_p = ptr(c_all);
    const T_ *tau_p = ptr(tau), *c_tilde_p = ptr(c_tilde), *hw_n_p = ptr(hw_n), *hp_p = ptr(hp);
    T_ *dY_p = dY.data_ptr<T_>(), *dht_all_p = dht_all.data_ptr<T_>(), *da_p = da.data_ptr<T_>();
    T_ *dhw_p = dhw.data_ptr<T_>(), *dhp_p = dhp.data_ptr<T_>(), *dxp_p = dxp.data_ptr<T_>(), *dq_p0 = ptr(dq);
    T_ *dc_p = ptr(dc), *dir = ptr(direct);
    // a step's rows on torch's threads, as in the forward, unless a LayerNorm weight gradient
    // (a sum over rows) is accumulated in them
    auto step_rows = [&](const auto& f) {
      if (ln_hh || ln_c) f(int64_t(0), B);
      else for_rows(B, GH, f);
    };

    for (int64_t t = T - 1; t >= 0; --t) {
      // dL/dh_t = from y_t + from step t+1
      T_* dh_t = dY_p + t * B * P;
      for (int64_t k = 0; k < B * P; ++k) dh_t[k] += dh_p[k];
      // dh̃_t = (1 - k_t) ⊙ dL/dh_t
      const T_* dht_p = dh_t;
      if (mk) {
        T_* d = dht_all_p + (proj ? t : 0) * B * P;
        dht_p = d;
        for (int64_t b = 0; b < B; ++b) {
          const T_* k = mk.row(t, b);
          const int64_t ks = mk.ks();
          for (int64_t j = 0; j < P; ++j) d[b * P + j] = (T_(1) - k[j * ks]) * dh_t[b * P + j];
        }
      }
      const T_* a_t = act_p + t * B * GH;
      T_* da_t = da_p + t * B * GH;
      T_* dhw_t = dhw_p + t * B * GH;
      const T_* hp_t = ln_hh ? hp_p + t * B * GH : nullptr;
      T_* dhp_t = dhp_p + t * B * GH;

      if (lstm) {
        const T_* dq_p = dht_p;  // dq = W_hr^T dh̃ under the projection, else dh̃
        if (proj) {
          lin_dq(dht_p, dq_p0);  // (B, P) @ (P, H)
          dq_p = dq_p0;
        }
        const T_* c_prev = t == 0 ? c0_p : c_all_p + (t - 1) * B * H;
        const T_* tau_t = tau_p + t * B * H;
        const T_* ct_t = ln_c ? c_tilde_p + t * B * H : nullptr;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* d = da_t + b * GH;
            lstm_backward_row(a_t + b * GH, dq_p + b * H, tau_t + b * H, c_prev + b * H, d, dct_p + b * H, ln_c,
                              ln_c ? dtau_p + b * H : nullptr, ln_c ? ct_t + b * H : nullptr, lnc_w, dw_c.data(),
                              db_c.data(), dc_p + b * H, mkc ? mkc.row(t, b) : nullptr, mkc ? mkc.ks() : 0, H);
            if (ln_hh) ln_backward_row(dhp_t + b * GH, d, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      } else if (gru) {
        const T_* hprev = t == 0 ? h0_p : h_all_p + (t - 1) * B * P;
        const T_* hwn_t = hw_n_p + t * B * H;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* e = dhw_t + b * GH;
            gru_backward_row(a_t + b * GH, dht_p + b * P, hwn_t + b * H, hprev + b * P, da_t + b * GH, e,
                             dir + b * H, H);
            if (ln_hh) ln_backward_row(dhp_t + b * GH, e, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      } else {
        const bool relu = cell == RNN_RELU;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* d = da_t + b * GH;
            rnn_backward_row(a_t + b * GH, dht_p + b * P, d, relu, H);  // a_t holds h̃_t
            if (ln_hh) ln_backward_row(dhp_t + b * GH, d, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      }

      // dh_{t-1} = (dhp_t W_hh) ⊙ m + k_t ⊙ dL/dh_t (+ z ⊙ dh̃_t for the GRU)
      lin_dh(dhp_t, dh_p);  // (B, GH) @ (GH, P)
      if (rec_p) for (int64_t k = 0; k < B * P; ++k) dh_p[k] *= rec_p[k];
      if (mk) {
        for (int64_t b = 0; b < B; ++b) {
          const T_* k = mk.row(t, b);
          const int64_t ks = mk.ks();
          for (int64_t j = 0; j < P; ++j) dh_p[b * P + j] += k[j * ks] * dh_t[b * P + j];
        }
      }
      if (gru) for (int64_t k = 0; k < B * P; ++k) dh_p[k] += dir[k];
      // dxp_t = LN_ih'(da_t), last: without LN_hh the product above read da_t as dhp_t
      if (ln_ih) {
        T_* dxp_t = dxp_p + t * B * GH;
        for (int64_t b = 0; b < B; ++b) {
          const int64_t row = t * B + b;
          ln_backward_row(dxp_t + b * GH, da_t + b * GH, xp_p + row * GH, GH, lnx_w, xm_p[row], xr_p[row],
                          dw_x.data(), db_x.data());
        }
      }
    }
  });

  std::vector<Tensor> g(14);
  auto rows = [](const Tensor& t) { return t.reshape({-1, t.size(-1)}); };  // (T, B, n) -> (T*B, n)
  if (need[N_H0]) g[N_H0] = dh;
  if (lstm && need[N_C0]) g[N_C0] = dc;
  // ---- recurrent weights: one product / reduction over all T*B rows ----
  if (need[N_W_HH]) {
    if (h_in.defined()) {
      g[N_W_HH] = weight_grad(rows(dhp), rows(h_in));  // (GH, T*B) @ (T*B, P)
    } else {
      g[N_W_HH] = weight_grad(dhp[0], h0c);  // (GH, B) @ (B, P)
      if (T > 1) g[N_W_HH].add_(weight_grad(rows(dhp.narrow(0, 1, T - 1)), rows(h_all.narrow(0, 0, T - 1))));
    }
  }
  // a (n) double accumulator as a new tensor of the gradients' dtype (copy=true: for float64
  // `to` would otherwise return the view of the vector, freed on return)
  auto acc = [&](std::vector<double>& v) {
    return at::from_blob(v.data(), {int64_t(v.size())}, at::TensorOptions().dtype(at::kDouble))
        .to(opts.dtype(), /*non_blocking=*/false, /*copy=*/true);
  };
  // ---- input side ----
  Tensor db_ih;  // Σ da: b_ih and ln_ih_b, and b_hh / ln_hh_b too where dhw is da (LSTM, RNN)
  const bool need_db_hh = need[N_B_HH] || need[N_LN_HH_B];
  if (need[N_B_IH] || need[N_LN_IH_B] || (dhw.is_same(da) && need_db_hh)) db_ih = ln_ih ? acc(db_x) : da.sum({0, 1});
  if (need[N_B_IH]) g[N_B_IH] = db_ih;
  if (need[N_LN_IH_B]) g[N_LN_IH_B] = db_ih;
  if (ln_ih && need[N_LN_IH_W]) g[N_LN_IH_W] = acc(dw_x);
  // ---- recurrent side ----
  if (need_db_hh) {
    Tensor db = dhw.is_same(da) ? db_ih : dhw.sum({0, 1});
    if (need[N_B_HH]) g[N_B_HH] = db;
    if (need[N_LN_HH_B]) g[N_LN_HH_B] = db;
  }
  if (ln_hh && need[N_LN_HH_W]) g[N_LN_HH_W] = acc(dw_h);
  if (proj && need[N_W_HR]) g[N_W_HR] = weight_grad(rows(dht_all), rows(q));  // (P, T*B) @ (T*B, H)
  if (ln_c && need[N_LN_C_W]) g[N_LN_C_W] = acc(dw_c);
  if (ln_c && need[N_LN_C_B]) g[N_LN_C_B] = acc(db_c);
  const Tensor dxp_rows = rows(dxp);  // (T*B, GH)
  if (need[N_W_IH]) g[N_W_IH] = weight_grad(dxp_rows, x.reshape({T * B, I}));   // (GH, T*B) @ (T*B, I)
  if (need[N_X]) g[N_X] = mm_rows(dxp_rows, w_ih).view({T, B, I});  // (T*B, GH) @ (GH, I)
  return g;
}

}  // namespace
}  // namespace seqlab
