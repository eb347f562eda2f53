r"""Transformer layers and stacks, drop-in for ``torch.nn``, with cached incremental decoding.

An encoder layer is self-attention then a position-wise feed-forward network,
each wrapped in a residual connection and a LayerNorm; a decoder layer adds
cross-attention on the encoder's output (the *memory*) between the two:

.. math::
    \text{SA}(x) = \text{MultiHead}(x, x, x), \qquad
    \text{CA}(x, m) = \text{MultiHead}(x, m, m), \qquad
    \text{FF}(x) = W_2\, \sigma(W_1 x + b_1) + b_2

where MultiHead is ``seqlab.nn.attention.MultiheadAttention``, σ the
activation (ReLU by default) and dropout follows every sub-block and σ.
The order of residual and normalisation is ``norm_first``:

- ``norm_first=False`` (post-norm, Vaswani et al. 2017):
  x = LN_1(x + SA(x)); [x = LN_2(x + CA(x, m))]; x = LN(x + FF(x))
- ``norm_first=True`` (pre-norm, Xiong et al. 2020, "On Layer Normalization
  in the Transformer Architecture", which trains without warm-up):
  x = x + SA(LN_1(x)); [x = x + CA(LN_2(x), m)]; x = x + FF(LN(x))

Parameter names, shapes, defaults and initialisation are torch.nn's, so state
dicts load both ways. torch.nn's inference fast paths (nested tensors,
``torch._transformer_encoder_layer_fwd``) are not reproduced:
``enable_nested_tensor`` and ``mask_check`` are accepted and ignored, so in
eval mode seqlab's encoder returns the computed values at padded positions
where torch.nn's nested-tensor path returns zeros.

Incremental decoding (seqlab only)
----------------------------------
Every layer and stack takes ``cache=``: a ``TransformerCache`` for a stack, a
``LayerCache`` for a single layer. The first call fills it with the keys and
values of the prefix; each later call passes only the new positions, which
attend to everything kept so far. ``cache.length`` is the number of positions
already decoded, the offset for positional encodings. Cross-attention keys
and values are projected from the memory once, at the first call, and reused.

Decoder-only (GPT-style: a ``TransformerEncoder`` with a causal mask)::

    cache = TransformerCache()
    h = stack(embed(prompt) + pos(offset=0), is_causal=True, cache=cache)  # (B, T0, E); mask optional
    while generating:
        x = embed(token) + pos(offset=cache.length)                         # (B, 1, E)
        h = stack(x, cache=cache)      # one new token sees every kept position: no mask needed
        logits = head(h[:, -1])

Encoder-decoder::

    memory = model.encoder(src, src_key_padding_mask=pad)
    cache = TransformerCache()
    for each step:
        y = model.decoder(tgt_new, memory, memory_key_padding_mask=pad, cache=cache)

With a cache, ``is_causal=True`` alone masks causally, aligned to the last
key (query i of L new ones sees keys up to past + i); an explicit mask must be
(L, past + L), and ``tgt_key_padding_mask`` (B, past + L). For beam search,
``cache.reorder(index)`` keeps the surviving rows: the ``reorder`` of the
``seqlab.decoding`` contract. Recomputing the whole prefix and decoding with
the cache give the same outputs (tested at atol 1e-5).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import LayerCache, MultiheadAttention, TransformerCache, share_parameters
from .dropout import Dropout

__all__ = [
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "Transformer",
    "TransformerCache",
    "LayerCache",
]

Activation = Union[str, Callable[[Tensor], Tensor]]


def _get_activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise ValueError(f"activation should be 'relu', 'gelu' or a callable, got {activation!r}")
    if not callable(activation):
        raise TypeError(f"activation should be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
    return activation


def _relu_or_gelu(activation: Callable) -> int:
    """torch.nn's flag (1 relu, 2 gelu, 0 other), kept so code that reads it still works."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return 1
    if activation is F.gelu or isinstance(activation, nn.GELU):
        return 2
    return 0


