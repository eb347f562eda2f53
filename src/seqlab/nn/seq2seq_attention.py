r"""Attention for recurrent encoder-decoders: the decoder looks at every encoder state.

Without attention a recurrent decoder sees the source through one fixed
vector. With it, at each decoder step t the query s_t (a decoder state) scores
every encoder state h_j, the scores become weights over the source, and the
weighted sum is the context vector:

.. math::
    e_{tj} = \text{score}(s_t, h_j), \qquad
    \alpha_{tj} = \frac{\exp e_{tj}}{\sum_{k \,\text{not padded}} \exp e_{tk}}, \qquad
    c_t = \sum_j \alpha_{tj} h_j

Scores:

- additive, Bahdanau, Cho & Bengio (2015): score(s, h) = v^T tanh(W s + U h + b)
- multiplicative, Luong, Pham & Manning (2015): dot: s^T h; general: s^T W_a h

Padded source positions (``key_padding_mask`` True, torch.nn's convention)
get exactly zero weight. What to do with c_t is the decoder's choice: Bahdanau
feed it into the recurrent cell with the next input; Luong combine it with
s_t as h̃_t = tanh(W_c [c_t; s_t]) before the output layer.

Both modules take ``query`` (B, Dq) for one decoder step or several steps at
once, (T, B, Dq) / (B, T, Dq) with ``batch_first``, and ``keys`` (S, B, Dk) /
(B, S, Dk), as a torch.nn recurrent encoder returns them; ``values`` default
to the keys. They return (context, weights): context (B, Dv) or (T, B, Dv) /
(B, T, Dv), weights (B, S) or (B, T, S).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["BahdanauAttention", "LuongAttention"]


class _Seq2SeqAttention(nn.Module):
    """Layout, checks, masking and the weighted sum; subclasses provide ``score`` (B, T, S)."""

    query_size: int
    key_size: int

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first

    def project_keys(self, keys: Tensor) -> Tensor:
        """The part of the score that depends on the keys only, computed once per source sequence.

        Pass the result as ``projected_keys=`` at every decoder step to save
        recomputing it.
        """
        return self._project_keys(self._keys_bsd(keys))

    def _keys_bsd(self, keys: Tensor) -> Tensor:
        if keys.dim() != 3:
            layout = "(B, S, Dk)" if self.batch_first else "(S, B, Dk)"
            raise ValueError(f"expected keys {layout}, got {keys.dim()}D with shape {tuple(keys.shape)}")
        if keys.size(-1) != self.key_size:
            raise ValueError(f"expected keys with {self.key_size} features (key_size), got {keys.size(-1)}")
        return keys if self.batch_first else keys.transpose(0, 1)  # (S, B, Dk) -> (B, S, Dk)

    def _project_keys(self, keys: Tensor) -> Tensor:
        return keys

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                projected_keys: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self._keys_bsd(keys)  # (B, S, Dk)
        v = h if values is None else self._keys_bsd_values(values, h)  # (B, S, Dv)
        B, S, _ = h.shape
        one_step = query.dim() == 2
        if query.dim() not in (2, 3):
            raise ValueError(f"expected query (B, Dq) for one step or 3D for several, got {query.dim()}D "
                             f"with shape {tuple(query.shape)}")
        if query.size(-1) != self.query_size:
            raise ValueError(f"expected query with {self.query_size} features (query_size), got {query.size(-1)}")
        if one_step:
            s = query.unsqueeze(1)  # (B, Dq) -> (B, 1, Dq)
        else:
            s = query if self.batch_first else query.transpose(0, 1)  # (T, B, Dq) -> (B, T, Dq)
        if s.size(0) != B:
            raise ValueError(f"query and keys should have the same batch size, got {s.size(0)} and {B}")
        if projected_keys is None:
            projected_keys = self._project_keys(h)
        elif projected_keys.shape[:2] != (B, S):
            raise ValueError(f"projected_keys should be project_keys(keys), (B, S, ·) = ({B}, {S}, ·), got "
                             f"{tuple(projected_keys.shape)}")

        e = self.score(s, projected_keys)  # (B, T, S)
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(f"key_padding_mask should be bool (True = padding), got {key_padding_mask.dtype}")
            if key_padding_mask.shape != (B, S):
                raise ValueError(f"expected key_padding_mask (B, S) = {(B, S)}, got {tuple(key_padding_mask.shape)}")
            pad = key_padding_mask.unsqueeze(1)  # (B, S) -> (B, 1, S)
            # The most negative finite number rather than -inf: exp underflows to exactly 0 all the
            # same, and a fully padded row stays finite (uniform, then zeroed below) instead of NaN.
            e = e.masked_fill(pad, torch.finfo(e.dtype).min)
        alpha = torch.softmax(e, dim=-1)  # (B, T, S)
        if key_padding_mask is not None:
            alpha = alpha.masked_fill(pad, 0.0)  # exact zeros, also in a row with no real position
        c = alpha @ v  # (B, T, S) @ (B, S, Dv) -> (B, T, Dv)

        if one_step:
            return c.squeeze(1), alpha.squeeze(1)  # (B, Dv), (B, S)
        if not self.batch_first:
            c = c.transpose(0, 1)  # (B, T, Dv) -> (T, B, Dv)
        return c, alpha

    def _keys_bsd_values(self, values: Tensor, h: Tensor) -> Tensor:
        if values.dim() != 3:
            raise ValueError(f"expected values 3D like keys, got {values.dim()}D with shape {tuple(values.shape)}")
        v = values if self.batch_first else values.transpose(0, 1)  # (S, B, Dv) -> (B, S, Dv)
        if v.shape[:2] != h.shape[:2]:
            raise ValueError(f"values should match keys in batch and length, (B, S) = {tuple(h.shape[:2])}, "
                             f"got {tuple(v.shape[:2])}")
        return v

    def score(self, s: Tensor, projected_keys: Tensor) -> Tensor:
        raise NotImplementedError


class BahdanauAttention(_Seq2SeqAttention):
    r"""Additive attention (Bahdanau, Cho & Bengio 2015).

    .. math::
        e_{tj} = v^\top \tanh(W s_t + U h_j + b), \qquad \alpha_t = \text{softmax}(e_t), \qquad
        c_t = \textstyle\sum_j \alpha_{tj} h_j

    Parameters: ``query_proj`` (W, hidden_size x query_size, no bias),
    ``key_proj`` (U and b, hidden_size x key_size: the two projections are
    summed, so one bias suffices), ``v`` (1 x hidden_size, no bias). U h_j
    does not depend on t: ``project_keys`` computes it once per source.

    Args:
        query_size: features of the decoder state s_t.
        key_size: features of the encoder states h_j.
        hidden_size: size of the tanh layer (defaults to query_size).
        batch_first: (B, S, ·) keys and (B, T, ·) queries instead of (S, B, ·), (T, B, ·).

    >>> attn = BahdanauAttention(query_size=6, key_size=4, hidden_size=5)
    >>> c, alpha = attn(torch.randn(2, 6), torch.randn(7, 2, 4))
    >>> c.shape, alpha.shape
    (torch.Size([2, 4]), torch.Size([2, 7]))
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: Optional[int] = None,
                 batch_first: bool = False) -> None:
        super().__init__(batch_first)
        self.query_size, self.key_size = query_size, key_size
        self.hidden_size = query_size if hidden_size is None else hidden_size
        self.query_proj = nn.Linear(query_size, self.hidden_size, bias=False)
        self.key_proj = nn.Linear(key_size, self.hidden_size, bias=True)
        self.v = nn.Linear(self.hidden_size, 1, bias=False)

    def _project_keys(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)  # U h_j + b: (B, S, A)

    def score(self, s: Tensor, Uh: Tensor) -> Tensor:
        Ws = self.query_proj(s)  # (B, T, A)
        hidden = torch.tanh(Ws.unsqueeze(2) + Uh.unsqueeze(1))  # (B, T, 1, A) + (B, 1, S, A) -> (B, T, S, A)
        return self.v(hidden).squeeze(-1)  # (B, T, S, 1) -> (B, T, S)


