"""The contract every recurrence kernel implements: one layer, one direction, forward in time.

A kernel runs a cell over a padded, time-major sequence. Everything that is
about layout (batch_first, packing, reversal for the backward direction,
unbatched input) and about randomness (dropout and zoneout masks) is done by
the Module before the call, so that every kernel sees the same numbers and
the same masks, and two kernels can be compared exactly.

Symbols (torch.nn's gate order):
    G = 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n), 1 (Elman RNN)
    H = hidden_size, P = proj_size if proj_size > 0 else H, I = input size

The cell, for every t (LN is applied only when the LayerNorm weights are given):

    xw_t = LN_ih(W_ih x_t) + b_ih                    (G*H)
    hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh          (G*H)   m: recurrent-dropout mask
    LSTM: i, f, g, o = σ, σ, tanh, σ of (xw_t + hw_t)
          c̃_t = f ⊙ c_{t-1} + i ⊙ g
          h̃_t = W_hr (o ⊙ tanh(LN_c(c̃_t)))          (W_hr only with proj_size)
    GRU:  r = σ(xw_r + hw_r), z = σ(xw_z + hw_z)
          n = tanh(xw_n + r ⊙ hw_n)
          h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    RNN:  h̃_t = act(xw_t + hw_t)                     act = tanh or relu

and then the state update, which carries zoneout and variable lengths in one form:

    h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t            k = keep (zoneout or padding)
    c_t = kc_t ⊙ c_{t-1} + (1 - kc_t) ⊙ c̃_t
    y_t = o_t ⊙ h_t                                  o = out_mask (1 before the length, 0 after)

LN(v) = (v - mean(v)) / sqrt(var(v) + eps) * w + b over the last dimension (G*H
for the projections, H for the cell), eps = LN_EPS.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

LN_EPS = 1e-5

#: number of gate blocks stacked in W_ih / W_hh, per cell
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

#: names of the per-step values a kernel records when asked (``record=True``)
RECORDED = {
    "rnn_tanh": ("h",),
    "rnn_relu": ("h",),
    "lstm": ("i", "f", "g", "o", "c", "h"),
    "gru": ("r", "z", "n", "h"),
}


class LayerWeights(NamedTuple):
    """The parameters of one layer and direction, as the kernels take them."""

    w_ih: Tensor  # (G*H, I)
    w_hh: Tensor  # (G*H, P)
    b_ih: Optional[Tensor] = None  # (G*H,)
    b_hh: Optional[Tensor] = None  # (G*H,)
    w_hr: Optional[Tensor] = None  # (P, H), LSTM with proj_size only
    ln_ih_w: Optional[Tensor] = None  # (G*H,)  layer_norm only
    ln_ih_b: Optional[Tensor] = None  # (G*H,)
    ln_hh_w: Optional[Tensor] = None  # (G*H,)
    ln_hh_b: Optional[Tensor] = None  # (G*H,)
    ln_c_w: Optional[Tensor] = None  # (H,)    LSTM with layer_norm only
    ln_c_b: Optional[Tensor] = None  # (H,)

    @property
    def layer_norm(self) -> bool:
        return self.ln_ih_w is not None


class Masks(NamedTuple):
    """Per-call masks, drawn by the Module so that every kernel sees the same ones.

    Any of them may be None, meaning "all ones" for out_mask and "all zeros"
    (never keep) for keep / keep_c, and "no dropout" for rec.
    """

    keep: Optional[Tensor] = None  # (T, B, P) or (T, B, 1): k_t above
    keep_c: Optional[Tensor] = None  # (T, B, H) or (T, B, 1): kc_t above, LSTM only
    out: Optional[Tensor] = None  # (T, B, 1): 1.0 where t < length else 0.0
    rec: Optional[Tensor] = None  # (B, P): recurrent-dropout mask, already scaled by 1/(1-p)


class LayerResult(NamedTuple):
    y: Tensor  # (T, B, P) outputs y_t
    h: Tensor  # (B, P) final h_T
    c: Optional[Tensor]  # (B, H) final c_T, LSTM only
    record: Optional[dict]  # name -> (T, B, ·) per-step values, when record=True
