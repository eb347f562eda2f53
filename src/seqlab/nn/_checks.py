"""Constructor argument checks shared by every seqlab layer: say what was expected and what arrived."""
from __future__ import annotations

import numbers


def _check_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_prob(name: str, p, one: bool = False) -> float:
    """p in [0, 1), or [0, 1] with ``one`` (dropout between layers, where torch.nn accepts 1: all dropped)."""
    interval = "[0, 1]" if one else "[0, 1)"
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} should be a number in {interval}, got {type(p).__name__} ({p!r})")
    if not (0 <= p <= 1 if one else 0 <= p < 1):
        raise ValueError(f"{name} should be a probability in {interval}, got {p}")
    return float(p)
