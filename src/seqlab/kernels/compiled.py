r"""The compiled CPU path: the time loops of forward and backward as one C++ extension.

Same contract as ``reference.run_layer`` (the specification) and the same algorithm as
``fused.py`` (one matrix product per step each way, the weight gradients as one product
after the loop), with the per-step pointwise work (gates, state update, masks, LayerNorm of
the input and recurrent projections and of the LSTM cell) fused into one C++ loop per batch row. What
it removes is the per-step Python and dispatcher overhead, which is most of the time of a
step at small sizes (hidden <= 128); see ``benchmarks/recurrent.py``.

The C++ lives in ``csrc/``: ``recurrent.cpp`` registers the ops and includes one header per
job (pointwise math, buffer pool, products, forward, backward, minRNN scan; the map is at the
top of recurrent.cpp), one translation unit with shape contracts next to the kernels. It is
built with ``torch.utils.cpp_extension`` on first use and cached:

* the build directory is ``$SEQLAB_BUILD_DIR`` if set, else ``~/.cache/seqlab/`` plus a tag
  for the machine, Python and torch (the flags include ``-march=native``, so a cache shared
  between different CPUs must not be reused);
* ``SEQLAB_NO_COMPILE=1`` turns the path off (dispatch then says so and takes the fused
  path);
* if the build fails (no compiler, no ninja, a compile error) one warning says why, and
  dispatch takes the fused path, which computes the same values.
* processes that start at once share one build: it runs under a file lock, and the library is
  published by an atomic rename under a name that carries a stamp of its sources, so that
  different sources sharing one cache keep different libraries (``load``); the stamp is also
  compiled in, and a library whose compiled-in stamp does not match is refused the same way.

Layers: the shell of ``common.py`` validates (``run_layer`` is its ``fast_run_layer``); this
module calls the two ops ``torch.ops.seqlab_compiled.rnn_forward`` / ``rnn_backward`` from an
autograd.Function; the kernel owns the memory of the loop. Runs float32 and float64 on CPU. The products use MKL (the products over all T*B rows into pooled
buffers), except in float32 on a CPU with AVX-512: there, on one thread, the projection and the
per-step products go to oneDNN's brgemm micro-kernel, and on more threads large per-step products
go to oneDNN's linear and small ones to brgemm (see "Matrix products" in csrc/products.h; the
tests pin each choice through ``seqlab.kernels._testing``, which is not part of the API). On Linux,
where torch's threads are OpenMP's, a step's pointwise rows are split over them when there are
enough (``_openmp_flags``; the backward keeps rows that sum LayerNorm weight gradients in one).
Second derivatives (``create_graph=True``) go through the reference loop
(``reference.differentiable_backward``): correct, at its speed. Memory: the loop's large buffers (2 MiB and more: saved activations,
per-step gradients) are recycled through a pool in the C++ that keeps up to 512 MiB of freed
buffers for the next call of the same shapes (see ``loop_buffer``; ``SEQLAB_POOL_MB`` sets the
cap, 0 turns the pool off); what it keeps is not returned to the system while the process runs.

torch.compile: the same kernels are also registered as custom ops ``seqlab::rnn_layer`` and
``seqlab::rnn_layer_backward`` (``torch.library.custom_op`` with ``register_fake`` and
``register_autograd``, at the end of this file); while compiling, ``run_layer`` calls those,
so a model with a seqlab RNN/GRU/LSTM compiles with ``fullgraph=True``. Eager calls keep the
autograd.Function, which costs less per call and gives second derivatives (the comment above
the custom ops has the figures). Build the extension once eagerly (any forward) before the
first compiled call.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .common import (CELL_ID, GATES, N_WEIGHTS, LayerResult, LayerWeights, Masks, fast_run_layer,
                     function_grads, record_views, refuse_call, run_accepted)

__all__ = ["run_layer", "run_supported", "supports", "run_min_layer", "supports_min", "available", "build_error", "load",
           "library_path", "SOURCES"]

#: the C++ sources of the extension (one translation unit keeps the cold build short)
SOURCES = (Path(__file__).resolve().parent / "csrc" / "recurrent.cpp",)
#: the headers recurrent.cpp includes: part of what a build depends on (see ``_stamp``)
HEADERS = tuple(sorted((Path(__file__).resolve().parent / "csrc").glob("*.h")))
#: dtypes the C++ loops are instantiated for (AT_DISPATCH_FLOATING_TYPES)
_FLOATS = (torch.float32, torch.float64)
_CELL_NAME = {v: k for k, v in CELL_ID.items()}  # the custom ops take CELL_ID's integers
_MIN_CELL_ID = {"mingru": 0, "minlstm": 1}  # csrc/recurrent.cpp ``MinCell``
_N_SAVED = 12  # the forward's saved tensors, in csrc/recurrent.cpp's ``Saved`` order
_EXT_NAME = "seqlab_compiled"

_lock = threading.Lock()
_state: dict = {"tried": False, "ok": False, "error": ""}


# ----------------------------------------------------------------------------
# Building and loading


def _build_dir() -> Path:
    env = os.environ.get("SEQLAB_BUILD_DIR")
    if env:
        return Path(env)
    # -march=native code is only valid on the CPU that built it: key the cache on the CPU flags
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    cpu = hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split('+')[0]}-{cpu}"
    return Path.home() / ".cache" / "seqlab" / f"ext-{tag}"


def _cflags() -> list[str]:
    # -fno-trapping-math: without it GCC will not if-convert the clamps and the float-to-int
    # conversion in the C++'s exp, so no loop over exp, σ or tanh vectorises (GCC 12 reports
    # "control flow in loop"). It changes no value, only whether floating-point exception
    # flags may be raised speculatively, which nothing here reads.
    flags = ["-O3", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
    return flags + _openmp_flags()


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's own intra-op threads are OpenMP's on Linux: the step's rows then run
    on them (at::parallel_for in the C++). The library links libgomp.so.1 by name, and at load time
    that name is torch's copy, already in the process, so there is one OpenMP runtime and
    torch.set_num_threads governs both. Elsewhere (another OS, torch's native thread pool) the
    rows run in the calling thread."""
    if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
        return []
    return ["-fopenmp"]


