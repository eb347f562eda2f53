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
from torch.autograd import gradgradcheck

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
    out, state = m(x) if hx is None else m(x, hx)
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


@pytest.mark.parametrize("backend", ["auto", "compiled", "scan", "log_scan", "reference"])
@pytest.mark.parametrize("cls", [snn.MinGRU, snn.MinLSTM])
def test_min_rnn_second_derivatives_correct_or_raise(cls, backend):
    """minGRU / minLSTM: second derivatives are right (the chunked scan differentiates the step loop under
    create_graph) or raise (the compiled op has no double backward), never silently zero."""
    torch.manual_seed(0)
    m = cls(2, 3, dtype=torch.float64, backend=backend)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    m(x)
    if m.last_dispatch.backend == "compiled":
        with pytest.raises(RuntimeError, match="no autograd formula"):
            gradgradcheck(lambda x: m(x)[0], (x,), fast_mode=True)
    else:
        assert gradgradcheck(lambda x: m(x)[0], (x,), fast_mode=True)


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


# ----------------------------------------------------------------------------
# The native backend: torch's own kernels for plain calls, exactly torch.nn


NATIVE_FLAGS = [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True, bias=False),
                dict(num_layers=2, dropout=0.5)]


@pytest.mark.parametrize("kw", NATIVE_FLAGS, ids=["plain", "2layers-bidir", "batch_first-nobias", "dropout"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_native_backend_matches_torch(kind, kw):
    ref, ours = pair(kind, torch.float64, "native", **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    x = x.transpose(0, 1) if kw.get("batch_first") else x
    torch.manual_seed(1)  # the same dropout masks: both draw them inside torch's kernel
    want = out_and_state(ref, x)
    torch.manual_seed(1)
    got = out_and_state(ours, x)
    assert ours.last_dispatch == ("native", "backend='native' was asked for")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    g = [torch.randn_like(t) for t in want]
    gw = torch.autograd.grad(want, list(ref.parameters()), g)
    gg = torch.autograd.grad(got, list(ours.parameters()), g)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_native_backend_packed_and_given_state():
    ref, ours = pair("lstm", torch.float64, "native", num_layers=2, bidirectional=True)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    h0 = torch.randn(4, 3, H, dtype=torch.float64), torch.randn(4, 3, H, dtype=torch.float64)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, T, 3]), enforce_sorted=False)
    (yr, (hr, cr)), (y, (h, c)) = ref(packed, h0), ours(packed, h0)
    torch.testing.assert_close(y.data, yr.data, atol=0, rtol=0)
    torch.testing.assert_close((h, c), (hr, cr), atol=0, rtol=0)


def test_native_backend_refuses_variants():
    with pytest.raises(ValueError, match="backend='native' cannot run this call: .*layer_norm"):
        snn.LSTM(I, H, backend="native", layer_norm=True)(torch.randn(T, B, I))
    with pytest.raises(ValueError, match="lengths="):
        snn.GRU(I, H, backend="native")(torch.randn(T, B, I), lengths=torch.tensor([T, 1]))


def test_auto_dispatch_says_why():
    _, lstm = pair("lstm")
    x = torch.randn(T, B, I)
    with torch.no_grad():
        lstm(x)
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    if avx512 or torch.get_num_threads() > 1:  # oneDNN's LSTM primitive, the faster there for inference
        assert lstm.last_dispatch == ("native", "")
    elif compiled.available():
        assert lstm.last_dispatch == ("compiled", "")
    with torch.no_grad():
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            lstm(x)
        finally:
            torch.set_num_threads(previous)
    if not avx512 and compiled.available():  # one AVX2 thread: the compiled loop
        assert lstm.last_dispatch == ("compiled", "")
    lstm(x)  # training: the compiled loop (or fused) is the faster
    assert lstm.last_dispatch.backend == ("compiled" if compiled.available() else "fused")


# ----------------------------------------------------------------------------
# Tracing, scripting, functorch, export: torch's own kernel for plain layers, the reference
# loop for the variants; the fast paths are never traced


