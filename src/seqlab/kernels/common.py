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

import torch
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


# ----------------------------------------------------------------------------
# The shell the fast paths share (fused.py, compiled.py, triton_rnn.py): checking, the input
# projection, recording, the outputs, the start of the backward and the weight gradients after
# the loop. Each path keeps only its time loop (and, for the compiled path, its C++ ops).

#: the cell ids the C++ and Triton kernels take (csrc/common.h's ``enum Cell``)
CELL_ID = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
#: a fast path's ``autograd.Function`` takes (cell, recorded, x, h0, c0, *weights, *masks):
#: the first N_WEIGHTS slots are ``LayerWeights``, the rest ``Masks``
N_WEIGHTS = len(LayerWeights._fields)
#: the names of a Function's differentiable inputs, in ``ctx.needs_input_grad[2:]`` order
GRAD_NAMES = ("x", "h0", "c0") + LayerWeights._fields


def fast_run_layer(path: str, supports, run):
    """The public ``run_layer`` of a fast path: refuse with the reason ``supports`` gives, else ``run``.

    ``supports(cell, x, w, masks)`` is None or a one-line reason; ``run`` has ``run_layer``'s
    signature and may assume the call was accepted (see ``run_accepted``). The signature and
    contract are ``reference.run_layer``'s.
    """
    def run_layer(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w: LayerWeights, masks: Masks = Masks(),
                  record: bool = False) -> LayerResult:
        """Run ``cell`` over ``x`` (T, B, I), time-major, from (h0, c0); the contract of ``reference.run_layer``.

        Raises ValueError with the path's reason when it cannot run the call. Gradients flow to
        x, h0, c0 and every weight that is given (not to the masks); a backward with
        ``create_graph=True`` is differentiated through the reference loop.
        """
        reason = supports(cell, x, w, masks)
        if reason is not None:
            raise ValueError(f"the {path} path cannot run this call: {reason}")
        return run(cell, x, h0, c0, w, masks, record)

    run_layer.__qualname__ = run_layer.__name__ = "run_layer"
    return run_layer


def run_accepted(apply, cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w: LayerWeights, masks: Masks,
                 record: bool) -> LayerResult:
    """An accepted call: check the shapes, pass T == 0 through, else ``apply`` and copy what it recorded.

    ``apply(cell, recorded, x, h0, c0, *w, *masks) -> (y, h_T, c_T or None)`` is the path's
    time loop (its ``autograd.Function.apply``); ``recorded`` is None or a dict it fills with
    views of its buffers (``record_views``). The user gets copies: the backward reads those
    buffers, and some paths overwrite them in place, so a later ``backward()`` must not change
    what the user is looking at.
    """
    T, B, H, P = check_layer_shapes(cell, x, h0, c0, w, masks)
    if T == 0:
        return empty_result(cell, x, h0, c0, H, record)
    recorded: Optional[dict] = {} if record else None
    y, h, c = apply(cell, recorded, x, h0, c0 if cell == "lstm" else None, *w, *masks)
    if recorded is not None:
        recorded = {name: recorded[name].detach().clone() for name in RECORDED[cell]}
    return LayerResult(y, h, c, recorded)


def split_slots(slots: tuple) -> tuple[LayerWeights, Masks]:
    """The Function's flat slots (*weights, *masks) as the two NamedTuples."""
    return LayerWeights(*slots[:N_WEIGHTS]), Masks(*slots[N_WEIGHTS:])


def folded_bias(cell: str, w: LayerWeights) -> Optional[Tensor]:
    """The bias added to the input projection: b_ih, plus b_hh where the cell allows it.

    For the LSTM and the RNN b_hh is added after LN_hh, so it only shifts xw_t + hw_t and can
    join b_ih (one add over all steps instead of one per step). The GRU keeps b_hh in hw_t,
    where r multiplies its n block. csrc/forward.h folds the same way.
    """
    if cell == "gru" or w.b_hh is None:
        return w.b_ih
    return w.b_hh if w.b_ih is None else w.b_ih + w.b_hh