class LuongAttention(_Seq2SeqAttention):
    r"""Multiplicative attention (Luong, Pham & Manning 2015).

    .. math::
        \text{dot:}\; e_{tj} = s_t^\top h_j, \qquad
        \text{general:}\; e_{tj} = s_t^\top W_a h_j, \qquad
        \alpha_t = \text{softmax}(e_t), \qquad c_t = \textstyle\sum_j \alpha_{tj} h_j

    ``score="dot"`` needs query_size == key_size and has no parameters;
    ``score="general"`` has ``W_a`` as ``linear`` (query_size x key_size, no
    bias), applied to the keys, so ``project_keys`` computes W_a h_j once
    per source. (The paper's "concat" score is Bahdanau's additive one.)
    """

    def __init__(self, query_size: int, key_size: Optional[int] = None, score: str = "general",
                 batch_first: bool = False) -> None:
        super().__init__(batch_first)
        key_size = query_size if key_size is None else key_size
        if score not in ("dot", "general"):
            raise ValueError(f"score should be 'dot' or 'general', got {score!r}")
        if score == "dot" and key_size != query_size:
            raise ValueError(f"the dot score needs query_size == key_size, got {query_size} and {key_size}; "
                             "use score='general' to learn a map between them")
        self.query_size, self.key_size, self.score_name = query_size, key_size, score
        if score == "general":
            self.linear = nn.Linear(key_size, query_size, bias=False)

    def _project_keys(self, keys: Tensor) -> Tensor:
        return self.linear(keys) if self.score_name == "general" else keys  # W_a h_j: (B, S, Dq)

    def score(self, s: Tensor, Wh: Tensor) -> Tensor:
        return s @ Wh.transpose(1, 2)  # (B, T, Dq) @ (B, Dq, S) -> (B, T, S)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, score={self.score_name!r}"