@pytest.mark.parametrize("kind", list(KINDS))
def test_jit_trace_runs_at_another_length_and_saves(kind, tmp_path):
    ref, ours = pair(kind, num_layers=2, bidirectional=True)
    ours.eval(), ref.eval()
    traced = torch.jit.trace(ours, (torch.randn(T, B, I),), check_trace=False)
    assert ours.last_dispatch.backend == "native" and "torch.jit.trace" in ours.last_dispatch.reason
    torch.jit.save(traced, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    x = torch.randn(2 * T + 1, 3, I)  # another length and batch than traced
    for a, b in zip(out_and_state(loaded, x), out_and_state(ref, x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_jit_trace_of_a_variant_takes_the_reference_loop():
    _, ours = pair("gru", seqlab_kw={"layer_norm": True})
    x = torch.randn(T, B, I)
    traced = torch.jit.trace(ours, (x,), check_trace=False)
    assert ours.last_dispatch.backend == "reference" and "torch.jit.trace" in ours.last_dispatch.reason
    torch.testing.assert_close(traced(x)[0], ours(x)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend='fused' cannot run this call: torch.jit.trace"):
        torch.jit.trace(snn.GRU(I, H, backend="fused"), (x,), check_trace=False)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_jit_script_cells(name):
    torch.manual_seed(0)
    ref, ours = getattr(nn, name)(I, H), getattr(snn, name)(I, H)
    ours.load_state_dict(ref.state_dict())
    scripted = torch.jit.script(ours)
    x = torch.randn(B, I)
    hx = (torch.randn(B, H), torch.randn(B, H)) if name == "LSTMCell" else torch.randn(B, H)
    for args in ((x,), (x, hx), (x[0],)):
        if len(args) == 1 or args[0].dim() == 2:
            got, want = scripted(*args), ref(*args)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(Exception, match=r"expected input with 3 features, got 4"):
        scripted(torch.randn(B, 4))


def _attention_models(name: str):
    """(torch.nn model, seqlab.nn model, inputs) with the same weights."""
    E, nh, S = 8, 2, 5
    torch.manual_seed(0)
    if name == "MultiheadAttention":
        ref, ours = nn.MultiheadAttention(E, nh, add_bias_kv=True), snn.MultiheadAttention(E, nh, add_bias_kv=True)
        x = torch.randn(S, B, E)
        args = (x, x, x)
    elif name in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
        ref, ours = getattr(nn, name)(E, nh, 16, dropout=0.0), getattr(snn, name)(E, nh, 16, dropout=0.0)
        args = (torch.randn(S, B, E),) if "Encoder" in name else (torch.randn(S, B, E), torch.randn(3, B, E))
    elif name == "TransformerEncoder":
        ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, nh, 16, dropout=0.0), 2, enable_nested_tensor=False)
        ours = snn.TransformerEncoder(snn.TransformerEncoderLayer(E, nh, 16, dropout=0.0), 2)
        args = (torch.randn(S, B, E),)
    else:
        ref = nn.Transformer(E, nh, 1, 1, 16, dropout=0.0)
        ours = snn.Transformer(E, nh, 1, 1, 16, dropout=0.0)
        args = (torch.randn(S, B, E), torch.randn(3, B, E))
    ours.load_state_dict(ref.state_dict())
    return ref, ours, args


@pytest.mark.parametrize("name", ["MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer",
                                  "TransformerEncoder", "Transformer"])
def test_jit_script_attention_and_transformer(name):
    """torch.jit.script compiles torch.nn's implementation on seqlab's very parameters (__prepare_scriptable__)."""
    ref, ours, args = _attention_models(name)
    scripted = torch.jit.script(ours)
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    torch.testing.assert_close(first(scripted(*args)), first(ref(*args)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first(scripted(*args)), first(ours(*args)), atol=1e-5, rtol=1e-5)
    # the scripted module trains the same parameters, and scripting left the seqlab module as it was
    shared = {id(p) for p in scripted.parameters()}
    assert all(id(p) in shared for p in ours.parameters())
    assert all(type(m).__module__.startswith(("seqlab", "torch.nn.modules.linear", "torch.nn.modules.normalization",
                                              "torch.nn.modules.dropout", "torch.nn.modules.container"))
               for m in ours.modules())


@pytest.mark.parametrize("kind", list(KINDS))
def test_func_grad_and_vmap(kind):
    ref, ours = pair(kind, torch.float64, seqlab_kw=None)
    x = torch.randn(T, B, I, dtype=torch.float64)
    g = {m: torch.func.grad(lambda x, m=m: m(x)[0].pow(2).sum())(x) for m in (ref, ours)}
    assert "torch.func" in ours.last_dispatch.reason
    torch.testing.assert_close(g[ours], g[ref], atol=1e-10, rtol=1e-8)
    # per-sample Jacobian-vector products of a variant: the reference loop under vmap and jvp
    _, var = pair(kind, torch.float64, seqlab_kw={"zoneout": 0.25})
    var.eval()
    v = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda x: var(x)[0], (x,), (v,))
    assert var.last_dispatch.backend == "reference"
    xr = x.clone().requires_grad_()
    y = var(xr)[0]
    # the same directional derivative through double backward (vector-Jacobian of a vector-Jacobian)
    u = torch.randn_like(y, requires_grad=True)
    (gx,) = torch.autograd.grad(y, xr, u, create_graph=True)
    (want,) = torch.autograd.grad(gx, u, v)
    torch.testing.assert_close(jvp, want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("variant", [None, "layer_norm"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_export_on_the_fused_path(kind, variant, monkeypatch):
    """torch.export where the compiled path is off (SEQLAB_NO_COMPILE=1 or no compiler): auto then takes the
    fused path eagerly, which export cannot follow; under export it takes torch's kernel or the reference loop."""
    monkeypatch.setitem(compiled._state, "tried", True)
    monkeypatch.setitem(compiled._state, "ok", False)
    monkeypatch.setitem(compiled._state, "error", "SEQLAB_NO_COMPILE is set")
    kw = {variant: True} if variant else None
    ref, ours = pair(kind, seqlab_kw=kw)
    x = torch.randn(T, B, I)
    eager = out_and_state(ours, x)
    assert ours.last_dispatch.backend == "fused"
    ep = torch.export.export(ours, (x,))
    # export traces a copy of the module, so its graph says which path ran: torch's kernel for the
    # plain layer (one aten.lstm / gru / rnn_tanh node), else the reference loop's plain ops
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    native_op = {"lstm": "aten.lstm.input", "gru": "aten.gru.input", "rnn": "aten.rnn_tanh.input"}[kind]
    assert (native_op in ops) == (variant is None), ops
    assert not any("seqlab" in op for op in ops), ops
    x2 = torch.randn(T, B, I)
    got = ep.module()(x2)
    want = out_and_state(ours, x2) if variant else out_and_state(ref, x2)
    got = (got[0], *got[1]) if isinstance(got[1], tuple) else got
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(eager) == len(want)


def test_torch_compile_on_the_fused_path(monkeypatch):
    monkeypatch.setitem(compiled._state, "tried", True)
    monkeypatch.setitem(compiled._state, "ok", False)
    monkeypatch.setitem(compiled._state, "error", "SEQLAB_NO_COMPILE is set")
    ref, ours = pair("lstm", seqlab_kw={"zoneout": 0.1})
    ours.eval()
    x = torch.randn(T, B, I, requires_grad=True)
    want = ours(x)[0]
    torch._dynamo.reset()
    got = torch.compile(ours, backend="aot_eager", fullgraph=True)(x)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g, g_want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# autocast: the layer computes in autocast's dtype (bfloat16 outputs, float32 gradients)


@pytest.mark.parametrize("variant", [None, "layer_norm"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_autocast_bfloat16(kind, variant):
    ref, ours = pair(kind, seqlab_kw={variant: True} if variant else None)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", torch.bfloat16):
        got = out_and_state(ours, x)
        try:
            want = out_and_state(ref, x)
        except RuntimeError:  # torch.nn's oneDNN LSTM under autocast needs bfloat16 support in the CPU
            want = None
    assert all(t.dtype == torch.bfloat16 for t in got)
    if want is not None and kind != "gru":  # torch.nn's CPU GRU ignores autocast (float32 out)
        assert [t.dtype for t in got] == [t.dtype for t in want]
    if variant is None:  # values: bfloat16's precision of torch.nn's float32 result
        for a, b in zip(got, out_and_state(ref, x)):
            torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)
    sum(t.float().sum() for t in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


# ----------------------------------------------------------------------------
# ONNX: both exporters, checked in onnxruntime against torch.nn on the same weights


def _onnx_run(model: nn.Module, args: tuple, dynamo: bool, path) -> list:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, args, dynamo=True, verbose=False).save(str(path))
    else:
        torch.onnx.export(model, args, str(path), dynamo=False)
    sess = ort.InferenceSession(str(path))
    flat = [t for a in args for t in (a if isinstance(a, tuple) else (a,))]
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), flat)})


# (kind, flags, given h0, dynamo exporter): the dynamo exporter (torch.export, then onnxscript) costs
# several seconds a model, so it runs on the richest case; torch.nn's LSTM with proj_size does not
# export either (ONNX's LSTM has no projection)
ONNX_RNN = [("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), True, False),
            ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), True, True),
            ("lstm", dict(), False, False), ("gru", dict(num_layers=2), True, False),
            ("rnn", dict(bidirectional=True, nonlinearity="relu"), True, False)]


@pytest.mark.parametrize("kind,kw,given_h0,dynamo", ONNX_RNN,
                         ids=["lstm-2l-bidir-bf-h0", "lstm-2l-bidir-bf-h0-dynamo", "lstm", "gru-2l-h0",
                              "rnn-relu-bidir-h0"])
def test_onnx_export_recurrent(kind, kw, given_h0, dynamo, tmp_path, recwarn):
    ref, ours = pair(kind, **kw)
    ref.eval(), ours.eval()
    x = torch.randn(B, T, I) if kw.get("batch_first") else torch.randn(T, B, I)
    DL = ours.num_layers * (2 if ours.bidirectional else 1)
    args: tuple = (x,)
    if given_h0:
        h0 = torch.randn(DL, B, ours.proj_size or H)
        args = (x, (h0, torch.randn(DL, B, H))) if kind == "lstm" else (x, h0)
    got = _onnx_run(ours, args, dynamo, tmp_path / "m.onnx")
    with torch.no_grad():
        want = out_and_state(ref, *args)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-5, rtol=1e-5)