def _stamp() -> str:
    """What the built library depends on: the sources, the flags, torch and Python."""
    h = hashlib.sha1()
    for src in SOURCES + HEADERS:
        h.update(src.read_bytes())
    h.update(" ".join(_cflags() + [torch.__version__, sys.version]).encode())
    return h.hexdigest()


def library_path(stamp: Optional[str] = None) -> Path:
    """Where the library built from these sources (or from the sources of ``stamp``) is published.

    The name carries the sources' stamp, so that checkouts of different sources sharing one
    cache (two users, two branches, a ``git pull`` while a job runs) each keep their own
    library instead of rebuilding over each other's.
    """
    return _build_dir() / f"{_EXT_NAME}-{(stamp or _stamp())[:16]}.so"


def load(verbose: bool = False) -> None:
    """Build (first time) and load the extension; raise whatever the build raised.

    Safe when several processes start at once (DDP ranks, test workers, two users' jobs on
    one cache): the build of one set of sources runs under a file lock, in a work directory
    of its own, and its library is published under ``library_path()`` by an atomic rename.
    A process that finds that file therefore finds the whole library of these sources; one
    that does not takes the lock, and then either finds that the process before it has just
    built them, or builds them itself.
    """
    stamp = _stamp()
    lib = library_path(stamp)
    # Fast path: the library of these very sources is there. cpp_extension.load would find the
    # same, but only after importing setuptools and running ninja (about 1.5 s per process).
    if lib.is_file():
        _load_published(lib, stamp)
        return
    import filelock  # a dependency of torch itself

    build = lib.parent
    build.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lib.with_suffix(".lock"))):
        if lib.is_file():  # built by the process that held the lock before us
            _load_published(lib, stamp)
            return
        work = build / f"work-{stamp[:16]}"
        work.mkdir(exist_ok=True)
        # torch's build baton: a build killed midway leaves this file, and every later build of these
        # sources would wait for it forever. We hold the lock of these sources, so nobody owns it.
        (work / "lock").unlink(missing_ok=True)
        from torch.utils import cpp_extension

        # is_python_module=False: the ops are registered with TORCH_LIBRARY and loaded into
        # torch.ops, so the translation unit needs no pybind11 / Python headers. The stamp is
        # compiled in, so that a library is known by what it was built from, whatever its name says.
        cpp_extension.load(name=_EXT_NAME, sources=[str(s) for s in SOURCES],
                           extra_cflags=_cflags() + [f"-DSEQLAB_BUILD_STAMP=s{stamp}"],
                           extra_ldflags=_openmp_flags(),
                           build_directory=str(work), is_python_module=False, verbose=verbose)
        if _loaded_stamp() != stamp:
            raise RuntimeError(f"{work} did not build these sources: another process's build of them "
                               f"failed, or is still running; see its error, or delete {build} and retry")
        # publish: a private copy renamed into place, so that no reader sees a half-written file
        tmp = lib.with_name(f"{lib.name}.tmp{os.getpid()}")
        shutil.copyfile(work / f"{_EXT_NAME}.so", tmp)
        tmp.chmod(0o755)
        tmp.replace(lib)


