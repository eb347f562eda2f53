r"""The fused path: one ``autograd.Function`` per layer, with hand-written backpropagation through time.

It computes exactly the cell of ``common.py`` (the reference loop in
``reference.py`` is the specification it is tested against), but arranges the
work the way a hand-written RNN kernel does:

Forward
    * the input projection of *all* time steps is one matrix product,
      xw = LN_ih(X W_ih^T) + b_ih with X = x viewed (T·B, I), and its LayerNorm
      is computed over all steps at once;
    * per step only the recurrent product W_hh (m ⊙ h_{t-1}) and pointwise ops
      remain, written with ``out=`` into preallocated (T, B, ·) buffers, so the
      step adds no autograd graph and allocates (almost) nothing.

Backward (a reverse loop, t = T-1 … 0)
    * the derivatives of the activations (σ' = s(1-s), tanh' = 1-τ², the
      products that multiply them) do not depend on the incoming gradient, so
      they are computed for all steps at once before the loop into one
      (T, B, G·H) buffer;
    * per step that buffer is multiplied in place by the gradient arriving at
      the step, which gives the gate gradients da_t, and
      dh_{t-1} = (da_t W_hh) ⊙ m (+ the direct terms of the GRU and of k_t):
      one matrix product per step (autograd's loop records two: dW_hh too);
    * after the loop, dW_ih, dW_hh, dW_hr, the biases and the LayerNorm
      parameters are each ONE product or reduction over all T·B rows, and
      dx = dxw W_ih is one product.

tanh is computed as tanh(v) = 2σ(2v) - 1 throughout: on CPU torch's tanh is about three
times slower per element than its sigmoid, and it is the largest pointwise cost of a step.
The factor 2 is folded into what produces v (the g rows of W_hh and of xw, LN weights), so
a step pays one σ over all gates plus one ``add`` per tanh. The result equals tanh to a few
units in the last place (absolute), well inside the tolerances the tests use.

LayerNorm's backward is written out by hand (``_LayerNormGrad``):
    dv = rstd ⊙ (dv̂ - mean(dv̂) - v̂ ⊙ mean(dv̂ ⊙ v̂)),  dv̂ = dLN ⊙ w,
which is exact with eps (differentiate rstd = (var + eps)^{-1/2}).

What every fast path shares (the checks, the input projection with b_hh folded in, the
recorded views, the outputs, the start of the backward and the weight gradients after the
loop) is the shell in ``common.py``; this file keeps the per-cell loops.

Second derivatives: a backward asked to build a graph (``create_graph=True``) re-runs
the layer through the reference loop and lets autograd differentiate that
(``reference.differentiable_backward``), so gradients of gradients are correct, at the
reference loop's speed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .common import (GATES, GRAD_NAMES, LN_EPS, LayerWeights, Masks, backward_start, fast_run_layer, function_grads,
                     grad_needs, input_weight_grads, layer_outputs, project_inputs, record_views,
                     recurrent_weight_grads, refuse_call, rows, run_accepted, split_slots, state_grad)

__all__ = ["run_layer", "supports"]

#: dtypes the fused path computes in (every op it uses has CPU and CUDA kernels for them)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------
# Public entry points: the shell of common.py around this file's loops


def supports(cell: str, x: Tensor, w: LayerWeights, masks: Masks) -> Optional[str]:
    """None when the fused path can run this call, else a one-line reason why not."""
    return refuse_call("fused", cell, x, w, masks, _FLOATS)


def _run_accepted(cell, x, h0, c0, w, masks, record):
    return run_accepted(_Fused.apply, cell, x, h0, c0, w, masks, record)


run_layer = fast_run_layer("fused", supports, _run_accepted)


# ----------------------------------------------------------------------------
# Small helpers


def _add_opt(*ts: Optional[Tensor]) -> Optional[Tensor]:
    """Sum of the tensors that are given; None when none is."""
    out = None
    for t in ts:
        if t is not None:
            out = t if out is None else out + t
    return out


class _LayerNormGrad:
    """LayerNorm's backward, written out, for v (rows, N) normalised over its last dimension.

        v̂ = (v - mean(v)) · rstd,   rstd = (var(v) + eps)^{-1/2},   LN(v) = v̂ ⊙ w + b
        dv = rstd ⊙ (dv̂ - mean(dv̂) - v̂ ⊙ mean(dv̂ ⊙ v̂)),   dv̂ = dLN ⊙ w
        dw = Σ dLN ⊙ v̂,   db = Σ dLN

    which is exact with eps (differentiate rstd too). v̂ and rstd are recomputed from v
    (one pass) rather than stored by the forward. Both means are matrix-vector products
    with w / N: they read each row once, where a mean of a product would read it twice.
    """

    def __init__(self, w: Optional[Tensor], n: int, like: Tensor):
        self.w, self.n = w, n
        self.w_mean = (like.new_ones(n) if w is None else w).div(n).unsqueeze(1)  # (N,) -> (N, 1)

    def stats(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """v̂ (…, N) and rstd (…, 1)."""
        v_hat, _, rstd = torch.native_layer_norm(v, (self.n,), None, None, LN_EPS)
        return v_hat, rstd

    def __call__(self, d_ln: Tensor, v_hat: Tensor, rstd: Tensor, out: Optional[Tensor] = None,
                 out_p: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """dv and p = dLN ⊙ v̂ (whose sum over rows is dw), for 2D (rows, N) d_ln and v_hat."""
        p = torch.mul(d_ln, v_hat, out=out_p)
        mean_dv_hat = torch.mm(d_ln, self.w_mean)  # (rows, N) @ (N, 1) -> (rows, 1)
        mean_dv_hat_v_hat = torch.mm(p, self.w_mean)  # (rows, 1)
        if self.w is not None:
            dv = torch.mul(d_ln, self.w, out=out)
        else:
            dv = d_ln.clone() if out is None else out.copy_(d_ln)
        dv.sub_(mean_dv_hat).addcmul_(v_hat, mean_dv_hat_v_hat, value=-1)
        return dv.mul_(rstd), p

    def chunked_(self, d_ln: Tensor, v: Tensor) -> Tensor:
        """Overwrite d_ln (rows, N) with dv, block by block of rows; return dw = Σ dLN ⊙ v̂.

        Over all T·B rows at once every one of the ~8 passes would go to memory; blocks of
        about 1 MiB stay in cache, which is worth the few extra Python calls.
        """
        rows = max(1, (1 << 18) // self.n)
        dw = d_ln.new_zeros(self.n)
        for lo in range(0, d_ln.shape[0], rows):
            d_blk = d_ln[lo:lo + rows]  # (rows, N) view
            v_hat, rstd = self.stats(v[lo:lo + rows])
            _, p = self(d_blk, v_hat, rstd, out=d_blk)
            dw += p.sum(0)
        return dw


def _tanh(v: Tensor) -> Tensor:
    """tanh(v) = 2σ(2v) - 1, out of place, for the vectorised recomputations of the backward."""
    return torch.sigmoid(v + v).mul_(2).sub_(1)


def _double_block(t: Optional[Tensor], lo: int, hi: int) -> Optional[Tensor]:
    """A copy of t with rows lo:hi doubled: folds the 2 of tanh(v) = 2σ(2v) - 1 into a weight."""
    if t is None:
        return None
    t = t.clone()
    t[lo:hi] *= 2
    return t


def _sum_rows(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 1))  # (T, B, n) -> (n,)


# ----------------------------------------------------------------------------
# The autograd.Function


class _Fused(torch.autograd.Function):
    """One layer, one direction on the fused path: Python loops with ``out=`` buffers, backward written by hand.

    Arguments and results: those of ``common.run_accepted``'s ``apply``."""

    @staticmethod
    def forward(ctx, cell, recorded, x, h0, c0, *slots):
        w, m = split_slots(slots)
        T, B, I = x.shape
        H = w.w_ih.shape[0] // GATES[cell]
        P = h0.shape[-1]
        x_rows, xw, xp = project_inputs(cell, x, w)  # xw: a fresh (T, B, GH) the loop overwrites

        loop = {"lstm": _lstm_forward, "gru": _gru_forward}.get(cell, _rnn_forward)
        saved = loop(cell, xw, h0, c0, w, m, T, B, H, P)
        y, h_T, c_T = layer_outputs(saved["h"], saved.get("c"), m.out)  # h: (T, B, P), the blended h_t

        if recorded is not None:
            recorded.update(record_views(cell, H, saved["h"], saved.get("act"), saved.get("c")))
        if any(ctx.needs_input_grad):
            reference.keep_inputs(ctx, cell, x, h0, c0, slots)
            saved.update(x_rows=x_rows, xp=xp, h0=h0, c0=c0, **w._asdict(), **{f"m_{k}": v for k, v in m._asdict().items()})
            ctx.cell, ctx.dims = cell, (T, B, I, H, P)
            ctx.names = tuple(saved)
            ctx.save_for_backward(*saved.values())
        return y, h_T, c_T

    @staticmethod
    @reference.differentiable_backward
    def backward(ctx, dy, dh_T, dc_T):
        s = dict(zip(ctx.names, ctx.saved_tensors))
        cell = ctx.cell
        T, B, I, H, P = ctx.dims
        need = grad_needs(ctx)

        # dY: dL/dh_t arriving from y_t; the loop adds what comes back from t+1 in place.
        # dh: running dL/dh_t from the future; ends as dL/dh0
        dY, dh = backward_start(dy, dh_T, s["m_out"])
        loop = {"lstm": _lstm_backward, "gru": _gru_backward}.get(cell, _rnn_backward)
        g = loop(cell, s, dY, dh, dc_T, T, B, H, P, need)
        # g holds: dxw (T,B,GH) grad of xw_t; dhw (T,B,GH) grad of hw_t (after LN_hh and b_hh);
        # dhp (T,B,GH) grad of W_hh (m ⊙ h_{t-1}); dh0, dc0; the LSTM's extra weight grads; and
        # for the GRU dhw_to_dxw, which turns dhw into dxw in place (dxw is valid only after it).
        grads = dict.fromkeys(GRAD_NAMES)
        grads["h0"] = g["dh0"] if need["h0"] else None
        grads["c0"] = g.get("dc0") if need["c0"] else None
        for k in ("w_hr", "ln_c_w", "ln_c_b"):
            grads[k] = g.get(k) if need[k] else None
        grads["ln_hh_w"] = g["ln_hh_w"] if need["ln_hh_w"] else None
        # h_in: stored by the forward only under recurrent dropout
        recurrent_weight_grads(grads, need, g["dhp"], g["dhw"], s.get("h_in"), s["h0"], s["h"])
        if "dhw_to_dxw" in g:  # the GRU's dxw shares dhw's buffer, now free to overwrite
            g["dhw_to_dxw"]()
        ln_ih_backward = None
        if s["ln_ih_w"] is not None:
            def ln_ih_backward(dxp):
                # in place: dxw is ours and every use of it as dxw (dW_hh, the biases) is done
                return _LayerNormGrad(s["ln_ih_w"], dxp.shape[1], dxp).chunked_(dxp, s["xp"])
        input_weight_grads(grads, need, g["dxw"], s["x_rows"], s["w_ih"], ln_ih_backward)
        return function_grads(grads)


