"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay.

The multiplier applied to each parameter group's base learning rate at update
``t`` (0-based: the first optimizer step uses ``t = 0``) is

.. math::

    f(t) = \\begin{cases}
        \\frac{t + 1}{W + 1} & t < W \\quad\\text{(warm-up)} \\\\
        r + (1 - r)\\,\\tfrac12\\left(1 + \\cos \\pi p\\right) & \\text{cosine} \\\\
        1 - (1 - r)\\,p & \\text{linear} \\\\
        1 & \\text{constant}
    \\end{cases}
    \\qquad p = \\min\\!\\left(1, \\frac{t - W}{\\max(1, S - W)}\\right)

with ``W = warmup_steps``, ``S = total_steps`` and ``r = min_lr_ratio``. The
warm-up divides by ``W + 1`` (as nanoGPT does) so that the first step already
moves the weights; after ``S`` steps the rate stays at ``r`` times the base.

:class:`WarmupDecayLR` is a :class:`torch.optim.lr_scheduler.LambdaLR` whose
multiplier is the callable object :class:`WarmupDecay`. LambdaLR saves the
``__dict__`` of callable objects (never of plain functions), so
``state_dict()`` holds only ints, floats, strings and lists: it survives
``json.dumps``/``json.loads`` and goes into a checkpoint's JSON as is.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DECAYS = ("cosine", "linear", "constant")


class WarmupDecay:
    """The multiplier ``f(t)`` of the module docstring, as a picklable, JSON-stateful callable.

    >>> f = WarmupDecay(warmup_steps=3, total_steps=13, decay="linear", min_lr_ratio=0.0)
    >>> [round(f(t), 2) for t in (0, 1, 2, 3, 8, 13, 20)]
    [0.25, 0.5, 0.75, 1.0, 0.5, 0.0, 0.0]
    """

    def __init__(self, warmup_steps: int, total_steps: int, decay: str = "cosine", min_lr_ratio: float = 0.1):
        check_schedule(warmup_steps, total_steps, decay, min_lr_ratio)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, t: int) -> float:
        W, S, r = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if t < W:
            return (t + 1) / (W + 1)
        if self.decay == "constant":
            return 1.0
        p = min(1.0, (t - W) / max(1, S - W))
        if self.decay == "cosine":
            return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - r) * p  # linear


def check_schedule(warmup_steps: int, total_steps: int, decay: str, min_lr_ratio: float) -> None:
    """Raise ValueError (expected X, got Y) for schedule settings that make no sense."""
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected an int >= 0, got {warmup_steps!r}")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected an int >= 1, got {total_steps!r}")
    if decay not in DECAYS:
        raise ValueError(f"decay: expected one of {list(DECAYS)}, got {decay!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio: expected a float in [0, 1], got {min_lr_ratio!r}")


class WarmupDecayLR(LambdaLR):
    """``LambdaLR(optimizer, WarmupDecay(...))``: call ``step()`` after every ``optimizer.step()``.

    >>> import json, torch
    >>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    >>> sched = WarmupDecayLR(opt, warmup_steps=1, total_steps=3, decay="cosine", min_lr_ratio=0.0)
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
    >>> lrs
    [0.5, 1.0, 0.5, 0.0]
    >>> json.loads(json.dumps(sched.state_dict())) == sched.state_dict()
    True
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, decay: str = "cosine",
                 min_lr_ratio: float = 0.1, last_epoch: int = -1):
        super().__init__(optimizer, WarmupDecay(warmup_steps, total_steps, decay, min_lr_ratio), last_epoch)

    @property
    def schedule(self) -> WarmupDecay:
        return self.lr_lambdas[0]

    def reconfigure(self, warmup_steps: int, total_steps: int, decay: str, min_lr_ratio: float) -> None:
        """Change the schedule in place, keeping the step count, and set the optimizer's rates to match.

        After ``load_state_dict`` the saved schedule is back; a resumed run that asks for a
        different one (say, more ``total_steps`` to train longer) calls this. With unchanged
        settings it rewrites the same rates, so an exact resume stays exact.
        """
        check_schedule(warmup_steps, total_steps, decay, min_lr_ratio)
        new = {"warmup_steps": int(warmup_steps), "total_steps": int(total_steps), "decay": decay,
               "min_lr_ratio": float(min_lr_ratio)}
        for fn in self.lr_lambdas:  # one object per group, possibly the same one repeated
            fn.__dict__.update(new)
        lrs = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs
