"""The fused path (hand-written BPTT) against the reference loop (the specification) and torch.nn.

Same inputs into both kernels; compared: outputs y, final h and c, the recorded
per-step values, and the gradients of x, h0, c0 and every weight, for every
cell and every combination of the contract's variants. Plus float64 gradcheck
with every variant on, and torch.nn parity with copied weights.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from seqlab.kernels import fused, reference
from seqlab.kernels.common import LayerWeights, Masks, RECORDED
from seqlab.kernels.dispatch import choose

from kernel_cases import B, CELLS, H, I, KEEPS, P, T, TOL64, _inputs, _weights, compare  # tests/kernel_cases.py



def _compare(cell, args, dtype, label):
    compare(fused.run_layer, cell, args, dtype, label)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference_every_variant(cell, dtype):
    projs = (0, P) if cell == "lstm" else (0,)
    for bias, layer_norm, proj, rec, keep in itertools.product((True, False), (False, True), projs, (False, True),
                                                                KEEPS):
        label = f"{cell} bias={bias} ln={layer_norm} proj={proj} rec={rec} keep={keep}"
        args = _inputs(cell, dtype, bias, layer_norm, proj, rec, keep)
        _compare(cell, args, dtype, label)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_all_variants(cell):
    """float64 gradcheck of the hand-written backward with LN, projection, rec dropout, zoneout and padding."""
    proj = 2 if cell == "lstm" else 0
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, True, proj, True, "padding_zoneout", seed=3, t=3, b=2)
    names = ["x", "h0"] + (["c0"] if c0 is not None else []) + [k for k, v in w._asdict().items() if v is not None]
    leaves = {"x": x, "h0": h0, "c0": c0, **w._asdict()}

    def f(*ts):
        d = dict(zip(names, ts))
        ww = LayerWeights(**{k: d.get(k) for k in LayerWeights._fields})
        res = fused.run_layer(cell, d["x"], d["h0"], d.get("c0"), ww, masks)
        return (res.y, res.h) + ((res.c,) if res.c is not None else ())

    assert torch.autograd.gradcheck(f, tuple(leaves[k] for k in names), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_nn(cell):
    """No masks, no LN: the fused path is torch.nn's single-layer RNN/GRU/LSTM with the same weights."""
    torch.manual_seed(0)
    mod = {"rnn_tanh": nn.RNN(I, H), "rnn_relu": nn.RNN(I, H, nonlinearity="relu"), "gru": nn.GRU(I, H),
           "lstm": nn.LSTM(I, H)}[cell].double()
    w = LayerWeights(mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None
    gy, gh = torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    params = [x, h0] + ([c0] if c0 is not None else []) + list(mod.parameters())

    if cell == "lstm":
        y_t, (h_t, c_t) = mod(x, (h0.unsqueeze(0), c0.unsqueeze(0)))  # states (1, B, H)
        h_t, c_t = h_t.squeeze(0), c_t.squeeze(0)
    else:
        y_t, h_t = mod(x, h0.unsqueeze(0))
        h_t, c_t = h_t.squeeze(0), None
    g_t = torch.autograd.grad((y_t * gy).sum() + (h_t * gh).sum() + (c_t.sum() if c_t is not None else 0), params)

    res = fused.run_layer(cell, x, h0, c0, w)
    g_f = torch.autograd.grad((res.y * gy).sum() + (res.h * gh).sum() + (res.c.sum() if res.c is not None else 0),
                              params)
    tol = TOL64
    torch.testing.assert_close(res.y, y_t, **tol)
    torch.testing.assert_close(res.h, h_t, **tol)
    if cell == "lstm":
        torch.testing.assert_close(res.c, c_t, **tol)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("cell", CELLS)
def test_partial_requires_grad(cell):
    """Only some inputs require grad: the skipped work must not change the ones asked for."""
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, True, 0, True, "zoneout")
    for leaf in (h0, c0, *w):
        if leaf is not None:
            leaf.requires_grad_(False)
    w = w._replace(ln_hh_w=w.ln_hh_w.detach().requires_grad_())
    _compare(cell, (x, h0, c0, w, masks), torch.float64, f"{cell} x and ln_hh_w only")


@pytest.mark.parametrize("cell", CELLS)
def test_zero_steps(cell):
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, False, 0, False, "none", t=0)
    res = fused.run_layer(cell, x, h0, c0, w, masks, record=True)
    assert res.y.shape == (0, B, H)
    assert res.h is h0 and res.c is c0
    assert all(res.record[n].shape == (0, B, H) for n in RECORDED[cell])
    res.h.sum().backward()  # the state passes through, and so does its gradient
    assert torch.equal(h0.grad, torch.ones_like(h0))


def test_no_grad_and_inplace_output():
    x, h0, c0, w, masks = _inputs("lstm", torch.float64, True, True, 0, False, "padding")
    with torch.no_grad():
        res = fused.run_layer("lstm", x, h0, c0, w, masks)
    assert not res.y.requires_grad
    # y is not a buffer the backward reads, so modifying it in place (dropout(inplace=True)) is fine
    res = fused.run_layer("lstm", x, h0, c0, w, masks)
    res.y.mul_(2)
    res.y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("path", ["fused", "compiled"])
def test_double_backward_matches_reference(path):
    """A gradient taken with create_graph=True is differentiable (through the reference loop) and gives
    the reference loop's second derivatives, with respect to x, the states, the weights and the output
    gradient; zoneout, padding and LayerNorm included. The same for the compiled loop, whose fast
    backward hands create_graph calls to the same reference route."""
    if path == "compiled":
        from seqlab.kernels import compiled
        if not compiled.available():
            pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")
        run_layer = compiled.run_layer
    else:
        run_layer = fused.run_layer
    x, h0, c0, w, masks = _inputs("lstm", torch.float64, True, True, 0, True, "padding_zoneout")
    gy = torch.randn(x.shape[0], x.shape[1], h0.shape[-1], dtype=torch.float64, requires_grad=True)
    wrt = [t for t in (x, h0, c0, *w) if t is not None]
    second = []
    for run in (run_layer, reference.run_layer):
        res = run("lstm", x, h0, c0, w, masks)
        g = torch.autograd.grad(res.y, wrt, gy, create_graph=True)
        assert all(t.requires_grad for t in g)
        second.append(torch.autograd.grad(sum(t.pow(2).sum() for t in g), wrt + [gy]))
    for got, want in zip(*second):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


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
