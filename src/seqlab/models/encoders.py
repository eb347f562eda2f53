r"""The one place that builds "an embedding + a sequence stack of arch X", shared by every model.

.. math::
    x_t = \sqrt{E}\, W_{emb}[w_t], \qquad (h_1 \dots h_T, s_T) = \text{Stack}(x_1 \dots x_T;\, s_0)

Stack is a recurrent layer of ``seqlab.nn`` (RNN, LSTM, GRU, MinGRU, MinLSTM;
``num_layers`` deep, dropout between layers, ``lengths=`` for padded batches,
so no packing) or a pre-norm Transformer encoder stack (Xiong et al. 2020:
it trains without the warm-up that post-norm needs) with sinusoidal
positions, a final LayerNorm, a key padding mask from the lengths and, where
the model must not see the future, a causal mask.

Embeddings start at N(0, 1/E) and are scaled by √E on the way in (Vaswani et
al. 2017, sec. 3.4): the inputs then have unit scale, while the same matrix,
when tied to an output layer, gives small initial logits.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..data.vocab import PAD
from ..nn import (GRU, LSTM, RNN, Dropout, MinGRU, MinLSTM, MultiheadAttention, SinusoidalPositionalEncoding,
                  TransformerCache, TransformerEncoder, TransformerEncoderLayer, causal_mask, padding_mask)
from .config import ARCH_OPTIONS, RECURRENT_ARCHS, ModelConfig

__all__ = ["SequenceEncoder", "build_recurrent", "make_embedding", "set_attention_dropout", "index_state", "detach",
           "last_valid"]

_RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU, "mingru": MinGRU, "minlstm": MinLSTM}


def make_embedding(vocab_size: int, embed_dim: int) -> nn.Embedding:
    """Token embedding with PAD's row fixed at zero, initialised N(0, 1/E) (see the module docstring)."""
    emb = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
    with torch.no_grad():
        nn.init.normal_(emb.weight, std=embed_dim ** -0.5)
        emb.weight[PAD].zero_()
    return emb


def set_attention_dropout(stack: nn.Module, config: ModelConfig) -> None:
    """Give every attention in ``stack`` the rate ``config.attention_dropout`` (None: leave ``dropout``)."""
    if config.attention_dropout is not None:
        for module in stack.modules():
            if isinstance(module, MultiheadAttention):
                module.dropout = float(config.attention_dropout)


def build_recurrent(config: ModelConfig, input_size: int, bidirectional: bool) -> nn.Module:
    """The seqlab.nn recurrent layer of ``config.arch``, batch-first, with only the options it accepts."""
    if config.arch not in RECURRENT_ARCHS:
        raise ValueError(f"expected a recurrent arch in {list(RECURRENT_ARCHS)}, got {config.arch!r}")
    options = {name: getattr(config, name) for name in ARCH_OPTIONS[config.arch]}
    # dropout between layers only: with one layer torch.nn would warn that it does nothing
    between = config.dropout if config.num_layers > 1 else 0.0
    return _RECURRENT[config.arch](input_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                                   dropout=between, bidirectional=bidirectional, **options)


def index_state(state: Any, index: Tensor, dim: int = 0) -> Any:
    """Rows ``index`` of every tensor in a (nested tuple/list of) state along ``dim``; None stays None."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.index_select(dim, index.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(index_state(s, index, dim) for s in state)
    if isinstance(state, TransformerCache):
        return state.reorder(index)
    raise TypeError(f"expected a state of tensors, tuples or a TransformerCache, got {type(state).__name__}")


def detach(state: Any) -> Any:
    """The same state cut from the graph (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach(s) for s in state)
    raise TypeError(f"expected a state of tensors or tuples, got {type(state).__name__}")


def last_valid(outputs: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """outputs (B, T, F) at each sequence's last valid step -> (B, F)."""
    if lengths is None:
        return outputs[:, -1]
    idx = (lengths.to(outputs.device) - 1).view(-1, 1, 1).expand(-1, 1, outputs.size(-1))  # (B, 1, F)
    return outputs.gather(1, idx).squeeze(1)  # (B, 1, F) -> (B, F)


def check_tokens(name: str, tokens: Any, dim: int = 2) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != dim or tokens.dtype != torch.long:
        got = f"{tokens.dim()}D {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        shape = "(B, T)" if dim == 2 else "(B,)"
        raise ValueError(f"{name}: expected a {dim}D LongTensor {shape}, got {got}")


def check_lengths(lengths: Any, tokens: Tensor) -> Tensor:
    B, T = tokens.shape
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.numel() != B:
        got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"lengths: expected a 1D tensor with one length per sequence ({B},), got {got}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer tensor, got {lengths.dtype}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths: expected values in [1, T={T}], got min {lo} and max {hi}")
    return lengths.to(torch.long)


