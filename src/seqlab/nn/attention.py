r"""Multi-head scaled dot-product attention, drop-in for ``torch.nn.MultiheadAttention``, with a key/value cache.

Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You Need"):

.. math::
    \text{Attention}(Q, K, V) = \text{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}} + M\right) V

with Q (L, d_k) the queries, K (S, d_k) the keys, V (S, d_v) the values and M
an additive mask (0 where allowed, -inf where not). Multi-head attention runs
h of them side by side on learned projections and mixes the heads again:

.. math::
    \text{head}_i = \text{Attention}(X_q W^Q_i + b^Q_i,\; X_k W^K_i + b^K_i,\; X_v W^V_i + b^V_i)

    \text{MultiHead}(X_q, X_k, X_v) = \text{Concat}(\text{head}_1, \dots, \text{head}_h)\, W^O + b^O

The module below owns torch.nn's parameters (``in_proj_weight`` = [W^Q; W^K; W^V]
stacked, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when kdim or
vdim differ from embed_dim, ``in_proj_bias``, ``out_proj``, ``bias_k``/``bias_v``),
its argument checks and its layouts. The attention itself is one of two
kernels, chosen in one place (``MultiheadAttention._attend``):

- ``attention_reference``: the equation above written out, the specification.
  It is used when the weights softmax(QK^T/sqrt(d_k) + M) are asked for
  (``need_weights=True``), because they have to be materialised anyway.
- ``torch.nn.functional.scaled_dot_product_attention``: the fused kernel,
  used whenever the weights are not returned (what the Transformer layers do).

Beyond torch.nn: incremental decoding with a key/value cache (``KVCache``).
When a model generates one token at a time, the keys and values of the
earlier positions do not change (causal attention never lets them see the
future), so they are projected once, kept, and each new token only projects
its own query, key and value. A step then costs O(1) projections and
feed-forward work instead of re-running the whole prefix. How a stack and a
model use it is described at ``seqlab.nn.transformer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import _check_size
from .dropout import dropout

__all__ = [
    "MultiheadAttention",
    "KVCache",
    "LayerCache",
    "TransformerCache",
    "attention_reference",
    "canonical_mask",
    "causal_mask",
    "padding_mask",
    "share_parameters",
]


# ----------------------------------------------------------------------------
# Masks


def canonical_mask(mask: Optional[Tensor], name: str, dtype: torch.dtype) -> Optional[Tensor]:
    """torch.nn's two mask conventions as one additive float mask M.

    A boolean mask says True = *not allowed* and becomes -inf there and 0
    elsewhere; a float mask is added to the scores as it is.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} should be a Tensor or None, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} should be a bool (True = not allowed) or floating (added) tensor, got {mask.dtype}")
    return mask.to(dtype)


def causal_mask(query_len: int, key_len: Optional[int] = None, *, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive causal mask (query_len, key_len), aligned to the *last* key.

    Query i sits at position key_len - query_len + i and may see keys up to
    that position: the mask for new tokens appended to a cache of
    key_len - query_len earlier ones. With key_len = query_len it equals
    ``Transformer.generate_square_subsequent_mask(query_len)``.
    """
    key_len = query_len if key_len is None else key_len
    if key_len < query_len:
        raise ValueError(f"a causal mask needs key_len >= query_len, got query_len={query_len}, key_len={key_len}")
    full = torch.full((query_len, key_len), float("-inf"), device=device, dtype=dtype)
    return torch.triu(full, diagonal=key_len - query_len + 1)


def padding_mask(lengths: Tensor, max_len: Optional[int] = None) -> Tensor:
    """Boolean key padding mask (B, S) from lengths (B,): True at padded positions, torch.nn's convention."""
    if not isinstance(lengths, Tensor) or lengths.dim() != 1:
        got = f"{lengths.dim()}D tensor" if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"lengths should be a 1D tensor (one length per sequence), got {got}")
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)  # (S,)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)  # (1, S) >= (B, 1) -> (B, S)