# ----------------------------------------------------------------------------
# Per-cell forward loops. Each returns the buffers backward needs: always "h", the blended h_t
# (T, B, P); "act", the gates after σ / tanh (LSTM, GRU) and "c", c_t (LSTM), which are
# also what ``record_views`` shows.


def _recurrent_setup(xw, h0, w, m, T, B, P, GH, h_all=None):
    """What every cell's step needs for hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh."""
    new = xw.new_empty
    h_all = new((T, B, P)) if h_all is None else h_all
    h_prev = (h0,) + h_all.unbind(0)[:-1]  # h_{t-1} for every t
    # under recurrent dropout, m ⊙ h_{t-1} is written per step into a buffer that the
    # backward reuses for dW_hh, so it is never recomputed
    h_in = new((T, B, P)) if m.rec is not None else None
    hp = new((T, B, GH)) if w.ln_hh_w is not None else None  # W_hh (m ⊙ h_{t-1}), LN_hh's input
    return h_all, h_prev, h_in, hp


def _lstm_forward(cell, xw, h0, c0, w, m, T, B, H, P):
    GH = 4 * H
    new = xw.new_empty
    h_all, h_prev, h_in, hp = _recurrent_setup(xw, h0, w, m, T, B, P, GH)
    w_hh_t = w.w_hh.t()  # (P, 4H)
    w_hr_t = w.w_hr.t() if w.w_hr is not None else None  # (H, P)
    ln_hh, ln_c, proj = w.ln_hh_w is not None, w.ln_c_w is not None, w.w_hr is not None

    # tanh(a_g) = 2σ(2a_g) - 1: double the g block of xw (ours, fresh) and of whatever
    # makes hw (W_hh's g rows, or LN_hh's weight and bias), then one σ covers all gates
    xw[..., 2 * H:3 * H] *= 2
    ln_hh_w, ln_hh_b = w.ln_hh_w, w.ln_hh_b
    if ln_hh:
        ln_hh_w, ln_hh_b = _double_block(ln_hh_w, 2 * H, 3 * H), _double_block(ln_hh_b, 2 * H, 3 * H)
    else:
        w_hh_t = _double_block(w.w_hh, 2 * H, 3 * H).t()  # (P, 4H)
    # and tanh(LN_c(c̃)) = 2σ(2 LN_c(c̃)) - 1, the 2 folded into LN_c's weight and bias
    ln_c_w, ln_c_b = (w.ln_c_w * 2, None if w.ln_c_b is None else w.ln_c_b * 2) if ln_c else (None, None)
    neg1 = xw.new_full((), -1.0)

    # xw_t becomes, in place, the pre-activations a_t and then the gates i, f, g, o: no
    # second (T, B, 4H) buffer to allocate (first touches of fresh memory cost page faults)
    act = xw
    i_all, f_all, g_all, o_all = act.split(H, dim=-1)  # 4 x (T, B, H) views
    c_tilde = new((T, B, H))  # c̃_t
    c_all = c_tilde if m.keep_c is None else new((T, B, H))  # c_t (blended)
    c_prev = (c0,) + c_all.unbind(0)[:-1]
    q = new((T, B, H)) if proj else None  # o ⊙ tanh(LN_c(c̃_t)), W_hr's input
    h_tilde = new((B, P)) if m.keep is not None else None
    tanh_c = new((B, H))

    act_, g_, i_, f_, o_, ct_, c_, h_ = (t.unbind(0) for t in (act, g_all, i_all, f_all, o_all, c_tilde, c_all,
                                                                h_all))
    q_ = q.unbind(0) if proj else None
    hin_ = h_in.unbind(0) if h_in is not None else None
    hp_ = hp.unbind(0) if ln_hh else None
    for t in range(T):
        h_in_t = h_prev[t] if hin_ is None else torch.mul(h_prev[t], m.rec, out=hin_[t])
        # a_t = xw_t + LN_hh(W_hh (m ⊙ h_{t-1})) (b_hh is already in xw), in place
        if ln_hh:
            torch.mm(h_in_t, w_hh_t, out=hp_[t])
            act_[t].add_(torch.native_layer_norm(hp_[t], (GH,), ln_hh_w, ln_hh_b, LN_EPS)[0])
        else:
            act_[t].addmm_(h_in_t, w_hh_t)
        # i, f, o = σ(a_i), σ(a_f), σ(a_o); g = tanh(a_g) = 2σ(2a_g) - 1
        act_[t].sigmoid_()
        torch.add(neg1, g_[t], alpha=2, out=g_[t])
        # c̃_t = f ⊙ c_{t-1} + i ⊙ g
        torch.mul(f_[t], c_prev[t], out=ct_[t])
        ct_[t].addcmul_(i_[t], g_[t])
        # tc = tanh(LN_c(c̃_t)) = 2σ(2 LN_c(c̃_t)) - 1
        if ln_c:
            tc = torch.native_layer_norm(ct_[t], (H,), ln_c_w, ln_c_b, LN_EPS)[0].sigmoid_()
        else:
            tc = torch.add(ct_[t], ct_[t], out=tanh_c).sigmoid_()
        torch.add(neg1, tc, alpha=2, out=tc)
        # h̃_t = W_hr (o ⊙ tanh(LN_c(c̃_t)))
        h_t = h_[t] if h_tilde is None else h_tilde
        if proj:
            torch.mm(torch.mul(o_[t], tc, out=q_[t]), w_hr_t, out=h_t)
        else:
            torch.mul(o_[t], tc, out=h_t)
        # h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t, written as lerp(h̃_t, h_{t-1}, k_t)
        if h_tilde is not None:
            torch.lerp(h_tilde, h_prev[t], m.keep[t], out=h_[t])
        if m.keep_c is not None:
            torch.lerp(ct_[t], c_prev[t], m.keep_c[t], out=c_[t])

    return dict(h=h_all, act=act, c_tilde=c_tilde, c=c_all, q=q, h_in=h_in, hp=hp)


