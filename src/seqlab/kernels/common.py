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


_SLOT_LABELS = tuple(f"w.{n}" for n in LayerWeights._fields) + tuple(f"masks.{n}" for n in Masks._fields)


def refuse_call(path: str, cell: str, x, w: LayerWeights, masks: Masks, floats: tuple) -> Optional[str]:
    """The checks every fast path makes before it takes a call: None, or a one-line reason.

    A fast path computes in x's dtype into buffers it allocates, treats masks as constants
    and knows the LSTM-only slots; anything else is for the reference loop (or an error).
    """
    if cell not in GATES:
        return f"unknown cell {cell!r}; the {path} path runs {sorted(GATES)}"
    if not isinstance(x, Tensor):
        return f"input is a {type(x).__name__}, not a Tensor"
    if x.dtype not in floats:
        return f"input dtype {x.dtype} is not a floating dtype the {path} path computes in ({', '.join(map(str, floats))})"
    if x.dim() != 3:
        return f"the {path} path takes time-major (T, B, I) input, got {x.dim()}D"
    for name, t in zip(_SLOT_LABELS, (*w, *masks)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            return f"{name} is a {type(t).__name__}, not a Tensor"
        if t.dtype != x.dtype:
            # buffers are allocated in x's dtype; mixing would silently change precision
            return f"{name} has dtype {t.dtype} but the input has {x.dtype}; the {path} path does not mix dtypes"
        if t.device != x.device:
            return f"{name} is on {t.device} but the input is on {x.device}"
    for name, t in zip(Masks._fields, masks):
        if t is not None and t.requires_grad:
            return f"masks.{name} requires grad; the {path} path treats masks as constants"
    if cell != "lstm":
        for name in ("w_hr", "ln_c_w", "ln_c_b"):
            if getattr(w, name) is not None:
                return f"w.{name} is given but only the LSTM has it (cell {cell!r})"
        if masks.keep_c is not None:
            return f"masks.keep_c is given but only the LSTM has a cell state (cell {cell!r})"
    return None


def _check_shape(name: str, t: Optional[Tensor], want: tuple) -> None:
    if t is not None and tuple(t.shape) != want:
        raise ValueError(f"expected {name} of shape {want}, got {tuple(t.shape)}")


def _check_mask(name: str, t: Optional[Tensor], T: int, B: int, n: int) -> None:
    if t is not None and tuple(t.shape) not in ((T, B, n), (T, B, 1)):
        raise ValueError(f"expected {name} of shape {(T, B, n)} or {(T, B, 1)}, got {tuple(t.shape)}")


def check_layer_shapes(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w: LayerWeights,
                       masks: Masks) -> tuple[int, int, int, int]:
    """Check every shape of a ``run_layer`` call against x (T, B, I) and w_ih (G*H, I); return (T, B, H, P).

    The fast paths call this before they allocate anything, so a wrong shape is a clear
    ValueError, not an error from deep inside a kernel.
    """
    T, B, I = x.shape
    G = GATES[cell]
    if w.w_ih.dim() != 2 or w.w_ih.shape[1] != I or w.w_ih.shape[0] % G != 0:
        raise ValueError(f"expected w_ih of shape ({G}*H, {I}) for cell {cell!r}, got {tuple(w.w_ih.shape)}")
    GH = w.w_ih.shape[0]
    H = GH // G
    P = H if w.w_hr is None else w.w_hr.shape[0]
    _check_shape("w_hh", w.w_hh, (GH, P))
    _check_shape("h0", h0, (B, P))
    for name in ("b_ih", "b_hh", "ln_ih_w", "ln_ih_b", "ln_hh_w", "ln_hh_b"):
        _check_shape(name, getattr(w, name), (GH,))
    _check_shape("w_hr", w.w_hr, (P, H))
    _check_shape("ln_c_w", w.ln_c_w, (H,))
    _check_shape("ln_c_b", w.ln_c_b, (H,))
    if cell == "lstm":
        if c0 is None:
            raise ValueError("the LSTM needs c0 of shape (B, H), got None")
        _check_shape("c0", c0, (B, H))
    for name, t in (("h0", h0), ("c0", c0 if cell == "lstm" else None)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"expected {name} of dtype {x.dtype} on {x.device}, got {t.dtype} on {t.device}")
    _check_mask("masks.keep", masks.keep, T, B, P)
    _check_mask("masks.keep_c", masks.keep_c, T, B, H)
    _check_mask("masks.out", masks.out, T, B, 1)
    _check_shape("masks.rec", masks.rec, (B, P))
    return T, B, H, P


def empty_result(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], H: int, record: bool) -> LayerResult:
    """T == 0: nothing to run; the states pass through unchanged (same objects, so gradients flow)."""
    B, P = h0.shape
    rec = {name: x.new_zeros((0, B, P if name == "h" else H)) for name in RECORDED[cell]} if record else None
    return LayerResult(x.new_zeros((0, B, P)), h0, c0 if cell == "lstm" else None, rec)
