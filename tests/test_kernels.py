"""Every fast path (fused, compiled C++, Triton) against the reference loop (the specification) and torch.nn.

One case set (tests/kernel_cases.py), one parametrisation over the backends: the same inputs
into the fast path and the reference loop; compared: outputs y, final h and c, the recorded
per-step values, and the gradients of x, h0, c0 and every weight, for every cell and every
variant of the contract that the path runs, in float64 (tight) and float32 (against the
float64 reference). Plus float64 gradcheck, partial requires_grad, zero steps, strided
output gradients, in-place writes to the output, recorded copies, second derivatives, and
torch.nn parity with copied weights.

The compiled path skips where the extension cannot be built; the Triton path runs on the CPU
under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1) and skips without triton.
What only one path has (the compiled loop's product paths and threads, the Triton schedules
and tiles, dispatch and refusals) is in test_compiled.py, test_triton.py and test_fused.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seqlab.kernels import reference
from seqlab.kernels.common import LayerWeights, RECORDED

from kernel_cases import (B, BACKENDS, CELLS, H, I, P, T, TOL64, _inputs, compare, full, kernel,  # tests/kernel_cases.py
                          variants)

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
EVERY_BACKEND = pytest.mark.parametrize("backend", BACKENDS)


@EVERY_BACKEND
@DTYPES
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference_every_variant(backend, cell, dtype):
    for bias, layer_norm, proj, rec, keep in variants(cell, backend):
        label = f"{backend} {cell} bias={bias} ln={layer_norm} proj={proj} rec={rec} keep={keep}"
        args = _inputs(cell, dtype, bias, layer_norm, proj, rec, keep)
        compare(kernel(backend), cell, args, dtype, label)


@pytest.mark.parametrize("backend", ["fused", "compiled"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_all_variants(backend, cell):
    """float64 gradcheck of the hand-written backward with LN, projection, rec dropout, zoneout and padding.
    (Not the Triton path: under the interpreter a gradcheck takes minutes; its float64 gradients
    are compared with the reference's at 1e-10 above.)"""
    proj = 2 if cell == "lstm" else 0
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, True, proj, True, "padding_zoneout", seed=3, t=3, b=2)
    names = ["x", "h0"] + (["c0"] if c0 is not None else []) + [k for k, v in w._asdict().items() if v is not None]
    leaves = {"x": x, "h0": h0, "c0": c0, **w._asdict()}
    run_layer = kernel(backend)

    def f(*ts):
        d = dict(zip(names, ts))
        ww = LayerWeights(**{k: d.get(k) for k in LayerWeights._fields})
        res = run_layer(cell, d["x"], d["h0"], d.get("c0"), ww, masks)
        return (res.y, res.h) + ((res.c,) if res.c is not None else ())

    assert torch.autograd.gradcheck(f, tuple(leaves[k] for k in names), atol=1e-7, rtol=1e-6)


@EVERY_BACKEND
@pytest.mark.parametrize("cell", CELLS)
def test_partial_requires_grad(backend, cell):
    """Only some inputs require grad: the skipped work must not change the ones asked for."""
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, full(backend), 0, full(backend), "zoneout")
    for leaf in (h0, c0, *w):
        if leaf is not None:
            leaf.requires_grad_(False)
    one = "ln_hh_w" if full(backend) else "w_hh"
    w = w._replace(**{one: getattr(w, one).detach().requires_grad_()})
    compare(kernel(backend), cell, (x, h0, c0, w, masks), torch.float64, f"{backend} {cell} x and {one} only")


@EVERY_BACKEND
@pytest.mark.parametrize("cell", CELLS)
def test_zero_steps(backend, cell):
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, False, 0, False, "none", t=0)
    res = kernel(backend)(cell, x, h0, c0, w, masks, record=True)
    assert res.y.shape == (0, B, H)
    assert res.h is h0 and res.c is c0
    assert all(res.record[n].shape == (0, B, H) for n in RECORDED[cell])
    res.h.sum().backward()  # the state passes through, and so does its gradient
    assert torch.equal(h0.grad, torch.ones_like(h0))


