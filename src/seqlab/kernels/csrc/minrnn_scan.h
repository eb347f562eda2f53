// The minGRU / minLSTM sequential scan, forward and backward.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "buffer_pool.h"
#include "pointwise.h"
#include "products.h"

#include <vector>

namespace seqlab {
namespace {

// ---------------------------------------------------------------------------------------
// minGRU / minLSTM (nn/minrnn.py): gates that see only x_t, so every step is
//
//   h_t = a_t ⊙ h_{t-1} + (1 − a_t) ⊙ h̃_t,   h̃_t = g(p_t),  g(p) = p + 0.5 (p ≥ 0), σ(p) (p < 0)
//
//   minGRU   pre = k | p            a = 1 − z = σ(−k)
//   minLSTM  pre = k_f | k_i | p    a = f' = f / (f + i),  f = σ(k_f), i = σ(k_i)
//
// forward   pre = X W^T + b                        one product over all T*B rows (project_rows)
//           h_t from a_t, h̃_t and h_{t-1}          one pass over (T, B, H)
// backward  s_t = ∂L/∂h_t + a_{t+1} s_{t+1}        the adjoint, the same recurrence reversed,
//           ∂L/∂a_t = s_t (h_{t-1} − h̃_t),  ∂L/∂p_t = s_t (1 − a_t) g'(p_t)   in the same pass
//           dW, db, dx                             one product or reduction each
//
// Both passes are sequential in t, as the Python fallback's chunked scan is not: one pass of
// a few flops per element over memory that streams through the cache costs less than any
// scan's extra passes. The batch rows are independent, so each pass is split over them
// between torch's threads (at::parallel_for); the products use oneDNN/BLAS threads.
// Only pre and h are saved; a and h̃ are recomputed in the backward (one exp each).

enum MinCell : int64_t { MIN_GRU = 0, MIN_LSTM = 1 };

// g(p) = max(σ(p) − 0.5, p) + 0.5 without a branch (σ(p) ≤ p + 0.5 exactly when p ≥ 0)
template <typename T>
SEQLAB_INLINE T g_(T p) {
  const T s = sigmoid_(p) - T(0.5);
  return (s > p ? s : p) + T(0.5);
}

// f' = f / (f + i) = 1 / (1 + r), r = (1 + e^{−k_f}) / (1 + e^{−k_i}), written with
// 1 + e^{−k} = e^{max(−k, 0)} (1 + e^{−|k|}) so that nothing overflows: r = e^{c_f − c_i} q with
// q in [1/2, 2]. Where f + i itself would underflow (k_f, k_i < −87) this still gives the
// ratio, as the Python path's logsigmoid difference does.
template <typename T>
SEQLAB_INLINE T minlstm_a(T kf, T ki) {
  const T cf = kf < T(0) ? -kf : T(0), ci = ki < T(0) ? -ki : T(0);
  const T q = (T(1) + exp_(-(kf < T(0) ? -kf : kf))) / (T(1) + exp_(-(ki < T(0) ? -ki : ki)));
  return T(1) / (T(1) + exp_(cf - ci) * q);
}

// a as a function of the row's gate pre-activations r (k | p, or k_f | k_i | p)
template <int64_t CELL, typename T>
SEQLAB_INLINE T min_a(const T* r, int64_t j, int64_t H) {
  if constexpr (CELL == MIN_GRU) return sigmoid_(-r[j]);
  else return minlstm_a(r[j], r[H + j]);
}

// Threads take contiguous ranges of batch rows and walk time in order; within a range, step t
// touches rows b0..b1 of pre and h, which lie next to each other in memory (walking one row
// through time instead jumps B*G*H values per step, a new page each time, and ran 4x slower).
template <int64_t CELL, typename T>
void min_forward_rows(const T* pre, const T* h0, T* h, int64_t Tn, int64_t B, int64_t H) {
  constexpr int64_t G = CELL == MIN_GRU ? 2 : 3;
  const int64_t GH = G * H;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* r = pre + (t * B + b) * GH;  // this row's k | p or k_f | k_i | p
        const T* p = r + (G - 1) * H;
        const T* hp = t > 0 ? h + ((t - 1) * B + b) * H : h0 + b * H;  // h_{t-1}
        T* ho = h + (t * B + b) * H;
        for (int64_t j = 0; j < H; ++j) {
          const T a = min_a<CELL>(r, j, H), ht = g_(p[j]);
          ho[j] = ht + a * (hp[j] - ht);  // a h_{t-1} + (1 − a) h̃
        }
      }
    }
  });
}

