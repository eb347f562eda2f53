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

The minGRU / minLSTM layers (``nn/minrnn.py``) have paths of their own
(``minrnn_scan.py``), chosen by ``choose_min`` into the same ``Dispatch`` record:
``auto`` takes the reference loop for one step (a scan would only add set-up
cost), else the compiled C++ loop on the CPU, else the chunked scan.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from . import minrnn_scan, reference
from .common import LayerWeights, Masks

BACKENDS = ("auto", "reference", "fused", "compiled", "triton", "native")
# the minGRU / minLSTM paths (minrnn_scan.py): 'reference' is the step loop, the specification
MIN_BACKENDS = ("auto", "reference", "scan", "log_scan", "compiled")


class Dispatch(NamedTuple):
    backend: str  # the path that ran: one of BACKENDS (MIN_BACKENDS for minGRU / minLSTM) but 'auto'
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


# The fast paths' modules, imported on first use and kept here: imported lazily so that a
# broken or missing fast path never stops the reference path (the specification) from
# working, and kept because an import statement on every call costs more than the dict lookup.
_MODULES: dict = {}


def _native_module():
    module = _MODULES.get("native")
    if module is None:
        from . import native as module

        _MODULES["native"] = module
    return module


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
    module = _MODULES.get("fused")
    if module is None:
        from . import fused as module

        _MODULES["fused"] = module
    return module


def _compiled_module():
    module = _MODULES.get("compiled")
    if module is None:
        from . import compiled as module

        _MODULES["compiled"] = module
    return module


def _triton_module():
    module = _MODULES.get("triton_rnn")
    if module is None:
        # imports triton when it is installed; only asked for on CUDA tensors or when named
        from . import triton_rnn as module

        _MODULES["triton_rnn"] = module
    return module


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


_MIN_KERNELS = {"reference": minrnn_scan.run_reference, "scan": minrnn_scan.run_scan,
                "log_scan": minrnn_scan.run_log_scan}


def _compiled_min(x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor) -> tuple[Optional[Callable], str]:
    """The compiled minGRU / minLSTM kernel and '', or None and the reason it cannot run this call."""
    try:
        compiled = _compiled_module()
    except ImportError as e:  # pragma: no cover - only when the compiled module is broken
        return None, f"the compiled path could not be imported: {e}"
    why = compiled.supports_min(x, weight, bias, h0)  # builds the extension on the first CPU call
    return (compiled.run_min_layer, "") if why is None else (None, why)


def choose_min(backend: str, x: Tensor, weight: Tensor, bias: Optional[Tensor],
               h0: Tensor) -> tuple[Callable, Dispatch]:
    """The kernel for a minGRU / minLSTM call over x (T, B, I) and the record of why (see minrnn_scan.py).

    ``weight``, ``bias``: the first layer's, ``h0`` (D·L, B, H): what the compiled loop's checks read.
    """
    if backend not in MIN_BACKENDS:
        raise ValueError(f"backend must be one of {MIN_BACKENDS}, got {backend!r}")
    if backend in ("reference", "scan", "log_scan"):
        return _MIN_KERNELS[backend], Dispatch(backend, f"backend={backend!r} was asked for")
    if backend == "auto" and x.shape[0] == 1:
        return minrnn_scan.run_reference, Dispatch("reference", "one step: a scan would only add set-up cost")
    kernel, why = _compiled_min(x, weight, bias, h0)
    if backend == "compiled":
        if kernel is None:
            raise ValueError(f"backend='compiled' cannot run this call: {why}")
        return kernel, Dispatch("compiled", "backend='compiled' was asked for")
    if kernel is not None:
        return kernel, Dispatch("compiled", "T > 1 on the CPU: the C++ loop is the fast path")
    return minrnn_scan.run_scan, Dispatch("scan", f"T > 1: the chunked scan; compiled path refused: {why}")
