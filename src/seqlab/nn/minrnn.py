r"""minGRU and minLSTM: recurrent layers whose gates see only the input.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi (2024), "Were RNNs All We Needed?"
drop h_{t-1} from the gates of the GRU and the LSTM. Every step is then the
linear recurrence

.. math::
    h_t = a_t ⊙ h_{t-1} + b_t

with a_t and b_t known for all t from the input alone, so training computes
all T steps at once with a parallel scan, and generation runs one step at a
time in constant memory (:meth:`MinGRU.step`).

Four ways to run the same equations, chosen by ``mode`` (one place,
:func:`_choose_mode`; ``module.last_mode`` says which ran and why):

- ``'sequential'``: the step loop, written from the equations. It is the
  specification every other path is tested against, and the generation path.
- ``'log_scan'``: the paper's log-space formulation with Heinsen's (2023)
  scan, ``log h_t = a*_t + logcumsumexp_{s≤t}(log b_s − a*_s)`` with
  ``a*_t = Σ_{s≤t} log a_s``, on ``torch.logcumsumexp``.
- ``'scan'``: a two-level chunked scan in linear space with a hand-written
  backward (:class:`_MinScan`), in torch ops: runs on any device.
- ``'compiled'`` (the default for T > 1 on the CPU, where the C++ extension
  builds): the same recurrence as one C++ pass over time each way, gates,
  state update and adjoint fused per element, the products one MKL
  call each (``kernels/compiled.py``, ``min_forward``/``min_backward`` in
  ``csrc/recurrent.cpp``). A sequential pass is the cheapest scan on a CPU:
  the recurrence costs a few flops per element, and every extra pass over
  (T, B, H) that a parallel scan makes costs more than that. It is one
  registered op (``seqlab::min_layer``), so torch.compile traces a model
  with these layers without a graph break. Where the extension is absent
  and on GPUs, auto takes 'scan'.

Why the default is not the paper's log-space scan (at T=4096, B=16, H=128,
float32, on a 2-core CPU):

1. Precision. ``a*_t`` grows like t·|log a|; ``a*_t`` and the logcumsumexp
   are both of that size and cancel, so h_t carries a relative error of about
   eps·|a*_t|: ~1e-4 at T=4096 with gates near 0.5, beyond the 1e-5 that the
   sequential and scan paths must agree to. The chunked scan multiplies and
   adds numbers of the size of h itself and has no such growth.
2. Speed. ``torch.logcumsumexp`` alone costs hundreds of milliseconds per
   forward at this size, and the autograd graph of the log-space path allocates
   some 30 tensors of T·B·H; the log-space training step was slower than the
   GRU's. The fused scan allocates four and runs in O(√T) Python steps.

The initial state enters linearly, not in log space. The paper puts
``log g(h_0)`` in the scan as the first b term, which needs h_0 > 0 and
changes the meaning of h_0 (feeding h_n back in would not continue the
sequence). Here h_t = (Π_{s≤t} a_s) h_0 + (the scan from a zero state), which
is exact for any real h_0 (zero, negative, a previous h_n) in every mode, so
``forward(x2, forward(x1)[1])`` equals running ``cat(x1, x2)``.

Parameters follow torch.nn's rules: ``weight_ih_l{k}{_reverse}`` and
``bias_ih_l{k}{_reverse}`` per layer and direction, initialised
U(-1/√H, 1/√H) like :class:`torch.nn.GRU` (the paper's code uses
``nn.Linear``'s U(-1/√I, 1/√I); we follow the GRU so the two start alike in
comparisons). There is no ``weight_hh``: that is the point of the model.
The paper's optional expansion factor and output projection are left out;
compose them with ``nn.Linear`` if wanted.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ..kernels import compiled
from ._checks import _check_prob, _check_size
from .rnn import _RNNBase, _gather_time, _repack, _reverse_index, _suffix

__all__ = ["MinGRU", "MinLSTM", "MODES"]

MODES = ("auto", "compiled", "scan", "log_scan", "sequential")
_GATES = {"mingru": 2, "minlstm": 3}  # blocks of H rows in weight_ih: z|h̃ and f|i|h̃
_NAMES = {"mingru": "MinGRU", "minlstm": "MinLSTM"}


class ModeChoice(NamedTuple):
    mode: str  # the path that ran: 'compiled', 'scan', 'log_scan' or 'sequential'
    reason: str  # why it was chosen


def _choose_mode(mode: str, T: int, why_not_compiled: Callable[[], Optional[str]]) -> ModeChoice:
    """The one place where the path is chosen; ``why_not_compiled()`` is None when the C++ loop can run."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "compiled":
        why = why_not_compiled()
        if why is not None:
            raise ValueError(f"mode='compiled' cannot run this call: {why}")
    if mode != "auto":
        return ModeChoice(mode, f"mode={mode!r} was asked for")
    if T == 1:
        return ModeChoice("sequential", "one step: a scan would only add set-up cost")
    why = why_not_compiled()
    if why is None:
        return ModeChoice("compiled", "T > 1 on the CPU: the C++ loop is the fast path")
    return ModeChoice("scan", f"T > 1: the chunked scan; compiled path refused: {why}")