# ----------------------------------------------------------------------------
# The kernel: the specification


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
                        dropout_p: float = 0.0, is_causal: bool = False) -> tuple[Tensor, Tensor]:
    r"""softmax(q k^T / sqrt(d_k) + M) v, written out; returns (output, weights).

    q (..., L, d_k), k (..., S, d_k), v (..., S, d_v); mask additive and
    broadcastable to (..., L, S). ``is_causal`` masks key j > query i
    (top-left aligned, as ``scaled_dot_product_attention`` does). Dropout
    acts on the weights, so the returned weights are the dropped ones, as
    in torch.nn.
    """
    d_k = q.size(-1)
    L, S = q.size(-2), k.size(-2)
    scores = (q * (1.0 / math.sqrt(d_k))) @ k.transpose(-2, -1)  # (..., L, d_k) @ (..., d_k, S) -> (..., L, S)
    if is_causal:
        scores = scores + torch.triu(torch.full((L, S), float("-inf"), dtype=q.dtype, device=q.device), 1)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = dropout(weights, p=dropout_p)
    return weights @ v, weights  # (..., L, S) @ (..., S, d_v) -> (..., L, d_v)


# ----------------------------------------------------------------------------
# The cache


class KVCache:
    """Projected keys and values of one attention module, kept between decoding steps.

    Two kinds:

    - ``KVCache()`` (self-attention): every call appends the keys and values
      of the new positions and attends over all kept so far.
    - ``KVCache(static=True)`` (cross-attention on an encoder memory): the
      first call projects the memory and keeps it; later calls reuse it and
      do not look at their key/value arguments.

    Keys and values are stored per head, (B, nh, T, hs), before ``bias_k`` /
    ``add_zero_attn`` are appended (those are added again at every call).
    Appending writes into a buffer that doubles when full, so a step copies
    only the new positions; under autograd (some input requires grad) it
    concatenates instead, since writing in place into a tensor that the graph
    has saved would break backward.
    """

    def __init__(self, static: bool = False) -> None:
        self.static = static
        self.length = 0
        self._k: Optional[Tensor] = None  # (B, nh, capacity, hs)
        self._v: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        shape = None if self._k is None else tuple(self._k.shape[:2]) + (self.length, self._k.shape[3])
        return f"KVCache(static={self.static}, length={self.length}, shape={shape})"

    @property
    def k(self) -> Optional[Tensor]:
        return None if self._k is None else self._k[:, :, : self.length]  # (B, nh, T, hs)

    @property
    def v(self) -> Optional[Tensor]:
        return None if self._v is None else self._v[:, :, : self.length]  # (B, nh, T, hs)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add k, v (B, nh, T_new, hs) after the kept positions; return all of them (B, nh, T, hs)."""
        if self._k is None:
            self._k, self._v, self.length = k, v, k.size(2)
            return k, v
        if k.shape[:2] != self._k.shape[:2] or k.size(3) != self._k.size(3) or v.shape[:2] != self._v.shape[:2]:
            raise ValueError(f"cache holds (batch, heads, ·, head_dim) = {tuple(self._k.shape[:2])} + "
                             f"(·, {self._k.size(3)}), new keys have {tuple(k.shape)}; "
                             "use a fresh cache for a new batch, or reorder() it for beam search")
        n, t = self.length, k.size(2)
        grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self._k.requires_grad)
        if grad:
            self._k = torch.cat([self.k, k], dim=2)  # (B, nh, n + t, hs)
            self._v = torch.cat([self.v, v], dim=2)
        else:
            if n + t > self._k.size(2):
                capacity = max(2 * self._k.size(2), n + t)
                self._k = self._grow(self._k, n, capacity)
                self._v = self._grow(self._v, n, capacity)
            self._k[:, :, n: n + t] = k
            self._v[:, :, n: n + t] = v
        self.length = n + t
        return self.k, self.v

    @staticmethod
    def _grow(buf: Tensor, n: int, capacity: int) -> Tensor:
        B, nh, _, hs = buf.shape
        new = buf.new_empty(B, nh, capacity, hs)
        new[:, :, :n] = buf[:, :, :n]
        return new

    def reorder(self, index: Tensor) -> "KVCache":
        """Keep batch rows ``index`` (beam search: the surviving hypotheses); returns self."""
        if self._k is not None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)
        return self

    def reset(self) -> None:
        self.__init__(self.static)


