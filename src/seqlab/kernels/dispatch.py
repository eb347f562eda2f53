"""The one place where a recurrence path is chosen.

``choose`` returns the kernel to call and a ``Dispatch`` record that says
which path ran and, when a faster one was refused, why. Modules keep the last
record as ``module.last_dispatch`` so a user can ask after any forward.

``backend='auto'`` takes the fastest path that supports the call: on CPU the
compiled C++ loop (``compiled.py``, built on first use; ``SEQLAB_NO_COMPILE=1``
turns it off), on CUDA the Triton kernels (``triton_rnn.py``), else the fused
Python path (``fused.py``), else the reference loop (``reference.py``, the
specification). Naming a backend runs that path or raises with the reason it
cannot; ``backend='triton'`` runs on CPU tensors only under ``TRITON_INTERPRET=1``
(the interpreter the tests use), and ``auto`` never picks it there.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import Tensor

from . import reference
from .common import LayerWeights, Masks

BACKENDS = ("auto", "reference", "fused", "compiled", "triton")


class Dispatch(NamedTuple):
    backend: str  # the path that ran: 'reference', 'fused', 'compiled' or 'triton'
    reason: str  # why a faster path was not taken; '' when the fastest one for the device ran


def _fused_module():
    # Imported lazily so that a broken or missing fast path never stops the
    # reference path (the specification) from working.
    from . import fused

    return fused


def _compiled_module():
    from . import compiled

    return compiled


def _triton_module():
    # imports triton when it is installed; only asked for on CUDA tensors or when named
    from . import triton_rnn

    return triton_rnn


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
            return compiled.run_supported, Dispatch("compiled", "")  # run_layer without re-checking
        if backend == "compiled":
            raise ValueError(f"backend='compiled' cannot run this call: {why}")
        # off the CPU the compiled loop is no option at all, so its absence is not a refusal to report
        if not isinstance(x, Tensor) or x.device.type == "cpu":
            refusals.append(f"compiled path refused: {why}")
    on_cuda = isinstance(x, Tensor) and x.device.type == "cuda"
    if backend == "triton" or (backend == "auto" and on_cuda):
        try:
            triton_rnn = _triton_module()
            why = triton_rnn.supports(cell, x, w, masks)
        except ImportError as e:  # pragma: no cover - only when the triton module is broken
            triton_rnn, why = None, f"the triton path could not be imported: {e}"
        if why is None:
            return triton_rnn.run_layer, Dispatch("triton", "; ".join(refusals))
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run this call: {why}")
        refusals.append(f"triton path refused: {why}")
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
