"""Ancestral sampling with temperature, top-k and nucleus (top-p) filtering.

Top-p keeps the smallest set of most probable tokens whose probability mass
reaches p (Holtzman et al. 2020); top-k keeps the k most probable (Fan et al.
2018). Both are applied to the temperature-scaled logits.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .greedy import decode_loop


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> Tensor:
    """Scaled logits (N, V) with the filtered-out tokens at -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature should be > 0 (use greedy decoding for argmax), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k should be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p should be in (0, 1], got {top_p}")
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches p; the first token always stays
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(step: Callable, state: Any, start: Tensor, *, max_len: int, eos: int | None = None,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample each next token from softmax(filtered logits); same contract as ``greedy``."""

    def choose(logits: Tensor) -> Tensor:
        probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (N, 1) -> (N,)

    return decode_loop(step, state, start, max_len, eos, choose)
