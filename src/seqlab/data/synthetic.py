"""Synthetic long-memory tasks: copy memory and the adding problem, with their trivial baselines.

Both follow the set-up of Bai, Kolter & Koltun (2018), "An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling", which took them from Arjovsky,
Shah & Bengio (2016) (copy memory) and Hochreiter & Schmidhuber (1997) (adding). A model has
learned something only when its loss goes clearly below the baseline, which is what the
``*_baseline`` functions give.

Every generator takes ``seed``: an int seeds a fresh CPU ``torch.Generator`` (same int, same
batch), and a ``torch.Generator`` is advanced in place (successive calls, fresh batches).
Tensors are drawn on the CPU and then moved, so a seed gives the same data on every device.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .base import DataError

# Copy memory alphabet: 0 blank, 1..8 the symbols to remember, 9 the delimiter ("now recall").
COPY_BLANK = 0
COPY_SYMBOLS = 8
COPY_DELIMITER = 9
COPY_VOCAB = 10   # input and output classes
COPY_LENGTH = 10  # symbols to remember

Seed = Union[int, torch.Generator]


def copy_memory(batch_size: int, T: int, *, seed: Seed = 0,
                device: Optional[Union[str, torch.device]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the copy-memory task with a gap of ``T``; returns ``(x, y)``, both (B, T+20) int64.

    Per row, with ``s`` 10 symbols drawn uniformly from 1..8::

        x = s,   0 * (T-1),  9,  0 * 10       # remember, wait, delimiter, recall
        y = 0 * (T+10),          s            # blank until the last 10 steps

    >>> x, y = copy_memory(2, 5, seed=0)
    >>> x.shape, y.shape
    (torch.Size([2, 25]), torch.Size([2, 25]))
    >>> bool((x[:, :10] == y[:, -10:]).all()), x[0, 14].item()
    (True, 9)
    """
    _check_positive(batch_size=batch_size, T=T)
    g = _generator(seed)
    s = torch.randint(1, COPY_SYMBOLS + 1, (batch_size, COPY_LENGTH), generator=g)  # (B, 10)
    L = T + 2 * COPY_LENGTH
    x = torch.full((batch_size, L), COPY_BLANK, dtype=torch.long)
    x[:, :COPY_LENGTH] = s
    x[:, COPY_LENGTH + T - 1] = COPY_DELIMITER
    y = torch.full((batch_size, L), COPY_BLANK, dtype=torch.long)
    y[:, -COPY_LENGTH:] = s
    return x.to(device), y.to(device)


def copy_memory_baseline(T: int) -> float:
    """Mean cross-entropy per step (nats) of the best memoryless strategy: blank for the first
    T+10 steps (loss 0), then a uniform guess over the 8 symbols (ln 8 each, 10 steps):

    .. math:: \\frac{10 \\ln 8}{T + 20}
    """
    _check_positive(T=T)
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (T + 2 * COPY_LENGTH)


def adding_problem(batch_size: int, T: int, *, seed: Seed = 0,
                   device: Optional[Union[str, torch.device]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the adding problem of length ``T``; returns ``x`` (B, T, 2) and ``y`` (B,), float32.

    Channel 0 holds values drawn from U[0, 1]; channel 1 is 0 except for exactly two ones, one
    at a position in ``[0, T//2)`` and one in ``[T//2, T)`` (Bai et al. 2018). ``y`` is the sum of
    the two marked values.

    >>> x, y = adding_problem(3, 10, seed=0)
    >>> x.shape, y.shape, x[..., 1].sum(1).tolist()
    (torch.Size([3, 10, 2]), torch.Size([3]), [2.0, 2.0, 2.0])
    """
    _check_positive(batch_size=batch_size)
    if T < 2:
        raise DataError(f"the adding problem needs T >= 2 (one marker per half), got T={T}")
    g = _generator(seed)
    values = torch.rand(batch_size, T, generator=g)  # (B, T)
    half = T // 2
    first = torch.randint(0, half, (batch_size,), generator=g)
    second = torch.randint(half, T, (batch_size,), generator=g)
    rows = torch.arange(batch_size)
    marker = torch.zeros(batch_size, T)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    x = torch.stack([values, marker], dim=-1)  # (B, T, 2)
    y = values[rows, first] + values[rows, second]  # (B,)
    return x.to(device), y.to(device)


def adding_baseline() -> float:
    """Mean squared error of always predicting 1.0, the mean of the target: the variance of a
    sum of two independent U[0, 1] values, 2 * 1/12 = 1/6 (about 0.1667)."""
    return 2.0 / 12.0


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_positive(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"{name} must be a positive int, got {v!r}")
