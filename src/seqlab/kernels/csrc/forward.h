// rnn_forward: the time loop of the Elman RNN, GRU and LSTM forward, every variant of the contract.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "buffer_pool.h"
#include "cells.h"
#include "pointwise.h"
#include "products.h"

#include <vector>

namespace seqlab {
namespace {

// ---------------------------------------------------------------------------------------
// forward
//
// x (T, B, I), h0 (B, P), c0 (B, H) LSTM only; w_ih (GH, I), w_hh (GH, P), b_ih / b_hh (GH),
// w_hr (P, H), ln_ih_* / ln_hh_* (GH), ln_c_* (H); keep (T, B, P|1), keep_c (T, B, H|1),
// out (T, B, 1), rec (B, P). save: keep what the backward needs (else per-step scratch).
//
// Returns [y (T,B,P), h_T (B,P), c_T (B,H) | undef,   then the saved tensors:
//          h_all (T,B,P), act (T,B,GH) the gates (LSTM i|f|g|o, GRU r|z|n, RNN h̃),
//          c_all (T,B,H), c_tilde (T,B,H), tau (T,B,H) = tanh(LN_c(c̃)), q (T,B,H) = o ⊙ tau
//          (projection only), hw_n (T,B,H) GRU, h_in (T,B,P) = m ⊙ h_{t-1} (rec only),
//          hp (T,B,GH) = W_hh h_in (LN_hh only), xp (T*B,GH), xp_mean, xp_rstd (LN_ih only)]
// with undefined tensors for what the call does not have.

enum Saved { S_H_ALL = 0, S_ACT, S_C_ALL, S_C_TILDE, S_TAU, S_Q, S_HW_N, S_H_IN, S_HP, S_XP, S_XP_MEAN,
             S_XP_RSTD, N_SAVED };

// One long function on purpose: it sizes the buffers of the call, takes their raw pointers once,
// and the time loop reads them all; split further, each piece would take a dozen of them as
// arguments. The cells' own equations are in cells.h, the products in products.h.
std::vector<Tensor> rnn_forward(
    int64_t cell, const Tensor& x, const Tensor& h0, const OptT& c0_, const Tensor& w_ih, const Tensor& w_hh,
    const OptT& b_ih, const OptT& b_hh, const OptT& w_hr, const OptT& ln_ih_w, const OptT& ln_ih_b,
    const OptT& ln_hh_w, const OptT& ln_hh_b, const OptT& ln_c_w, const OptT& ln_c_b, const OptT& keep_,
    const OptT& keep_c_, const OptT& out_, const OptT& rec_, bool save) {
  // The kernel differentiates itself: the ATen calls inside it (a few selects and products per
  // step) skip the autograd and view-tracking layers, which otherwise cost about as much as a
  // small step's pointwise work
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  const int64_t GH = w_ih.size(0), P = h0.size(1);
  const bool lstm = cell == LSTM, gru = cell == GRU;
  const int64_t H = GH / (lstm ? 4 : gru ? 3 : 1);
  const bool proj = given(w_hr), ln_hh = given(ln_hh_w), ln_c = given(ln_c_w);
  const auto opts = x.options();
  TORCH_CHECK(T > 0, "seqlab compiled forward: expected T > 0, got ", T);

  // xw_t = LN_ih(W_ih x_t) + b_ih, all steps in one product; for the LSTM and the RNN b_hh
  // is folded in too (it is added after LN_hh, so it only shifts xw + hw); the GRU keeps
  // b_hh in hw, where r multiplies its n block.
  const Tensor x_rows = x.reshape({T * B, I});  // (T, B, I) -> (T*B, I)
  const Tensor b_x = add_opt(b_ih.value_or(Tensor()), gru ? Tensor() : b_hh.value_or(Tensor()));
  std::vector<Tensor> res(3 + N_SAVED);
  const bool ln_ih = given(ln_ih_w);
  Tensor act, xp, x_mean, x_rstd, b_xln, b_xc;
  if (ln_ih) {
    // LN_ih is applied row by row inside the step loop, just before the step reads the row:
    // a separate ATen layer_norm over all T*B rows would write and read xw through memory
    // once more (and allocate it). act starts empty; each step fills its rows first.
    xp = project_rows(x_rows, w_ih, Tensor(), {T * B, GH});  // (T*B, I) @ (I, GH)
    act = save ? loop_buffer({T, B, GH}, opts) : at::empty({T, B, GH}, opts);  // (RNN: may be y)
    x_mean = at::empty({T * B, 1}, opts);  // per-row statistics, as native_layer_norm returns them
    x_rstd = at::empty({T * B, 1}, opts);
    b_xln = add_opt(ln_ih_b.value_or(Tensor()), b_x);
    if (b_xln.defined()) b_xln = b_xln.contiguous();
    if (save) {
      res[3 + S_XP] = xp;
      res[3 + S_XP_MEAN] = x_mean;
      res[3 + S_XP_RSTD] = x_rstd;
    }
  } else {
    // (T*B, I) @ (I, GH) -> (T, B, GH); becomes the gates in place. The bias is added in the
    // step loop, to rows about to be read anyway: addmm_out would first copy it into all T*B
    // rows, one more pass over memory (2-4% of an LSTM inference call at hidden 64-256)
    act = project_rows(x_rows, w_ih, Tensor(), {T, B, GH});
    if (b_x.defined()) b_xc = b_x.contiguous();
  }

  const Tensor keep = contiguous_or_undef(keep_), keep_c = contiguous_or_undef(keep_c_);
  const Tensor rec = contiguous_or_undef(rec_);
  const Tensor c0 = lstm ? c0_->contiguous() : Tensor();
  const Tensor h0c = h0.contiguous();
  const StepLinear lin_hh(w_hh, B, T), lin_hr = proj ? StepLinear(*w_hr, B, T) : StepLinear();
  const Tensor hw_buf = gru ? at::empty({B, GH}, opts) : Tensor();  // the GRU's W_hh h_in of a step
  const int64_t TS = save ? T : 1;  // leading size of buffers only the backward needs
  // under save every buffer is the kernels' own (y is a copy of h_all); without, h_all is y
  auto buf = [&](int64_t t0, int64_t n) { return save ? loop_buffer({t0, B, n}, opts) : at::empty({t0, B, n}, opts); };

  // the RNN's h̃_t is computed in place in act (and kept: act'(·) needs it); without keep it is h_t
  Tensor h_all = (!lstm && !gru && !keep.defined()) ? act : buf(T, P);
  Tensor c_all, c_tilde, tau, q, hw_n, h_in, hp, h_tilde;
  if (lstm) {
    c_all = buf(T, H);
    c_tilde = keep_c.defined() ? buf(TS, H) : c_all;
    tau = buf(TS, H);
    if (proj) q = buf(TS, H);
  }
  if (gru) {
    hw_n = buf(TS, H);
  }
  if (rec.defined()) h_in = buf(TS, P);
  if (ln_hh) hp = buf(TS, GH);
  if (keep.defined() || (lstm && proj)) h_tilde = at::empty({B, P}, opts);
  // b_hh after LN_hh, for the GRU (the LSTM and RNN have it in xw already)
  const Tensor b_hw = gru ? add_opt(ln_hh_b.value_or(Tensor()), b_hh.value_or(Tensor())).contiguous()
                          : (ln_hh && given(ln_hh_b) ? ln_hh_b->contiguous() : Tensor());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_rnn_forward", [&] {
    using T_ = scalar_t;
    const StepMask<T_> mk(keep, B), mkc(keep_c, B);
    const T_* rec_p = rec.defined() ? rec.data_ptr<T_>() : nullptr;
    const T_* lnh_w = ln_hh ? ln_hh_w->data_ptr<T_>() : nullptr;
    const T_* lnh_b = b_hw.defined() ? b_hw.data_ptr<T_>() : nullptr;
    const T_* lnc_w = ln_c ? ln_c_w->data_ptr<T_>() : nullptr;
    const T_* lnc_b = ln_c ? ptr_or_null<T_>(ln_c_b) : nullptr;

    const T_* xp_p = ln_ih ? xp.data_ptr<T_>() : nullptr;
    const T_* lnx_w = ln_ih ? ln_ih_w->data_ptr<T_>() : nullptr;
    const T_* lnx_b = b_xln.defined() ? b_xln.data_ptr<T_>() : nullptr;
    const T_* bx_p = b_xc.defined() ? b_xc.data_ptr<T_>() : nullptr;  // b_ih (+ b_hh) without LN_ih
    T_* xm_p = ln_ih ? x_mean.data_ptr<T_>() : nullptr;
    T_* xr_p = ln_ih ? x_rstd.data_ptr<T_>() : nullptr;

    // the loop's tensors as raw pointers: step t's rows of a (T, B, n) buffer start at t * B * n
    auto ptr = [](const Tensor& v) { return v.defined() ? v.data_ptr<T_>() : nullptr; };
    const T_* h0_p = h0c.data_ptr<T_>();
    const T_* c0_p = ptr(c0);
    T_ *act_p = act.data_ptr<T_>(), *h_all_p = h_all.data_ptr<T_>(), *hw_p = ptr(hw_buf);
    T_ *c_all_p = ptr(c_all), *c_tilde_p = ptr(c_tilde), *tau_p = ptr(tau), *q_p = ptr(q);
    T_ *hw_n_p = ptr(hw_n), *h_in_p = ptr(h_in), *hp_p = ptr(hp), *h_tilde_p = ptr(h_tilde);

    for (int64_t t = 0; t < T; ++t) {
      const int64_t ts = save ? t : 0;
      const T_* hprev_p = t == 0 ? h0_p : h_all_p + (t - 1) * B * P;  // h_{t-1} (B, P)
      T_* act_t = act_p + t * B * GH;
      T_* h_t = h_all_p + t * B * P;

      // xw_t = LN_ih(W_ih x_t) + b_ih (+ b_hh): first, the LSTM / RNN product below adds to it
      if (xp_p) {
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = t * B + b;
            ln_apply<T_, false>(act_t + b * GH, xp_p + row * GH, GH, lnx_w, lnx_b, xm_p + row, xr_p + row);
          }
        });
      } else if (bx_p) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < GH; ++j) act_t[b * GH + j] += bx_p[j];
      }

      // hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh
      const T_* h_in_t = hprev_p;
      if (rec_p) {
        T_* d = h_in_p + ts * B * P;
        for (int64_t k = 0; k < B * P; ++k) d[k] = hprev_p[k] * rec_p[k];
        h_in_t = d;
      }
      // LN_hh's input hp_t, or the GRU's hw (its n block is needed apart), or else added to xw_t
      const T_* hp_t = nullptr;
      if (ln_hh) {
        T_* d = hp_p + ts * B * GH;
        lin_hh(h_in_t, d);  // (B, P) @ (P, GH)
        hp_t = d;
      } else if (gru) {
        lin_hh(h_in_t, hw_p);  // (B, P) @ (P, GH)
      } else {
        lin_hh(h_in_t, act_t, /*acc=*/true);  // a_t = xw_t + W_hh (m ⊙ h_{t-1})
      }

      if (lstm) {
        const T_* c_prev = t == 0 ? c0_p : c_all_p + (t - 1) * B * H;
        T_* ct = c_tilde_p + (keep_c.defined() ? ts : t) * B * H;
        T_* c_t = c_all_p + t * B * H;
        T_* tau_t = tau_p + ts * B * H;
        // o ⊙ τ goes to q (then W_hr), to h̃ (then keep), or straight to h_t
        T_* q_t = proj ? q_p + ts * B * H : (h_tilde_p ? h_tilde_p : h_t);
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            if (hp_t) ln_apply<T_, true>(a, hp_t + b * GH, GH, lnh_w, lnh_b);  // a = xw_t + hw_t
            lstm_forward_row(a, c_prev + b * H, ct + b * H, tau_t + b * H, q_t + b * H, ln_c, lnc_w, lnc_b,
                             c_t + b * H, mkc ? mkc.row(t, b) : nullptr, mkc.ks(), H);
          }
        });
        // h̃_t = W_hr (o ⊙ τ)
        if (proj) lin_hr(q_t, keep.defined() ? h_tilde_p : h_t);  // (B, H) @ (H, P)
      } else if (gru) {
        T_* hwn_t = hw_n_p + ts * B * H;
        T_* dst = h_tilde_p ? h_tilde_p : h_t;
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            T_* hwb = hw_p + b * GH;
            if (hp_t) ln_apply<T_, false>(hwb, hp_t + b * GH, GH, lnh_w, lnh_b);
            else if (lnh_b) for (int64_t j = 0; j < GH; ++j) hwb[j] += lnh_b[j];  // + b_hh
            gru_forward_row(a, hwb, hprev_p + b * P, hwn_t + b * H, dst + b * H, H);
          }
        });
      } else {
        const bool relu = cell == RNN_RELU;
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            if (hp_t) ln_apply<T_, true>(a, hp_t + b * GH, GH, lnh_w, lnh_b);  // a = xw_t + hw_t
            rnn_forward_row(a, relu, H);
          }
        });
      }

      // h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t
      if (mk) {
        const T_* src = (lstm || gru) ? h_tilde_p : act_t;
        for (int64_t b = 0; b < B; ++b) lerp_row(h_t + b * P, src + b * P, hprev_p + b * P, mk.row(t, b), mk.ks(), P);
      }
    }
  });

  // y_t = o_t ⊙ h_t; a fresh tensor (not h_all) when the backward keeps h_all, so that a
  // caller may modify y in place
  if (given(out_)) res[0] = h_all * *out_;
  else res[0] = save ? h_all.clone() : h_all;
  res[1] = h_all[T - 1].clone();
  if (lstm) res[2] = c_all[T - 1].clone();
  if (save) {
    res[3 + S_H_ALL] = h_all;
    res[3 + S_ACT] = act;
    res[3 + S_C_ALL] = c_all;
    if (keep_c.defined()) res[3 + S_C_TILDE] = c_tilde;
    res[3 + S_TAU] = tau;
    res[3 + S_Q] = q;
    res[3 + S_HW_N] = hw_n;
    res[3 + S_H_IN] = h_in;
    res[3 + S_HP] = hp;
  }
  return res;
}

}  // namespace
}  // namespace seqlab
