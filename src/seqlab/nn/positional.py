r"""Positional encodings: attention is blind to order, so each position's vector is added to its input.

Sinusoidal (Vaswani et al. 2017, section 3.5):

.. math::
    P_{pos, 2i} = \sin\!\left(pos / 10000^{2i/d}\right), \qquad
    P_{pos, 2i+1} = \cos\!\left(pos / 10000^{2i/d}\right)

a fixed table in which P_{pos+k} is a linear function of P_pos for every k,
so relative offsets are easy to attend to, and which extends past any
training length. Learned (Gehring et al. 2017; GPT): one trained vector per
position up to ``max_len``.

Both compute ``dropout(x + P[offset : offset + T])``. ``offset`` is where the
sequence starts: 0 for a whole sequence, ``cache.length`` for the new tokens
of cached incremental decoding. The paper also multiplies the token
embeddings by sqrt(d_model) before the sum; that is the embedding's business
and is not done here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dropout import Dropout

__all__ = ["SinusoidalPositionalEncoding", "LearnedPositionalEncoding", "sinusoidal_table"]


def sinusoidal_table(length: int, d_model: int, base: float = 10000.0, *, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """P (length, d_model) of the equation above; an odd d_model drops the last cosine column."""
    pos = torch.arange(length, device=device, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, d_model, 2, device=device, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / base ** (two_i / d_model)  # (T, 1) / (ceil(d/2),) -> (T, ceil(d/2))
    P = torch.empty(length, d_model, device=device, dtype=torch.float64)
    P[:, 0::2] = torch.sin(angle)
    P[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return P.to(dtype)  # computed in float64: pos / 10000^(2i/d) loses digits in float32 at large pos


def _check_input(x: Tensor, d_model: int, batch_first: bool, offset: int) -> int:
    if x.dim() not in (2, 3):
        raise ValueError(f"expected input (T, E) or (T, B, E) / (B, T, E) with batch_first, got {x.dim()}D "
                         f"with shape {tuple(x.shape)}")
    if x.size(-1) != d_model:
        raise ValueError(f"expected {d_model} features (d_model), got {x.size(-1)} (shape {tuple(x.shape)})")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset should be an int >= 0, got {offset!r}")
    return x.size(1) if (x.dim() == 3 and batch_first) else x.size(0)


def _add(x: Tensor, P: Tensor, batch_first: bool) -> Tensor:
    """x + P with P (T, E) broadcast over the batch dimension wherever it is."""
    if x.dim() == 3 and not batch_first:
        P = P.unsqueeze(1)  # (T, E) -> (T, 1, E)
    return x + P


class SinusoidalPositionalEncoding(nn.Module):
    r"""x + P with the fixed sinusoidal P of Vaswani et al. (2017), then dropout.

    Args:
        d_model: features E of the input.
        dropout: dropout on the sum (the paper uses 0.1).
        max_len: positions precomputed; longer sequences extend the table on the fly.
        batch_first: input (B, T, E) instead of (T, B, E); (T, E) is accepted either way.
        base: the 10000 of the equation.

    The table is a non-persistent buffer, so it is not in the state dict.

    >>> pe = SinusoidalPositionalEncoding(8, dropout=0.0, batch_first=True)
    >>> pe(torch.zeros(2, 5, 8))[0, 0, :4]
    tensor([0., 1., 0., 1.])
    """

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 5000, batch_first: bool = False,
                 base: float = 10000.0) -> None:
        super().__init__()
        if d_model < 1 or max_len < 1:
            raise ValueError(f"d_model and max_len should be >= 1, got d_model={d_model}, max_len={max_len}")
        self.d_model, self.batch_first, self.base = d_model, batch_first, base
        self.dropout = Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = _check_input(x, self.d_model, self.batch_first, offset)
        if offset + T > self.pe.size(0):
            self.pe = sinusoidal_table(max(offset + T, 2 * self.pe.size(0)), self.d_model, self.base,
                                       device=self.pe.device)
        P = self.pe[offset: offset + T].to(x.dtype)  # (T, E)
        return self.dropout(_add(x, P, self.batch_first))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.pe.size(0)}, batch_first={self.batch_first}"


class LearnedPositionalEncoding(nn.Module):
    r"""x + P with a learned table ``weight`` (max_len, d_model), then dropout.

    ``weight`` starts at N(0, 0.02²) (GPT-2's choice: small next to unit-scale
    token embeddings). Unlike the sinusoids it cannot extend past
    ``max_len``: positions beyond it raise.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0, batch_first: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        if d_model < 1 or max_len < 1:
            raise ValueError(f"d_model and max_len should be >= 1, got d_model={d_model}, max_len={max_len}")
        self.d_model, self.max_len, self.batch_first = d_model, max_len, batch_first
        self.weight = nn.Parameter(torch.empty(max_len, d_model, device=device, dtype=dtype))
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = _check_input(x, self.d_model, self.batch_first, offset)
        if offset + T > self.max_len:
            raise ValueError(f"positions up to {offset + T - 1} were asked for (offset {offset} + length {T}), "
                             f"but the learned table has max_len={self.max_len}")
        return self.dropout(_add(x, self.weight[offset: offset + T], self.batch_first))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, batch_first={self.batch_first}"