def _gru_forward(cell, xw, h0, c0, w, m, T, B, H, P):
    GH = 3 * H
    new = xw.new_empty
    h_all, h_prev, h_in, hp = _recurrent_setup(xw, h0, w, m, T, B, P, GH)
    w_hh_t = w.w_hh.t()  # (H, 3H)
    ln_hh = w.ln_hh_w is not None
    # the whole of b_hh goes into hw_t (its n block is multiplied by r); under LN_hh into LN's bias
    b_h = _add_opt(w.ln_hh_b, w.b_hh) if ln_hh else w.b_hh

    # n = tanh(xw_n + r ⊙ hw_n) = 2σ(2 xw_n + 2 r ⊙ hw_n) - 1: xw_n doubled here, the
    # other 2 is addcmul's value
    xw[..., 2 * H:] *= 2
    neg1 = xw.new_full((), -1.0)

    act = xw  # xw_t becomes r | z | n in place (see _lstm_forward)
    rz_all, n_all = act[..., :2 * H], act[..., 2 * H:]  # (T, B, 2H), (T, B, H) views
    r_all, z_all = rz_all.split(H, dim=-1)  # 2 x (T, B, H)
    # hw_t of one step; of it the backward needs only hw_n (dr = dn_pre ⊙ hw_n), kept per step;
    # under LN_hh the backward recomputes hw from hp instead
    hw_t = new((B, GH))
    hw_n = None if ln_hh else new((T, B, H))
    h_tilde = new((B, P)) if m.keep is not None else None

    rz_, n_, r_, z_, h_ = (t.unbind(0) for t in (rz_all, n_all, r_all, z_all, h_all))
    hw_n_ = hw_n.unbind(0) if hw_n is not None else None
    hin_ = h_in.unbind(0) if h_in is not None else None
    hp_ = hp.unbind(0) if ln_hh else None
    for t in range(T):
        h_in_t = h_prev[t] if hin_ is None else torch.mul(h_prev[t], m.rec, out=hin_[t])
        # hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh
        if ln_hh:
            hw_t = torch.native_layer_norm(torch.mm(h_in_t, w_hh_t, out=hp_[t]), (GH,), w.ln_hh_w, b_h, LN_EPS)[0]
        elif b_h is None:
            torch.mm(h_in_t, w_hh_t, out=hw_t)
        else:
            torch.addmm(b_h, h_in_t, w_hh_t, out=hw_t)
        # r, z = σ(xw_rz + hw_rz); n = tanh(xw_n + r ⊙ hw_n), in place in xw_t
        rz_[t].add_(hw_t[:, :2 * H]).sigmoid_()
        n_[t].addcmul_(r_[t], hw_t[:, 2 * H:], value=2).sigmoid_()
        torch.add(neg1, n_[t], alpha=2, out=n_[t])
        if hw_n_ is not None:
            hw_n_[t].copy_(hw_t[:, 2 * H:])
        # h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1} = lerp(n, h_{t-1}, z)
        h_t = h_[t] if h_tilde is None else h_tilde
        torch.lerp(n_[t], h_prev[t], z_[t], out=h_t)
        if h_tilde is not None:
            torch.lerp(h_tilde, h_prev[t], m.keep[t], out=h_[t])

    return dict(h=h_all, act=act, hw_n=hw_n, h_in=h_in, hp=hp)


