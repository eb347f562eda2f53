r"""The minGRU / minLSTM recurrence h_t = a_t ⊙ h_{t-1} + b_t over a whole sequence, four ways.

The layers (``seqlab.nn.minrnn``) own the parameters and the layout; this module
owns their time loops, one per path, all with the kernel contract

    run_*(cell, x (T, B, I), weight (G·H, I), bias (G·H,) or None, h0 (B, H))
        -> (h (T, B, H), h_T (B, H) or None: None when h_T is h[-1])

where ``cell`` is 'mingru' (gates z|h̃, G = 2) or 'minlstm' (f|i|h̃, G = 3).
``kernels/dispatch.py`` (``choose_min``) picks the path; ``module.last_dispatch``
says which ran and why.

- ``'reference'`` (:func:`run_reference`): the step loop, written from the
  equations. It is the specification every other path is tested against, and the
  generation path (``MinGRU.step``).
- ``'log_scan'`` (:func:`run_log_scan`): the paper's log-space formulation with
  Heinsen's (2023) scan, ``log h_t = a*_t + logcumsumexp_{s≤t}(log b_s − a*_s)``
  with ``a*_t = Σ_{s≤t} log a_s``, on ``torch.logcumsumexp``.
- ``'scan'`` (:func:`run_scan`): a two-level chunked scan in linear space with a
  hand-written backward (:class:`MinScan`), in torch ops: runs on any device.
- ``'compiled'`` (``compiled.run_min_layer``; the default for T > 1 on the CPU, where
  the C++ extension builds): the same recurrence as one C++ pass over time each way,
  gates, state update and adjoint fused per element, the products one MKL call
  each (``kernels/compiled.py``, the scan in ``csrc/minrnn_scan.h``). A sequential
  pass is the cheapest scan on a CPU: the recurrence costs a few flops per element,
  and every extra pass over (T, B, H) that a parallel scan makes costs more than
  that. It is one registered op (``seqlab::min_layer``), so torch.compile traces a
  model with these layers without a graph break. Where the extension is absent and
  on GPUs, auto takes 'scan'.

Why the default is not the paper's log-space scan (at T=4096, B=16, H=128,
float32, on a 2-core CPU):

1. Precision. ``a*_t`` grows like t·|log a|; ``a*_t`` and the logcumsumexp
   are both of that size and cancel, so h_t carries a relative error of about
   eps·|a*_t|: ~1e-4 at T=4096 with gates near 0.5, beyond the 1e-5 that the
   reference and scan paths must agree to. The chunked scan multiplies and
   adds numbers of the size of h itself and has no such growth.
2. Speed. ``torch.logcumsumexp`` alone costs hundreds of milliseconds per
   forward at this size, and the autograd graph of the log-space path allocates
   some 30 tensors of T·B·H; the log-space training step was slower than the
   GRU's. The fused scan allocates four and runs in O(√T) Python steps.

The initial state enters linearly, not in log space, on every path: see
``seqlab.nn.minrnn``. Padding (``lengths=``) is the layer's business: padding
comes after each sequence (the reverse direction too), so no valid step depends on
it; the layer zeroes the input there, picks h_n at each sequence's last valid step
and zeroes the padded outputs, and the paths run every step alike.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = {"mingru": 2, "minlstm": 3}  # blocks of H rows in weight_ih: z|h̃ and f|i|h̃

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


def cell_step(cell: str, pre: Tensor, h: Tensor) -> Tensor:
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


def run_steps(cell: str, pre: Tensor, h0: Tensor) -> Tensor:
    """pre (T, B, G·H), h0 (B, H) -> h (T, B, H), one :func:`cell_step` at a time."""
    h, ys = h0, []
    # unbind, not pre[t]: the backward of T selects would build T full-size gradients (quadratic in T)
    for pre_t in pre.unbind(0):
        h = cell_step(cell, pre_t, h)
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


def _log_scan(cell: str, pre: Tensor, h0: Tensor) -> Tensor:
    """pre (T, B, G·H), h0 (B, H) -> h (T, B, H) by h_t = exp(a*_t + lcse(log b − a*)_t) + exp(a*_t) h_0."""
    log_a, log_b = _log_coefficients(cell, pre)
    a_star = torch.cumsum(log_a, dim=0)  # (T, B, H), a*_t = Σ_{s≤t} log a_s
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=0)
    # h_0 enters linearly (see seqlab.nn.minrnn), so it may be any real number.
    return torch.exp(log_h) + torch.exp(a_star) * h0


# ----------------------------------------------------------------------------
# The chunked scan: kernel (memory only) and autograd.Function


def linear_scan_(a: Tensor, x: Tensor, h0: Optional[Tensor], reverse: bool = False) -> None:
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


class MinScan(torch.autograd.Function):
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
        H = GH // GATES[cell]
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
        linear_scan_(a, h, h0)
        ctx.cell = cell
        ctx.inputs = (x, weight, bias, h0)  # the caller's tensors, for a backward under create_graph
        ctx.save_for_backward(x, weight, pre, a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: the hand-written backward below cannot be differentiated, so the
            # gradient is taken through the step loop (the reference path) instead, as a graph
            # (once_differentiable alone returned silent zeros for second derivatives)
            return MinScan._graphed_backward(ctx, grad_h)
        with torch.no_grad():
            return MinScan._backward(ctx, grad_h)

    @staticmethod
    def _graphed_backward(ctx, grad_h: Tensor):
        x, weight, bias, h0 = ctx.inputs
        inputs = (x, weight, bias, h0)
        need = ctx.needs_input_grad[1:5]
        wanted = [t for t, n in zip(inputs, need) if n]
        h = run_steps(ctx.cell, F.linear(x, weight, bias), h0)
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
            linear_scan_(a[1:], s[:-1], s[-1], reverse=True)
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
# Three of the four paths with the kernel contract of the module docstring (the
# fourth, compiled.run_min_layer, has it too)


def run_reference(cell: str, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                  h0: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """The step loop (the specification): h (T, B, H)."""
    return run_steps(cell, F.linear(x, weight, bias), h0), None


def run_log_scan(cell: str, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                 h0: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """The paper's log-space scan: h (T, B, H)."""
    return _log_scan(cell, F.linear(x, weight, bias), h0), None


def run_scan(cell: str, x: Tensor, weight: Tensor, bias: Optional[Tensor],
             h0: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """The chunked linear-space scan (:class:`MinScan`): h (T, B, H)."""
    return MinScan.apply(cell, x, weight, bias, h0), None