@dataclass
class LayerCache:
    """The caches of one Transformer layer: its self-attention and (decoder layers) its cross-attention."""

    self_attn: KVCache = field(default_factory=KVCache)
    cross_attn: KVCache = field(default_factory=lambda: KVCache(static=True))

    def reorder(self, index: Tensor) -> "LayerCache":
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)
        return self


class TransformerCache:
    """The caches of a whole stack, one ``LayerCache`` per layer, created on first use.

    ``length`` is the number of positions already decoded: the offset a
    positional encoding needs for the next tokens.
    """

    def __init__(self) -> None:
        self.layers: list[LayerCache] = []

    def __getitem__(self, i: int) -> LayerCache:
        while len(self.layers) <= i:
            self.layers.append(LayerCache())
        return self.layers[i]

    @property
    def length(self) -> int:
        return self.layers[0].self_attn.length if self.layers else 0

    def reorder(self, index: Tensor) -> "TransformerCache":
        """Keep batch rows ``index`` in every layer; returns self, so ``lambda c, i: c.reorder(i)`` is
        the ``reorder`` of the ``seqlab.decoding`` contract."""
        for layer in self.layers:
            layer.reorder(index)
        return self

    def __repr__(self) -> str:
        return f"TransformerCache(layers={len(self.layers)}, length={self.length})"


# ----------------------------------------------------------------------------
# The module


def share_parameters(module: nn.Module, twin: nn.Module) -> nn.Module:
    """Make ``twin`` hold ``module``'s very Parameter objects (same names, as seqlab's layers and
    torch.nn's have) and its train/eval mode; returns ``twin``.

    For ``__prepare_scriptable__``: ``torch.jit.script`` compiles torch.nn's implementation of a
    layer whose own forward TorchScript cannot read (caches, shape messages), and the scripted
    module trains the same parameters.
    """
    for name, p in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        target = twin.get_submodule(owner) if owner else twin
        if leaf not in target._parameters:
            raise ValueError(f"expected the torch.nn twin of {type(module).__name__} to have a parameter {name!r}")
        target._parameters[leaf] = p
    return twin.train(module.training)


