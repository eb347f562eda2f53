"""Greedy decoding: the most probable token at every step."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def _check_common(start: Tensor, max_len: int) -> None:
    if not isinstance(start, Tensor) or start.dim() != 1 or start.dtype != torch.long:
        got = f"{start.dim()}D {start.dtype}" if isinstance(start, Tensor) else type(start).__name__
        raise ValueError(f"start tokens should be a 1D LongTensor (one per sequence), got {got}")
    if max_len < 1:
        raise ValueError(f"max_len should be >= 1, got {max_len}")


def decode_loop(step: Callable, state: Any, start: Tensor, max_len: int, eos: int | None,
                choose: Callable[[Tensor], Tensor]) -> Tensor:
    """Feed ``start``, then each chosen token back, until every row emitted ``eos`` or max_len.

    Returns (N, L) tokens, L <= max_len, not including ``start``; after a
    row's ``eos`` the row is padded with ``eos``.
    """
    _check_common(start, max_len)
    tokens, out = start, []
    done = torch.zeros_like(start, dtype=torch.bool)
    for _ in range(max_len):
        logits, state = step(tokens, state)  # (N, V)
        nxt = choose(logits)  # (N,)
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= nxt == eos
        out.append(nxt)
        tokens = nxt
        if eos is not None and bool(done.all()):
            break
    return torch.stack(out, dim=1)  # L x (N,) -> (N, L)


def greedy(step: Callable, state: Any, start: Tensor, *, max_len: int, eos: int | None = None) -> Tensor:
    """argmax decoding; see ``decode_loop`` for the contract."""
    return decode_loop(step, state, start, max_len, eos, lambda logits: logits.argmax(dim=-1))
