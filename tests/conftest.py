"""Test-wide settings.

The suite runs as ``pytest -n 2`` on two cores: one intra-op thread per worker keeps the
workers from oversubscribing the cores (two workers x torch's default threads), which made
small-tensor tests several times slower without changing any result.
"""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _skip_compiled_backend_where_unbuilt(request):
    """A test parametrised with backend='compiled' (RNN family and minGRU/minLSTM alike) skips, saying
    why, where the C++ loop cannot be built."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("backend") == "compiled":
        from seqlab.kernels import compiled

        if not compiled.available():
            pytest.skip(f"the compiled path is not available here: {compiled.build_error()}")
