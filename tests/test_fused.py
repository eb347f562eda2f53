"""What only the fused path (hand-written BPTT in Python) has: bfloat16, its refusals and dispatch.

The fused path against the reference loop and torch.nn, on every variant of the contract, is
in test_kernels.py, with the other fast paths.
"""
from __future__ import annotations

import pytest
import torch

from seqlab.kernels import fused, reference
from seqlab.kernels.common import LayerWeights, Masks
from seqlab.kernels.dispatch import choose

from kernel_cases import B, H, T, _inputs, _weights  # tests/kernel_cases.py


def test_bfloat16_runs():
    x, h0, c0, w, masks = _inputs("lstm", torch.float32, True, True, 0, True, "padding_zoneout")
    cast = lambda t: None if t is None else t.detach().to(torch.bfloat16).requires_grad_()  # noqa: E731
    x, h0, c0 = cast(x), cast(h0), cast(c0)
    w = LayerWeights(*(cast(t) for t in w))
    masks = Masks(*(None if t is None else t.to(torch.bfloat16) for t in masks))
    res = fused.run_layer("lstm", x, h0, c0, w, masks)
    ref = reference.run_layer("lstm", x, h0, c0, w, masks)
    assert res.y.dtype == torch.bfloat16
    torch.testing.assert_close(res.y.float(), ref.y.float(), atol=0.1, rtol=0.1)
    res.y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_supports_and_dispatch():
    x, h0, c0, w, masks = _inputs("lstm", torch.float32, True, False, 0, False, "none")
    assert fused.supports("lstm", x, w, masks) is None
    kernel, why = choose("auto", "lstm", x, w, masks)
    # auto prefers the compiled loop on the CPU where it is built; the fused path otherwise
    assert why.backend in ("compiled", "fused")
    assert (kernel is fused.run_layer) == (why.backend == "fused")
    kernel, why = choose("fused", "lstm", x, w, masks)
    assert kernel is fused.run_layer and why == ("fused", "")
    assert "floating" in fused.supports("lstm", x.detach().long(), w, masks)
    assert "floating" in fused.supports("lstm", x.detach().to(torch.complex64), w, masks)
    assert "dtype" in fused.supports("lstm", x.double(), w, masks)
    assert "unknown cell" in fused.supports("lstm7", x, w, masks)
    assert "requires grad" in fused.supports("lstm", x, w, masks._replace(rec=torch.ones(B, H, requires_grad=True)))
    gw = _weights("gru", torch.float32, True, False, 0, torch.Generator().manual_seed(0))
    assert "keep_c" in fused.supports("gru", x, gw, Masks(keep_c=torch.zeros(T, B, H)))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(3, 4\), got \(3, 7\)"):
        fused.run_layer("lstm", x, torch.zeros(B, 7), c0, w, masks)
    with pytest.raises(ValueError, match="masks.out"):
        fused.run_layer("lstm", x, h0, c0, w, Masks(out=torch.ones(T, B, 2)))