// x (T, B, I), w (GH, I), b (GH) or none, h0 (B, H) -> [h (T, B, H), pre (T, B, GH)]
std::vector<Tensor> min_forward(int64_t cell, const Tensor& x, const Tensor& w, const OptT& b, const Tensor& h0_) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(cell == MIN_GRU || cell == MIN_LSTM, "seqlab min_forward: cell must be 0 (minGRU) or 1 (minLSTM), got ",
              cell);
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), GH = w.size(0), H = h0_.size(1);
  const Tensor pre = project_rows(x.reshape({Tn * B, I}), w, given(b) ? *b : Tensor(), {Tn, B, GH});
  const Tensor h0 = h0_.contiguous();
  // h is the layer's output, and also from the pool (unlike the RNN loop's y): at T*B rows it is the
  // largest buffer a training step touches first, and a training step frees it again. Its storage
  // is resizable like any other output's (see loop_buffer).
  Tensor h = loop_buffer({Tn, B, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_min_forward", [&] {
    auto run = cell == MIN_GRU ? min_forward_rows<MIN_GRU, scalar_t> : min_forward_rows<MIN_LSTM, scalar_t>;
    run(pre.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), Tn, B, H);
  });
  return {h, pre};
}

// One row of one step backwards: ∂L/∂pre_t (gr, its p block gp) from ∂L/∂h_t (d), and the adjoint
// s and gate a carried from step t+1 (sn, an), updated in place. __restrict: with eight pointers
// GCC gives up versioning the loop for possible aliasing, and minLSTM's backward stayed scalar.
template <int64_t CELL, typename T>
void min_backward_row(const T* __restrict r, const T* __restrict p, const T* __restrict hp, const T* __restrict d,
                      T* __restrict gr, T* __restrict gp, T* __restrict sn, T* __restrict an, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T s = d[j] + an[j] * sn[j];
    const T sp = sigmoid_(p[j]), gm = sp - T(0.5);
    const T ht = (gm > p[j] ? gm : p[j]) + T(0.5);       // g(p)
    const T dg = p[j] < T(0) ? sp * (T(1) - sp) : T(1);  // g'(p)
    const T a = min_a<CELL>(r, j, H);
    const T du = s * (hp[j] - ht) * a * (T(1) - a);  // ∂L/∂u with a = σ(u)
    gp[j] = s * (T(1) - a) * dg;
    if constexpr (CELL == MIN_GRU) {
      gr[j] = -du;  // u = −k
    } else {
      // u = log σ(k_f) − log σ(k_i): ∂u/∂k_f = σ(−k_f), ∂u/∂k_i = −σ(−k_i)
      gr[j] = du * sigmoid_(-r[j]);
      gr[H + j] = -du * sigmoid_(-r[H + j]);
    }
    sn[j] = s;
    an[j] = a;
  }
}