# ----------------------------------------------------------------------------
# The equations, one step at a time: the specification


def g(x: Tensor) -> Tensor:
    """g(x) = x + 0.5 for x ≥ 0, σ(x) otherwise: continuous, increasing and > 0 (Feng et al., sec. 3)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log g(x), without forming g: log(x + 0.5) for x ≥ 0, −softplus(−x) = log σ(x) otherwise."""
    # relu keeps the log's argument ≥ 0.5 on the branch torch.where discards,
    # so neither value nor gradient of the unused branch is NaN.
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def _cell_step(cell: str, pre: Tensor, h: Tensor) -> Tensor:
    """One step from the pre-activations ``pre`` (B, G·H) and h_{t-1} (B, H); the paper's equations."""
    if cell == "mingru":
        k, p = pre.chunk(2, dim=-1)  # (B, H) each: z | h̃
        z = torch.sigmoid(k)
        h_tilde = g(p)
        return (1 - z) * h + z * h_tilde
    kf, ki, p = pre.chunk(3, dim=-1)  # (B, H) each: f | i | h̃
    f, i = torch.sigmoid(kf), torch.sigmoid(ki)
    h_tilde = g(p)
    # The normalisation makes f' + i' = 1, so the scale of h does not depend
    # on t (sec. 3.2). f + i underflows only for pre-activations below ~-87.
    f_norm, i_norm = f / (f + i), i / (f + i)
    return f_norm * h + i_norm * h_tilde


def _run_sequential(cell: str, pre: Tensor, h0: Tensor, valid: Optional[Tensor]) -> Tensor:
    """pre (T, B, G·H), h0 (B, H), valid (T, B, 1) bool or None -> h (T, B, H); padding keeps the state."""
    h, ys = h0, []
    # unbind, not pre[t]: the backward of T selects would build T full-size gradients (quadratic in T)
    for t, pre_t in enumerate(pre.unbind(0)):
        h_new = _cell_step(cell, pre_t, h)
        h = h_new if valid is None else torch.where(valid[t], h_new, h)
        ys.append(h)
    return torch.stack(ys)  # (T, B, H)


# ----------------------------------------------------------------------------
# The paper's log-space scan (Heinsen 2023), on torch.logcumsumexp


def _log_coefficients(cell: str, pre: Tensor) -> tuple[Tensor, Tensor]:
    """log a_t and log b_t from pre (T, B, G·H), each (T, B, H), never forming a gate."""
    if cell == "mingru":
        k, p = pre.chunk(2, dim=-1)  # (T, B, H) each
        log_a = -F.softplus(k)  # log(1 − σ(k))
        log_z = -F.softplus(-k)  # log σ(k)
    else:
        kf, ki, p = pre.chunk(3, dim=-1)  # (T, B, H) each
        # log f' − log i' = log f − log i =: d, so f' = σ(d) and i' = σ(−d)
        d = F.logsigmoid(kf) - F.logsigmoid(ki)
        log_a, log_z = F.logsigmoid(d), F.logsigmoid(-d)
    return log_a, log_z + log_g(p)