class SequenceEncoder(nn.Module):
    r"""Embedding + a sequence stack of ``config.arch``: tokens (B, T) -> states (B, T, output_size).

    Args:
        config: sizes, arch and options.
        vocab_size: rows of the embedding.
        bidirectional: a reverse direction too (recurrent: concatenated, D = 2;
            transformer: no causal mask, every position sees every other).
        extra_input: features concatenated to the embedding at every step
            (the Bahdanau decoder feeds its context vector this way; recurrent only).

    ``forward(tokens, lengths=None, state=None, extra=None) -> (outputs, state)``:
    recurrent state is the layer's h (D·L, B, H), or (h, c) for the LSTM;
    the transformer's state is a ``TransformerCache`` (or None for no cache),
    with which each call continues the kept positions. ``step`` runs one
    token of a unidirectional stack.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, *, bidirectional: bool, extra_input: int = 0) -> None:
        super().__init__()
        self.arch = config.arch
        self.embed_dim = config.embed_dim
        self.bidirectional = bidirectional
        self.embedding = make_embedding(vocab_size, config.embed_dim)
        if config.arch == "transformer":
            if extra_input:
                raise ValueError(f"extra_input is for recurrent stacks, expected 0 for the transformer, "
                                 f"got {extra_input}")
            d = config.hidden_size
            self.in_proj = nn.Linear(config.embed_dim, d, bias=config.bias) if config.embed_dim != d else nn.Identity()
            self.positions = SinusoidalPositionalEncoding(d, dropout=config.dropout, max_len=config.max_len,
                                                          batch_first=True)
            layer = TransformerEncoderLayer(d, config.nhead, config.feedforward_size, config.dropout,
                                            activation=config.activation, batch_first=True, norm_first=True,
                                            bias=config.bias)
            self.stack = TransformerEncoder(layer, config.num_layers, norm=nn.LayerNorm(d, bias=config.bias))
            set_attention_dropout(self.stack, config)
            self.output_size = d
        else:
            self.dropout = Dropout(config.dropout)
            self.rnn = build_recurrent(config, config.embed_dim + extra_input, bidirectional)
            self.output_size = config.hidden_size * (2 if bidirectional else 1)
        self.num_layers = config.num_layers

    @property
    def is_transformer(self) -> bool:
        return self.arch == "transformer"

    def embed(self, tokens: Tensor) -> Tensor:
        """x = √E W_emb[tokens]: (B, T) -> (B, T, E)."""
        return self.embedding(tokens) * math.sqrt(self.embed_dim)

    def forward(self, tokens: Tensor, lengths: Optional[Tensor] = None, state: Any = None,
                extra: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        return self.run(self.embed(tokens), lengths, state, extra)

    def run(self, x: Tensor, lengths: Optional[Tensor] = None, state: Any = None,
            extra: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        """The stack on embedded inputs x (B, T, E) (a generator's condition vector enters here)."""
        if self.is_transformer:
            return self._run_transformer(x, lengths, state), state
        if extra is not None:
            x = torch.cat([x, extra], dim=-1)  # (B, T, E + X)
        x = self.dropout(x)
        return self.rnn(x, state, lengths=lengths)

    def _run_transformer(self, x: Tensor, lengths: Optional[Tensor], cache: Optional[TransformerCache]) -> Tensor:
        B, T, _ = x.shape
        causal = not self.bidirectional
        if cache is not None:
            if not causal:
                raise ValueError("a TransformerCache continues a causal stack; expected bidirectional=False")
            if lengths is not None:
                raise ValueError("lengths cannot be combined with a cache (the kept positions carry no padding); "
                                 "expected lengths=None")
            h = self.positions(self.in_proj(x), offset=cache.length)  # (B, T, d)
            # with a cache, is_causal alone aligns the causal mask to the last kept key
            return self.stack(h, is_causal=True, cache=cache)
        h = self.positions(self.in_proj(x))  # (B, T, d)
        mask = causal_mask(T, device=x.device, dtype=x.dtype) if causal else None
        pad = padding_mask(lengths.to(x.device), T) if lengths is not None else None  # (B, T), True = padding
        return self.stack(h, mask=mask, src_key_padding_mask=pad, is_causal=causal)

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token per row (B,) -> the top layer's output (B, output_size) and the next state.

        The transformer's state must be a TransformerCache (a fresh one starts a sequence).
        """
        if self.bidirectional:
            raise ValueError("step runs one token at a time, which a bidirectional stack cannot (its reverse "
                             "direction starts at the end); expected bidirectional=False")
        if self.is_transformer and not isinstance(state, TransformerCache):
            raise TypeError(f"the transformer steps with a TransformerCache state, got {type(state).__name__}")
        out, state = self.forward(tokens.unsqueeze(1), None, state)  # (B, 1, F)
        return out[:, 0], state

    def recurrent_final(self, state: Any) -> Tensor:
        """h_n (D·L, B, H) of a recurrent state (the LSTM's h, not its cell)."""
        return state[0] if isinstance(state, tuple) else state