def _rnn_forward(cell, xw, h0, c0, w, m, T, B, H, P):
    GH = H
    # h̃_t is computed in place in xw_t (and kept: the backward needs act'(·) of it); without
    # keep it is h_t too
    h_tilde = xw
    h_all, h_prev, h_in, hp = _recurrent_setup(xw, h0, w, m, T, B, P, GH, xw if m.keep is None else None)
    w_hh_t = w.w_hh.t()  # (H, H)
    ln_hh = w.ln_hh_w is not None

    ht_, h_ = h_tilde.unbind(0), h_all.unbind(0)
    hin_ = h_in.unbind(0) if h_in is not None else None
    hp_ = hp.unbind(0) if ln_hh else None
    relu = cell == "rnn_relu"
    ln_hh_w, ln_hh_b = w.ln_hh_w, w.ln_hh_b
    if not relu:
        # tanh(a) = 2σ(2a) - 1: double xw (ours, fresh) and W_hh, or LN_hh's weight and bias
        xw *= 2
        if ln_hh:
            ln_hh_w, ln_hh_b = _double_block(ln_hh_w, 0, GH), _double_block(ln_hh_b, 0, GH)
        else:
            w_hh_t = w_hh_t * 2
    neg1 = xw.new_full((), -1.0)
    for t in range(T):
        h_in_t = h_prev[t] if hin_ is None else torch.mul(h_prev[t], m.rec, out=hin_[t])
        # h̃_t = act(xw_t + LN_hh(W_hh (m ⊙ h_{t-1}))) (b_hh is already in xw)
        if ln_hh:
            torch.mm(h_in_t, w_hh_t, out=hp_[t])
            ht_[t].add_(torch.native_layer_norm(hp_[t], (GH,), ln_hh_w, ln_hh_b, LN_EPS)[0])
        else:
            ht_[t].addmm_(h_in_t, w_hh_t)
        if relu:
            ht_[t].relu_()
        else:
            torch.add(neg1, ht_[t].sigmoid_(), alpha=2, out=ht_[t])
        if m.keep is not None:
            torch.lerp(ht_[t], h_prev[t], m.keep[t], out=h_[t])

    return dict(h=h_all, h_tilde=h_tilde, h_in=h_in, hp=hp)


