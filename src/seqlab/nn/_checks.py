"""Constructor argument checks shared by every seqlab layer: say what was expected and what arrived."""
from __future__ import annotations

import numbers


def _check_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_prob(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} should be a number in [0, 1), got {type(p).__name__} ({p!r})")
    if not 0 <= p < 1:
        raise ValueError(f"{name} should be a probability in [0, 1), got {p}")
    return float(p)