def _run_log_scan(cell: str, pre: Tensor, h0: Tensor) -> Tensor:
    """pre (T, B, G·H), h0 (B, H) -> h (T, B, H) by h_t = exp(a*_t + lcse(log b − a*)_t) + exp(a*_t) h_0."""
    log_a, log_b = _log_coefficients(cell, pre)
    a_star = torch.cumsum(log_a, dim=0)  # (T, B, H), a*_t = Σ_{s≤t} log a_s
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=0)
    # h_0 enters linearly (see the module docstring), so it may be any real number.
    return torch.exp(log_h) + torch.exp(a_star) * h0


# ----------------------------------------------------------------------------
# The chunked scan: kernel (memory only) and autograd.Function


def _linear_scan_(a: Tensor, x: Tensor, h0: Optional[Tensor], reverse: bool = False) -> None:
    """In place, x_t <- a_t ⊙ x_{t-1} + x_t with x_{-1} = h0 (reverse: x_{t+1}, x_T = h0); None is 0.

    a, x: (T, B, H), any strides; h0: (B, H) or None.

    Two levels, O(C + T/C) Python steps on (T/C, B, H) slices with C = ⌊√T⌋:
    (1) every chunk of C steps runs from a zero state at once, giving its end
    state e_k and its product P_k = Π a; (2) the start states s_k of the
    chunks follow sequentially, s_{k+1} = P_k s_k + e_k; (3) every chunk reruns
    from its true start. Linear space keeps the numbers at the size of h, so
    no error grows with T as in the log-space scan; a Π that underflows to 0
    is exactly the state being forgotten.
    """
    T = x.shape[0]
    C = max(1, math.isqrt(T))
    n = T // C
    last = h0
    if n >= 2:
        # The chunked part: forward, the first n·C steps; reverse, the last n·C.
        lo = 0 if not reverse else T - n * C
        am = a[lo:lo + n * C].unflatten(0, (n, C))  # (n, C, B, H)
        xm = x[lo:lo + n * C].unflatten(0, (n, C))  # (n, C, B, H)
        js = list(range(C)) if not reverse else list(range(C - 1, -1, -1))
        ks = list(range(n)) if not reverse else list(range(n - 1, -1, -1))
        e = xm[:, js[0]].clone()  # (n, B, H)
        P = am[:, js[0]].clone()  # (n, B, H)
        for j in js[1:]:
            e.mul_(am[:, j]).add_(xm[:, j])
            P.mul_(am[:, j])
        s = torch.zeros_like(e)  # (n, B, H), the state each chunk starts from
        if h0 is not None:
            s[ks[0]] = h0
        for k_prev, k in zip(ks[:-1], ks[1:]):
            torch.addcmul(e[k_prev], P[k_prev], s[k_prev], out=s[k])
        prev = s
        for j in js:
            xm[:, j].addcmul_(am[:, j], prev)
            prev = xm[:, j]
        last = xm[ks[-1], js[-1]]
        rest = range(n * C, T) if not reverse else range(T - n * C - 1, -1, -1)
    else:
        rest = range(T) if not reverse else range(T - 1, -1, -1)
    for t in rest:
        if last is not None:
            x[t].addcmul_(a[t], last)
        last = x[t]


