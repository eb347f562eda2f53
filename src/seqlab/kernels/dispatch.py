"""The one place where a recurrence path is chosen.

``choose`` returns the kernel to call and a ``Dispatch`` record that says
which path ran and, when the fast one was refused, why. Modules keep the last
record as ``module.last_dispatch`` so a user can ask after any forward.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import Tensor

from . import reference
from .common import LayerWeights, Masks

BACKENDS = ("auto", "reference", "fused")


class Dispatch(NamedTuple):
    backend: str  # the path that ran: 'reference' or 'fused'
    reason: str  # why the fused path was not taken; '' when it was


def _fused_module():
    # Imported lazily so that a broken or missing fast path never stops the
    # reference path (the specification) from working.
    from . import fused

    return fused


def choose(backend: str, cell: str, x: Tensor, w: LayerWeights, masks: Masks) -> tuple[Callable, Dispatch]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return reference.run_layer, Dispatch("reference", "backend='reference' was asked for")
    refusal: Optional[str]
    try:
        fused = _fused_module()
        refusal = fused.supports(cell, x, w, masks)
    except ImportError as e:  # pragma: no cover - only when the fused module is broken
        fused, refusal = None, f"the fused path could not be imported: {e}"
    if refusal is None:
        return fused.run_layer, Dispatch("fused", "")
    if backend == "fused":
        raise ValueError(f"backend='fused' cannot run this call: {refusal}")
    return reference.run_layer, Dispatch("reference", refusal)
