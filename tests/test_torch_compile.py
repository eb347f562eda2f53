"""torch.compile over seqlab recurrent layers: the compiled path is a registered op, no graph break.

``seqlab::rnn_layer`` / ``seqlab::rnn_layer_backward`` and ``seqlab::min_layer`` /
``seqlab::min_layer_backward`` (minGRU / minLSTM) (kernels/compiled.py) wrap the C++
kernels with fake (shape) kernels and autograd. Checked: torch.library.opcheck on the op,
one graph and no break under torch._dynamo.explain, the same outputs and gradients as eager
under ``fullgraph=True`` (backend ``aot_eager``, which runs the fake kernels and the
registered autograd without inductor's own C++ build) and once under inductor (the default
backend, which builds its own C++ around the op), and the op path called eagerly against the
reference loop.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import seqlab.nn as snn
from seqlab.kernels import _testing, compiled, reference
from seqlab.kernels.common import LayerWeights, Masks

I, H, P, T, B = 5, 6, 3, 4, 2


@pytest.fixture(scope="module", autouse=True)
def ext():
    if not compiled.available():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")


@pytest.fixture
def library_op():
    """Take the custom-op route in eager mode too (it is normally taken only while compiling)."""
    with _testing.library_op():
        yield


class TinyModel(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = cls(I, H, backend="compiled", **kw)
        width = (self.rnn.proj_size or H) * (2 if self.rnn.bidirectional else 1)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        y, st = self.rnn(x)
        st = st if isinstance(st, tuple) else (st,)
        return self.head(y).sum() + sum(s.pow(2).sum() for s in st)


CASES = [
    ("lstm", snn.LSTM, dict(num_layers=2, proj_size=P, layer_norm=True)),
    ("gru", snn.GRU, dict(bidirectional=True)),
    ("rnn", snn.RNN, dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("name,cls,kw", CASES, ids=[c[0] for c in CASES])
def test_no_graph_break(name, cls, kw):
    torch.manual_seed(0)
    model = TinyModel(cls, **kw)
    model(torch.randn(T, B, I))  # eager first: builds/loads the extension outside the trace
    torch._dynamo.reset()
    explain = torch._dynamo.explain(model)(torch.randn(T, B, I))
    assert (explain.graph_count, explain.graph_break_count) == (1, 0), [b.reason for b in explain.break_reasons]


@pytest.mark.parametrize("name,cls,kw", CASES, ids=[c[0] for c in CASES])
def test_fullgraph_matches_eager(name, cls, kw):
    torch.manual_seed(0)
    model = TinyModel(cls, **kw).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    loss = model(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert model.rnn.last_dispatch.backend == "compiled"
    torch._dynamo.reset()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss_c = compiled_model(x)
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    torch.testing.assert_close(loss_c, loss, atol=1e-12, rtol=1e-12)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, atol=1e-12, rtol=1e-12)


def _args(cell_id, G, proj, ln, masks):
    gen = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    p = proj or H
    lstm = G == 4
    w = [r(G * H, I), r(G * H, p), r(G * H), r(G * H), r(p, H) if proj else None,
         r(G * H) if ln else None, r(G * H) if ln else None, r(G * H) if ln else None, r(G * H) if ln else None,
         r(H) if ln and lstm else None, r(H) if ln and lstm else None]
    c0 = r(B, H) if lstm else None
    return (cell_id, r(T, B, I), r(B, p), c0, *w, *masks, True)


def test_opcheck():
    keep = torch.bernoulli(torch.full((T, B, P), 0.3, dtype=torch.float64))
    keep_c = torch.full((1, 1, 1), 0.2, dtype=torch.float64).expand(T, B, 1)
    rec = torch.full((B, P), 1.5, dtype=torch.float64)
    out = torch.ones(T, B, 1, dtype=torch.float64)
    op = torch.ops.seqlab.rnn_layer.default
    for args in (_args(2, 4, P, True, [keep, keep_c, out, rec]),  # LSTM, everything on
                 _args(3, 3, 0, False, [None] * 4),  # GRU, plain
                 _args(0, 1, 0, True, [None, None, None, torch.full((B, H), 2.0, dtype=torch.float64)])):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_library_op_eager_matches_reference(library_op, cell):
    """The custom-op route (as torch.compile runs it) against the reference loop, with variants."""
    gen = torch.Generator().manual_seed(2)
    G = {"rnn_tanh": 1, "gru": 3, "lstm": 4}[cell]
    lstm = cell == "lstm"

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()

    p = P if lstm else H
    w = LayerWeights(r(G * H, I), r(G * H, p), r(G * H), r(G * H), r(p, H) if lstm else None,
                     r(G * H), r(G * H), r(G * H), r(G * H), r(H) if lstm else None, r(H) if lstm else None)
    keep = torch.bernoulli(torch.full((T, B, p), 0.3, dtype=torch.float64), generator=gen)
    masks = Masks(keep=keep, keep_c=keep[..., :1].expand(T, B, 1).clone() if lstm else None,
                  out=torch.ones(T, B, 1, dtype=torch.float64), rec=torch.full((B, p), 1.25, dtype=torch.float64))
    x, h0 = r(T, B, I), r(B, p)
    c0 = r(B, H) if lstm else None
    leaves = [t for t in (x, h0, c0, *w) if t is not None]
    results = []
    for kernel in (reference.run_layer, compiled.run_layer):
        res = kernel(cell, x, h0, c0, w, masks, record=True)
        loss = res.y.pow(2).sum() + res.h.sum() + (res.c.sum() if res.c is not None else 0)
        results.append([res.y, res.h, *res.record.values(), *torch.autograd.grad(loss, leaves)])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_inductor_matches_eager():
    """The default backend, inductor, which generates and builds its own C++ around the op (~30 s)."""
    torch.manual_seed(0)
    model = TinyModel(snn.LSTM, num_layers=2)
    x = torch.randn(T, B, I)
    loss = model(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch._dynamo.reset()
    loss_c = torch.compile(model, fullgraph=True)(x)
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=1e-5)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, atol=1e-5, rtol=1e-5)


MIN_CASES = [("mingru", snn.MinGRU), ("minlstm", snn.MinLSTM)]


class TinyMinModel(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(I, H, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * H, 3)

    def forward(self, x):
        y, h_n = self.rnn(x)
        return self.head(y).sum() + h_n.pow(2).sum()


@pytest.mark.parametrize("name,cls", MIN_CASES, ids=[c[0] for c in MIN_CASES])
def test_min_layers_compile_in_one_graph_and_match_eager(name, cls):
    torch.manual_seed(0)
    model = TinyMinModel(cls).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    loss = model(x)
    assert model.rnn.last_dispatch.backend == "compiled"
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch._dynamo.reset()
    explain = torch._dynamo.explain(model)(x)
    assert (explain.graph_count, explain.graph_break_count) == (1, 0), [b.reason for b in explain.break_reasons]
    torch._dynamo.reset()
    loss_c = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    torch.testing.assert_close(loss_c, loss, atol=1e-12, rtol=1e-12)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, atol=1e-12, rtol=1e-12)


def test_min_opcheck():
    gen = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)  # noqa: E731
    for cell, G in ((0, 2), (1, 3)):
        for bias in (r(G * H), None):
            args = (cell, r(T, B, I), r(G * H, I), bias, r(B, H))
            result = torch.library.opcheck(torch.ops.seqlab.min_layer.default, args)
            assert all(v == "SUCCESS" for v in result.values()), result
