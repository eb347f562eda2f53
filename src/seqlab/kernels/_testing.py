"""Switches for seqlab's tests and benchmarks: not part of the library's API.

The compiled path chooses, per matrix product, between BLAS called directly, ATen's mm,
oneDNN's linear and oneDNN's brgemm micro-kernel (csrc/products.h, "Matrix products"); the
choice depends on the CPU, the dtype, the size and the thread count. Every choice must give
the same values, so the tests pin each one in turn with ``product_switches``. The other
switches reach module state of ``compiled.py`` that only a test has reason to move: the
custom-op route that torch.compile takes, and the record of the build attempt.

    >>> with product_switches(**PRODUCT_PATHS["brgemm"]):   # doctest: +SKIP
    ...     y = layer(x)   # every float32 product of the compiled loop on brgemm

Importing this module builds nothing; each switch needs the extension loaded
(``compiled.available()``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from . import compiled

#: the product switches that send every float32 product of the compiled loop down one path:
#: ``gemm_threshold`` 0 = always oneDNN's linear, -1 = never; ``direct_blas`` calls sgemm_ /
#: dgemm_ without ATen; ``brgemm`` 1 = always, 0 = never, -1 = the CPU's default
PRODUCT_PATHS = {
    "blas": dict(gemm_threshold=-1, direct_blas=True, brgemm=0),
    "aten": dict(gemm_threshold=-1, direct_blas=False, brgemm=0),
    "onednn": dict(gemm_threshold=0, direct_blas=False, brgemm=0),
    "brgemm": dict(gemm_threshold=-1, direct_blas=False, brgemm=1),
}


@contextlib.contextmanager
def product_switches(*, gemm_threshold: Optional[int] = None, direct_blas: Optional[bool] = None,
                     brgemm: Optional[int] = None) -> Iterator[None]:
    """Set the given switches of the compiled loop's products for the block; restore them after.

    The switches are process-wide (C++ globals): a block must not run while another thread
    runs the compiled path.
    """
    ext = torch.ops.seqlab_compiled
    setters = {"gemm_threshold": ext.set_gemm_threshold, "direct_blas": ext.set_direct_blas,
               "brgemm": ext.set_brgemm}
    wanted = {"gemm_threshold": gemm_threshold, "direct_blas": direct_blas, "brgemm": brgemm}
    old = {}
    try:
        for name, value in wanted.items():
            if value is not None:
                old[name] = setters[name](value)  # each setter returns the value it replaced
        yield
    finally:
        for name, value in old.items():
            setters[name](value)


@contextlib.contextmanager
def library_op() -> Iterator[None]:
    """Take the custom-op route (``seqlab::rnn_layer``) in eager calls too; normally only
    torch.compile takes it."""
    old = compiled._FORCE_LIBRARY_OP
    compiled._FORCE_LIBRARY_OP = True
    try:
        yield
    finally:
        compiled._FORCE_LIBRARY_OP = old


@contextlib.contextmanager
def build_attempt() -> Iterator[None]:
    """Forget the build attempt, so that ``compiled.available()`` tries again inside the block
    (to fake a failure or ``SEQLAB_NO_COMPILE``); the record of the real attempt comes back after."""
    saved = dict(compiled._state)
    compiled._state.update(tried=False, ok=False, error="")
    try:
        yield
    finally:
        compiled._state.clear()
        compiled._state.update(saved)
