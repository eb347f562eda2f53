r"""Inverted dropout with fast CPU masks: ``y = x ⊙ m / (1 - p)``, m_i ~ Bernoulli(1 - p).

The same function as ``torch.nn.functional.dropout`` and :class:`torch.nn.Dropout` (a
subclass, so its state dict, repr and ``isinstance`` checks are torch's). What differs is
where the masks come from on the CPU: torch draws one mt19937 number per value (about 10 ns
each, a tenth of a small LSTM language model's training step and half of a small
transformer's), while seqlab's compiled library draws them from a counter-based generator
(``kernels/csrc/dropout.h``) at a fraction of a nanosecond. The seed of each mask is drawn
from torch's generator, so ``torch.manual_seed`` fixes the masks and a checkpoint's RNG
state resumes them; the masks themselves differ from torch's draws (as torch's CPU and CUDA
draws differ from each other). p is kept to 2^-32: P(keep) = 1 - round(2^32 p) / 2^32,
and the kept values are scaled by its inverse, so E[y] = x exactly.

A bfloat16 or float16 input (mixed precision) takes a float32 mask: y_i = x_i m_i is formed in
float32 and rounded once to the input's dtype, as torch's own dropout scales (a mask stored in
bfloat16 would round 1 / (1 - p), and E[y] would drift from x).

Everywhere else (CUDA, other dtypes, under ``torch.compile`` or ``torch.jit.trace``, without the
compiled library, p = 1) it is torch's own dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import compiled

__all__ = ["dropout", "Dropout"]

_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.bfloat16, torch.float16)  # masks in float32, products rounded to the input's dtype


def _fast(x: Tensor, p: float) -> bool:
    if x.device.type != "cpu" or x.dtype not in _FLOATS + _HALVES or not 0.0 < p < 1.0:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a traced seed would be a constant
        return False
    return compiled.available()


def dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """``torch.nn.functional.dropout`` with seqlab's CPU masks (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if not _fast(x, p):
        return F.dropout(x, p, training, inplace)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    if x.dtype in _HALVES:
        like = torch.empty(x.shape, dtype=torch.float32)  # only its shape and dtype are read
        m = torch.ops.seqlab_compiled.dropout_mask(like, p, seed)  # (x's shape) float32: 0 or 1 / P(keep)
        return x.mul_(m) if inplace else _RoundedProduct.apply(x, m)
    m = torch.ops.seqlab_compiled.dropout_mask(x.detach(), p, seed)  # x's shape: 0 or 1 / P(keep), no grad
    return x.mul_(m) if inplace else x * m


class _RoundedProduct(torch.autograd.Function):
    """y = x ⊙ m in x's (half) dtype for a float32 m: each product formed in float32 and rounded
    once (``x * m`` would promote y to float32); the gradient g ⊙ m is rounded the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, m: Tensor) -> Tensor:
        ctx.save_for_backward(m)
        return torch.mul(x, m, out=torch.empty_like(x, memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (m,) = ctx.saved_tensors
        return torch.mul(g, m, out=torch.empty(g.shape, dtype=g.dtype)), None


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its CPU masks as :func:`dropout` does."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace)