# ----------------------------------------------------------------------------
# Per-cell reverse loops. Each returns a dict with dxw, dhw, dhp (T, B, GH), dh0, and
# for the LSTM dc0 and the grads of w_hr, ln_c_w, ln_c_b; ln_hh_w under LN_hh.


class _RecurrentBackward:
    """The part of the reverse step every cell shares: from dhw_t to dh_{t-1}.

    dhp_t = LN_hh'(dhw_t)           (the identity without LN_hh)
    dh_{t-1} = (dhp_t W_hh) ⊙ m + k_t ⊙ dh_t   (+ the cell's direct term, added by the caller)
    """

    def __init__(self, s, dhw, T, GH, hp_stats=None):
        self.w_hh, self.rec, self.keep = s["w_hh"], s["m_rec"], s["m_keep"]
        self.ln = self.ln_w_grad = None
        if s["ln_hh_w"] is not None:
            self.ln = _LayerNormGrad(s["ln_hh_w"], GH, dhw)
            # LN_hh's v̂_t, rstd_t: from the caller when it needed them for all steps (GRU),
            # else recomputed per step, where they stay in cache
            self.hp_, self.stats_ = s["hp"].unbind(0), None
            if hp_stats is not None:
                self.stats_ = list(zip(hp_stats[0].unbind(0), hp_stats[1].unbind(0)))
            self.dhp = torch.empty_like(dhw)
            self.dhp_ = self.dhp.unbind(0)
            self.ln_w_grad = dhw.new_zeros(GH)  # Σ dhw ⊙ v̂, accumulated per step
            self.ones_b = dhw.new_ones(dhw.shape[1])  # (B,)
        else:
            self.dhp = dhw
        self.dhw_ = dhw.unbind(0)

    def step(self, t: int, dh_t: Tensor, dh: Tensor) -> None:
        """Write dh_{t-1} (without the cell's direct term) into dh; dh_t is dL/dh_t (total)."""
        dhp_t = self.dhw_[t]
        if self.ln is not None:
            v_hat, rstd = self.stats_[t] if self.stats_ is not None else self.ln.stats(self.hp_[t])
            dhp_t, p = self.ln(dhp_t, v_hat, rstd, out=self.dhp_[t])
            self.ln_w_grad.addmv_(p.t(), self.ones_b)  # (GH, B) @ (B,)
        torch.mm(dhp_t, self.w_hh, out=dh)  # (B, GH) @ (GH, P) -> (B, P)
        if self.rec is not None:
            dh.mul_(self.rec)
        if self.keep is not None:
            dh.addcmul_(self.keep[t], dh_t)


