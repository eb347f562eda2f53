"""Test-wide settings.

The suite runs as ``pytest -n 2`` on two cores: one intra-op thread per worker keeps the
workers from oversubscribing the cores (two workers x torch's default threads), which made
small-tensor tests several times slower without changing any result.

The Triton kernels run on the CPU under triton's interpreter. triton.jit picks the interpreter
when it decorates a function, and triton decorates its own library functions on import, so
TRITON_INTERPRET is set here, before any test module can import triton, and stays set (a process
that mixes interpreted and compiled triton functions breaks inside triton).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _skip_backend_that_cannot_run(request):
    """A test parametrised with backend='compiled' (RNN family and minGRU/minLSTM alike) skips, saying
    why, where the C++ loop cannot be built; one with backend='triton' where triton cannot run."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("backend") == "compiled":
        from seqlab.kernels import compiled

        if not compiled.available():
            pytest.skip(f"the compiled path is not available here: {compiled.build_error()}")
    if params.get("backend") == "triton":
        from kernel_cases import triton_skip_reason  # tests/kernel_cases.py

        why = triton_skip_reason()
        if why is not None:
            pytest.skip(why)