// dh is read through its strides: the gradient of out.sum() arrives as an expanded scalar,
// which .contiguous() would spend a full (T, B, H) pass to materialise.
template <int64_t CELL, typename T>
void min_backward_rows(const T* pre, const T* h, const T* h0, const T* dh, const int64_t* dh_st, const T* dh_n,
                       T* gpre, T* dh0, int64_t Tn, int64_t B, int64_t H) {
  constexpr int64_t G = CELL == MIN_GRU ? 2 : 3;
  const int64_t GH = G * H;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0;
    std::vector<T> s_next(nb * H), a_next(nb * H), drow(dh_st[2] == 1 ? 0 : H);  // s_{t+1}, a_{t+1} per row
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < H; ++j) {
        s_next[(b - b0) * H + j] = dh_n ? dh_n[b * H + j] : T(0);  // ∂L/∂h_n enters as s_T with a_T = 1
        a_next[(b - b0) * H + j] = T(1);
      }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* r = pre + (t * B + b) * GH;
        const T* p = r + (G - 1) * H;
        const T* hp = t > 0 ? h + ((t - 1) * B + b) * H : h0 + b * H;  // h_{t-1}
        const T* d = dh + t * dh_st[0] + b * dh_st[1];  // ∂L/∂h_t
        if (dh_st[2] != 1) {
          for (int64_t j = 0; j < H; ++j) drow[j] = d[j * dh_st[2]];
          d = drow.data();
        }
        T* gr = gpre + (t * B + b) * GH;  // ∂L/∂pre_t
        min_backward_row<CELL, T>(r, p, hp, d, gr, gr + (G - 1) * H, s_next.data() + (b - b0) * H,
                                  a_next.data() + (b - b0) * H, H);
      }
    }
    if (dh0)
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < H; ++j)
          dh0[b * H + j] = a_next[(b - b0) * H + j] * s_next[(b - b0) * H + j];  // ∂L/∂h_0 = a_0 s_0
  });
}

// The saved pre (T, B, GH) and h (T, B, H), the inputs x, w, h0, and ∂L/∂h (T, B, H), ∂L/∂h_n
// (B, H) or none -> [dx, dW, db, dh0], each undefined unless need[k] (the order of the list)
std::vector<Tensor> min_backward(int64_t cell, const Tensor& x, const Tensor& w, const Tensor& pre,
                                 const Tensor& h, const Tensor& h0_, const Tensor& dh_, const OptT& dh_n_,
                                 c10::ArrayRef<int64_t> need) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(need.size() == 4, "seqlab min_backward: expected 4 flags (x, W, b, h0), got ", need.size());
  TORCH_CHECK(cell == MIN_GRU || cell == MIN_LSTM, "seqlab min_backward: cell must be 0 (minGRU) or 1 (minLSTM), got ", cell);
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), GH = w.size(0), H = h.size(2);
  const Tensor h0 = h0_.contiguous();
  const Tensor dh_n = given(dh_n_) ? dh_n_->contiguous() : Tensor();
  const int64_t dh_st[3] = {dh_.stride(0), dh_.stride(1), dh_.stride(2)};
  Tensor gpre = loop_buffer({Tn, B, GH}, x.options());
  Tensor dh0 = need[3] ? at::empty({B, H}, x.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_min_backward", [&] {
    auto run = cell == MIN_GRU ? min_backward_rows<MIN_GRU, scalar_t> : min_backward_rows<MIN_LSTM, scalar_t>;
    run(pre.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), dh_.data_ptr<scalar_t>(), dh_st,
        dh_n.defined() ? dh_n.data_ptr<scalar_t>() : nullptr, gpre.data_ptr<scalar_t>(),
        dh0.defined() ? dh0.data_ptr<scalar_t>() : nullptr, Tn, B, H);
  });
  const Tensor g_rows = gpre.view({Tn * B, GH});  // (T, B, GH) -> (T*B, GH)
  std::vector<Tensor> g(4);
  if (need[0]) g[0] = mm_rows(g_rows, w).view({Tn, B, I});               // (T*B, GH) @ (GH, I)
  if (need[1]) g[1] = weight_grad(g_rows, x.reshape({Tn * B, I}));     // (GH, T*B) @ (T*B, I)
  if (need[2]) g[2] = g_rows.sum(0);
  g[3] = dh0;
  return g;
}

}  // namespace
}  // namespace seqlab