def project_inputs(cell: str, x: Tensor, w: LayerWeights) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """xw_t = LN_ih(W_ih x_t) + b_ih (+ b_hh, ``folded_bias``) for all steps in one product.

    Returns x_rows (T*B, I), xw (T, B, G*H), a fresh buffer the loop may overwrite, and xp =
    W_ih x_t (T*B, G*H), LN_ih's input, kept for its backward (None without LN_ih).
    """
    T, B, I = x.shape
    GH = w.w_ih.shape[0]
    x_rows = x.reshape(T * B, I)  # (T, B, I) -> (T*B, I); copies only when x is non-contiguous
    b_x = folded_bias(cell, w)
    xp = None
    if w.ln_ih_w is not None:
        xp = torch.mm(x_rows, w.w_ih.t())  # (T*B, GH)
        b_ln = b_x if w.ln_ih_b is None else (w.ln_ih_b if b_x is None else w.ln_ih_b + b_x)
        xw = torch.native_layer_norm(xp, (GH,), w.ln_ih_w, b_ln, LN_EPS)[0]
    elif b_x is None:
        xw = torch.mm(x_rows, w.w_ih.t())
    else:
        xw = torch.addmm(b_x, x_rows, w.w_ih.t())
    return x_rows, xw.view(T, B, GH), xp  # (T*B, GH) -> (T, B, GH)


def record_views(cell: str, H: int, h: Tensor, act: Optional[Tensor] = None, c: Optional[Tensor] = None) -> dict:
    """``RECORDED[cell]`` as views of a loop's buffers: h (T, B, P); act (T, B, G*H), the gates
    after σ / tanh in torch.nn's order (LSTM, GRU); c (T, B, H), the LSTM's blended c_t."""
    out = {"h": h}
    if cell == "lstm":
        out.update(zip("ifgo", act.split(H, dim=-1)), c=c)  # 4 x (T, B, H)
    elif cell == "gru":
        out.update(zip("rzn", act.split(H, dim=-1)))  # 3 x (T, B, H)
    return out


def layer_outputs(h_all: Tensor, c_all: Optional[Tensor], out: Optional[Tensor]) -> tuple:
    """(y, h_T, c_T) from the loop's h_t (T, B, P) and c_t (T, B, H): y_t = o_t ⊙ h_t.

    All three are fresh tensors, not the buffers the backward reads, so that a caller may
    modify them in place (e.g. dropout(inplace=True)) without breaking the backward.
    """
    y = h_all * out if out is not None else h_all.clone()
    return y, h_all[-1].clone(), (c_all[-1].clone() if c_all is not None else None)


def grad_needs(ctx) -> dict:
    """name (``GRAD_NAMES``) -> whether autograd wants that input's gradient."""
    return dict(zip(GRAD_NAMES, ctx.needs_input_grad[2:]))