def _seq_len(x: Tensor, batch_first: bool) -> int:
    return x.size(1) if (x.dim() == 3 and batch_first) else x.size(0)


def _detect_is_causal(mask: Optional[Tensor], is_causal: Optional[bool], size: int) -> bool:
    """torch.nn's rule: a given hint wins; without one, a mask equal to the square causal mask counts as causal."""
    if is_causal is not None:
        return bool(is_causal)
    if mask is None or mask.shape != (size, size):
        return False
    causal = Transformer.generate_square_subsequent_mask(size, device=mask.device, dtype=torch.float32)
    if mask.dtype == torch.bool:
        return bool((mask == torch.isinf(causal)).all())
    return bool((mask == causal.to(mask.dtype)).all())


def _check_cache(cache: Any, kind: type, where: str) -> None:
    if cache is not None and not isinstance(cache, kind):
        raise TypeError(f"{where} takes cache={kind.__name__} or None, got {type(cache).__name__}")


class TransformerEncoderLayer(nn.Module):
    r"""Self-attention and feed-forward, drop-in for ``torch.nn.TransformerEncoderLayer``.

    .. math::
        \text{post-norm:}\quad x \leftarrow \text{LN}_1(x + \text{SA}(x)),\quad
        x \leftarrow \text{LN}_2(x + \text{FF}(x))

        \text{pre-norm (norm\_first):}\quad x \leftarrow x + \text{SA}(\text{LN}_1(x)),\quad
        x \leftarrow x + \text{FF}(\text{LN}_2(x))

    with FF(x) = linear2(dropout(σ(linear1(x)))). Args are torch.nn's:
    ``d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu"``
    (or "gelu", or any callable), ``layer_norm_eps=1e-5, batch_first=False,
    norm_first=False, bias=True``. Submodules: ``self_attn, linear1, dropout,
    linear2, norm1, norm2, dropout1, dropout2``.

    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False,
    cache=None)``; ``is_causal`` is a hint that ``src_mask`` is causal and,
    as in torch.nn, needs it, except with a ``LayerCache`` (see the module
    docstring).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _get_activation(activation)
        self.activation_relu_or_gelu = _relu_or_gelu(self.activation)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's layer on these very parameters (see ``share_parameters``)."""
        return share_parameters(self, nn.TransformerEncoderLayer(**_layer_config(self), device="meta"))

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None, is_causal: bool = False,
                cache: Optional[LayerCache] = None) -> Tensor:
        _check_cache(cache, LayerCache, "TransformerEncoderLayer")
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, cache)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, cache))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  is_causal: bool, cache: Optional[LayerCache]) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal, cache=None if cache is None else cache.self_attn)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class TransformerDecoderLayer(nn.Module):
    r"""Self-attention, cross-attention on the memory, feed-forward: drop-in for ``torch.nn.TransformerDecoderLayer``.

    .. math::
        \text{post-norm:}\quad x \leftarrow \text{LN}_1(x + \text{SA}(x)),\quad
        x \leftarrow \text{LN}_2(x + \text{CA}(x, m)),\quad x \leftarrow \text{LN}_3(x + \text{FF}(x))

        \text{pre-norm (norm\_first):}\quad x \leftarrow x + \text{SA}(\text{LN}_1(x)),\quad
        x \leftarrow x + \text{CA}(\text{LN}_2(x), m),\quad x \leftarrow x + \text{FF}(\text{LN}_3(x))

    Args as ``TransformerEncoderLayer``. Submodules: ``self_attn,
    multihead_attn, linear1, dropout, linear2, norm1, norm2, norm3, dropout1,
    dropout2, dropout3``.

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=False, memory_is_causal=False, cache=None)``. With a
    ``LayerCache`` the memory's keys and values are computed at the first call
    and reused after (the later calls' ``memory`` is not read).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _get_activation(activation)
        self.activation_relu_or_gelu = _relu_or_gelu(self.activation)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's layer on these very parameters (see ``share_parameters``)."""
        return share_parameters(self, nn.TransformerDecoderLayer(**_layer_config(self), device="meta"))

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False, cache: Optional[LayerCache] = None) -> Tensor:
        _check_cache(cache, LayerCache, "TransformerDecoderLayer")
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal, cache)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                    memory_is_causal, cache)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal, cache))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                               memory_is_causal, cache))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _sa_block(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  is_causal: bool, cache: Optional[LayerCache]) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal, cache=None if cache is None else cache.self_attn)[0]
        return self.dropout1(x)

    def _mha_block(self, x: Tensor, mem: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                   is_causal: bool, cache: Optional[LayerCache]) -> Tensor:
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=False, is_causal=is_causal,
                                cache=None if cache is None else cache.cross_attn)[0]
        return self.dropout2(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout3(x)


def _layer_config(layer: nn.Module) -> dict:
    """The torch.nn constructor arguments of a seqlab Transformer layer (for its TorchScript twin)."""
    return dict(d_model=layer.linear1.in_features, nhead=layer.self_attn.num_heads,
                dim_feedforward=layer.linear1.out_features, dropout=layer.dropout.p, activation=layer.activation,
                layer_norm_eps=layer.norm1.eps, batch_first=layer.self_attn.batch_first,
                norm_first=layer.norm_first, bias=layer.linear1.bias is not None)


def _clones(layer: nn.Module, n: int, what: str) -> nn.ModuleList:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} should be an int >= 1, got {n!r}")
    return nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])