def _load_published(lib: Path, stamp: str) -> None:
    """Load the published library of these sources; refuse it if its compiled-in stamp says otherwise."""
    torch.ops.load_library(str(lib))
    if _loaded_stamp() != stamp:
        lib.unlink(missing_ok=True)  # so that the next process builds again
        raise RuntimeError(f"{lib} is not the build of these sources (its compiled-in stamp differs); "
                           f"it will be rebuilt by the next process")


def _loaded_stamp() -> Optional[str]:
    """The stamp compiled into the loaded library (None: a library too old to carry one)."""
    try:
        loaded = torch.ops.seqlab_compiled.build_stamp()
    except (AttributeError, RuntimeError):
        return None
    return loaded[1:] if loaded.startswith("s") else None


def available() -> bool:
    """True when the extension is built and loaded (building it on the first call)."""
    if _state["tried"]:
        return _state["ok"]
    with _lock:
        if not _state["tried"]:
            if os.environ.get("SEQLAB_NO_COMPILE", "") not in ("", "0"):
                _state["error"] = "SEQLAB_NO_COMPILE is set"
            else:
                try:
                    load()
                    _state["ok"] = True
                except Exception as e:  # a missing compiler raises several types; all mean "not built"
                    _state["error"] = f"the compiled extension could not be built: {_first_error_line(e)}"
                    warnings.warn(f"seqlab: {_state['error']}; the recurrent layers use the fused Python "
                                  "path instead (same results, slower on CPU). Set SEQLAB_NO_COMPILE=1 to "
                                  "skip the build.", RuntimeWarning, stacklevel=3)
            _state["tried"] = True
    return _state["ok"]


