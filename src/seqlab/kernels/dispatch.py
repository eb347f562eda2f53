"""The one place where a recurrence path is chosen.

``choose`` returns the kernel to call and a ``Dispatch`` record that says
which path ran and, when a faster one was refused, why. Modules keep the last
record as ``module.last_dispatch`` so a user can ask after any forward.

Two levels. ``choose_stack`` first: torch's own kernels (``native.py``, the ones
torch.nn calls) take a whole plain call, all layers and directions, where they
are the better path. Otherwise ``choose`` picks a path per layer and direction.

``backend='auto'`` takes the fastest path that supports the call:

* native: plain LSTM inference over more than one step on a CPU with AVX-512 or
  on more than one thread (oneDNN's LSTM primitive is faster there than the compiled loop),
  every plain cell on CUDA (cuDNN; the Triton
  kernels are taken only when asked for or when a variant needs them, until they
  have been compiled and checked on a GPU);
* on CPU the compiled C++ loop (``compiled.py``, built on first use;
  ``SEQLAB_NO_COMPILE=1`` turns it off), on CUDA the Triton kernels
  (``triton_rnn.py``) for the variants, else the fused Python path (``fused.py``),
  else the reference loop (``reference.py``, the specification).

While the call is being traced or transformed (``torch.jit.trace``, ``torch.func``
transforms, ``torch.export`` and the exporters built on them, ``torch.compile``),
``auto`` takes a path that those understand: native for plain layers (one
``aten::lstm``-style node, valid at any length), else the reference loop; under
``torch.compile`` the compiled path too (it is a registered custom op). The record
says so. Naming a backend runs that path or raises with the reason it cannot;
``backend='triton'`` runs on CPU tensors only under ``TRITON_INTERPRET=1`` (the
interpreter the tests use), and ``auto`` never picks it there.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from . import reference
from .common import LayerWeights, Masks

BACKENDS = ("auto", "reference", "fused", "compiled", "triton", "native")


class Dispatch(NamedTuple):
    backend: str  # the path that ran: 'reference', 'fused', 'compiled', 'triton' or 'native'
    reason: str  # why a faster path was not taken, or why this one was; '' when the fastest one for the device ran


def tracing_context() -> Optional[str]:
    """What is recording or transforming the call, or None for an ordinary eager call.

    Under any of these the fast paths' autograd.Functions (hand-written backward, ``out=``
    buffers, C++ ops without shape functions) cannot be followed, so ``auto`` leaves them.
    """
    if torch.jit.is_tracing():
        return "torch.jit.trace is recording the call"
    # export and compile first: dynamo answers these while tracing, where asking functorch's
    # interpreter stack would break the graph
    if torch.compiler.is_exporting():
        return "torch.export is tracing the call"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing the call"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "a torch.func transform (grad, vmap, jacrev, ...) is active"
    return None


def _native_module():
    from . import native

    return native


def choose_stack(backend: str, cell: str, x, weights: list, variants: list[str], needs_grad: bool) -> Optional[Dispatch]:
    """A record for the native path when it takes the whole call (every layer and direction), else None.

    ``variants``: the seqlab-only features the call uses; ``needs_grad``: whether autograd
    records it (training) or not (inference).
    """
    if backend not in ("auto", "native"):
        return None
    native = _native_module()
    why = native.supports(cell, x, weights, variants)
    if backend == "native":
        if why is not None:
            raise ValueError(f"backend='native' cannot run this call: {why}")
        return Dispatch("native", "backend='native' was asked for")
    if why is not None:
        return None
    context = tracing_context()
    # torch.compile follows the compiled path too (a registered custom op): there the usual choice stands
    if context is not None and not context.startswith("torch.compile"):
        return Dispatch("native", f"{context}: torch's own kernel, which it can follow, runs the plain layer")
    if x.device.type == "cuda":
        return Dispatch("native", "")  # cuDNN; Triton is taken for the variants or when asked for
    if (x.device.type == "cpu" and cell == "lstm" and not needs_grad and x.shape[0] > 1
            and (_avx512() or torch.get_num_threads() > 1)):
        # oneDNN's LSTM primitive is the faster for plain LSTM inference at its AVX-512 rate, and with
        # AVX2 on more than one thread (it splits the gates' products across threads better than
        # the compiled loop does). Not for one step (generation), where oneDNN's per-call set-up
        # dominates; the compiled loop stays for one AVX2 thread, for every training call, and for
        # RNN and GRU everywhere.
        return Dispatch("native", "")
    return None


_CPU_CAPABILITY: list[str] = []


def _avx512() -> bool:
    if not _CPU_CAPABILITY:
        _CPU_CAPABILITY.append(torch.backends.cpu.get_cpu_capability())
    return _CPU_CAPABILITY[0].startswith("AVX512")


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
    if backend == "native":
        raise ValueError("backend='native' runs whole plain calls only (choose_stack); this call reached "
                         "the per-layer paths")
    refusals: list[str] = []
    context = tracing_context()
    # under torch.compile the compiled path runs as a registered custom op; under any other
    # tracing or transform, and for the fused and Triton paths under torch.compile too (in-place
    # writes into views, out= arguments), no fast path can be followed
    compiled_ok = context is None or context.startswith("torch.compile")
    if context is not None and (backend in ("fused", "triton") or backend == "compiled" and not compiled_ok):
        raise ValueError(f"backend={backend!r} cannot run this call: {context}, which that path does not "
                         f"support; use backend='auto' or 'reference'")
    if backend in ("auto", "compiled") and compiled_ok:
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
    if context is not None:
        refusals.append(f"{context}, which the fast paths do not support: the reference loop (plain torch ops) runs")
        return reference.run_layer, Dispatch("reference", "; ".join(refusals))
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