def _batch_first(layer: nn.Module) -> bool:
    attn = getattr(layer, "self_attn", None)
    return bool(getattr(attn, "batch_first", False))


class TransformerEncoder(nn.Module):
    r"""A stack of ``num_layers`` deep copies of ``encoder_layer``, then ``norm``: drop-in for ``torch.nn.TransformerEncoder``.

    .. math::
        h^{(0)} = x,\quad h^{(l)} = \text{Layer}_l(h^{(l-1)}),\quad y = \text{norm}(h^{(N)})

    ``enable_nested_tensor`` and ``mask_check`` are accepted for signature
    compatibility and ignored: nested tensors are a torch.nn inference fast
    path that seqlab does not reproduce.

    ``forward(src, mask=None, src_key_padding_mask=None, is_causal=None,
    cache=None)``: with ``is_causal=None`` a mask equal to the square causal
    mask is detected, as in torch.nn. With a causal mask (or, with a cache,
    ``is_causal=True`` alone) this is a decoder-only stack, and ``cache=
    TransformerCache()`` decodes it incrementally (module docstring).
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers, "num_layers")
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.use_nested_tensor = False  # torch.nn's flag; seqlab has no nested-tensor path
        self.mask_check = mask_check

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's stack over these layers (each scripted as torch.nn's)."""
        twin = nn.TransformerEncoder(self.layers[0], 1, enable_nested_tensor=False, mask_check=self.mask_check)
        # a new list of the same layers: scripting replaces the entries of the list it is given
        twin.layers, twin.num_layers, twin.norm = nn.ModuleList(list(self.layers)), self.num_layers, self.norm
        return twin.train(self.training)

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None, cache: Optional[TransformerCache] = None) -> Tensor:
        _check_cache(cache, TransformerCache, "TransformerEncoder")
        is_causal = _detect_is_causal(mask, is_causal, _seq_len(src, _batch_first(self.layers[0])))
        output = src
        for i, layer in enumerate(self.layers):
            # Only a cached call passes `cache`, so torch.nn layers can be stacked here too
            # (two calls, not **kwargs, which TorchScript cannot compile)
            if cache is None:
                output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
            else:
                output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                               cache=cache[i])
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    r"""A stack of ``num_layers`` deep copies of ``decoder_layer``, then ``norm``: drop-in for ``torch.nn.TransformerDecoder``.

    .. math::
        h^{(0)} = y,\quad h^{(l)} = \text{Layer}_l(h^{(l-1)}, m),\quad \text{out} = \text{norm}(h^{(N)})

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=None, memory_is_causal=False, cache=None)``; incremental
    decoding with ``cache=TransformerCache()`` as in the module docstring.
    """

    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers, "num_layers")
        self.num_layers = num_layers
        self.norm = norm

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's stack over these layers (each scripted as torch.nn's)."""
        twin = nn.TransformerDecoder(self.layers[0], 1)
        # a new list of the same layers: scripting replaces the entries of the list it is given
        twin.layers, twin.num_layers, twin.norm = nn.ModuleList(list(self.layers)), self.num_layers, self.norm
        return twin.train(self.training)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False, cache: Optional[TransformerCache] = None) -> Tensor:
        _check_cache(cache, TransformerCache, "TransformerDecoder")
        tgt_is_causal = _detect_is_causal(tgt_mask, tgt_is_causal, _seq_len(tgt, _batch_first(self.layers[0])))
        output = tgt
        for i, layer in enumerate(self.layers):
            extra = {} if cache is None else {"cache": cache[i]}
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask,
                           tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal, **extra)
        if self.norm is not None:
            output = self.norm(output)
        return output


class Transformer(nn.Module):
    r"""Encoder-decoder Transformer (Vaswani et al. 2017), drop-in for ``torch.nn.Transformer``.

    .. math::
        m = \text{Encoder}(x_{src}),\qquad y = \text{Decoder}(x_{tgt}, m)

    Args are torch.nn's: ``d_model=512, nhead=8, num_encoder_layers=6,
    num_decoder_layers=6, dim_feedforward=2048, dropout=0.1,
    activation="relu", custom_encoder=None, custom_decoder=None,
    layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True``.
    Both stacks end with a LayerNorm (``encoder.norm``, ``decoder.norm``), and
    every parameter with more than one dimension is re-initialised
    xavier-uniform, as in torch.nn.

    For incremental decoding, run ``model.encoder`` once and
    ``model.decoder(..., cache=TransformerCache())`` per step (module
    docstring); ``forward`` itself always recomputes both.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, custom_encoder: Optional[Any] = None,
                 custom_decoder: Optional[Any] = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                      norm_first, bias)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(*layer_args, **factory)
            norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.encoder = TransformerEncoder(layer, num_encoder_layers, norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(*layer_args, **factory)
            norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.decoder = TransformerDecoder(layer, num_decoder_layers, norm)
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles torch.nn's Transformer over this encoder and decoder."""
        # built without nn.Transformer.__init__, which would re-initialise every parameter of a custom
        # encoder and decoder (these, seqlab's own)
        twin = nn.Transformer.__new__(nn.Transformer)
        nn.Module.__init__(twin)
        twin.encoder, twin.decoder = self.encoder, self.decoder
        twin.d_model, twin.nhead, twin.batch_first = self.d_model, self.nhead, self.batch_first
        return twin.train(self.training)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Float mask (sz, sz): -inf above the diagonal (position i may not see j > i), 0 elsewhere."""
        full = torch.full((sz, sz), float("-inf"), device=device, dtype=dtype)
        return torch.triu(full, diagonal=1)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Optional[Tensor] = None, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                tgt_key_padding_mask: Optional[Tensor] = None, memory_key_padding_mask: Optional[Tensor] = None,
                src_is_causal: Optional[bool] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        if src.dim() != tgt.dim():
            raise ValueError(f"src and tgt should both be batched (3D) or both unbatched (2D), got "
                             f"{src.dim()}D and {tgt.dim()}D")
        if src.dim() == 3:
            b = 0 if self.batch_first else 1
            if src.size(b) != tgt.size(b):
                raise ValueError(f"src and tgt should have the same batch size, got {src.size(b)} and {tgt.size(b)}")
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise ValueError(f"src and tgt should have d_model={self.d_model} features, got {src.size(-1)} "
                             f"and {tgt.size(-1)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