def _first_error_line(e: Exception) -> str:
    """The line of a build failure that says what went wrong (a compiler's 'error:' line if any)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    # a compiler's "file:line: error: ..." or the shell's "c++: not found" says more than torch's
    # "Error building extension" header or the echoed command line
    line = lines[0] if lines else ""
    for pattern in ("error:", "not found", "no such file", "permission denied"):
        hit = next((s for s in lines if pattern in s.lower() and not s.startswith("[")), None)
        if hit is not None:
            line = hit
            break
    line = line if len(line) <= 240 else line[:237] + "..."
    return f"{type(e).__name__}: {line}"


def build_error() -> str:
    """Why the extension is not available ('' when it is, or before the first attempt)."""
    return _state["error"]


# ----------------------------------------------------------------------------
# Public entry points


def supports(cell: str, x: Tensor, w: LayerWeights, masks: Masks) -> Optional[str]:
    """None when the compiled path can run this call, else a one-line reason why not.

    Checks the cheap things first, so that a call the path could never run (CUDA, bfloat16)
    does not trigger a build.
    """
    if isinstance(x, Tensor) and x.device.type != "cpu":
        return f"the compiled path runs on CPU, the input is on {x.device}"
    why = refuse_call("compiled", cell, x, w, masks, _FLOATS)
    if why is not None:
        return why
    if not available():
        return build_error()
    return None


def run_supported(cell: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w: LayerWeights, masks: Masks = Masks(),
                  record: bool = False) -> LayerResult:
    """``run_layer`` for a call that ``supports`` has accepted: what dispatch returns, so that a
    forward does not make the same checks twice (they are a tenth of a one-step call)."""
    return run_accepted(_apply, cell, x, h0, c0, w, masks, record)


run_layer = fast_run_layer("compiled", supports, run_supported)


def _apply(cell: str, recorded: Optional[dict], x: Tensor, h0: Tensor, c0: Optional[Tensor], *slots):
    """The loop of an accepted call (``run_accepted``'s ``apply``), by one of three routes."""
    if _use_library_op():
        # under torch.compile: the registered op (fake shapes + autograd), no graph break
        w, masks = LayerWeights(*slots[:N_WEIGHTS]), Masks(*slots[N_WEIGHTS:])
        save = torch.is_grad_enabled() or recorded is not None
        out = torch.ops.seqlab.rnn_layer(CELL_ID[cell], x, h0, c0, *slots, save)
        if recorded is not None:
            recorded.update(_record(cell, _unpack_saved(cell, out[3:], w, masks), _hidden_size(w.w_ih, cell)))
        return out[0], out[1], (out[2] if cell == "lstm" else None)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *slots[:N_WEIGHTS])):
        return _Compiled.apply(cell, recorded, x, h0, c0, *slots)
    # nothing to differentiate: the op itself, without autograd.Function's bookkeeping
    # (about a fifth of a one-step call, which is what generation makes)
    return _forward(cell, recorded, x, h0, c0, _contiguous_1d(slots), save=False)[:3]


def _forward(cell: str, recorded: Optional[dict], x: Tensor, h0: Tensor, c0: Optional[Tensor], slots: tuple,
             save: bool) -> tuple[Tensor, Tensor, Optional[Tensor], list]:
    """The forward op over the 15 slots (_contiguous_1d): (y, h_T, c_T or None, the saved tensors);
    fills ``recorded`` with views of the saved buffers when given. Both routes (the autograd.Function
    and the custom op) call the C++ forward here and its backward in ``_backward_call``."""
    out = torch.ops.seqlab_compiled.rnn_forward(CELL_ID[cell], x, h0, c0, *slots, save or recorded is not None)
    saved = list(out[3:])
    if recorded is not None:
        recorded.update(_record(cell, saved, _hidden_size(slots[0], cell)))
    return out[0], out[1], (out[2] if cell == "lstm" else None), saved


def _backward_call(cell_id: int, saved: list, x: Tensor, h0: Tensor, c0: Optional[Tensor], weights, masks,
                   dy: Tensor, dh_T: Optional[Tensor], dc_T: Optional[Tensor], need: list) -> list:
    """The backward op: gradients of (x, h0, c0, *weights), None where ``need`` is 0 or absent.
    The custom op saves its inputs as given, so the 1D weights are made contiguous here (no copy
    for the autograd.Function's, which it saved contiguous)."""
    return torch.ops.seqlab_compiled.rnn_backward(cell_id, saved, x, h0, c0, list(_contiguous_1d(tuple(weights))),
                                                  list(masks), dy, dh_T, dc_T, need)


