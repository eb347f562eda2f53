"""seqlab's RNN/LSTM/GRU (both backends) against torch.nn with copied weights.

Following PyTorch's own RNN tests: the same weights go into both
implementations (through ``state_dict``), a random gradient is
back-propagated from the output and from the final states, and outputs,
final states and the gradients of the input, the initial states and every
parameter are compared at explicit tolerances, over every flag combination.
Sizes are tiny (T=5, B=3, H=4, input size 7, a prime) so the whole product
runs in seconds.
"""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seqlab.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

# torch.nn's own LSTM says so for every proj_size case on CPU; it is about torch, not about seqlab
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = 5, 3, 7, 4, 3  # steps, batch, input size (prime), hidden size, LSTM projection size
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
BACKENDS = ("reference", "fused", "compiled")
FORMS = ("plain", "packed_sorted", "packed_unsorted", "lengths", "unbatched")
# Lengths per form. max < T on purpose for the unsorted and lengths= forms: the
# tail of the padded batch is then padding for every sequence.
LENGTHS = {"packed_sorted": [5, 4, 2], "packed_unsorted": [2, 4, 3], "lengths": [3, 1, 4]}
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


# ----------------------------------------------------------------------------
# Helpers


def _classes(cell):
    return {
        "rnn_tanh": (nn.RNN, RNN), "rnn_relu": (nn.RNN, RNN), "lstm": (nn.LSTM, LSTM), "gru": (nn.GRU, GRU),
    }[cell]


def _layer_kwargs(cell, num_layers=1, bidirectional=False, batch_first=False, bias=True, proj_size=0,
                  dropout=0.0, dtype=torch.float32):
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
              bidirectional=bidirectional, dtype=dtype)
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    if proj_size:
        kw["proj_size"] = proj_size
    return kw


def make_pair(cell, backend="reference", input_size=I, hidden_size=H, **flags):
    """(torch.nn module, seqlab module) with the torch.nn weights copied into seqlab (strict)."""
    torch_cls, ours_cls = _classes(cell)
    kw = _layer_kwargs(cell, **flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with num_layers=1
        ref = torch_cls(input_size, hidden_size, **kw)
        ours = ours_cls(input_size, hidden_size, **kw, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _state_sizes(cell, flags):
    proj = flags.get("proj_size", 0)
    D = 2 if flags.get("bidirectional") else 1
    return D * flags.get("num_layers", 1), (proj or H), H


def make_data(cell, form, given_state, dtype=torch.float32, seed=0, **flags):
    """Leaf tensors for one case: x, lengths (or None), h0, c0 (or None), and the state gradients."""
    g = torch.Generator().manual_seed(seed)
    batch_first = flags.get("batch_first", False)
    DL, Pout, Hc = _state_sizes(cell, flags)
    if form == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype)
        sshape = (DL,)
    else:
        x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=dtype)
        sshape = (DL, B)
    x.requires_grad_(True)
    lengths = torch.tensor(LENGTHS[form]) if form in LENGTHS else None
    h0 = c0 = None
    if given_state:
        h0 = torch.randn(*sshape, Pout, generator=g, dtype=dtype).requires_grad_(True)
        if cell == "lstm":
            c0 = torch.randn(*sshape, Hc, generator=g, dtype=dtype).requires_grad_(True)
    gh = torch.randn(*sshape, Pout, generator=g, dtype=dtype)
    gc = torch.randn(*sshape, Hc, generator=g, dtype=dtype) if cell == "lstm" else None
    return x, lengths, h0, c0, gh, gc


def _hx(cell, h0, c0):
    if h0 is None:
        return None
    return (h0, c0) if cell == "lstm" else h0


def run_torch(mod, cell, form, x, lengths, h0, c0, batch_first):
    """torch.nn's result; for lengths= the same batch packed with enforce_sorted=False, padded back to T."""
    hx = _hx(cell, h0, c0)
    if form in ("packed_sorted", "packed_unsorted"):
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=form == "packed_sorted")
        out, st = mod(inp, hx)
    elif form == "lengths":
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, st = mod(inp, hx)
        out = pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0]
    else:
        out, st = mod(x, hx)
    return out, st


def run_ours(mod, cell, form, x, lengths, h0, c0, batch_first):
    hx = _hx(cell, h0, c0)
    if form in ("packed_sorted", "packed_unsorted"):
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=form == "packed_sorted")
        return mod(inp, hx)
    if form == "lengths":
        return mod(x, hx, lengths=lengths)
    return mod(x, hx)


