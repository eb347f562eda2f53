r"""Sequence classifier (many-to-one) and tagger (many-to-many, one label per input token)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn import Dropout, padding_mask
from .config import ModelConfig
from .encoders import SequenceEncoder, check_lengths, check_tokens, last_valid

__all__ = ["Classifier", "Tagger", "AttentionPooling"]


class AttentionPooling(nn.Module):
    r"""A learned query weighs the valid positions (Yang et al. 2016, "Hierarchical Attention Networks"):

    .. math::
        u_t = \tanh(W h_t + b), \qquad
        \alpha_t = \frac{\exp(u_t^\top q)}{\sum_{s \le \text{len}} \exp(u_s^\top q)}, \qquad
        v = \textstyle\sum_t \alpha_t h_t

    Padded positions get exactly zero weight.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.query = nn.Parameter(torch.empty(size).normal_(std=size ** -0.5))

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        e = torch.tanh(self.proj(h)) @ self.query  # (B, T, F) @ (F,) -> (B, T)
        pad = padding_mask(lengths.to(h.device), h.size(1))  # (B, T), True = padding
        alpha = torch.softmax(e.masked_fill(pad, float("-inf")), dim=-1)  # (B, T); lengths >= 1, so no NaN
        return (alpha.unsqueeze(1) @ h).squeeze(1)  # (B, 1, T) @ (B, T, F) -> (B, F)


class Classifier(nn.Module):
    r"""One label per sequence:

    .. math::
        h_{1..T} = \text{Stack}(x_{1..T}), \qquad v = \text{pool}(h), \qquad
        p(y \mid x) = \text{softmax}(W v + b)

    ``config.pooling``:

    - ``last``: recurrent archs take the final state of the top layer at each
      sequence's own last token, v = h^{fwd}_{len}; a bidirectional stack
      concatenates the reverse direction's final state, which is its state at
      the first token, v = [h^{fwd}_{len}; h^{rev}_1]. The transformer takes
      its output at the last valid position.
    - ``mean``: v = (1/len) Σ_{t ≤ len} h_t.
    - ``attention``: :class:`AttentionPooling`.

    Bidirectional by default (``config.bidirectional`` None); for the
    transformer, bidirectional means no causal mask. Padding-aware: lengths
    (B,) go to the stack (``lengths=`` for recurrent layers, a key padding
    mask for the transformer) and to the pooling, so a padded batch gives
    each example the logits it gets alone.
    """

    kind = "classify"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"Classifier: expected a config of kind 'classify', got {config.kind!r}")
        self.config = config
        self.encoder = SequenceEncoder(config, config.vocab_size, bidirectional=config.is_bidirectional)
        F_ = self.encoder.output_size
        self.pool = AttentionPooling(F_) if config.pooling == "attention" else None
        self.dropout = Dropout(config.dropout)
        self.output = nn.Linear(F_, config.num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, T), lengths (B,) -> logits (B, C)."""
        check_tokens("Classifier.forward tokens", tokens)
        lengths = check_lengths(lengths, tokens)
        out, state = self.encoder(tokens, lengths)  # (B, T, F)
        pooling = self.config.pooling
        if pooling == "attention":
            v = self.pool(out, lengths)  # (B, F)
        elif pooling == "mean":
            mask = ~padding_mask(lengths.to(out.device), out.size(1))  # (B, T), True = valid
            v = (out * mask.unsqueeze(-1)).sum(1) / lengths.to(out).unsqueeze(1)  # (B, F)
        elif self.encoder.is_transformer:
            v = last_valid(out, lengths)  # (B, F)
        else:
            h_n = self.encoder.recurrent_final(state)  # (D·L, B, H), each at its own sequence's end
            D = 2 if self.encoder.bidirectional else 1
            v = torch.cat(list(h_n[-D:]), dim=-1)  # D x (B, H) -> (B, D·H): [fwd at len; rev at 1]
        return self.output(self.dropout(v))  # (B, C)


class Tagger(nn.Module):
    r"""One label per input token:

    .. math::
        h_{1..T} = \text{Stack}(x_{1..T}), \qquad p(y_t \mid x) = \text{softmax}(W h_t + b)

    Bidirectional by default, so h_t = [h^{fwd}_t; h^{rev}_t] sees the whole
    sentence (for the transformer: no causal mask). Padding-aware: the logits
    at valid positions do not depend on the padding (padded positions get
    logits too; mask them in the loss).
    """

    kind = "tag"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"Tagger: expected a config of kind 'tag', got {config.kind!r}")
        self.config = config
        self.encoder = SequenceEncoder(config, config.vocab_size, bidirectional=config.is_bidirectional)
        self.dropout = Dropout(config.dropout)
        self.output = nn.Linear(self.encoder.output_size, config.num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, T), lengths (B,) -> logits (B, T, K)."""
        check_tokens("Tagger.forward tokens", tokens)
        lengths = check_lengths(lengths, tokens)
        out, _ = self.encoder(tokens, lengths)  # (B, T, F)
        return self.output(self.dropout(out))  # (B, T, K)
