"""The reference path: the cell equations as a plain per-step loop, differentiated by autograd.

This file is the specification. Every fast path (``fused.py`` and whatever
comes after it) is tested against it, and it is written to be read next to the
equations in ``common.py``: one line per equation, the same symbols.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import GATES, LN_EPS, LayerResult, LayerWeights, Masks, RECORDED


def _ln(v: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """LayerNorm over the last dimension, or the identity when no weight is given."""
    if weight is None:
        return v
    return F.layer_norm(v, (v.shape[-1],), weight, bias, LN_EPS)


def _add_bias(v: Tensor, b: Optional[Tensor]) -> Tensor:
    return v if b is None else v + b


def run_layer(
    cell: str,
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w: LayerWeights,
    masks: Masks = Masks(),
    record: bool = False,
) -> LayerResult:
    """Run ``cell`` over ``x`` (T, B, I), time-major, from (h0, c0). See ``common.py``."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(GATES)}")
    T = x.shape[0]
    H = w.w_hh.shape[0] // GATES[cell]
    h, c = h0, c0
    ys: list[Tensor] = []
    rec: dict[str, list[Tensor]] = {name: [] for name in RECORDED[cell]} if record else {}

    for t in range(T):
        # xw_t = LN_ih(W_ih x_t) + b_ih ; hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh
        xw = _add_bias(_ln(x[t] @ w.w_ih.t(), w.ln_ih_w, w.ln_ih_b), w.b_ih)
        h_in = h if masks.rec is None else masks.rec * h
        hw = _add_bias(_ln(h_in @ w.w_hh.t(), w.ln_hh_w, w.ln_hh_b), w.b_hh)

        c_new = None
        if cell == "lstm":
            a_i, a_f, a_g, a_o = (xw + hw).split(H, dim=-1)  # 4 x (B, H)
            i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
            c_new = f * c + i * g
            h_new = o * torch.tanh(_ln(c_new, w.ln_c_w, w.ln_c_b))
            if w.w_hr is not None:
                h_new = h_new @ w.w_hr.t()  # (B, H) -> (B, P)
            gates = {"i": i, "f": f, "g": g, "o": o}
        elif cell == "gru":
            xr, xz, xn = xw.split(H, dim=-1)  # 3 x (B, H)
            hr, hz, hn = hw.split(H, dim=-1)  # 3 x (B, H)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h_new = (1 - z) * n + z * h
            gates = {"r": r, "z": z, "n": n}
        else:
            act = torch.tanh if cell == "rnn_tanh" else torch.relu
            h_new = act(xw + hw)
            gates = {}

        # h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t  (zoneout and padding in one form)
        if masks.keep is not None:
            k = masks.keep[t]
            h_new = k * h + (1 - k) * h_new
        if c_new is not None and masks.keep_c is not None:
            kc = masks.keep_c[t]
            c_new = kc * c + (1 - kc) * c_new
        h, c = h_new, c_new
        ys.append(h if masks.out is None else masks.out[t] * h)

        if record:
            gates["h"] = h
            if c is not None:
                gates["c"] = c
            for name in rec:
                rec[name].append(gates[name].detach())

    if T == 0:
        y = x.new_zeros((0,) + tuple(h0.shape))  # (0, B, P)
    else:
        y = torch.stack(ys)  # T x (B, P) -> (T, B, P)
    # with T == 0 nothing was stacked; h has the projected width P, every gate and c width H
    record_out = {name: (torch.stack(v) if v else
                         x.new_zeros((0,) + tuple(h0.shape[:-1]) + ((h0.shape[-1],) if name == "h" else (H,))))
                  for name, v in rec.items()} if record else None
    return LayerResult(y, h, c, record_out)