def _split_state(cell, st):
    if cell == "lstm":
        assert isinstance(st, tuple) and len(st) == 2, f"LSTM should return (h_n, c_n), got {type(st)}"
        return st
    assert isinstance(st, torch.Tensor), f"expected h_n to be a Tensor, got {type(st)}"
    return st, None


def _loss(cell, out, st, gout, gh, gc):
    data = out.data if isinstance(out, PackedSequence) else out
    h_n, c_n = _split_state(cell, st)
    loss = (data * gout).sum() + (h_n * gh).sum()
    if c_n is not None:
        loss = loss + (c_n * gc).sum()
    return loss


def _grads(x, h0, c0, mod):
    """Gradients of the leaves, by name; every parameter must have one."""
    grads = {"input": x.grad}
    if h0 is not None:
        grads["h0"] = h0.grad
    if c0 is not None:
        grads["c0"] = c0.grad
    for name, p in mod.named_parameters():
        grads[name] = p.grad
    return grads


def _clear(*tensors):
    for t in tensors:
        if t is not None:
            t.grad = None


def assert_same_results(cell, form, res_ref, res_ours, tol, lengths=None, batch_first=False):
    (out_r, st_r), (out_o, st_o) = res_ref, res_ours
    if form in ("packed_sorted", "packed_unsorted"):
        assert isinstance(out_o, PackedSequence), f"PackedSequence in should give PackedSequence out, got {type(out_o)}"
        torch.testing.assert_close(out_o.batch_sizes, out_r.batch_sizes)
        for attr in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out_o, attr), getattr(out_r, attr)
            assert (a is None) == (b is None), attr
            if a is not None:
                torch.testing.assert_close(a, b)
        torch.testing.assert_close(out_o.data, out_r.data, **tol, msg=lambda m: f"output: {m}")
    else:
        assert isinstance(out_o, torch.Tensor)
        assert out_o.shape == out_r.shape, f"output shape {tuple(out_o.shape)} != torch's {tuple(out_r.shape)}"
        torch.testing.assert_close(out_o, out_r, **tol, msg=lambda m: f"output: {m}")
        if form == "lengths":
            t = torch.arange(T).unsqueeze(1)  # (T, 1)
            pad = (t >= lengths.unsqueeze(0))  # (T, B)
            if batch_first:
                pad = pad.t()  # (B, T)
            assert out_o[pad].eq(0).all(), "padded positions of the output should be exactly zero"
    h_r, c_r = _split_state(cell, st_r)
    h_o, c_o = _split_state(cell, st_o)
    assert h_o.shape == h_r.shape, f"h_n shape {tuple(h_o.shape)} != torch's {tuple(h_r.shape)}"
    torch.testing.assert_close(h_o, h_r, **tol, msg=lambda m: f"h_n: {m}")
    if c_r is not None:
        assert c_o.shape == c_r.shape, f"c_n shape {tuple(c_o.shape)} != torch's {tuple(c_r.shape)}"
        torch.testing.assert_close(c_o, c_r, **tol, msg=lambda m: f"c_n: {m}")


def assert_same_grads(g_ref, g_ours, tol):
    assert g_ours.keys() == g_ref.keys()
    for name in g_ref:
        assert g_ref[name] is not None, f"torch.nn gave no gradient for {name}"
        assert g_ours[name] is not None, f"seqlab gave no gradient for {name}"
        torch.testing.assert_close(g_ours[name], g_ref[name], **tol, msg=lambda m, n=name: f"grad of {n}: {m}")


def check_case(cell, backend, form, given_state, dtype=torch.float32, **flags):
    """Forward + backward both modules on the same data and compare everything."""
    batch_first = flags.get("batch_first", False)
    ref, ours = make_pair(cell, backend, dtype=dtype, **flags)
    x, lengths, h0, c0, gh, gc = make_data(cell, form, given_state, dtype=dtype, **flags)

    res_ref = run_torch(ref, cell, form, x, lengths, h0, c0, batch_first)
    out_r = res_ref[0]
    gout = torch.randn((out_r.data if isinstance(out_r, PackedSequence) else out_r).shape,
                       generator=torch.Generator().manual_seed(1), dtype=dtype)
    _loss(cell, *res_ref, gout, gh, gc).backward()
    g_ref = _grads(x, h0, c0, ref)
    _clear(x, h0, c0)

    res_ours = run_ours(ours, cell, form, x, lengths, h0, c0, batch_first)
    d = ours.last_dispatch
    assert d is not None and isinstance(d.reason, str), d
    if backend == "auto":
        # on the CPU the fastest path is the compiled loop; any other choice must say why
        assert d.backend in ("reference", "fused", "compiled") and (d.reason == "") == (d.backend == "compiled"), d
    else:
        assert d.backend == backend, d
    if backend in ("fused", "compiled"):
        assert d.reason == "", d
    assert_same_results(cell, form, res_ref, res_ours, TOL[dtype], lengths, batch_first)
    _loss(cell, *res_ours, gout, gh, gc).backward()
    assert_same_grads(g_ref, _grads(x, h0, c0, ours), TOL[dtype])


