"""seqlab.nn as a drop-in for torch.nn beyond the forward call.

One row per thing users do with a torch.nn recurrent layer besides calling it: second
derivatives, pickling, autocast, tracing, scripting, functorch, export, ONNX. Each row runs
the operation with torch.nn and with seqlab.nn on copied weights and compares (outputs to
1e-5 in float32, dtypes under autocast, gradgradcheck in float64 on tiny sizes), for every
backend ``auto`` can choose here and every named backend that accepts the call.
"""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import seqlab.nn as snn
from seqlab.kernels import compiled

T, B, I, H = 4, 2, 3, 5  # tiny: gradgradcheck perturbs every input element
CPU_BACKENDS = ("auto", "reference", "fused", "compiled")
KINDS = {"lstm": (nn.LSTM, snn.LSTM), "gru": (nn.GRU, snn.GRU), "rnn": (nn.RNN, snn.RNN)}


def pair(kind: str, dtype=torch.float32, backend: str = "auto", seqlab_kw=None, **kw):
    """(torch.nn layer, seqlab.nn layer) with the same weights; seqlab_kw for seqlab's variants."""
    torch.manual_seed(0)
    ref_cls, our_cls = KINDS[kind]
    ref = ref_cls(I, H, dtype=dtype, **kw)
    ours = our_cls(I, H, dtype=dtype, backend=backend, **kw, **(seqlab_kw or {}))
    ours.load_state_dict(ref.state_dict(), strict=not seqlab_kw)
    return ref, ours


def out_and_state(m, x, hx=None):
    """The layer's outputs as a flat tuple of tensors (output, h_n[, c_n])."""
    out, state = m(x, hx)
    return (out, *state) if isinstance(state, tuple) else (out, state)


# ----------------------------------------------------------------------------
# Second derivatives: correct on every path (the fast paths differentiate their backward
# through the reference loop), never silently zero


SECOND_ORDER = [("lstm", {}), ("gru", {}), ("rnn", {}), ("lstm", {"proj_size": 2, "num_layers": 2}),
                ("gru", {"bidirectional": True})]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind,kw", SECOND_ORDER)
def test_gradgradcheck_input_and_state(kind, kw, backend):
    _, ours = pair(kind, torch.float64, backend, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)

    def f(x):
        return out_and_state(ours, x)

    assert gradgradcheck(f, (x,))
    if backend == "auto":
        assert ours.last_dispatch.backend == ("compiled" if compiled.available() else "fused")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_gradgradcheck_weights(kind, backend):
    """Second derivatives with respect to the weights (meta-learning, Hessian-vector products)."""
    # LayerNorm (the variant) on the named backends: its parameters and statistics too
    _, ours = pair(kind, torch.float64, backend, seqlab_kw={"layer_norm": backend != "auto"})
    names = [n for n, _ in ours.named_parameters()]
    x = torch.randn(T, B, I, dtype=torch.float64)

    def f(*params):
        out = torch.func.functional_call(ours, dict(zip(names, params)), (x,))
        return out[0]

    params = tuple(p.detach().clone().requires_grad_() for p in ours.parameters())
    # fast mode (random projections of the second derivative) keeps this to a second; an
    # all-zero or wrong second derivative still fails it
    assert gradgradcheck(f, params, fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_penalty_matches_torch(backend):
    """autograd.grad(create_graph=True) then backward through the gradient, as WGAN-GP does."""
    ref, ours = pair("lstm", torch.float64, backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, _ = m(xi)
        (g,) = torch.autograd.grad(out.pow(2).sum(), xi, create_graph=True)
        assert g.requires_grad
        m.zero_grad()
        g.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)


# ----------------------------------------------------------------------------
# Pickling: torch.save(model), then torch.load(weights_only=True) told only the model's classes,
# as pytorch/examples' word_language_model does


def _saved_and_loaded(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__)
    with torch.serialization.safe_globals(classes):
        return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("make", [
    lambda: snn.LSTM(I, H, num_layers=2, bidirectional=True, zoneout=0.1),
    lambda: snn.GRU(I, H, layer_norm=True),
    lambda: snn.RNN(I, H, nonlinearity="relu"),
    lambda: snn.MinGRU(I, H),
    lambda: snn.LSTMCell(I, H),
], ids=["lstm", "gru", "rnn", "mingru", "lstmcell"])
def test_whole_module_loads_weights_only(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(T, B, I) if not isinstance(model, snn.LSTMCell) else torch.randn(B, I)
    before = model(x)  # run once first: the run-time records it leaves must not be pickled
    loaded = _saved_and_loaded(model)
    after = loaded(x)
    flat = lambda o: [t for t in (o if isinstance(o, tuple) else (o,)) for t in (t if isinstance(t, tuple) else (t,))]
    for a, b in zip(flat(before), flat(after)):
        torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_language_model_loads_weights_only():
    """An LSTM inside a user's model, saved whole (word_language_model's ``torch.save(model, f)``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, I), snn.LSTM(I, H, batch_first=True))
    x = torch.randint(0, 11, (B, T))
    before = model(x)[0]
    torch.testing.assert_close(_saved_and_loaded(model)(x)[0], before, atol=0, rtol=0)


def test_dropout_one_accepted_like_torch():
    ref, ours = pair("lstm", num_layers=2, dropout=1.0)
    ref.train(), ours.train()
    x = torch.randn(T, B, I)
    # every unit between the layers is dropped: the second layer sees zeros, in both
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\], got 1.5"):
        snn.LSTM(I, H, num_layers=2, dropout=1.5)
