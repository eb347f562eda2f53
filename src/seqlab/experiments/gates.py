r"""Gate statistics over time, read with ``seqlab.nn.record_gates``.

- LSTM forget gate :math:`f_t` in :math:`c_t = f_t \odot c_{t-1} + i_t \odot g_t`: near 1 the cell
  keeps its content (the additive memory path), near 0 it forgets.
- GRU update gate :math:`z_t` in torch.nn's convention :math:`h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}`:
  near 1 the unit keeps its previous state, near 0 it overwrites it.

So for both gates "near 1" means "remember". Per time step we report the mean over batch and
units and the fractions saturated below ``low`` (0.1) and above ``high`` (0.9).
"""
from __future__ import annotations

import torch

from ..nn import record_gates
from .tasks import MemoryModel, make_batch

GATE_OF = {"lstm": "f", "gru": "z"}


@torch.no_grad()
def gate_statistics(model: MemoryModel, task: str, T: int, *, batch_size: int = 64, seed: int = 321,
                    low: float = 0.1, high: float = 0.9) -> dict:
    """Per-step mean and saturation of the memory gate of an LSTM (f) or GRU (z) memory model."""
    if model.arch not in GATE_OF:
        raise ValueError(f"gate statistics are for {sorted(GATE_OF)}, got arch {model.arch!r}")
    name = GATE_OF[model.arch]
    x, _ = make_batch(task, batch_size, T, seed=seed)
    was = model.training
    model.eval()
    with record_gates() as rec:
        model(x)
    model.train(was)
    g = rec.get(model.body)[name]  # (B, L, H): the layer is batch_first
    mean = g.mean(dim=(0, 2))  # (L,)
    lo = (g < low).float().mean(dim=(0, 2))  # (L,)
    hi = (g > high).float().mean(dim=(0, 2))  # (L,)
    return {
        "gate": name,
        "mean": [round(float(v), 5) for v in mean],
        "frac_low": [round(float(v), 5) for v in lo],
        "frac_high": [round(float(v), 5) for v in hi],
        "overall": {"mean": float(g.mean()), "frac_low": float((g < low).float().mean()),
                    "frac_high": float((g > high).float().mean())},
        "low": low, "high": high, "batch_size": batch_size, "seed": seed,
    }