# ----------------------------------------------------------------------------
# The full flag product, float32


def _product():
    for cell, backend, num_layers, bidirectional, batch_first, bias in itertools.product(
            CELLS, BACKENDS, (1, 2), (False, True), (False, True), (False, True)):
        for proj_size in ((0, P) if cell == "lstm" else (0,)):
            for form, given_state in itertools.product(FORMS, (True, False)):
                flags = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                             bias=bias, proj_size=proj_size)
                case_id = (f"{cell}-{backend}-L{num_layers}-{'bi' if bidirectional else 'uni'}-"
                           f"{'bf' if batch_first else 'tf'}-{'bias' if bias else 'nobias'}-P{proj_size}-"
                           f"{form}-{'h0' if given_state else 'nohx'}")
                yield pytest.param(cell, backend, form, given_state, flags, id=case_id)


@pytest.mark.parametrize("cell,backend,form,given_state,flags", list(_product()))
def test_matches_torch_nn(cell, backend, form, given_state, flags):
    check_case(cell, backend, form, given_state, **flags)


@pytest.mark.parametrize("form", ["plain", "packed_unsorted", "lengths", "unbatched"])
@pytest.mark.parametrize("cell", CELLS)
def test_auto_backend_matches_torch_nn(cell, form):
    check_case(cell, "auto", form, True, num_layers=2, bidirectional=True, batch_first=True)


# ----------------------------------------------------------------------------
# float64: the same comparison, tight


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,proj_size", [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", P)])
def test_matches_torch_nn_float64(cell, proj_size, backend, bidirectional, form):
    check_case(cell, backend, form, True, dtype=torch.float64, num_layers=2, bidirectional=bidirectional,
               proj_size=proj_size)


# ----------------------------------------------------------------------------
# Layout corner cases