def backward_start(dy: Tensor, dh_T: Optional[Tensor], out: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Fresh, contiguous buffers the reverse loop accumulates into: dY = o_t ⊙ dL/dy_t (T, B, P), the
    gradient arriving at h_t from y_t; dh = dL/dh_T (B, P), the running gradient from the future."""
    dY = torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
    if out is not None:
        torch.mul(dy, out, out=dY)
    else:
        dY.copy_(dy)
    return dY, state_grad(dh_T, dY[0])


def state_grad(d: Optional[Tensor], like: Tensor) -> Tensor:
    """A fresh (B, ·) copy of an incoming state gradient, zeros where autograd gave none."""
    return torch.zeros_like(like) if d is None else d.clone(memory_format=torch.contiguous_format)


def rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])  # (T, B, n) -> (T*B, n)


def recurrent_weight_grads(grads: dict, need: dict, dhp: Tensor, dhw: Tensor, h_in: Optional[Tensor] = None,
                           h0: Optional[Tensor] = None, h_all: Optional[Tensor] = None) -> None:
    """After the reverse loop: dW_hh = Σ_t dhp_t^T (m ⊙ h_{t-1}) and db_hh = Σ_t dhw_t into ``grads``.

    dhp (T, B, G*H) is the gradient of W_hh (m ⊙ h_{t-1}), dhw that of hw_t (after LN_hh; the
    same tensor without LN_hh). h_in (T, B, P) holds every m ⊙ h_{t-1} where the caller has it
    in one buffer; else h_{t-1} is h0 (B, P) then h_all[:-1], taken as two products rather than
    concatenated (a copy of (T, B, P)). One product or reduction over all T*B rows each; b_hh
    and LN_hh's bias have the same gradient (both are added after LN_hh's normalisation).
    """
    if need["w_hh"]:
        if h_in is not None:
            grads["w_hh"] = torch.mm(rows(dhp).t(), rows(h_in))  # (GH, T*B) @ (T*B, P) -> (GH, P)
        else:
            grads["w_hh"] = torch.mm(dhp[0].t(), h0)  # (GH, B) @ (B, P)
            if dhp.shape[0] > 1:
                grads["w_hh"].addmm_(rows(dhp[1:]).t(), rows(h_all[:-1]))  # (GH, (T-1)*B) @ (…, P)
    if need["b_hh"] or need["ln_hh_b"]:
        db_hh = dhw.sum(dim=(0, 1))  # (T, B, GH) -> (GH,)
        grads["b_hh"] = db_hh if need["b_hh"] else None
        grads["ln_hh_b"] = db_hh if need["ln_hh_b"] else None


def input_weight_grads(grads: dict, need: dict, dxw: Tensor, x_rows: Tensor, w_ih: Tensor, ln_ih_backward=None) -> None:
    """After the reverse loop: the input side from dxw (T, B, G*H), the gradient of xw_t, into ``grads``.

    db_ih = Σ dxw (LN_ih's bias too); then, under LN_ih, ``ln_ih_backward(dxp)`` turns dxw
    (T*B, G*H) in place into the gradient of W_ih x_t and returns LN_ih's weight gradient;
    dW_ih = dxp^T X and dx = dxp W_ih, one product each over all T*B rows.
    """
    T, B, GH = dxw.shape
    if need["b_ih"] or need["ln_ih_b"]:
        db_ih = dxw.sum(dim=(0, 1))  # (T, B, GH) -> (GH,)
        grads["b_ih"] = db_ih if need["b_ih"] else None
        grads["ln_ih_b"] = db_ih if need["ln_ih_b"] else None
    dxp = rows(dxw)  # (T*B, GH)
    if ln_ih_backward is not None and (need["x"] or need["w_ih"] or need["ln_ih_w"]):
        dw = ln_ih_backward(dxp)
        grads["ln_ih_w"] = dw if need["ln_ih_w"] else None
    if need["w_ih"]:
        grads["w_ih"] = torch.mm(dxp.t(), x_rows)  # (GH, T*B) @ (T*B, I) -> (GH, I)
    if need["x"]:
        grads["x"] = torch.mm(dxp, w_ih).view(T, B, -1)  # (T*B, GH) @ (GH, I) -> (T, B, I)


_NO_MASK_GRADS = (None,) * len(Masks._fields)


def function_grads(grads) -> tuple:
    """The gradients as a Function's backward returns them: None for cell and recorded, the
    ``GRAD_NAMES`` in order, None for the masks (constants). ``grads`` maps a name to its
    gradient (a missing name: None), or is already a sequence in ``GRAD_NAMES`` order."""
    if isinstance(grads, dict):
        grads = [grads.get(name) for name in GRAD_NAMES]
    return (None, None, *grads) + _NO_MASK_GRADS