def _dh_tilde(s, dY, T, B, P):
    """dL/dh̃_t = (1 - k_t) ⊙ dL/dh_t: a buffer of its own under keep, else dY itself."""
    if s["m_keep"] is None:
        return dY, None
    return dY.new_empty((T, B, P)), (1 - s["m_keep"]).unbind(0)


def _lstm_backward(cell, s, dY, dh, dc_T, T, B, H, P, need):
    GH = 4 * H
    act, c_tilde, c_all, c0, q = s["act"], s["c_tilde"], s["c"], s["c0"], s["q"]
    i, f, g, o = act.split(H, dim=-1)  # 4 x (T, B, H) views
    keep_c, ln_c_w, w_hr = s["m_keep_c"], s["ln_c_w"], s["w_hr"]

    # τ = tanh(LN_c(c̃_t)) for all steps at once (cheaper to recompute than to store per step)
    if ln_c_w is not None:
        ln_c = _LayerNormGrad(ln_c_w, H, c_tilde)
        c_hat, c_rstd = ln_c.stats(c_tilde)  # (T, B, H), (T, B, 1)
        tau = _tanh(torch.addcmul(s["ln_c_b"], c_hat, ln_c_w) if s["ln_c_b"] is not None else c_hat * ln_c_w)
    else:
        tau = _tanh(c_tilde)

    # Everything that multiplies the incoming gradient, for all steps, before the loop:
    #   da_i = dc̃ ⊙ g ⊙ i(1-i)   da_f = dc̃ ⊙ c_{t-1} ⊙ f(1-f)   da_g = dc̃ ⊙ i ⊙ (1-g²)
    #   da_o = dq ⊙ τ ⊙ o(1-o)   dc̃ = dq ⊙ o ⊙ (1-τ²) [LN_c'] + (1 - kc_t) ⊙ dc_t
    # (s - s² and 1 - τ² as one addcmul each: every pass over (T, B, H) counts here)
    one = act.new_ones(())
    da = torch.empty_like(act)  # (T, B, 4H): the coefficients, then, in place, da_t
    da_i, da_f, da_g, da_o = da.split(H, dim=-1)
    torch.addcmul(i, i, i, value=-1, out=da_i).mul_(g)
    torch.addcmul(f, f, f, value=-1, out=da_f)
    da_f[0].mul_(c0)  # c_{t-1}: c0, then c_all[:-1]
    da_f[1:].mul_(c_all[:-1])
    torch.addcmul(one, g, g, value=-1, out=da_g).mul_(i)
    torch.addcmul(o, o, o, value=-1, out=da_o).mul_(tau)
    od = torch.addcmul(one, tau, tau, value=-1).mul_(o)  # (T, B, H): dq -> d LN_c(c̃)

    dht, k1_ = _dh_tilde(s, dY, T, B, P)
    dq = dht if w_hr is None else dY.new_empty((T, B, H))  # dL/dq_t, q = o ⊙ τ
    rb = _RecurrentBackward(s, da, T, GH)
    dc = state_grad(dc_T, c0)  # running dL/dc_t; ends as dL/dc0
    dct = dY.new_empty((B, H))  # dL/dc̃_t of the current step
    dct_b = dct.unsqueeze(1)  # (B, H) -> (B, 1, H) view, broadcast over the i|f|g blocks
    dc_next = dY.new_empty((B, H)) if keep_c is not None else None

    da_ifg_ = da[..., :3 * H].view(T, B, 3, H).unbind(0)  # (T, B, 3H) -> (T, B, 3, H): i|f|g blocks
    dY_, dht_, dq_, od_, da_o_, f_ = (t.unbind(0) for t in (dY, dht, dq, od, da_o, f))
    kc_, kc1_ = (keep_c.unbind(0), (1 - keep_c).unbind(0)) if keep_c is not None else (None, None)
    if ln_c_w is not None:
        d_ln_c, p_c = torch.empty_like(c_tilde), torch.empty_like(c_tilde)  # dL/d LN_c(c̃_t), its ⊙ ĉ
        c_hat_, c_rstd_, d_ln_c_, p_c_ = (t.unbind(0) for t in (c_hat, c_rstd, d_ln_c, p_c))
    for t in range(T - 1, -1, -1):
        dh_t = dY_[t].add_(dh)  # dL/dh_t = from y_t + from step t+1
        dht_t = dh_t if k1_ is None else torch.mul(dh_t, k1_[t], out=dht_[t])
        dq_t = dht_t if w_hr is None else torch.mm(dht_t, w_hr, out=dq_[t])  # (B, P) @ (P, H)
        dc_t = dc if kc1_ is None else torch.mul(dc, kc1_[t])  # the part of dc_t that reaches c̃_t
        if ln_c_w is not None:
            torch.mul(dq_t, od_[t], out=d_ln_c_[t])
            ln_c(d_ln_c_[t], c_hat_[t], c_rstd_[t], out=dct, out_p=p_c_[t])
            dct.add_(dc_t)
        else:
            torch.addcmul(dc_t, dq_t, od_[t], out=dct)
        da_ifg_[t].mul_(dct_b)
        da_o_[t].mul_(dq_t)
        # dc_{t-1} = f ⊙ dc̃_t + kc_t ⊙ dc_t
        if kc_ is None:
            torch.mul(f_[t], dct, out=dc)
        else:
            torch.mul(f_[t], dct, out=dc_next).addcmul_(kc_[t], dc)
            dc, dc_next = dc_next, dc
        rb.step(t, dh_t, dh)

    out = dict(dxw=da, dhw=da, dhp=rb.dhp, dh0=dh, dc0=dc, ln_hh_w=rb.ln_w_grad)
    if w_hr is not None and need["w_hr"]:
        out["w_hr"] = torch.mm(rows(dht).t(), rows(q))  # (P, T*B) @ (T*B, H) -> (P, H)
    if ln_c_w is not None:
        out["ln_c_w"] = _sum_rows(p_c) if need["ln_c_w"] else None
        out["ln_c_b"] = _sum_rows(d_ln_c) if need["ln_c_b"] else None
    return out


