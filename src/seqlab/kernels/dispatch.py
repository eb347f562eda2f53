"""The one place where a recurrence path is chosen.

``choose`` returns the kernel to call and a ``Dispatch`` record that says
which path ran and, when a faster one was refused, why. Modules keep the last
record as ``module.last_dispatch`` so a user can ask after any forward.

``backend='auto'`` takes the fastest path that supports the call: on CPU the
compiled C++ loop (``compiled.py``, built on first use; ``SEQLAB_NO_COMPILE=1``
turns it off), else the fused Python path (``fused.py``), else the reference
loop (``reference.py``, the specification). Naming a backend runs that path or
raises with the reason it cannot.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import Tensor

from . import reference
from .common import LayerWeights, Masks

BACKENDS = ("auto", "reference", "fused", "compiled")


class Dispatch(NamedTuple):
    backend: str  # the path that ran: 'reference', 'fused' or 'compiled'
    reason: str  # why a faster path was not taken; '' when the fastest one for the device ran


def _fused_module():
    # Imported lazily so that a broken or missing fast path never stops the
    # reference path (the specification) from working.
    from . import fused

    return fused


def _compiled_module():
    from . import compiled

    return compiled


def choose(backend: str, cell: str, x: Tensor, w: LayerWeights, masks: Masks) -> tuple[Callable, Dispatch]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return reference.run_layer, Dispatch("reference", "backend='reference' was asked for")
    refusals: list[str] = []
    if backend in ("auto", "compiled"):
        try:
            compiled = _compiled_module()
            why = compiled.supports(cell, x, w, masks)  # builds the extension on the first CPU call
        except ImportError as e:  # pragma: no cover - only when the compiled module is broken
            compiled, why = None, f"the compiled path could not be imported: {e}"
        if why is None:
            return compiled.run_layer, Dispatch("compiled", "")
        if backend == "compiled":
            raise ValueError(f"backend='compiled' cannot run this call: {why}")
        # off the CPU the compiled loop is no option at all, so its absence is not a refusal to report
        if not isinstance(x, Tensor) or x.device.type == "cpu":
            refusals.append(f"compiled path refused: {why}")
    refusal: Optional[str]
    try:
        fused = _fused_module()
        refusal = fused.supports(cell, x, w, masks)
    except ImportError as e:  # pragma: no cover - only when the fused module is broken
        fused, refusal = None, f"the fused path could not be imported: {e}"
    if refusal is None:
        return fused.run_layer, Dispatch("fused", "; ".join(refusals))
    if backend == "fused":
        raise ValueError(f"backend='fused' cannot run this call: {refusal}")
    return reference.run_layer, Dispatch("reference", "; ".join(refusals + [refusal]))