def _contiguous_1d(slots: tuple) -> tuple:
    # 1D parameters are read through raw pointers in C++: make them contiguous (no copy if they are)
    return tuple(t.contiguous() if t is not None and t.dim() == 1 else t for t in slots)


def _record(cell: str, saved: list, H: int) -> dict:
    """``record_views`` of the forward's saved buffers (h_all, act, c_all: csrc's ``Saved`` order)."""
    return record_views(cell, H, saved[0], saved[1], saved[2])


# ----------------------------------------------------------------------------
# The autograd.Function


class _Compiled(torch.autograd.Function):
    """One layer, one direction on the C++ ops.

    Arguments and results: those of ``common.run_accepted``'s ``apply``."""

    @staticmethod
    def forward(ctx, cell, recorded, x, h0, c0, *slots):
        if any(ctx.needs_input_grad):
            reference.keep_inputs(ctx, cell, x, h0, c0, slots)  # the caller's tensors, before any copy
        slots = _contiguous_1d(slots)  # saved as the C++ reads them, so the backward copies nothing
        y, h_T, c_T, saved = _forward(cell, recorded, x, h0, c0, slots, save=any(ctx.needs_input_grad))
        if any(ctx.needs_input_grad):
            ctx.cell = cell
            ctx.n_saved = len(saved)
            ctx.has = [t is not None for t in (c0, *saved, *slots)]
            ctx.save_for_backward(*(t for t in (x, h0, c0, *saved, *slots) if t is not None))
        return y, h_T, c_T

    @staticmethod
    @reference.differentiable_backward
    def backward(ctx, dy, dh_T, dc_T):
        it = iter(ctx.saved_tensors)
        x, h0 = next(it), next(it)
        rest = [next(it) if has else None for has in ctx.has]
        c0, saved, slots = rest[0], rest[1:1 + ctx.n_saved], rest[1 + ctx.n_saved:]
        need = [int(n) for n in ctx.needs_input_grad[2:5 + N_WEIGHTS]]
        grads = _backward_call(CELL_ID[ctx.cell], saved, x, h0, c0, slots[:N_WEIGHTS], slots[N_WEIGHTS:], dy, dh_T,
                               dc_T, need)
        return function_grads([g if n else None for g, n in zip(grads, need)])


def _hidden_size(w_ih: Tensor, cell: str) -> int:
    """H from W_ih (G*H, I)."""
    return w_ih.shape[0] // GATES[cell]


# ----------------------------------------------------------------------------
# minGRU / minLSTM (nn/minrnn.py): one C++ pass over time each way, the products over all T*B
# rows one MKL call each (csrc/recurrent.cpp, ``min_forward`` / ``min_backward``).


def supports_min(x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor) -> Optional[str]:
    """None when the compiled minGRU/minLSTM loop can run this call, else a one-line reason why not."""
    for name, t in (("input", x), ("weight_ih", weight), ("bias_ih", bias), ("h_0", h0)):
        if t is None:
            continue
        if t.device.type != "cpu":
            return f"the compiled path runs on CPU, {name} is on {t.device}"
        if t.dtype not in _FLOATS:
            return f"the compiled path runs float32 and float64, {name} is {t.dtype}"
    if not available():
        return build_error()
    return None