@EVERY_BACKEND
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_nn(backend, cell):
    """No masks, no LN: the fast path is torch.nn's single-layer RNN/GRU/LSTM with the same weights."""
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

    res = kernel(backend)(cell, x, h0, c0, w)
    g_f = torch.autograd.grad((res.y * gy).sum() + (res.h * gh).sum() + (res.c.sum() if res.c is not None else 0),
                              params)
    torch.testing.assert_close(res.y, y_t, **TOL64)
    torch.testing.assert_close(res.h, h_t, **TOL64)
    if cell == "lstm":
        torch.testing.assert_close(res.c, c_t, **TOL64)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a, b, **TOL64)


@EVERY_BACKEND
def test_no_grad_matches_and_output_is_writable(backend):
    proj = P if full(backend) else 0
    x, h0, c0, w, masks = _inputs("lstm", torch.float64, True, full(backend), proj, False, "padding")
    want = reference.run_layer("lstm", x, h0, c0, w, masks)
    with torch.no_grad():  # the forward then keeps nothing for a backward
        res = kernel(backend)("lstm", x, h0, c0, w, masks)
    assert not res.y.requires_grad
    for a, b in ((res.y, want.y), (res.h, want.h), (res.c, want.c)):
        torch.testing.assert_close(a, b.detach(), **TOL64)
    # y is not a buffer the backward reads, so modifying it in place (dropout(inplace=True)) is fine
    res = kernel(backend)("lstm", x, h0, c0, w, masks)
    res.y.mul_(2)
    res.y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@EVERY_BACKEND
@pytest.mark.parametrize("keep", ["none", "padding"])
@pytest.mark.parametrize("cell", CELLS)
def test_strided_output_gradient(backend, cell, keep):
    """dL/dy as a transposed view (what a batch_first layer passes back): no path may read it as
    contiguous."""
    args = _inputs(cell, torch.float64, True, False, 0, False, keep)
    grads = []
    for run_layer in (reference.run_layer, kernel(backend)):
        res = run_layer(cell, *args)
        g_y = torch.randn(B, T, H, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        loss = (res.y.transpose(0, 1) * g_y).sum()  # dL/dy = g_y.transpose(0, 1), a strided view
        grads.append(torch.autograd.grad(loss, [args[0], args[1], args[3].w_hh]))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, **TOL64)


@EVERY_BACKEND
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recorded_values_are_copies(backend, cell):
    """What ``record=True`` returns does not change when a backward runs (some paths overwrite
    their forward's buffers in place)."""
    x, h0, c0, w, masks = _inputs(cell, torch.float64, True, False, 0, False, "zoneout")
    res = kernel(backend)(cell, x, h0, c0, w, masks, record=True)
    before = {k: v.clone() for k, v in res.record.items()}
    (res.y.sum() + res.h.sum()).backward()
    for k, v in res.record.items():
        assert torch.equal(v, before[k]), k


@EVERY_BACKEND
def test_double_backward_matches_reference(backend):
    """A gradient taken with create_graph=True is differentiable (through the reference loop) and gives
    the reference loop's second derivatives, with respect to x, the states, the weights and the output
    gradient; zoneout and padding included, LayerNorm and recurrent dropout where the path runs them.
    Every path's fast backward hands create_graph calls to the same reference route."""
    x, h0, c0, w, masks = _inputs("lstm", torch.float64, True, full(backend), 0, full(backend), "padding_zoneout")
    gy = torch.randn(x.shape[0], x.shape[1], h0.shape[-1], dtype=torch.float64, requires_grad=True)
    wrt = [t for t in (x, h0, c0, *w) if t is not None]
    second = []
    for run in (kernel(backend), reference.run_layer):
        res = run("lstm", x, h0, c0, w, masks)
        g = torch.autograd.grad(res.y, wrt, gy, create_graph=True)
        assert all(t.requires_grad for t in g)
        second.append(torch.autograd.grad(sum(t.pow(2).sum() for t in g), wrt + [gy]))
    for got, want in zip(*second):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)
