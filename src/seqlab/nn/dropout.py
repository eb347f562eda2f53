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

The masks are never stored: the compiled op forms y = x ⊙ m in one pass, and the backward
(dropout is linear) runs it again on the gradient with the same seed. A bfloat16 input
(mixed precision) gets each product formed in float32 and rounded once, as torch's own dropout
scales (a mask stored in bfloat16 would round 1 / (1 - p), and E[y] would drift from x).

Everywhere else (CUDA, float16 and other dtypes, under ``torch.compile`` or ``torch.jit.trace``, without the
compiled library, p = 1) it is torch's own dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import compiled

__all__ = ["dropout", "Dropout"]

_FLOATS = (torch.float32, torch.float64, torch.bfloat16)  # what the compiled op computes


def _fast(x: Tensor, p: float) -> bool:
    if x.device.type != "cpu" or x.dtype not in _FLOATS or not 0.0 < p < 1.0:
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
    if inplace:
        return x.copy_(_Dropout.apply(x, p, seed))
    return _Dropout.apply(x, p, seed)


class _Dropout(torch.autograd.Function):
    """y = x ⊙ m (the compiled op); dx = g ⊙ m, the same function of g with the same seed (so
    it is differentiable again: double backward works as for torch's dropout)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return torch.ops.seqlab_compiled.dropout_apply(x, p, seed)  # x's shape and dtype, contiguous

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        return _Dropout.apply(g, ctx.p, ctx.seed), None, None


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its CPU masks as :func:`dropout` does."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace)