def run_min_layer(cell: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU / minLSTM over x (T, B, I) from h0 (B, H): returns h (T, B, H) and h_T (B, H).

    weight (G·H, I) and bias (G·H,) hold the gates as in :class:`seqlab.nn.MinGRU`
    (z|h̃) and :class:`seqlab.nn.MinLSTM` (f|i|h̃). Gradients flow to x, weight, bias
    and h0; double backward is not supported. One custom op (``seqlab::min_layer``, below)
    in eager mode and under torch.compile alike.
    """
    reason = supports_min(x, weight, bias, h0)
    if reason is not None:
        raise ValueError(f"the compiled path cannot run this call: {reason}")
    h, h_T, _pre = torch.ops.seqlab.min_layer(_MIN_CELL_ID[cell], x, weight, bias, h0)
    return h, h_T


# ----------------------------------------------------------------------------
# torch.library: the same two C++ ops as custom ops with fake (shape) kernels and autograd,
# so that torch.compile traces a seqlab recurrent layer as one node instead of breaking the
# graph at it. run_layer takes this route while compiling (or when ``_FORCE_LIBRARY_OP`` is
# set, for tests). The custom ops return lists of plain tensors: what C++ leaves undefined
# comes back as an empty tensor, and ``_saved_shapes`` says which slots those are.
#
# Why eager calls that need gradients keep ``_Compiled`` instead of this route: a custom op's
# eager call runs torch.library's Python around the kernel (argument defaults refilled, the
# list outputs flattened and rebuilt, a redispatch each way), which costs more than the loop
# at small sizes. One training call (forward + backward of ``run_layer``, float32, one thread,
# thread CPU time, median of 15 alternating rounds, torch 2.13), ``_Compiled`` against this
# route: LSTM B=1 T=1 H=8 0.39 ms against 0.92 ms (x2.3-2.5); B=16 T=50 H=64 3.4 ms against
# 4.3 ms (x1.19-1.32; GRU x1.26-1.29, tanh RNN x1.52). Filling no zero gradients for the
# saved outputs (``set_materialize_grads(False)``) and computing only the gradients autograd
# wants did not change those ratios. The two routes share the C++ ops and csrc's ``Saved`` order;
# ``_Compiled`` also gives second derivatives (``create_graph=True``, through the reference
# loop), which this route refuses with torch's "no autograd formula" error.

_FORCE_LIBRARY_OP = False
# slots of the saved list (csrc/recurrent.cpp ``Saved``)
_H_ALL, _ACT, _C_ALL, _C_TILDE, _TAU, _Q, _HW_N, _H_IN, _HP, _XP, _XP_MEAN, _XP_RSTD = range(_N_SAVED)


def _use_library_op() -> bool:
    return _FORCE_LIBRARY_OP or torch.compiler.is_compiling()


def _saved_shapes(cell: str, x: Tensor, h0: Tensor, w: LayerWeights, masks: Masks, save: bool) -> list:
    """Shapes of the forward's saved slots (None: not returned), mirroring recurrent.cpp."""
    if not save:
        return [None] * _N_SAVED
    T, B, _ = x.shape
    GH, P = w.w_ih.shape[0], h0.shape[-1]
    H = GH // GATES[cell]
    lstm, gru = cell == "lstm", cell == "gru"
    rnn_alias = not lstm and not gru and masks.keep is None  # h_all is act itself: not returned twice
    shapes = [None] * _N_SAVED
    shapes[_H_ALL] = None if rnn_alias else (T, B, P)
    shapes[_ACT] = (T, B, GH)
    if lstm:
        shapes[_C_ALL], shapes[_TAU] = (T, B, H), (T, B, H)
        shapes[_C_TILDE] = (T, B, H) if masks.keep_c is not None else None
        shapes[_Q] = (T, B, H) if w.w_hr is not None else None
    if gru:
        shapes[_HW_N] = (T, B, H)
    shapes[_H_IN] = (T, B, P) if masks.rec is not None else None
    shapes[_HP] = (T, B, GH) if w.ln_hh_w is not None else None
    if w.ln_ih_w is not None:
        shapes[_XP], shapes[_XP_MEAN], shapes[_XP_RSTD] = (T * B, GH), (T * B, 1), (T * B, 1)
    return shapes


def _unpack_saved(cell: str, saved, w, masks) -> list:
    """The saved slots as the C++ backward takes them: None where absent, h_all restored.

    An absent slot is a 1D empty tensor; every real one has 2 or 3 dimensions."""
    out = [None if t.dim() == 1 and t.numel() == 0 else t for t in saved]
    if out[_H_ALL] is None and out[_ACT] is not None and cell in ("rnn_tanh", "rnn_relu"):
        out[_H_ALL] = out[_ACT]
    return out


# The weights and masks are separate arguments, not lists: autograd does not look for tensors
# that require grad inside a list of optional tensors.
OptT = Optional[Tensor]


@torch.library.custom_op("seqlab::rnn_layer", mutates_args=())
def _rnn_layer_op(cell: int, x: Tensor, h0: Tensor, c0: OptT, w_ih: Tensor, w_hh: Tensor, b_ih: OptT, b_hh: OptT,
                  w_hr: OptT, ln_ih_w: OptT, ln_ih_b: OptT, ln_hh_w: OptT, ln_hh_b: OptT, ln_c_w: OptT,
                  ln_c_b: OptT, keep: OptT, keep_c: OptT, out: OptT, rec: OptT, save: bool) -> list[Tensor]:
    """One layer, one direction, as one op: [y, h_T, c_T, *saved] (see recurrent.cpp's forward)."""
    slots = (w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, keep, keep_c, out, rec)
    y, h_T, c_T, saved = _forward(_CELL_NAME[cell], None, x, h0, c0, _contiguous_1d(slots), save)
    if saved[_H_ALL] is not None and saved[_H_ALL] is saved[_ACT]:
        saved[_H_ALL] = None  # outputs of a custom op must not alias each other
    empty = x.new_empty(0)
    return [t.clone() if t is x or t is h0 else (empty.clone() if t is None else t) for t in [y, h_T, c_T] + saved]


@_rnn_layer_op.register_fake
def _(cell, x, h0, c0, *slots):
    *slots, save = slots
    name = _CELL_NAME[cell]
    w, m = LayerWeights(*slots[:N_WEIGHTS]), Masks(*slots[N_WEIGHTS:])
    T, B, _ = x.shape
    H = w.w_ih.shape[0] // GATES[name]
    P = h0.shape[-1]
    head = [x.new_empty((T, B, P)), x.new_empty((B, P)), x.new_empty((B, H)) if name == "lstm" else x.new_empty(0)]
    return head + [x.new_empty(s if s is not None else 0) for s in _saved_shapes(name, x, h0, w, m, save)]


@torch.library.custom_op("seqlab::rnn_layer_backward", mutates_args=())
def _rnn_layer_backward_op(cell: int, saved: list[Optional[Tensor]], x: Tensor, h0: Tensor, c0: Optional[Tensor],
                           weights: list[Optional[Tensor]], masks: list[Optional[Tensor]], dy: Tensor,
                           dh_T: Optional[Tensor], dc_T: Optional[Tensor], need: list[int]) -> list[Tensor]:
    grads = _backward_call(cell, saved, x, h0, c0, weights, masks, dy, dh_T, dc_T, need)
    out, seen = [], set()
    for g in grads:
        if g is None:
            g = x.new_empty(0)
        elif id(g) in seen:  # b_ih and ln_ih_b (b_hh, ln_hh_b) share one sum; custom-op outputs must not alias
            g = g.clone()
        seen.add(id(g))
        out.append(g)
    return out


@_rnn_layer_backward_op.register_fake
def _(cell, saved, x, h0, c0, weights, masks, dy, dh_T, dc_T, need):
    like = [x, h0, c0, *weights]
    return [torch.empty_like(t) if n and t is not None else x.new_empty(0) for t, n in zip(like, need)]


def _setup_context(ctx, inputs, output):
    cell, x, h0, c0, *slots = inputs
    ctx.cell, ctx.n_w, ctx.n_m = cell, N_WEIGHTS, len(Masks._fields)
    ctx.save_for_backward(x, h0, c0, *slots[:-1], *output[3:])


def _backward(ctx, grads):
    s = ctx.saved_tensors
    x, h0, c0 = s[0], s[1], s[2]
    weights = list(s[3:3 + ctx.n_w])
    masks = list(s[3 + ctx.n_w:3 + ctx.n_w + ctx.n_m])
    name = _CELL_NAME[ctx.cell]
    saved = _unpack_saved(name, list(s[3 + ctx.n_w + ctx.n_m:]), weights, masks)
    # every given tensor gets its gradient; autograd drops those nobody asked for
    need = [int(t is not None) for t in (x, h0, c0, *weights)]
    dy, dh_T = grads[0], grads[1]
    dc_T = grads[2] if name == "lstm" else None
    g = torch.ops.seqlab.rnn_layer_backward(ctx.cell, saved, x, h0, c0, weights, masks, dy, dh_T, dc_T, need)
    g = [gi if n else None for gi, n in zip(g, need)]
    return (None, g[0], g[1], g[2], *g[3:]) + (None,) * (ctx.n_m + 1)


_rnn_layer_op.register_autograd(_backward, setup_context=_setup_context)


# minGRU / minLSTM as custom ops. h_T is its own output (not a view of h), so that its gradient
# arrives on its own and enters the C++ backward as the adjoint's start, instead of autograd
# building a full-size (T, B, H) zero tensor for a select's backward and adding it to ∂L/∂h.
# pre (the gates' pre-activations) is an output only so that the backward can have it.


@torch.library.custom_op("seqlab::min_layer", mutates_args=())
def _min_layer_op(cell: int, x: Tensor, weight: Tensor, bias: OptT, h0: Tensor) -> list[Tensor]:
    """[h (T, B, H), h_T (B, H), pre (T, B, G·H)] (see recurrent.cpp's min_forward)."""
    bias = bias.contiguous() if bias is not None else None  # read through raw pointers
    h, pre = torch.ops.seqlab_compiled.min_forward(cell, x, weight, bias, h0)
    return [h, h[-1].clone(), pre]


@_min_layer_op.register_fake
def _(cell, x, weight, bias, h0):
    T, B, _ = x.shape
    H = h0.shape[-1]
    return [x.new_empty((T, B, H)), x.new_empty((B, H)), x.new_empty((T, B, weight.shape[0]))]


@torch.library.custom_op("seqlab::min_layer_backward", mutates_args=())
def _min_layer_backward_op(cell: int, x: Tensor, weight: Tensor, pre: Tensor, h: Tensor, h0: Tensor, dh: Tensor,
                           dh_T: OptT, need: list[int]) -> list[Tensor]:
    """[dx, dW, db, dh0], an empty tensor where need[k] is 0."""
    grads = torch.ops.seqlab_compiled.min_backward(cell, x, weight, pre, h, h0, dh, dh_T, need)
    return [x.new_empty(0) if g is None else g for g in grads]


@_min_layer_backward_op.register_fake
def _(cell, x, weight, pre, h, h0, dh, dh_T, need):
    like = [x, weight, weight.new_empty(weight.shape[0]), h0]
    return [torch.empty_like(t) if n else x.new_empty(0) for t, n in zip(like, need)]


def _min_setup_context(ctx, inputs, output):
    cell, x, weight, bias, h0 = inputs
    ctx.cell = cell
    # pre's gradient is never used, and a materialised zero ∂L/∂pre is a (T, B, G·H) fill per step
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, h0, output[0], output[2])


def _min_backward(ctx, grads):
    x, weight, h0, h, pre = ctx.saved_tensors
    dh, dh_T = grads[0], grads[1]
    if dh is None:  # only h_T was used
        dh = h.new_zeros(()).expand(h.shape)
    need = [int(n) for n in ctx.needs_input_grad[1:5]]  # x, weight, bias, h0
    g = torch.ops.seqlab.min_layer_backward(ctx.cell, x, weight, pre, h, h0, dh, dh_T, need)
    return (None,) + tuple(gi if n else None for gi, n in zip(g, need))


_min_layer_op.register_autograd(_min_backward, setup_context=_min_setup_context)