class _SelfAttention(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("name,dynamo", [("MultiheadAttention", False), ("MultiheadAttention", True),
                                         ("TransformerEncoderLayer", False), ("TransformerDecoderLayer", False)])
def test_onnx_export_attention(name, dynamo, tmp_path, recwarn):
    torch.manual_seed(0)
    E, nh, S = 8, 2, 5
    if name == "MultiheadAttention":
        ref, ours = _SelfAttention(nn.MultiheadAttention(E, nh)), _SelfAttention(snn.MultiheadAttention(E, nh))
    else:
        ref, ours = getattr(nn, name)(E, nh, 16, dropout=0.0), getattr(snn, name)(E, nh, 16, dropout=0.0)
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    args = (torch.randn(S, B, E),) if name != "TransformerDecoderLayer" else (torch.randn(S, B, E), torch.randn(3, B, E))
    got = _onnx_run(ours, args, dynamo, tmp_path / "m.onnx")
    with torch.no_grad():
        want = ref(*args)
    torch.testing.assert_close(torch.from_numpy(got[0]), want, atol=1e-5, rtol=1e-5)


def test_torch_compile_keeps_the_compiled_path_for_plain_training():
    if not compiled.available():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")
    _, ours = pair("gru")
    torch._dynamo.reset()
    explain = torch._dynamo.explain(ours)(torch.randn(T, B, I))
    ops = {str(n.target) for g in explain.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("seqlab.rnn_layer" in op for op in ops), ops