class MultiheadAttention(nn.Module):
    r"""Multi-head attention, drop-in for ``torch.nn.MultiheadAttention``.

    .. math::
        \text{MultiHead}(X_q, X_k, X_v) = \text{Concat}(\text{head}_1, \dots, \text{head}_h) W^O + b^O,
        \quad \text{head}_i = \text{softmax}\!\left(\frac{Q_i K_i^\top}{\sqrt{d_k}} + M\right) V_i

    where Q_i = X_q W^Q_i + b^Q_i, K_i = X_k W^K_i + b^K_i, V_i = X_v W^V_i + b^V_i,
    d_k = head_dim = embed_dim / num_heads, and M adds ``attn_mask`` and
    ``key_padding_mask`` (boolean: True = not allowed, becomes -inf; float:
    added as it is).

    Args are torch.nn's: ``embed_dim, num_heads, dropout=0.0, bias=True,
    add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
    batch_first=False``. ``add_bias_kv`` appends one learned key and value
    (``bias_k``, ``bias_v``) to the sequence; ``add_zero_attn`` appends a zero
    key and value after the projection, so every query has somewhere to put
    weight. Parameters and initialisation are torch.nn's: W^Q, W^K, W^V
    stacked in ``in_proj_weight`` (3E, E), or ``q_proj_weight`` (E, E),
    ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim) when kdim or vdim
    differ, all xavier-uniform; ``in_proj_bias`` (3E,) and ``out_proj.bias``
    zero; ``bias_k``, ``bias_v`` (1, 1, E) xavier-normal. State dicts load both
    ways with torch.nn.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False, cache=None)``
    takes (L, N, E) or (N, L, E) with batch_first, or unbatched (L, E), and
    returns (output, weights): weights (N, L, S) averaged over heads, or
    (N, num_heads, L, S) with ``average_attn_weights=False``, or None when
    ``need_weights=False``. ``attn_mask`` is (L, S) or (N·num_heads, L, S);
    ``key_padding_mask`` (N, S). ``is_causal=True`` is a hint that
    ``attn_mask`` is the causal mask and, as in torch, requires it; when the
    weights are not needed and there is no padding mask, the fused kernel's
    own causal masking is used instead of the mask.

    ``cache`` (a ``KVCache``, seqlab only): the keys and values of earlier
    calls are kept and the new ones appended (see ``KVCache``). S then counts
    all kept positions, and the masks must cover them. With a cache,
    ``is_causal=True`` needs no mask: query i of the L new ones sees keys up
    to its own position, S - L + i (``causal_mask(L, S)``).

    >>> mha = MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(3, 5, 8)
    >>> out, w = mha(x, x, x)
    >>> out.shape, w.shape
    (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    __constants__ = ["batch_first"]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = _check_size("embed_dim", embed_dim)
        self.num_heads = _check_size("num_heads", num_heads)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                             f"num_heads={num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout should be a probability in [0, 1], got {dropout}")
        self.kdim = embed_dim if kdim is None else _check_size("kdim", kdim)
        self.vdim = embed_dim if vdim is None else _check_size("vdim", vdim)
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn

        E = embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * E, E, **factory))  # [W^Q; W^K; W^V]
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(E, E, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(E, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(E, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * E, **factory))  # [b^Q; b^K; b^V]
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(E, E, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, E, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, E, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's MultiheadAttention on these very parameters: the same
        equations (tested to agree), without the ``cache`` argument, which TorchScript cannot type."""
        twin = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                     bias=self.in_proj_bias is not None, add_bias_kv=self.bias_k is not None,
                                     add_zero_attn=self.add_zero_attn, kdim=self.kdim, vdim=self.vdim,
                                     batch_first=self.batch_first, device="meta")
        return share_parameters(self, twin)

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        return s + f", batch_first={self.batch_first}"

    # -- projections ---------------------------------------------------------

    def _weights(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._qkv_same_embed_dim:
            return self.in_proj_weight.chunk(3)  # 3 x (E, E)
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _biases(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        if self.in_proj_bias is None:
            return None, None, None
        return self.in_proj_bias.chunk(3)  # 3 x (E,)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, T, E) -> (B, nh, T, hs)

    def _project(self, query: Tensor, key: Tensor, value: Tensor, self_attention: bool,
                 key_is_value: bool, need_kv: bool) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Q = X_q W^Q + b^Q, K = X_k W^K + b^K, V = X_v W^V + b^V, split into heads (B, nh, ·, hs).

        Inputs are (B, ·, ·). Self-attention with the packed weight does one
        (B, L, E) x (E, 3E) product instead of three smaller ones.
        """
        B, L, E = query.shape
        if self_attention and self._qkv_same_embed_dim and need_kv:
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3E)
            qkv = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hs)
            q, k, v = qkv.unbind(0)  # 3 x (B, nh, L, hs)
            return q, k, v
        W_q, W_k, W_v = self._weights()
        b_q, b_k, b_v = self._biases()
        q = self._split_heads(F.linear(query, W_q, b_q))  # (B, nh, L, hs)
        if not need_kv:
            return q, None, None
        if key_is_value and self._qkv_same_embed_dim:
            kv = F.linear(key, self.in_proj_weight[E:], None if b_k is None else self.in_proj_bias[E:])  # (B, S, 2E)
            k, v = kv.chunk(2, dim=-1)  # 2 x (B, S, E)
        else:
            k, v = F.linear(key, W_k, b_k), F.linear(value, W_v, b_v)  # (B, S, E)
        return q, self._split_heads(k), self._split_heads(v)  # (B, nh, S, hs)

    # -- checks --------------------------------------------------------------

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> bool:
        """Returns whether the input is batched; raises on shapes torch.nn would refuse."""
        if query.dim() not in (2, 3):
            raise ValueError(f"query should be unbatched 2D (L, E) or batched 3D, got {query.dim()}D "
                             f"with shape {tuple(query.shape)}")
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"for a {query.dim()}D query, key and value should be {query.dim()}D too, got "
                             f"key {key.dim()}D and value {value.dim()}D")
        for name, x, want in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x.size(-1) != want:
                dim = "embed_dim" if name == "query" else name[0] + "dim"
                raise ValueError(f"expected {name} with {want} features ({dim}), got {x.size(-1)} "
                                 f"(shape {tuple(x.shape)})")
        seq_dim = 1 if (self.batch_first and query.dim() == 3) else 0
        if key.size(seq_dim) != value.size(seq_dim):
            raise ValueError(f"key and value should have the same sequence length, got {key.size(seq_dim)} "
                             f"and {value.size(seq_dim)}")
        if query.dim() == 3:
            b = 1 - seq_dim
            if not query.size(b) == key.size(b) == value.size(b):
                raise ValueError(f"query, key and value should have the same batch size, got "
                                 f"{query.size(b)}, {key.size(b)} and {value.size(b)}")
        return query.dim() == 3

    def _masks(self, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], B: int, L: int, S: int,
               batched: bool, dtype: torch.dtype) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Both masks as additive float masks, broadcastable to (B, nh, L, S)."""
        nh = self.num_heads
        if attn_mask is not None:
            attn_mask = canonical_mask(attn_mask, "attn_mask", dtype)
            if attn_mask.dim() == 2:
                if attn_mask.shape != (L, S):
                    raise ValueError(f"expected a 2D attn_mask of shape (L, S) = {(L, S)}, got {tuple(attn_mask.shape)}")
                attn_mask = attn_mask.view(1, 1, L, S)  # (L, S) -> (1, 1, L, S)
            elif attn_mask.dim() == 3:
                want = (B * nh, L, S) if batched else (nh, L, S)
                if attn_mask.shape != want:
                    what = "(N*num_heads, L, S)" if batched else "(num_heads, L, S)"
                    raise ValueError(f"expected a 3D attn_mask of shape {what} = {want}, got {tuple(attn_mask.shape)}")
                attn_mask = attn_mask.view(B, nh, L, S)  # (B*nh, L, S) -> (B, nh, L, S)
            else:
                raise ValueError(f"expected attn_mask to be 2D (L, S) or 3D (N*num_heads, L, S), got "
                                 f"{attn_mask.dim()}D with shape {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            key_padding_mask = canonical_mask(key_padding_mask, "key_padding_mask", dtype)
            want = (B, S) if batched else (S,)
            if key_padding_mask.shape != want:
                what = "(N, S)" if batched else "(S,)"
                raise ValueError(f"expected key_padding_mask of shape {what} = {want}, got "
                                 f"{tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.view(B, 1, 1, S)  # (B, S) -> (B, 1, 1, S)
        return attn_mask, key_padding_mask

    # -- forward -------------------------------------------------------------

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False, cache: Optional[KVCache] = None) -> tuple[Tensor, Optional[Tensor]]:
        # `is` before any transpose: self-attention may use one packed projection.
        self_attention = query is key and key is value
        key_is_value = key is value
        batched = self._check_inputs(query, key, value)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache should be a KVCache or None, got {type(cache).__name__}")

        # Internally batch first: (B, T, ·).
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)  # (T, ·) -> (1, T, ·)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (T, B, ·) -> (B, T, ·)
        B, L, _ = query.shape

        # Q, K, V per head; with a cache, K and V of earlier calls join the new ones.
        reuse = cache is not None and cache.static and cache.length > 0
        q, k, v = self._project(query, key, value, self_attention, key_is_value, need_kv=not reuse)  # (B, nh, ·, hs)
        if reuse:
            k, v = cache.k, cache.v  # (B, nh, S, hs)
            if k.size(0) != B:
                raise ValueError(f"the static cache holds a batch of {k.size(0)}, the query has {B}")
        elif cache is not None:
            k, v = cache.append(k, v)  # (B, nh, past + S_new, hs)
        S = k.size(2)

        if is_causal and attn_mask is None and (cache is None or cache.static):
            raise RuntimeError("is_causal=True is a hint that attn_mask is the causal mask and needs attn_mask "
                               "(as in torch.nn); use Transformer.generate_square_subsequent_mask(L), or pass a "
                               "self-attention cache, with which is_causal alone suffices")
        attn_mask, key_padding_mask = self._masks(attn_mask, key_padding_mask, B, L, S, batched, q.dtype)
        if cache is not None and not cache.static:
            # The fused kernel's causal flag is top-left aligned: wrong once keys outnumber queries,
            # so with a cache the causal mask is always explicit and aligned to the last key.
            if is_causal and attn_mask is None:
                attn_mask = causal_mask(L, S, device=q.device, dtype=q.dtype).view(1, 1, L, S)  # (1, 1, L, S)
            is_causal = False
        elif is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # torch's rule: trust the hint and let the kernel mask causally
        else:
            is_causal = False

        # Extra keys and values, appended after the cache so that they are never stored twice.
        if self.bias_k is not None:
            k = torch.cat([k, self._split_heads(self.bias_k.expand(B, 1, -1))], dim=2)  # (B, nh, S + 1, hs)
            v = torch.cat([v, self._split_heads(self.bias_v.expand(B, 1, -1))], dim=2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(B, self.num_heads, 1, self.head_dim)], dim=2)  # (B, nh, S + 1, hs)
            v = torch.cat([v, v.new_zeros(B, self.num_heads, 1, self.head_dim)], dim=2)
        extra = k.size(2) - S
        if extra:  # the appended keys are allowed for everyone
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, extra))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, extra))

        if attn_mask is None:
            mask = key_padding_mask
        elif key_padding_mask is None:
            mask = attn_mask
        else:
            mask = attn_mask + key_padding_mask  # (1 or B, 1 or nh, L, S)

        out, weights = self._attend(q, k, v, mask, is_causal, need_weights)  # (B, nh, L, hs)

        # Concat(head_1, ..., head_h) W^O + b^O, laid out as the caller's input.
        if batched and not self.batch_first:
            out = out.permute(2, 0, 1, 3).reshape(L, B, self.embed_dim)  # (B, nh, L, hs) -> (L, B, E)
        else:
            out = out.transpose(1, 2).reshape(B, L, self.embed_dim)  # (B, nh, L, hs) -> (B, L, E)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)  # (1, L, E) -> (L, E)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)  # (B, nh, L, S) -> (B, L, S)
            if not batched:
                weights = weights.squeeze(0)  # (1, ·, L, S) -> (·, L, S)
        return out, weights

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
                need_weights: bool) -> tuple[Tensor, Optional[Tensor]]:
        """The one place a kernel is chosen: the weights are materialised only when asked for."""
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            return attention_reference(q, k, v, mask, dropout_p, is_causal)
        if dropout_p > 0.0 and q.device.type == "cpu":
            # torch's CPU attention with dropout is its math path, the reference's products, with
            # masks drawn by bernoulli_; the reference draws them with seqlab's dropout (nn/dropout.py)
            return attention_reference(q, k, v, mask, dropout_p, is_causal)[0], None
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # torch's CPU flash attention runs its backward about four times slower in bfloat16 than
            # in float32 (measured at B=16, 4 heads of 36, T=128: 40 ms against 9 ms), so mixed
            # precision attends in float32 (autocast off: it would cast the inputs back) and rounds
            # the output once
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                     attn_mask=None if mask is None else mask.float(),
                                                     dropout_p=dropout_p, is_causal=is_causal)
            return out.to(q.dtype), None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        return out, None