def cell_step(cell: str, x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """One step of the plain cell (no LayerNorm, masks or projection): (h', c'), c' None but for the LSTM.

    x (B, I), h (B, H), c (B, H). The same equations as ``run_layer``, written so that
    TorchScript compiles them: the cells (``RNNCell``, ``LSTMCell``, ``GRUCell``) run this,
    eagerly and under ``torch.jit.script`` alike.
    """
    xw = F.linear(x, w_ih, b_ih)  # (B, G*H)
    hw = F.linear(h, w_hh, b_hh)  # (B, G*H)
    if cell == "lstm":
        if c is None:
            raise ValueError("the LSTM cell needs c, got None")
        a_i, a_f, a_g, a_o = (xw + hw).chunk(4, dim=-1)  # 4 x (B, H)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c_new = f * c + i * g
        return o * torch.tanh(c_new), c_new
    if cell == "gru":
        xr, xz, xn = xw.chunk(3, dim=-1)  # 3 x (B, H)
        hr, hz, hn = hw.chunk(3, dim=-1)  # 3 x (B, H)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    if cell == "rnn_tanh":
        return torch.tanh(xw + hw), None
    if cell == "rnn_relu":
        return torch.relu(xw + hw), None
    raise ValueError("unknown cell " + cell + "; expected 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru'")


# ----------------------------------------------------------------------------
# Second derivatives for the fast paths


def keep_inputs(ctx, cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], slots: tuple) -> None:
    """Called by a fast path's ``autograd.Function.forward``: keep what ``graphed_backward`` re-runs.

    The tensors are the caller's own (with their autograd history), so that a gradient
    computed with ``create_graph=True`` connects to x, the states and the weights.
    """
    ctx.reference_inputs = (cell, x, h0, c0, slots)


def differentiable_backward(backward):
    """Decorator for a fast path's ``autograd.Function.backward`` (in place of ``once_differentiable``).

    autograd runs a backward with grad mode on exactly when the caller asked for
    ``create_graph=True`` (gradient penalties, Hessian-vector products, ``gradgradcheck``).
    Then the fast path's hand-written backward, which autograd cannot differentiate, is not
    used: the layer is re-run through this file's loop and differentiated by autograd, which
    gives a gradient that is itself differentiable (to any order). Otherwise the fast
    backward runs, in no_grad, as with ``once_differentiable``. ``once_differentiable`` alone
    is not enough: its error node hangs off the incoming gradients only, so a second
    derivative with respect to x or the weights came back as silent zeros.
    """
    import functools

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            return graphed_backward(ctx, *grads)
        with torch.no_grad():
            return backward(ctx, *grads)

    return wrapper


def graphed_backward(ctx, dy: Tensor, dh_T: Optional[Tensor], dc_T: Optional[Tensor]) -> tuple:
    """The backward of one fast-path layer call as a differentiable graph (see ``differentiable_backward``).

    Returns the gradients in the Functions' argument order: (cell, recorded, x, h0, c0,
    the 11 ``LayerWeights`` slots, the 4 ``Masks`` slots).
    """
    cell, x, h0, c0, slots = ctx.reference_inputs
    n_w = len(LayerWeights._fields)
    w, m = LayerWeights(*slots[:n_w]), Masks(*slots[n_w:])
    inputs = (x, h0, c0, *w)
    need = ctx.needs_input_grad[2:2 + len(inputs)]
    wanted = [t for t, n in zip(inputs, need) if n]
    res = run_layer(cell, x, h0, c0, w, m)
    outs, gouts = [], []
    for out, g in ((res.y, dy), (res.h, dh_T), (res.c, dc_T)):
        if out is not None and g is not None and out.requires_grad:
            outs.append(out)
            gouts.append(g)
    got = iter(torch.autograd.grad(outs, wanted, gouts, create_graph=True, allow_unused=True) if outs else
               [None] * len(wanted))
    grads = [next(got) if n else None for n in need]
    grads = [torch.zeros_like(t) if g is None and n else g for g, t, n in zip(grads, inputs, need)]
    return (None, None, *grads) + (None,) * len(Masks._fields)
