r"""Conditional generator (one-to-many): a condition in, a sequence out."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import Dropout, TransformerCache
from .config import ModelConfig
from .encoders import SequenceEncoder, check_tokens, index_state
from .lm import TiedOutput

__all__ = ["ConditionalGenerator"]


class ConditionalGenerator(nn.Module):
    r"""A language model whose start depends on a condition k (a class: a language, a kind of name):

    .. math::
        e = W_{cond}[k], \qquad p(y_t \mid y_{<t}, k) = \text{softmax}(W h_t + b)

    How e sets the initial state:

    - recurrent archs: h_0 = tanh(W_h e + b_h) reshaped to (L, B, H), one slice
      per layer, and for the LSTM c_0 = W_c e + b_c; then
      h_t = \text{Stack}(y_{t-1}, h_{t-1}) from <sos>.
    - transformer: √E·e is a prefix in front of the tokens (position 0), so
      every position attends to it under the causal mask; the prefix's own
      output is not a prediction and is dropped.

    ``forward(cond (B,), tgt_in (B, T))`` with tgt_in = <sos> y_1 ... gives
    logits (B, T, V) for y_1 ... <eos> (teacher forcing). Generation:
    ``start(cond)`` then ``step`` from <sos> until <eos> (seqlab.decoding).
    The output layer is tied to the token embedding as in :class:`LanguageModel`.
    """

    kind = "generate"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"ConditionalGenerator: expected a config of kind 'generate', got {config.kind!r}")
        self.config = config
        E, H, L = config.embed_dim, config.hidden_size, config.num_layers
        self.condition = nn.Embedding(config.num_classes, E)
        nn.init.normal_(self.condition.weight, std=E ** -0.5)
        self.decoder = SequenceEncoder(config, config.vocab_size, bidirectional=False)
        if not self.decoder.is_transformer:
            self.init_h = nn.Linear(E, L * H)
            self.init_c = nn.Linear(E, L * H) if config.arch == "lstm" else None
        self.dropout = Dropout(config.dropout)
        self.output = TiedOutput(self.decoder.output_size, config.vocab_size, E, config.tie_weights)

    def _check_cond(self, cond: Tensor) -> None:
        check_tokens("ConditionalGenerator cond", cond, dim=1)
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.config.num_classes):
            raise ValueError(f"cond: expected condition ids in [0, {self.config.num_classes}), got min "
                             f"{int(cond.min())} and max {int(cond.max())}")

    def _prefix(self, cond: Tensor) -> Tensor:
        return self.condition(cond).unsqueeze(1) * math.sqrt(self.config.embed_dim)  # (B, 1, E)

    def start(self, cond: Tensor) -> Any:
        """cond (B,) -> the state generation starts from (the condition set it)."""
        self._check_cond(cond)
        if self.decoder.is_transformer:
            cache = TransformerCache()
            self.decoder.run(self._prefix(cond), None, cache)  # position 0 is the condition
            return cache
        L, H = self.config.num_layers, self.config.hidden_size
        e = self.condition(cond)  # (B, E)
        B = cond.size(0)
        h0 = torch.tanh(self.init_h(e)).view(B, L, H).transpose(0, 1).contiguous()  # (B, L·H) -> (L, B, H)
        if self.init_c is None:
            return h0
        return h0, self.init_c(e).view(B, L, H).transpose(0, 1).contiguous()  # (B, L·H) -> (L, B, H)

    def forward(self, cond: Tensor, tgt_in: Tensor) -> Tensor:
        """cond (B,), tgt_in (B, T) starting with <sos> -> logits (B, T, V)."""
        check_tokens("ConditionalGenerator.forward tgt_in", tgt_in)
        if cond.dim() != 1 or cond.size(0) != tgt_in.size(0):
            raise ValueError(f"cond: expected one condition per sequence ({tgt_in.size(0)},), "
                             f"got shape {tuple(cond.shape)}")
        if self.decoder.is_transformer:
            self._check_cond(cond)
            x = torch.cat([self._prefix(cond), self.decoder.embed(tgt_in)], dim=1)  # (B, 1 + T, E)
            out, _ = self.decoder.run(x)  # (B, 1 + T, F)
            out = out[:, 1:]  # (B, T, F): the prefix predicts nothing
        else:
            out, _ = self.decoder(tgt_in, None, self.start(cond))  # (B, T, F)
        return self.output(self.dropout(out), self.decoder.embedding)  # (B, T, V)

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """tokens (B,) -> (logits (B, V), state)."""
        check_tokens("ConditionalGenerator.step tokens", tokens, dim=1)
        out, state = self.decoder.step(tokens, state)  # (B, F)
        return self.output(self.dropout(out), self.decoder.embedding), state

    def reorder(self, state: Any, index: Tensor) -> Any:
        """Rows ``index`` of the state (beam search); recurrent states are (L, B, H)."""
        return index_state(state, index, dim=1)
