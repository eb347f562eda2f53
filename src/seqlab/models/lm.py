r"""Language model: the next token from everything before it."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Dropout, TransformerCache
from .config import ModelConfig
from .encoders import SequenceEncoder, check_tokens, detach, index_state

__all__ = ["ContinuousCache", "LanguageModel", "TiedOutput", "next_token_nll"]


class TiedOutput(nn.Module):
    r"""Output layer logits = W_out h + b, with W_out optionally the input embedding (Press & Wolf 2017).

    Tying needs h to have the embedding's size E. When the stack's output
    size F differs and ``tie`` is True, h is first projected,
    logits = W_emb (P h) + b with P (E, F): "project, then tie", which keeps
    the saving of a V x E matrix for a small E x F one. Without tying the
    layer is a plain Linear(F, V). The embedding is passed to ``forward``
    rather than registered here, so the state dict holds it once.
    """

    def __init__(self, in_features: int, vocab_size: int, embed_dim: int, tie: bool) -> None:
        super().__init__()
        self.tied = tie
        if tie:
            self.proj = nn.Linear(in_features, embed_dim, bias=False) if in_features != embed_dim else nn.Identity()
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.linear = nn.Linear(in_features, vocab_size)

    def forward(self, h: Tensor, embedding: nn.Embedding) -> Tensor:
        if self.tied:
            return F.linear(self.proj(h), embedding.weight, self.bias)  # (..., V)
        return self.linear(h)  # (..., V)


class LanguageModel(nn.Module):
    r"""Many-to-many next-token model:

    .. math::
        h_t = \text{Stack}(x_1 \dots x_t), \qquad p(x_{t+1} \mid x_{\le t}) = \text{softmax}(W h_t + b)

    with W tied to the input embedding when ``config.tie_weights`` (see
    :class:`TiedOutput`). Data flow: tokens (B, T) -> embedding (B, T, E) ->
    unidirectional stack (B, T, F) -> dropout -> logits (B, T, V).

    Truncated backpropagation through time: ``forward(chunk, state)`` continues
    from the previous chunk's state, and ``detach_state`` cuts the graph between
    chunks. Recurrent archs carry their hidden state (h, or (h, c) for the
    LSTM, each (L, B, H)). The transformer (causal mask) carries a window of
    at most ``max_len - 1`` previous tokens (B, W): they are recomputed as
    context and logits are returned for the new tokens only; the window plus
    a chunk is cut to the last ``max_len`` tokens, the positions it was
    trained on.

    Generation at constant cost per token: ``step(tokens (B,), state)`` from
    ``init_state(B)`` (zeros, or an empty ``TransformerCache``) or from the
    state a ``forward`` over a prompt returned (the transformer then encodes
    the window into a fresh cache once). The transformer's cache is not cut
    at ``max_len``: longer generations extrapolate the sinusoidal positions.
    """

    kind = "lm"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"LanguageModel: expected a config of kind 'lm', got {config.kind!r}")
        self.config = config
        self.encoder = SequenceEncoder(config, config.vocab_size, bidirectional=False)
        self.dropout = Dropout(config.dropout)
        self.output = TiedOutput(self.encoder.output_size, config.vocab_size, config.embed_dim, config.tie_weights)

    # -- training -----------------------------------------------------------

    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """tokens (B, T), state from the previous chunk or None -> (logits (B, T, V), state)."""
        h, state = self.features(tokens, state)  # (B, T, F)
        return self.logits(h), state

    def features(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """tokens (B, T), state as for ``forward`` -> (h (B, T, F), state): the stack's output h_t for
        the new tokens, before the dropout and the output layer (``logits(h)`` completes ``forward``)."""
        check_tokens("LanguageModel.forward tokens", tokens)
        if self.encoder.is_transformer:
            return self._forward_window(tokens, state)
        return self.encoder(tokens, None, state)  # (B, T, F)

    def _forward_window(self, tokens: Tensor, window: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        B, T = tokens.shape
        max_len = self.config.max_len
        if T > max_len:
            raise ValueError(f"the transformer lm sees at most max_len={max_len} positions at once: expected "
                             f"chunks of T <= {max_len}, got T={T}")
        if window is not None:
            if not isinstance(window, Tensor) or window.dim() != 2 or window.size(0) != B:
                got = tuple(window.shape) if isinstance(window, Tensor) else type(window).__name__
                raise ValueError(f"the transformer lm's state is its token window (B={B}, W), got {got}")
            context = torch.cat([window, tokens], dim=1)[:, -max_len:]  # (B, W + T) cut to max_len
        else:
            context = tokens
        out, _ = self.encoder(context)  # (B, W + T, F)
        return out[:, -T:], context[:, -(max_len - 1):].detach()  # (B, T, F) the new tokens only, (B, <= max_len - 1)

    def logits(self, h: Tensor) -> Tensor:
        """h (..., F) from ``features`` or the stack -> logits (..., V)."""
        return self.output(self.dropout(h), self.encoder.embedding)  # (..., V)

    def detach_state(self, state: Any) -> Any:
        """Cut the carried state from the graph between chunks (the transformer's token window has none)."""
        return detach(state)

    # -- decoding (seqlab.decoding contract) -----------------------------------

    def init_state(self, batch_size: int) -> Any:
        """The state ``step`` starts a sequence from: zeros (L, B, H) (and c), or an empty TransformerCache."""
        if self.encoder.is_transformer:
            return TransformerCache()
        p = next(self.parameters())
        h = p.new_zeros(self.config.num_layers, batch_size, self.config.hidden_size)  # (L, B, H)
        return (h, h.clone()) if self.config.arch == "lstm" else h

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """tokens (B,) -> (logits (B, V) for the next token, state). State None = a fresh sequence."""
        check_tokens("LanguageModel.step tokens", tokens, dim=1)
        if state is None:
            state = self.init_state(tokens.size(0))
        if self.encoder.is_transformer and isinstance(state, Tensor):
            # a token window from forward: encode it into a cache once, then continue token by token
            cache = TransformerCache()
            self.encoder(state, None, cache)
            state = cache
        out, state = self.encoder.step(tokens, state)  # (B, F)
        return self.logits(out), state

    def reorder(self, state: Any, index: Tensor) -> Any:
        """Rows ``index`` of the state (beam search). Recurrent states are (L, B, ·): batch is dim 1."""
        if isinstance(state, Tensor) and self.encoder.is_transformer:
            return state.index_select(0, index)  # token window (B, W)
        return index_state(state, index, dim=1)


def next_token_nll(model: nn.Module, window: Tensor, state: Any = None, last: Optional[int] = None,
                   cache: Optional["ContinuousCache"] = None) -> tuple[Tensor, int, Any]:
    """Summed next-token cross entropy of one (B, T+1) window: ``(loss_sum, B*n, state)``.

    Positions 0..T-1 predict 1..T, continuing from ``state`` (None: a fresh start); only the last
    ``last`` targets are scored when given (n = last, else n = T: the earlier ones serve as
    context). ``model`` is called, not unwrapped, so that a DistributedDataParallel wrapper sees
    the forward pass. With a ``cache`` (:class:`ContinuousCache`, scoring only) the scored targets
    are predicted by the model mixed with the cache, and then join it; ``model`` must then be the
    :class:`LanguageModel` itself.
    """
    x, y = window[:, :-1], window[:, 1:]  # (B, T) each
    if cache is not None:
        h, state = model.features(x, state)  # (B, T, F)
        if last is not None:
            h, y = h[:, -last:], y[:, -last:]  # (B, last, F), (B, last)
        return cache.nll(h, model.logits(h), y), y.numel(), state
    logits, state = model(x, state)  # (B, T, V)
    if last is not None:
        logits, y = logits[:, -last:], y[:, -last:]  # (B, last, V), (B, last)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")  # (B*n, V) vs (B*n,)
    return loss, y.numel(), state


class ContinuousCache:
    r"""The continuous cache of Grave, Joulin and Usunier (2017), for scoring a stream: a memory of
    the model's last N hidden states h_i, each stored with the token x_{i+1} that followed it, whose
    vote is mixed into the model's next-token distribution. No parameter is trained:

    .. math::
        p_{\text{cache}}(w \mid x_{\le t}) = \sum_{i=t-N}^{t-1} \mathbb{1}[x_{i+1} = w]\,
            \frac{\exp(\theta\, h_t^\top h_i)}{\sum_{j=t-N}^{t-1} \exp(\theta\, h_t^\top h_j)}

    .. math::
        p(w \mid x_{\le t}) = (1 - \lambda)\, p_{\text{model}}(w \mid h_t)
            + \lambda\, p_{\text{cache}}(w \mid x_{\le t})

    θ (``theta``) sharpens the attention over the memory, λ (``lam``) weighs the cache. A token
    joins the memory only once it has been scored, so every prediction still depends on the past
    alone; the stream's first position (an empty memory) is the model's alone. The memory is
    per row: ``nll`` is called window after window of the same (B, ·) rows, in order. Text that
    repeats within N tokens (identifiers, names, markup) is where it helps.
    """

    def __init__(self, size: int, theta: float, lam: float) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ContinuousCache: size must be an int >= 1 (tokens remembered), got {size!r}")
        if not (math.isfinite(theta) and theta > 0):
            raise ValueError(f"ContinuousCache: theta must be finite and > 0, got {theta!r}")
        if not 0.0 <= lam < 1.0:
            raise ValueError(f"ContinuousCache: lam must be in [0, 1), got {lam!r}")
        self.size, self.theta, self.lam = size, float(theta), float(lam)
        self.keys: Optional[Tensor] = None  # (B, M, F) the hidden states h_i, M <= size
        self.values: Optional[Tensor] = None  # (B, M) the token x_{i+1} after each

    def nll(self, h: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """Summed -log p(y_t | x_{<=t}) of one window: h (B, T, F) the hidden states, logits (B, T, V)
        the model's, y (B, T) the targets; the window then joins the memory."""
        h = h.detach().float()
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (B, T)
        if self.keys is not None and self.keys.size(0) != h.size(0):
            raise ValueError(f"ContinuousCache: windows of one stream must keep their rows; the memory has "
                             f"{self.keys.size(0)}, the window {h.size(0)}")
        M, T = (0 if self.keys is None else self.keys.size(1)), h.size(1)
        keys = h if M == 0 else torch.cat([self.keys, h], dim=1)  # (B, M + T, F)
        values = y if M == 0 else torch.cat([self.values, y], dim=1)  # (B, M + T)
        t = torch.arange(M, M + T, device=h.device).unsqueeze(1)  # (T, 1) query positions
        j = torch.arange(M + T, device=h.device).unsqueeze(0)  # (1, M + T) memory positions
        seen = (j < t) & (j >= t - self.size)  # (T, M + T): the N positions before t
        scores = (self.theta * h @ keys.transpose(1, 2)).masked_fill(~seen, float("-inf"))  # (B, T, M + T)
        weight = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no memory: NaN -> 0
        p_cache = (weight * (values.unsqueeze(1) == y.unsqueeze(2))).sum(-1)  # (B, T): p_cache(y_t)
        lam = torch.where(seen.any(dim=1), self.lam, 0.0)  # (T,): the first position is the model's alone
        # log((1 - λ) p_model + λ p_cache), exact where p_model underflows or p_cache is 0
        logp = torch.logaddexp(torch.log1p(-lam) + logp, torch.log(lam) + torch.log(p_cache))  # (B, T)
        self.keys, self.values = keys[:, -self.size:], values[:, -self.size:]
        return -logp.sum()