@pytest.mark.parametrize("layout", ["permuted", "strided"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_input(cell, backend, batch_first, layout):
    ref, ours = make_pair(cell, backend, num_layers=2, bidirectional=True, batch_first=batch_first)
    shape = (B, T, I) if batch_first else (T, B, I)
    g = torch.Generator().manual_seed(3)
    if layout == "permuted":
        base = torch.randn(tuple(reversed(shape)), generator=g).requires_grad_(True)
        x = base.permute(2, 1, 0)  # (a, b, c) view of a (c, b, a) tensor
    else:
        base = torch.randn(shape[0], shape[1], 2 * I, generator=g).requires_grad_(True)
        x = base[..., ::2]  # stride 2 in the feature dimension
    assert not x.is_contiguous()
    gout = None
    results, grads = [], []
    for mod in (ref, ours):
        base.grad = None
        out, st = mod(x)
        h_n, c_n = _split_state(cell, st)
        if gout is None:
            gout = torch.randn(out.shape, generator=g)
        (out * gout).sum().add(h_n.sum()).backward()
        results.append((out.detach(), h_n.detach()))
        grads.append([base.grad] + [p.grad for p in mod.parameters()])
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,proj_size", [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", P)])
def test_explicit_zero_state_equals_none(cell, proj_size, backend, unbatched):
    _, ours = make_pair(cell, backend, num_layers=2, bidirectional=True, proj_size=proj_size)
    x = torch.randn((T, I) if unbatched else (T, B, I))
    DL, Pout, Hc = _state_sizes(cell, dict(num_layers=2, bidirectional=True, proj_size=proj_size))
    batch = () if unbatched else (B,)
    h0 = torch.zeros(DL, *batch, Pout)
    hx = (h0, torch.zeros(DL, *batch, Hc)) if cell == "lstm" else h0
    out_none, st_none = ours(x)
    out_zero, st_zero = ours(x, hx)
    assert torch.equal(out_none, out_zero)
    for a, b in zip(_split_state(cell, st_none), _split_state(cell, st_zero)):
        if a is not None:
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------
# Parameters: names, shapes, initialisation, state_dict both ways


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell,proj_size", [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", P)])
def test_state_dict_loads_both_ways(cell, proj_size, bidirectional, bias):
    torch_cls, ours_cls = _classes(cell)
    kw = _layer_kwargs(cell, num_layers=2, bidirectional=bidirectional, bias=bias, proj_size=proj_size)
    ref, ours = torch_cls(I, H, **kw), ours_cls(I, H, **kw)
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert list(sd_ours.keys()) == list(sd_ref.keys()), "same parameter names in the same order as torch.nn"
    for k in sd_ref:
        assert sd_ours[k].shape == sd_ref[k].shape, k
    ours.load_state_dict(sd_ref, strict=True)
    for k in sd_ref:
        assert torch.equal(ours.state_dict()[k], sd_ref[k]), k
    fresh = torch_cls(I, H, **kw)
    fresh.load_state_dict(ours_cls(I, H, **kw).state_dict(), strict=True)  # and the reverse
    # and the copy is a real copy: same outputs
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("cell,proj_size", [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", P)])
def test_initialisation_like_torch(cell, proj_size):
    """U(-1/sqrt(H), 1/sqrt(H)) for every parameter; and, registered in torch.nn's order, the same draws."""
    torch_cls, ours_cls = _classes(cell)
    hidden = 7
    kw = _layer_kwargs(cell, num_layers=2, bidirectional=True, proj_size=proj_size)
    torch.manual_seed(11)
    ref = torch_cls(I, hidden, **kw)
    torch.manual_seed(11)
    ours = ours_cls(I, hidden, **kw)
    bound = 1 / math.sqrt(hidden)
    for name, p in ours.named_parameters():
        assert p.abs().max() <= bound, name
        assert p.std() > bound / 4, f"{name} looks not initialised (std {p.std():.3g})"
    for (n_r, p_r), (n_o, p_o) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n_r == n_o
        assert torch.equal(p_r, p_o), f"{n_o}: same seed should give torch.nn's initial weights"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_parametrized_weight_matches_torch_nn(cell, backend):
    """A torch.nn.utils.parametrize'd weight (here weight_norm) is read through its property,
    so the forward and the gradient of the underlying parameters match torch.nn's."""
    from torch.nn.utils.parametrizations import weight_norm

    ref, ours = make_pair(cell, backend)
    for m in (ref, ours):
        weight_norm(m, "weight_hh_l0")
    with torch.no_grad():  # weight_norm's g, v start from the copied weight; make g differ from |v|
        for m in (ref, ours):
            m.parametrizations.weight_hh_l0.original0.mul_(1.5)
    x = torch.randn(T, B, I)
    y_ref, y_ours = ref(x)[0], ours(x)[0]
    torch.testing.assert_close(y_ours, y_ref, **TOL[torch.float32])
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    for (n_r, p_r), (n_o, p_o) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n_r == n_o
        torch.testing.assert_close(p_o.grad, p_r.grad, **TOL[torch.float32], msg=n_o)


# ----------------------------------------------------------------------------
# Dropout between layers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_in_eval_is_identity(cell, backend):
    ref, ours = make_pair(cell, backend, num_layers=2, bidirectional=True, dropout=0.5)
    ref.eval()
    ours.eval()
    x = torch.randn(T, B, I)
    out_r, st_r = ref(x)
    out_o, st_o = ours(x)
    torch.testing.assert_close(out_o, out_r, **TOL[torch.float32])
    for a, b in zip(_split_state(cell, st_o), _split_state(cell, st_r)):
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_in_training(cell, backend):
    x = torch.randn(T, B, I)
    # two layers: the first layer's final state is untouched, the rest changes
    _, ours = make_pair(cell, backend, num_layers=2, bidirectional=True, dropout=0.5)
    ours.eval()
    out_eval, st_eval = ours(x)
    ours.train()
    torch.manual_seed(0)
    out_train, st_train = ours(x)
    h_eval, h_train = _split_state(cell, st_eval)[0], _split_state(cell, st_train)[0]
    assert not torch.allclose(out_train, out_eval), "dropout=0.5 in training should change the output"
    torch.testing.assert_close(h_train[:2], h_eval[:2], **TOL[torch.float32])  # layer 0, both directions
    assert not torch.allclose(h_train[2:], h_eval[2:])
    torch.manual_seed(0)
    out_again, _ = ours(x)
    assert torch.equal(out_again, out_train), "same seed, same dropout mask"
    out_again.sum().backward()  # and it differentiates
    # one layer: dropout applies after all but the last layer, so nothing changes
    _, one = make_pair(cell, backend, num_layers=1, dropout=0.5)
    one.train()
    out_t, _ = one(x)
    one.eval()
    out_e, _ = one(x)
    assert torch.equal(out_t, out_e)


# ----------------------------------------------------------------------------
# gradcheck in float64 on tiny sizes


def _functional(mod, cell, names, lengths):
    def f(x, h0, c0, *params):
        hx = (h0, c0) if cell == "lstm" else h0
        kwargs = {} if lengths is None else {"lengths": lengths}
        out, st = torch.func.functional_call(mod, dict(zip(names, params)), (x, hx), kwargs)
        h_n, c_n = _split_state(cell, st)
        return (out, h_n) if c_n is None else (out, h_n, c_n)
    return f


def _gradcheck_inputs(cell, mod, t, b, i, hid, proj, D, L):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(t, b, i, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(D * L, b, proj or hid, dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(D * L, b, hid, dtype=torch.float64, generator=g, requires_grad=cell == "lstm")
    names, params = zip(*[(n, p.detach().clone().requires_grad_(True)) for n, p in mod.named_parameters()])
    return names, (x, h0, c0, *params)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,proj_size", [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", 1)])
def test_gradcheck(cell, proj_size, backend, with_lengths):
    torch_cls, ours_cls = _classes(cell)
    t, b, i, hid = 3, 2, 3, 2
    kw = _layer_kwargs(cell, num_layers=2, bidirectional=True, proj_size=proj_size, dtype=torch.float64)
    mod = ours_cls(i, hid, **kw, backend=backend)
    lengths = torch.tensor([3, 2]) if with_lengths else None
    names, inputs = _gradcheck_inputs(cell, mod, t, b, i, hid, proj_size, 2, 2)
    f = _functional(mod, cell, names, lengths)
    if cell == "rnn_relu":
        # keep pre-activations away from relu's kink, where finite differences disagree
        inputs[0].data.mul_(0.5)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_gradgradcheck_reference(cell):
    # The reference loop is plain autograd, so second derivatives come for free there.
    _, ours_cls = _classes(cell)
    kw = _layer_kwargs(cell, dtype=torch.float64)
    mod = ours_cls(2, 2, **kw, backend="reference")
    names, inputs = _gradcheck_inputs(cell, mod, 2, 1, 2, 2, 0, 1, 1)
    assert gradgradcheck(_functional(mod, cell, names, None), inputs, eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------
# Cells


CELL_CLASSES = {
    "rnn_tanh": (nn.RNNCell, RNNCell), "rnn_relu": (nn.RNNCell, RNNCell),
    "lstm": (nn.LSTMCell, LSTMCell), "gru": (nn.GRUCell, GRUCell),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("given_state", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_matches_torch_nn(cell, bias, unbatched, given_state, dtype):
    torch_cls, ours_cls = CELL_CLASSES[cell]
    kw = dict(bias=bias, dtype=dtype)
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    ref, ours = torch_cls(I, H, **kw), ours_cls(I, H, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(7)
    batch = () if unbatched else (B,)
    x = torch.randn(*batch, I, generator=g, dtype=dtype, requires_grad=True)
    states = [torch.randn(*batch, H, generator=g, dtype=dtype, requires_grad=True)
              for _ in range(2 if cell == "lstm" else 1)] if given_state else []
    gouts = [torch.randn(*batch, H, generator=g, dtype=dtype) for _ in range(2 if cell == "lstm" else 1)]
    results = []
    for mod in (ref, ours):
        for leaf in [x, *states]:
            leaf.grad = None
        hx = None if not given_state else (tuple(states) if cell == "lstm" else states[0])
        out = mod(x, hx)
        outs = list(out) if cell == "lstm" else [out]
        sum(((o * go).sum() for o, go in zip(outs, gouts))).backward()
        grads = [leaf.grad for leaf in [x, *states]] + [p.grad for p in mod.parameters()]
        results.append(([o.detach() for o in outs], grads))
    (outs_r, grads_r), (outs_o, grads_o) = results
    for a, b in zip(outs_o, outs_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL[dtype])
    for a, b in zip(grads_o, grads_r):
        torch.testing.assert_close(a, b, **TOL[dtype])