def _gru_backward(cell, s, dY, dh, dc_T, T, B, H, P, need):
    GH = 3 * H
    act, h_all, h0 = s["act"], s["h"], s["h0"]
    r, z, n = act.split(H, dim=-1)  # 3 x (T, B, H) views
    dhw = torch.empty_like(act)  # (T, B, 3H): coefficients, then, in place, dhw_t
    hw_n, hp_stats = s["hw_n"], None
    if hw_n is None:  # LN_hh: hw = LN_hh(hp) + b_hh, recomputed for all steps at once
        hp_stats = torch.native_layer_norm(s["hp"], (GH,), None, None, LN_EPS)[::2]  # v̂, rstd
        hw = hp_stats[0] * s["ln_hh_w"]
        b_h = _add_opt(s["ln_hh_b"], s["b_hh"])
        if b_h is not None:
            hw += b_h
        hw_n = hw[..., 2 * H:]  # (T, B, H)

    # With dh̃ = dL/dh̃_t and dn_pre = dh̃ ⊙ (1-z)(1-n²):
    #   da_n = dn_pre            dhw_n = dn_pre ⊙ r
    #   da_r = dhw_r = dn_pre ⊙ hw_n ⊙ r(1-r)
    #   da_z = dhw_z = dh̃ ⊙ (h_{t-1} - n) ⊙ z(1-z)
    # all coefficients of dh̃, computed for every step before the loop
    one = act.new_ones(())
    c_n = torch.sub(one, z).mul_(torch.addcmul(one, n, n, value=-1))  # (T, B, H)
    dhw_r, dhw_z, dhw_n = dhw.split(H, dim=-1)
    torch.addcmul(r, r, r, value=-1, out=dhw_r).mul_(c_n).mul_(hw_n)
    torch.sub(h0, n[0], out=dhw_z[0])  # h_{t-1}: h0, then h_all[:-1] (no concatenated copy)
    torch.sub(h_all[:-1], n[1:], out=dhw_z[1:])
    dhw_z.mul_(torch.addcmul(z, z, z, value=-1))
    torch.mul(c_n, r, out=dhw_n)

    dht, k1_ = _dh_tilde(s, dY, T, B, P)
    rb = _RecurrentBackward(s, dhw, T, GH, hp_stats)
    dhw_ = dhw.view(T, B, 3, H).unbind(0)  # (T, B, 3H) -> (T, B, 3, H): r|z|n blocks
    dht_b_ = dht.unsqueeze(2).unbind(0)  # (T, B, H) -> (T, B, 1, H) views, broadcast over the blocks
    dY_, dht_, z_ = dY.unbind(0), dht.unbind(0), z.unbind(0)
    for t in range(T - 1, -1, -1):
        dh_t = dY_[t].add_(dh)  # dL/dh_t = from y_t + from step t+1
        dht_t = dh_t if k1_ is None else torch.mul(dh_t, k1_[t], out=dht_[t])
        dhw_[t].mul_(dht_b_[t])
        rb.step(t, dh_t, dh)
        dh.addcmul_(z_[t], dht_t)  # the direct path of h̃_t = … + z ⊙ h_{t-1}

    def dhw_to_dxw():
        # da differs from dhw only in the n block: da_n = dh̃ ⊙ (1-z)(1-n²). Written over
        # dhw in place (no (T, B, 3H) copy) once the caller is done with dhw.
        torch.mul(dht, c_n, out=dhw[..., 2 * H:])

    return dict(dxw=dhw, dhw=dhw, dhp=rb.dhp, dh0=dh, ln_hh_w=rb.ln_w_grad, dhw_to_dxw=dhw_to_dxw)


def _rnn_backward(cell, s, dY, dh, dc_T, T, B, H, P, need):
    GH = H
    h_tilde = s["h_tilde"]
    # act'(a) from h̃ = act(a): tanh' = 1 - h̃², relu' = [h̃ > 0]; then, in place, da_t
    if cell == "rnn_relu":
        da = (h_tilde > 0).to(h_tilde.dtype)
    else:
        da = 1 - h_tilde * h_tilde  # (T, B, H)

    dht, k1_ = _dh_tilde(s, dY, T, B, P)
    rb = _RecurrentBackward(s, da, T, GH)
    dY_, dht_, da_ = dY.unbind(0), dht.unbind(0), da.unbind(0)
    for t in range(T - 1, -1, -1):
        dh_t = dY_[t].add_(dh)  # dL/dh_t = from y_t + from step t+1
        dht_t = dh_t if k1_ is None else torch.mul(dh_t, k1_[t], out=dht_[t])
        da_[t].mul_(dht_t)
        rb.step(t, dh_t, dh)
    return dict(dxw=da, dhw=da, dhp=rb.dhp, dh0=dh, ln_hh_w=rb.ln_w_grad)