class _MinScan(torch.autograd.Function):
    """Projection, gates and chunked scan in one Function, worked through in time blocks.

    forward(cell, x (T, B, I), weight (G·H, I), bias (G·H,) or None, h0 (B, H))
    -> h (T, B, H). Both cells are h_t = a_t h_{t-1} + (1 − a_t) g(p_t) with
    a_t = σ(u_t): minGRU u = −k (a = 1 − z); minLSTM u = log σ(k_f) − log σ(k_i)
    (a = f'). Saves x, weight, bias, a and h.

    Backward, from ∂L/∂h_t: the adjoint s_t = ∂L/∂h_t + a_{t+1} s_{t+1} is the
    same scan run backwards; then ∂L/∂b_t = s_t, ∂L/∂a_t = s_t h_{t-1},
    ∂L/∂h_0 = a_0 s_0, and the gate derivatives give ∂L/∂pre_t, which the
    weight, bias and input gradients contract block by block.

    Why blocks: every full-size buffer is a fresh allocation, and on the CPU
    this was tuned on, first-touching a fresh 32 MiB buffer costs several
    times an arithmetic pass over it. Working in time blocks of ~2 MiB keeps
    every temporary in reused heap memory and in cache; the only full-size
    buffers are pre, a, h, the adjoint s and (when asked for) ∂L/∂x.
    """

    @staticmethod
    def forward(ctx, cell: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor) -> Tensor:
        T, B, _ = x.shape
        GH = weight.shape[0]
        H = GH // _GATES[cell]
        h = x.new_empty((T, B, H))  # h̃, then b, then h
        pre = x.new_empty((T, B, GH))  # (T, B, G·H), saved for backward
        # minGRU's backward needs k only through a = 1 − σ(k), so a overwrites
        # k in place (one full-size buffer fewer); minLSTM needs k_f and k_i.
        a = pre[..., :H] if cell == "mingru" else x.new_empty((T, B, H))  # (T, B, H)
        for t0, t1 in _blocks(T, _block_steps(B, GH, x)):
            pre_b = _project_into(x[t0:t1], weight, bias, pre[t0:t1])  # (Tb, B, G·H)
            a_b, h_b = a[t0:t1], h[t0:t1]  # (Tb, B, H)
            if cell == "mingru":
                a_b.sigmoid_().neg_().add_(1)  # a = 1 − z, in k's place
            else:
                # a = f' = σ(log f − log i): finite where f + i would underflow
                torch.sub(F.logsigmoid(pre_b[..., :H]), F.logsigmoid(pre_b[..., H:2 * H]), out=a_b).sigmoid_()
            _g_into(pre_b[..., -H:], h_b)  # h̃
            h_b.addcmul_(h_b, a_b, value=-1)  # b = (1 − a) ⊙ h̃
        _linear_scan_(a, h, h0)
        ctx.cell = cell
        ctx.inputs = (x, weight, bias, h0)  # the caller's tensors, for a backward under create_graph
        ctx.save_for_backward(x, weight, pre, a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: the hand-written backward below cannot be differentiated, so the
            # gradient is taken through the step loop (mode='sequential') instead, as a graph
            # (once_differentiable alone returned silent zeros for second derivatives)
            return _MinScan._graphed_backward(ctx, grad_h)
        with torch.no_grad():
            return _MinScan._backward(ctx, grad_h)

    @staticmethod
    def _graphed_backward(ctx, grad_h: Tensor):
        x, weight, bias, h0 = ctx.inputs
        inputs = (x, weight, bias, h0)
        need = ctx.needs_input_grad[1:5]
        wanted = [t for t, n in zip(inputs, need) if n]
        h = _run_sequential(ctx.cell, F.linear(x, weight, bias), h0, None)
        got = iter(torch.autograd.grad(h, wanted, grad_h, create_graph=True, allow_unused=True))
        grads = [next(got) if n else None for n in need]
        return (None, *(torch.zeros_like(t) if g is None and n else g for g, t, n in zip(grads, inputs, need)))

    @staticmethod
    def _backward(ctx, grad_h: Tensor):
        x, weight, pre, a, h, h0 = ctx.saved_tensors
        cell = ctx.cell
        T, B, I = x.shape
        GH, H = weight.shape[0], a.shape[-1]
        need_x, need_w, need_b, need_h0 = ctx.needs_input_grad[1:5]

        s = a.new_empty((T, B, H)).copy_(grad_h)  # (T, B, H), the adjoint; grad_h may be an expanded view
        if T > 1:
            _linear_scan_(a[1:], s[:-1], s[-1], reverse=True)
        grad_h0 = a[0] * s[0] if need_h0 else None
        grad_x = x.new_empty((T, B, I)) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = x.new_zeros((GH,)) if need_b else None

        Tb = _block_steps(B, GH, x)
        gpre = x.new_empty((Tb, B, GH))  # (Tb, B, G·H): ∂L/∂pre of one block
        tmp = x.new_empty((Tb, B, H))
        neg = x.new_empty((Tb, B, H))
        for t0, t1 in _blocks(T, Tb):
            n = t1 - t0
            pre_b = pre[t0:t1]  # (n, B, G·H)
            p = pre_b[..., -H:]  # (n, B, H)
            a_b, s_b, tmp_b, g_b = a[t0:t1], s[t0:t1], tmp[:n], gpre[:n]
            gu, gp = g_b[..., :H], g_b[..., -H:]  # (n, B, H) each
            # ∂L/∂a_t = s_t h_{t-1}
            if t0 == 0:
                torch.mul(s_b[0], h0, out=gu[0])
                torch.mul(s_b[1:], h[0:t1 - 1], out=gu[1:])
            else:
                torch.mul(s_b, h[t0 - 1:t1 - 1], out=gu)
            h_tilde = _g_into(p, tmp_b)
            gu.addcmul_(s_b, h_tilde, value=-1)  # and through b = (1 − a) h̃
            gu.mul_(a_b).addcmul_(gu, a_b, value=-1)  # ∂L/∂u = ∂L/∂a · a (1 − a)
            # g'(p) = 1 for p ≥ 0, σ(p)(1 − σ(p)) = h̃ (1 − h̃) otherwise, as
            # g' = 1 + [p < 0] (h̃ (1 − h̃) − 1) with [p < 0] = −min(sign p, 0):
            # arithmetic only, because a boolean mask costs ~5x more here.
            dg = h_tilde.clamp_max_(0.5)  # h̃ where p < 0, and finite elsewhere
            dg.addcmul_(dg, dg, value=-1).sub_(1)
            dg.mul_(torch.sign(p, out=neg[:n]).clamp_max_(0)).neg_().add_(1)
            torch.mul(s_b, dg, out=gp).addcmul_(gp, a_b, value=-1)  # ∂L/∂p = s (1 − a) g'(p)
            if cell == "mingru":
                gu.neg_()  # u = −k
            else:
                kf, ki = pre_b[..., :H], pre_b[..., H:2 * H]  # (n, B, H) each
                gi = g_b[..., H:2 * H]
                torch.sigmoid(ki, out=gi).sub_(1).mul_(gu)  # ∂u/∂k_i = −σ(−k_i) = σ(k_i) − 1
                gu.mul_(torch.sigmoid(kf, out=tmp_b).neg_().add_(1))  # ∂u/∂k_f = σ(−k_f) = 1 − σ(k_f)
            g2 = g_b.view(n * B, GH)  # (n·B, G·H)
            if need_w:
                grad_w.addmm_(g2.t(), x[t0:t1].reshape(n * B, I))
            if need_b:
                grad_b.add_(g2.sum(0))
            if need_x:
                torch.mm(g2, weight, out=grad_x[t0:t1].view(n * B, I))
        return None, grad_x, grad_w, grad_b, grad_h0


def _block_steps(B: int, GH: int, x: Tensor) -> int:
    """Time steps per block so that one block of pre-activations is ~2 MiB (in cache, below mmap size)."""
    return max(1, (2 << 20) // max(1, B * GH * x.element_size()))


def _blocks(T: int, Tb: int):
    return [(t0, min(T, t0 + Tb)) for t0 in range(0, T, Tb)]


def _project_into(x_b: Tensor, weight: Tensor, bias: Optional[Tensor], out: Tensor) -> Tensor:
    """out (n, B, G·H) <- x_b (n, B, I) W^T + bias, without allocating."""
    n, B, I = x_b.shape
    x2 = x_b.reshape(n * B, I)  # (n·B, I); a copy only when x is batch-first
    o2 = out.view(n * B, -1)  # (n·B, G·H)
    if bias is None:
        torch.mm(x2, weight.t(), out=o2)
    else:
        torch.addmm(bias, x2, weight.t(), out=o2)
    return out


def _g_into(p: Tensor, out: Tensor) -> Tensor:
    """out <- g(p), in place and without temporaries: g(p) = max(σ(p) − 0.5, p) + 0.5.

    The same function as :func:`g`: σ(p) ≤ 0.5 + p/4 ≤ p + 0.5 for p ≥ 0, and
    σ(p) > p + 0.5 for p < 0.
    """
    torch.sigmoid(p, out=out).sub_(0.5)
    return torch.maximum(out, p, out=out).add_(0.5)


# ----------------------------------------------------------------------------
# The layers


class _MinRNNBase(nn.Module):
    """Parameters, argument checks, layout and the choice of path, shared by MinGRU and MinLSTM."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, mode: str = "auto") -> None:
        super().__init__()
        self.cell = cell
        self.name = _NAMES[cell]
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = _check_prob("dropout", dropout)
        self.bidirectional = bool(bidirectional)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={self.dropout} and num_layers={self.num_layers}",
                stacklevel=3,
            )
        G, H = _GATES[cell], self.hidden_size
        D = 2 if self.bidirectional else 1
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            for direction in range(D):
                sfx = _suffix(layer, direction)
                layer_in = self.input_size if layer == 0 else H * D
                shapes = {"weight_ih": (G * H, layer_in)}
                if self.bias:
                    shapes["bias_ih"] = (G * H,)
                for name, shape in shapes.items():
                    self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
                    self._flat_weights_names.append(name + sfx)
        self.reset_parameters()
        self.last_mode: Optional[ModeChoice] = None

    def __getstate__(self) -> dict:
        # last_mode records the last call, not state: left out of a pickle so that
        # torch.load(weights_only=True) needs only the model's classes (as _RNNBase.last_dispatch)
        state = self.__dict__.copy()
        state["last_mode"] = None
        return state

    def reset_parameters(self) -> None:
        """U(-1/√H, 1/√H) for every parameter, as torch.nn.GRU."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name in self._flat_weights_names:
                nn.init.uniform_(getattr(self, name), -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Accepted for drop-in compatibility with torch.nn's recurrent layers; there is nothing to flatten."""

    def _weights(self, layer: int, direction: int) -> tuple[Tensor, Optional[Tensor]]:
        sfx = _suffix(layer, direction)
        return getattr(self, "weight_ih" + sfx), getattr(self, "bias_ih" + sfx, None)

    def _project(self, x: Tensor, layer: int, direction: int) -> Tensor:
        """x (…, in) -> the pre-activations of every gate (…, G·H); the gates need only x_t."""
        return F.linear(x, *self._weights(layer, direction))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("mode", "auto")):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    # -- forward ------------------------------------------------------------

    def forward(self, input, hx: Optional[Tensor] = None, *, lengths=None, mode: Optional[str] = None):
        """input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence.

        Returns ``(output, h_n)`` as :class:`torch.nn.GRU`: output (T, B, D·H)
        (or batch-first, or (T, D·H)), h_n (D·num_layers, B, H) (or (D·num_layers, H)).
        ``lengths`` (B,) marks variable lengths without packing: padded outputs
        are 0 and h_n is each sequence's state at its last valid step; the
        reverse direction runs each sequence backwards within its own length.
        ``mode`` overrides the module's ``mode`` for this call.
        """
        H, L = self.hidden_size, self.num_layers
        D = 2 if self.bidirectional else 1
        dtype = getattr(self, self._flat_weights_names[0]).dtype

        # ---- bring every input form to (T, B, I) time-major plus lengths ----
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with a PackedSequence, which carries its own lengths")
            if input.data.dim() != 2:
                raise ValueError(f"{self.name}: expected PackedSequence data to be 2D, got {input.data.dim()}D instead")
            self._check_features(input.data)
            x, lengths = pad_packed_sequence(input)  # (T, B, I), original batch order
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{self.name}: expected input to be a Tensor or PackedSequence, "
                                f"got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.name}: expected input to be 2D (T, I) or 3D (T, B, I), "
                                 f"got {input.dim()}D of shape {tuple(input.shape)}")
            self._check_features(input)
            unbatched = input.dim() == 2
            if unbatched:
                if lengths is not None:
                    raise ValueError("lengths= needs batched (3D) input; unbatched input is one whole sequence")
                x = input.unsqueeze(1)  # (T, I) -> (T, 1, I)
            else:
                x = input.transpose(0, 1) if self.batch_first else input  # (B, T, I) -> (T, B, I)
        if x.dtype != dtype:
            raise TypeError(f"{self.name}: expected input of dtype {dtype} (the parameters' dtype), got {x.dtype}")
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ValueError(f"{self.name}: expected at least one time step, got an input of shape {tuple(input.shape)}")
        if lengths is not None and not packed:
            lengths = _RNNBase._check_lengths(lengths, T, B)
        h0 = self._initial_state(hx, unbatched, B, x)  # (D·L, B, H)
        self.last_mode = _choose_mode(self.mode if mode is None else mode, T,
                                      lambda: compiled.supports_min(x, *self._weights(0, 0), h0))
        run = self.last_mode.mode

        valid = None
        if lengths is not None:
            steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
            valid = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
            # Whatever sits in the padding must not reach a scan (a NaN there
            # would survive the masking below as 0 · NaN).
            x = torch.where(valid, x, x.new_zeros(()))
        rev_idx = _reverse_index(lengths, T, B, x.device) if self.bidirectional else None
        last_idx = None if lengths is None else (lengths.to(x.device) - 1).view(1, B, 1).expand(1, B, H)  # (1, B, H)

        layer_input, h_n = x, []
        for layer in range(L):
            outs = []
            for direction in range(D):
                k = layer * D + direction
                seq = layer_input if direction == 0 else _gather_time(layer_input, rev_idx)  # (T, B, ·)
                y_T = None  # h at the last step, where the path returns it as its own output
                if run == "sequential":
                    y = _run_sequential(self.cell, self._project(seq, layer, direction), h0[k], valid)
                elif run == "log_scan":
                    y = _run_log_scan(self.cell, self._project(seq, layer, direction), h0[k])
                elif run == "compiled":
                    y, y_T = compiled.run_min_layer(self.cell, seq, *self._weights(layer, direction), h0[k])
                else:
                    y = _MinScan.apply(self.cell, seq, *self._weights(layer, direction), h0[k])
                # padding comes after each sequence (also reversed), so the scan's
                # valid steps never saw it; only h_n needs picking out
                if last_idx is not None:
                    y_T = y.gather(0, last_idx).squeeze(0)  # (B, H)
                h_n.append(y[-1] if y_T is None else y_T)  # (B, H)
                outs.append(y if direction == 0 else _gather_time(y, rev_idx))
            layer_output = outs[0] if D == 1 else torch.cat(outs, dim=-1)  # (T, B, D·H)
            if valid is not None:
                layer_output = layer_output * valid
            if self.dropout > 0 and self.training and layer < L - 1:
                layer_output = F.dropout(layer_output, self.dropout, training=True)
            layer_input = layer_output

        output = layer_input  # (T, B, D·H)
        h_n = torch.stack(h_n)  # (D·L, B, H)
        if packed:
            output = _repack(output, input, lengths)
        elif unbatched:
            output = output.squeeze(1)  # (T, 1, ·) -> (T, ·)
            h_n = h_n.squeeze(1)  # (D·L, 1, H) -> (D·L, H)
        elif self.batch_first:
            output = output.transpose(0, 1)  # (T, B, ·) -> (B, T, ·)
        return output, h_n

    def step(self, x_t: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """One token in, the next state out, in constant memory: the generation path.

        x_t (B, I) or (I,); h (num_layers, B, H) or (num_layers, H), None for
        zeros; returns the new h of the same shape, whose last layer ``h[-1]``
        is this step's output. Uses the same equations as ``mode='sequential'``,
        so stepping through a sequence reproduces ``forward`` (dropout aside).
        """
        if self.bidirectional:
            raise ValueError(f"{self.name}.step: a bidirectional layer needs the whole sequence (its reverse "
                             "direction starts at the end); call forward instead")
        if not isinstance(x_t, Tensor):
            raise TypeError(f"{self.name}.step: expected x_t to be a Tensor, got {type(x_t).__name__}")
        if x_t.dim() not in (1, 2):
            raise ValueError(f"{self.name}.step: expected x_t to be 1D (I,) or 2D (B, I), "
                             f"got {x_t.dim()}D of shape {tuple(x_t.shape)}")
        self._check_features(x_t)
        unbatched = x_t.dim() == 1
        x = x_t.unsqueeze(0) if unbatched else x_t  # (I,) -> (1, I)
        if x.dtype != getattr(self, self._flat_weights_names[0]).dtype:
            raise TypeError(f"{self.name}.step: expected x_t of dtype {getattr(self, self._flat_weights_names[0]).dtype} "
                            f"(the parameters' dtype), got {x.dtype}")
        h0 = self._initial_state(h, unbatched, x.shape[0], x)  # (L, B, H)
        new = []
        for layer in range(self.num_layers):
            x = _cell_step(self.cell, self._project(x, layer, 0), h0[layer])  # (B, H)
            new.append(x)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_new = torch.stack(new)  # (L, B, H)
        return h_new.squeeze(1) if unbatched else h_new  # (L, 1, H) -> (L, H)

    def _check_features(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{self.name}: expected input with {self.input_size} features "
                             f"(input.size(-1) == input_size), got {x.shape[-1]}")

    def _initial_state(self, hx: Optional[Tensor], unbatched: bool, B: int, x: Tensor) -> Tensor:
        H = self.hidden_size
        DL = (2 if self.bidirectional else 1) * self.num_layers
        if hx is None:
            return x.new_zeros((DL, B, H))
        if not isinstance(hx, Tensor):
            raise TypeError(f"{self.name}: expected hx to be a Tensor, got {type(hx).__name__}")
        want = (DL, H) if unbatched else (DL, B, H)
        if tuple(hx.shape) != want:
            kind = "unbatched" if unbatched else "batched"
            raise ValueError(f"{self.name}: expected h_0 of shape {want} (D·num_layers, {'' if unbatched else 'B, '}H) "
                             f"for {kind} input, got {tuple(hx.shape)}")
        if hx.dtype != x.dtype:
            raise TypeError(f"{self.name}: expected h_0 of dtype {x.dtype} (the input's), got {hx.dtype}")
        return hx.unsqueeze(1) if unbatched else hx  # (DL, H) -> (DL, 1, H)


class MinGRU(_MinRNNBase):
    r"""minGRU (Feng et al. 2024), with :class:`torch.nn.GRU`'s signature and return values.

    For each layer and time step t, with gates that do not see h_{t-1}:

    .. math::
        z_t = σ(W_{iz} x_t + b_{iz})                      \text{update gate}
        \tilde h_t = g(W_{ih} x_t + b_{ih})                \text{candidate}
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    with g(x) = x + 0.5 for x ≥ 0 and σ(x) otherwise (the paper's g, which keeps
    h̃ > 0 for its log-space scan; used in every mode so all modes compute the
    same function). Equivalent to the loop (``mode='sequential'``)::

        for t in range(T):
            k, p = (x[t] @ weight_ih.T + bias_ih).chunk(2, -1)
            z = torch.sigmoid(k)
            h = (1 - z) * h + z * g(p)

    Gates are stacked z|h̃ in ``weight_ih_l{k}`` (2H, I or D·H) and ``bias_ih_l{k}``
    (2H,). ``mode``: 'auto' (the default: 'compiled' when T > 1 on the CPU,
    else 'scan'), 'compiled', 'scan', 'log_scan' or 'sequential'; see the
    module docstring. h_0 may be any real
    tensor; h_n is returned unchanged in meaning, so it can be fed back.

    >>> rnn = MinGRU(3, 5, batch_first=True)
    >>> out, h_n = rnn(torch.randn(2, 7, 3))
    >>> out.shape, h_n.shape
    (torch.Size([2, 7, 5]), torch.Size([1, 2, 5]))
    >>> h = rnn.step(torch.randn(2, 3), h_n)  # one more token, constant memory
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, mode="auto"):
        super().__init__("mingru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, mode=mode)


class MinLSTM(_MinRNNBase):
    r"""minLSTM (Feng et al. 2024), with :class:`torch.nn.GRU`'s signature and return values.

    For each layer and time step t:

    .. math::
        f_t = σ(W_{if} x_t + b_{if}),  i_t = σ(W_{ii} x_t + b_{ii}),  \tilde h_t = g(W_{ih} x_t + b_{ih})
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
        h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ \tilde h_t

    There is no cell state and no output gate (the paper removes both), so
    forward returns ``(output, h_n)`` like a GRU, not ``(output, (h_n, c_n))``.
    The scans form f'_t = σ(log f_t − log i_t) with ``logsigmoid``, which stays
    finite where f_t + i_t would underflow. Gates are stacked f|i|h̃ in
    ``weight_ih_l{k}`` (3H, I or D·H) and ``bias_ih_l{k}`` (3H,). Other
    arguments as :class:`MinGRU`.

    >>> rnn = MinLSTM(3, 5, num_layers=2)
    >>> out, h_n = rnn(torch.randn(7, 2, 3))
    >>> out.shape, h_n.shape
    (torch.Size([7, 2, 5]), torch.Size([2, 2, 5]))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, mode="auto"):
        super().__init__("minlstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, mode=mode)
