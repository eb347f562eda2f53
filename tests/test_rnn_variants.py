"""The seqlab-only variants (layer_norm, recurrent_dropout, weight_drop, zoneout, forget_bias) and record_gates.

Three kinds of checks: a knob at zero is the plain layer exactly; the fused
path equals the reference loop (the specification) for every variant, in
training and eval, outputs, states and all gradients, with the masks drawn
from the same seed; and hand-computed one-step cases for what each variant
means.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from seqlab.nn.rnn import GRU, LSTM, RNN, record_gates

T, B, I, H, P = 5, 3, 7, 4, 3
TOL64 = dict(atol=1e-10, rtol=1e-10)
TOL32 = dict(atol=1e-5, rtol=1e-5)
# (label, class, extra constructor keywords): every cell, LSTM also with a projection
CELLS = [
    ("rnn_tanh", RNN, {"nonlinearity": "tanh"}),
    ("rnn_relu", RNN, {"nonlinearity": "relu"}),
    ("gru", GRU, {}),
    ("lstm", LSTM, {}),
    ("lstm_proj", LSTM, {"proj_size": P}),
]
TORCH = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM, "lstm_proj": nn.LSTM}
CELL_IDS = [c[0] for c in CELLS]


def _is_lstm(label):
    return label.startswith("lstm")


def _states(label, st):
    return list(st) if _is_lstm(label) else [st]


def _variants(label):
    """name -> seqlab-only keywords of one variant (the forget_bias one only for the LSTM)."""
    v = {
        "layer_norm": dict(layer_norm=True),
        "recurrent_dropout": dict(recurrent_dropout=0.4),
        "weight_drop": dict(weight_drop=0.4),
        "zoneout": dict(zoneout=(0.3, 0.2) if _is_lstm(label) else 0.3),
        "all": dict(layer_norm=True, recurrent_dropout=0.4, weight_drop=0.3,
                    zoneout=(0.3, 0.2) if _is_lstm(label) else 0.3, dropout=0.3),
    }
    if _is_lstm(label):
        v["forget_bias"] = dict(forget_bias=1.0)
        v["all"]["forget_bias"] = 1.0
    v["all_nobias"] = {**v["all"], "bias": False}
    v["all_nobias"].pop("forget_bias", None)
    return v


# ----------------------------------------------------------------------------
# Each knob at zero is the plain layer


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_knobs_at_zero_equal_plain_layer(label, cls, extra, backend):
    zeros = [dict(recurrent_dropout=0.0), dict(weight_drop=0.0), dict(zoneout=0.0), dict(layer_norm=False)]
    if _is_lstm(label):
        zeros += [dict(zoneout=(0.0, 0.0)), dict(forget_bias=None)]
    zeros.append({k: v for d in zeros for k, v in d.items()})  # all at once
    x = torch.randn(T, B, I)
    torch.manual_seed(0)
    plain = cls(I, H, num_layers=2, bidirectional=True, **extra, backend=backend)
    plain.train()
    torch.manual_seed(1)
    out_plain, st_plain = plain(x, lengths=torch.tensor([5, 2, 4]))
    for kw in zeros:
        torch.manual_seed(0)
        mod = cls(I, H, num_layers=2, bidirectional=True, **extra, backend=backend, **kw)
        mod.train()
        for (n1, p1), (n2, p2) in zip(plain.named_parameters(), mod.named_parameters(), strict=True):
            assert n1 == n2 and torch.equal(p1, p2), f"{kw}: same seed should give the same init ({n1})"
        torch.manual_seed(1)
        out, st = mod(x, lengths=torch.tensor([5, 2, 4]))
        assert torch.equal(out, out_plain), kw
        for a, b in zip(_states(label, st), _states(label, st_plain)):
            assert torch.equal(a, b), kw


# ----------------------------------------------------------------------------
# fused == reference for every variant, train and eval, outputs + states + all grads


def _run_with_grads(mod, label, x, hx, lengths, seed, gout, gstates):
    for t in [x, *hx]:
        t.grad = None
    mod.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out, st = mod(x, tuple(hx) if _is_lstm(label) else hx[0], lengths=lengths)
    states = _states(label, st)
    loss = (out * gout).sum() + sum((s * g).sum() for s, g in zip(states, gstates))
    loss.backward()
    grads = {"input": x.grad, **{f"hx{i}": t.grad for i, t in enumerate(hx)}}
    grads.update({n: p.grad for n, p in mod.named_parameters()})
    return out.detach(), [s.detach() for s in states], grads


def _fused_vs_reference_cases():
    for (label, cls, extra), train in itertools.product(CELLS, (True, False)):
        for name, kw in _variants(label).items():
            yield pytest.param(label, cls, extra, kw, train, id=f"{label}-{name}-{'train' if train else 'eval'}")


@pytest.mark.parametrize("label,cls,extra,kw,train", list(_fused_vs_reference_cases()))
def test_fused_equals_reference(label, cls, extra, kw, train):
    dt = torch.float64
    torch.manual_seed(0)
    ref = cls(I, H, num_layers=2, bidirectional=True, **extra, **kw, dtype=dt, backend="reference")
    fused = cls(I, H, num_layers=2, bidirectional=True, **extra, **kw, dtype=dt, backend="fused")
    # perturb the LayerNorm parameters away from (1, 0) so that their use is tested too
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
    fused.load_state_dict(ref.state_dict(), strict=True)
    ref.train(train)
    fused.train(train)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, dtype=dt, generator=g, requires_grad=True)
    Pout = extra.get("proj_size", 0) or H
    hx = [torch.randn(4, B, Pout, dtype=dt, generator=g, requires_grad=True)]
    if _is_lstm(label):
        hx.append(torch.randn(4, B, H, dtype=dt, generator=g, requires_grad=True))
    gout = torch.randn(T, B, 2 * Pout, dtype=dt, generator=g)
    gstates = [torch.randn(h.shape, dtype=dt, generator=g) for h in hx]
    for lengths in (None, torch.tensor([5, 2, 4])):
        out_r, st_r, gr_r = _run_with_grads(ref, label, x, hx, lengths, 123, gout, gstates)
        out_f, st_f, gr_f = _run_with_grads(fused, label, x, hx, lengths, 123, gout, gstates)
        assert fused.last_dispatch.backend == "fused", fused.last_dispatch
        torch.testing.assert_close(out_f, out_r, **TOL64, msg=lambda m: f"output (lengths={lengths}): {m}")
        for i, (a, b) in enumerate(zip(st_f, st_r)):
            torch.testing.assert_close(a, b, **TOL64, msg=lambda m, i=i: f"state {i} (lengths={lengths}): {m}")
        assert gr_f.keys() == gr_r.keys()
        for n in gr_r:
            assert gr_r[n] is not None and gr_f[n] is not None, f"missing gradient for {n}"
            torch.testing.assert_close(gr_f[n], gr_r[n], **TOL64, msg=lambda m, n=n: f"grad {n} ({lengths}): {m}")


# ----------------------------------------------------------------------------
# What each variant means, checked by hand


def _torch_cell_step(label, mod, x, h0, c0):
    """One step of torch.nn's layer with mod's weights: (h̃, c̃) from (h0, c0)."""
    kw = {"proj_size": P} if label == "lstm_proj" else {}
    if label.startswith("rnn"):
        kw["nonlinearity"] = label[4:]
    ref = TORCH[label](I, H, **kw, dtype=x.dtype)
    ref.load_state_dict({k: v for k, v in mod.state_dict().items() if not k.startswith("ln_")}, strict=True)
    out, st = ref(x, (h0, c0) if _is_lstm(label) else h0)
    return (st[0], st[1]) if _is_lstm(label) else (st, None)


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_zoneout_eval_is_the_expectation(label, cls, extra, backend):
    dt = torch.float64
    p_h, p_c = 0.3, 0.6
    zo = (p_h, p_c) if _is_lstm(label) else p_h
    mod = cls(I, H, **extra, zoneout=zo, dtype=dt, backend=backend).eval()
    Pout = extra.get("proj_size", 0) or H
    x = torch.randn(1, B, I, dtype=dt)
    h0 = torch.randn(1, B, Pout, dtype=dt)
    c0 = torch.randn(1, B, H, dtype=dt)
    torch.manual_seed(0)
    out, st = mod(x, (h0, c0) if _is_lstm(label) else h0)
    torch.manual_seed(1)
    out2, _ = mod(x, (h0, c0) if _is_lstm(label) else h0)
    assert torch.equal(out, out2), "zoneout in eval should not depend on the RNG"
    h_new, c_new = _torch_cell_step(label, mod, x, h0, c0)
    h1 = p_h * h0 + (1 - p_h) * h_new
    torch.testing.assert_close(_states(label, st)[0], h1, **TOL64)
    torch.testing.assert_close(out, h1, **TOL64)
    if _is_lstm(label):
        torch.testing.assert_close(st[1], p_c * c0 + (1 - p_c) * c_new, **TOL64)


@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_zoneout_training_keeps_or_updates_each_unit(label, cls, extra):
    dt = torch.float64
    mod = cls(I, H, **extra, zoneout=(0.5, 0.5) if _is_lstm(label) else 0.5, dtype=dt).train()
    Pout = extra.get("proj_size", 0) or H
    x = torch.randn(1, 16, I, dtype=dt)
    h0 = torch.randn(1, 16, Pout, dtype=dt)
    c0 = torch.randn(1, 16, H, dtype=dt)
    torch.manual_seed(0)
    _, st = mod(x, (h0, c0) if _is_lstm(label) else h0)
    h_new, c_new = _torch_cell_step(label, mod, x, h0, c0)
    pairs = [(st[0], h0, h_new)] + ([(st[1], c0, c_new)] if _is_lstm(label) else [])
    for got, old, new in pairs:
        kept = torch.isclose(got, old, atol=1e-12, rtol=0)
        updated = torch.isclose(got, new, atol=1e-12, rtol=0)
        assert (kept | updated).all(), "each unit either keeps its previous value or takes the new one"
        assert kept.any() and updated.any(), "with p=0.5 over 16 x H units both should happen"


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_recurrent_dropout_only_in_training(label, cls, extra, backend):
    torch.manual_seed(0)
    plain = cls(I, H, **extra, backend=backend)
    mod = cls(I, H, **extra, recurrent_dropout=0.5, backend=backend)
    mod.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(T, B, I)
    plain.eval()
    mod.eval()
    assert torch.equal(mod(x)[0], plain(x)[0]), "recurrent dropout must be off in eval mode"
    mod.train()
    torch.manual_seed(3)
    out_a = mod(x)[0]
    torch.manual_seed(3)
    out_b = mod(x)[0]
    assert torch.equal(out_a, out_b), "same seed, same mask"
    assert not torch.allclose(out_a, plain(x)[0]), "recurrent dropout should change the output in training"
    # the mask multiplies h_{t-1}: the first step from a zero state is untouched
    torch.testing.assert_close(out_a[0], plain(x)[0][0], **TOL32)


def test_recurrent_dropout_one_mask_per_sequence():
    """With W_ih = 0, b = 0 and W_hh = I, an RNN(relu) computes h_t = m ⊙ h_{t-1}: the same m every step."""
    mod = RNN(2, 6, nonlinearity="relu", recurrent_dropout=0.5, dtype=torch.float64).train()
    with torch.no_grad():
        mod.weight_ih_l0.zero_()
        mod.bias_ih_l0.zero_()
        mod.bias_hh_l0.zero_()
        mod.weight_hh_l0.copy_(torch.eye(6))
    h0 = torch.ones(1, 4, 6, dtype=torch.float64)
    torch.manual_seed(0)
    out, _ = mod(torch.zeros(3, 4, 2, dtype=torch.float64), h0)  # (3, 4, 6)
    m = out[0]  # (4, 6): entries 0 or 1/(1-p) = 2
    assert set(m.unique().tolist()) <= {0.0, 2.0} and (m == 0).any() and (m == 2).any()
    torch.testing.assert_close(out[1], m * m)
    torch.testing.assert_close(out[2], m * m * m)


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_weight_drop_is_the_plain_layer_on_dropped_weights(label, cls, extra, backend):
    """In training, the output and every gradient are those of torch.nn's layer run with
    W_hh ⊙ m / (1 - p), one mask m for the whole call (drawn first, as seqlab.nn.dropout draws it);
    in eval the layer is the plain layer."""
    from seqlab.nn.dropout import dropout

    dt, p = torch.float64, 0.5
    torch.manual_seed(0)
    mod = cls(I, H, **extra, weight_drop=p, dtype=dt, backend=backend)
    plain = cls(I, H, **extra, dtype=dt, backend=backend)
    plain.load_state_dict(mod.state_dict(), strict=True)
    x = torch.randn(T, B, I, dtype=dt, requires_grad=True)
    mod.eval()
    plain.eval()
    assert torch.equal(mod(x)[0], plain(x)[0]), "weight drop must be off in eval mode"

    mod.train()
    plain.train()
    gout = torch.randn_like(mod(x)[0])
    torch.manual_seed(5)
    out, _ = mod(x)
    (out * gout).sum().backward()
    got = {"input": x.grad.clone(), **{n: q.grad for n, q in mod.named_parameters()}}

    x.grad = None
    ref = TORCH[label](I, H, **extra, dtype=dt)  # CELLS' keywords are torch.nn's own
    params = {n: q.detach().clone().requires_grad_(True) for n, q in plain.named_parameters()}
    torch.manual_seed(5)
    dropped = dropout(params["weight_hh_l0"], p)
    mask = dropped.detach() / params["weight_hh_l0"].detach()
    assert set(mask.unique().tolist()) == {0.0, 1 / (1 - p)}, "entries either dropped or scaled by 1/(1-p)"
    want, _ = torch.func.functional_call(ref, {**params, "weight_hh_l0": dropped}, (x,))
    (want * gout).sum().backward()
    torch.testing.assert_close(out, want, **TOL64)
    torch.testing.assert_close(got["input"], x.grad, **TOL64)
    for n, q in params.items():
        torch.testing.assert_close(got[n], q.grad, **TOL64, msg=lambda m, n=n: f"grad {n}: {m}")
    assert (got["weight_hh_l0"][mask == 0] == 0).all(), "a dropped weight gets no gradient"


def test_weight_drop_one_mask_per_call_on_every_layer():
    """With W_ih = 0, b = 0 and W_hh = 1, an RNN(relu) from h_0 = 1 computes h_1 = (W_hh ⊙ m / (1-p)) 1
    and h_t = (W_hh ⊙ m / (1-p))^t 1: the same dropped matrix every step; a second call draws another."""
    mod = RNN(3, 3, nonlinearity="relu", num_layers=2, weight_drop=0.5, dtype=torch.float64).train()
    with torch.no_grad():
        for n, q in mod.named_parameters():
            q.fill_(1.0 if n.startswith("weight_hh") else 0.0)
    h0 = torch.ones(2, 1, 3, dtype=torch.float64)
    x = torch.zeros(4, 1, 3, dtype=torch.float64)
    torch.manual_seed(0)
    _, h_a = mod(x, h0)
    from seqlab.nn.dropout import dropout

    torch.manual_seed(0)
    w0 = dropout(torch.ones(3, 3, dtype=torch.float64), 0.5)  # layer 0's draw comes first
    w1 = dropout(torch.ones(3, 3, dtype=torch.float64), 0.5)
    assert not torch.equal(w0, w1), "each layer draws its own mask"
    ones = torch.ones(3, dtype=torch.float64)
    h_layer0 = torch.linalg.matrix_power(w0, 4) @ ones
    torch.testing.assert_close(h_a[0, 0], h_layer0)
    # layer 1: W_ih = 0, so its input does not matter; only its own dropped W_hh
    torch.testing.assert_close(h_a[1, 0], torch.linalg.matrix_power(w1, 4) @ ones)
    _, h_b = mod(x, h0)
    assert not torch.equal(h_a, h_b), "the next call draws new masks"


def test_forget_bias_sets_the_forget_slice():
    torch.manual_seed(0)
    plain = LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    torch.manual_seed(0)
    mod = LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, forget_bias=1.5)
    plain_params = dict(plain.named_parameters())
    f = slice(H, 2 * H)  # gate order i|f|g|o
    for name, p in mod.named_parameters():
        q = plain_params[name]
        if name.startswith("bias_ih"):
            assert torch.equal(p[f], torch.full((H,), 1.5)), name
        elif name.startswith("bias_hh"):
            assert torch.equal(p[f], torch.zeros(H)), name
        else:
            assert torch.equal(p, q), f"{name} should be torch's init"
            continue
        keep = torch.ones(4 * H, dtype=torch.bool)
        keep[f] = False
        assert torch.equal(p[keep], q[keep]), f"{name}: only the forget slice changes"
    # and it means what it says: with zero weights the forget gate is sigmoid(1.5)
    one = LSTM(I, H, forget_bias=1.5)
    with torch.no_grad():
        for name, p in one.named_parameters():
            if name.startswith("weight"):
                p.zero_()
            else:
                keep = torch.ones(4 * H, dtype=torch.bool)
                keep[f] = False
                p[keep] = 0
    with record_gates() as rec:
        one(torch.randn(2, 1, I))
    torch.testing.assert_close(rec.get(one)["f"], torch.full((2, 1, H), torch.sigmoid(torch.tensor(1.5)).item()))


@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_layer_norm_parameters_and_loading(label, cls, extra):
    tmod = TORCH[label](I, H, num_layers=2, bidirectional=True, **extra)
    mod = cls(I, H, num_layers=2, bidirectional=True, **extra, layer_norm=True)
    names = {n for n, _ in mod.named_parameters()}
    expected_ln = set()
    for layer, sfx in itertools.product((0, 1), ("", "_reverse")):
        kinds = ("ih", "hh", "c") if _is_lstm(label) else ("ih", "hh")
        for kind, wb in itertools.product(kinds, ("weight", "bias")):
            expected_ln.add(f"ln_{kind}_{wb}_l{layer}{sfx}")
    assert names == set(dict(tmod.named_parameters())) | expected_ln
    with pytest.raises(RuntimeError):
        mod.load_state_dict(tmod.state_dict(), strict=True)
    res = mod.load_state_dict(tmod.state_dict(), strict=False)
    assert set(res.missing_keys) == expected_ln and not res.unexpected_keys
    for n, p in tmod.named_parameters():
        assert torch.equal(getattr(mod, n), p)


# ----------------------------------------------------------------------------
# record_gates


RECORDED = {"rnn_tanh": "h", "rnn_relu": "h", "gru": "rzhn", "lstm": "ifgoch", "lstm_proj": "ifgoch"}


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_record_gates_shapes_and_values(label, cls, extra, layout, backend):
    bf = layout == "batch_first"
    mod = cls(I, H, num_layers=2, bidirectional=True, batch_first=bf, **extra, backend=backend)
    Pout = extra.get("proj_size", 0) or H
    x = torch.randn((T, I) if layout == "unbatched" else (B, T, I) if bf else (T, B, I))
    out_plain, st_plain = mod(x)
    with record_gates() as rec:
        out, st = mod(x)
    # (a tolerance, not equality: a backend may take another path to record, see last_dispatch)
    torch.testing.assert_close(out, out_plain, **TOL32, msg=lambda m: f"recording changed the output: {m}")
    for a, b in zip(_states(label, st), _states(label, st_plain)):
        torch.testing.assert_close(a, b, **TOL32)
    lead = (T,) if layout == "unbatched" else (B, T) if bf else (T, B)
    for layer, direction in itertools.product((0, 1), (0, 1)):
        got = rec.get(mod, layer=layer, direction=direction)
        assert set(got) == set(RECORDED[label]), f"recorded {sorted(got)}"
        for name, v in got.items():
            size = Pout if name == "h" else H
            assert v.shape == (*lead, size), f"{name}: {tuple(v.shape)} != {(*lead, size)}"
        if _is_lstm(label):
            for gate in "ifo":
                assert ((got[gate] > 0) & (got[gate] < 1)).all(), gate
            assert (got["g"].abs() <= 1).all()
    # the last layer's 'h' is the output, the reverse direction aligned with the original time index
    top_f, top_b = rec.get(mod, layer=1, direction=0), rec.get(mod, layer=1, direction=1)
    torch.testing.assert_close(torch.cat([top_f["h"], top_b["h"]], dim=-1), out, atol=0, rtol=0)
    # h_n of the top layer is 'h' at the last step (forward) and at step 0 (reverse)
    t_last = (slice(None), -1) if bf else (-1,)
    t_first = (slice(None), 0) if bf else (0,)
    h_n = _states(label, st)[0]
    torch.testing.assert_close(top_f["h"][t_last], h_n[2], atol=0, rtol=0)
    torch.testing.assert_close(top_b["h"][t_first], h_n[3], atol=0, rtol=0)
    if _is_lstm(label):
        c_n = st[1]
        torch.testing.assert_close(top_f["c"][t_last], c_n[2], atol=0, rtol=0)
        torch.testing.assert_close(top_b["c"][t_first], c_n[3], atol=0, rtol=0)


@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_record_gates_one_layer_h_is_output_and_c_is_c_n(label, cls, extra):
    mod = cls(I, H, **extra)
    x = torch.randn(T, B, I)
    with record_gates() as rec:
        out, st = mod(x)
    got = rec.get(mod)
    torch.testing.assert_close(got["h"], out, atol=0, rtol=0)
    if _is_lstm(label):
        torch.testing.assert_close(got["c"][-1], st[1][0], atol=0, rtol=0)
    if label == "gru":
        for gate in "rz":
            assert ((got[gate] > 0) & (got[gate] < 1)).all()


@pytest.mark.parametrize("form", ["lengths", "packed"])
@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", CELLS, ids=CELL_IDS)
def test_record_gates_padding_is_zero(label, cls, extra, backend, form):
    mod = cls(I, H, bidirectional=True, batch_first=True, **extra, backend=backend)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(B, T, I)
    with record_gates() as rec:
        if form == "lengths":
            out, _ = mod(x, lengths=lengths)
        else:
            mod(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = mod(x, lengths=lengths)
    pad = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T)
    for call in ((-1,) if form == "lengths" else (0, 1)):
        for direction in (0, 1):
            got = rec.get(mod, layer=0, direction=direction, call=call)
            for name, v in got.items():
                assert v.shape[:2] == (B, T)
                assert v[pad].eq(0).all(), f"{name} (direction {direction}) should be zero on padding"
                assert v[~pad].ne(0).any(), name
        Pout = extra.get("proj_size", 0) or H
        rev = rec.get(mod, layer=0, direction=1, call=call)["h"]
        torch.testing.assert_close(rev, out[..., Pout:], atol=0, rtol=0)


def test_record_gates_calls_and_outside_context():
    mod = LSTM(I, H)
    other = GRU(I, H)
    x1, x2 = torch.randn(T, B, I), torch.randn(T, B, I)
    other(x1)  # outside: nothing recorded
    with record_gates() as rec:
        out1, _ = mod(x1)
        out2, _ = mod(x2)
    out3, _ = mod(x1)  # after the context: not recorded
    torch.testing.assert_close(rec.get(mod, call=0)["h"], out1, atol=0, rtol=0)
    torch.testing.assert_close(rec.get(mod, call=1)["h"], out2, atol=0, rtol=0)
    torch.testing.assert_close(rec.get(mod, call=-1)["h"], out2, atol=0, rtol=0)
    torch.testing.assert_close(rec.get(mod)["h"], out2, atol=0, rtol=0)
    with pytest.raises((KeyError, LookupError, ValueError)):
        rec.get(other)
    with pytest.raises((KeyError, IndexError, ValueError)):
        rec.get(mod, call=2)
    with pytest.raises((KeyError, LookupError, ValueError)):
        rec.get(mod, layer=1)


def test_record_gates_nested_contexts_each_get_the_full_record():
    mod = LSTM(I, H, num_layers=2)
    x1, x2 = torch.randn(T, B, I), torch.randn(T, B, I)
    with record_gates() as outer:
        out1, _ = mod(x1)
        with record_gates() as inner:
            out2, _ = mod(x2)
    assert outer.calls(mod) == 2 and inner.calls(mod) == 1
    torch.testing.assert_close(outer.get(mod, layer=1, call=0)["h"], out1, atol=0, rtol=0)
    for rec in (outer, inner):
        torch.testing.assert_close(rec.get(mod, layer=1, call=-1)["h"], out2, atol=0, rtol=0)
        assert set(rec.get(mod, layer=1)) == set("ifgoch")


@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
def test_recorded_values_survive_backward(backend):
    # the fused path keeps its buffers for backward; what the user was given must not change
    mod = GRU(I, H, backend=backend)
    x = torch.randn(T, B, I, requires_grad=True)
    with record_gates() as rec:
        out, _ = mod(x)
    before = {k: v.clone() for k, v in rec.get(mod).items()}
    out.pow(2).sum().backward()
    for k, v in rec.get(mod).items():
        assert torch.equal(v, before[k]), k


def test_record_gates_zero_steps_with_projection():
    mod = LSTM(I, H, proj_size=P, backend="reference")
    with record_gates() as rec:
        mod(torch.randn(0, B, I))
    got = rec.get(mod)
    assert got["h"].shape == (0, B, P) and got["c"].shape == (0, B, H) and got["f"].shape == (0, B, H)


def test_record_gates_does_not_change_gradients():
    mod = LSTM(I, H, num_layers=2, layer_norm=True)
    x = torch.randn(T, B, I, requires_grad=True)
    mod(x)[0].sum().backward()
    g_plain = [x.grad.clone()] + [p.grad.clone() for p in mod.parameters()]
    x.grad = None
    mod.zero_grad()
    with record_gates() as rec:
        mod(x)[0].sum().backward()
    g_rec = [x.grad] + [p.grad for p in mod.parameters()]
    for a, b in zip(g_rec, g_plain):
        torch.testing.assert_close(a, b, **TOL32)
    assert set(rec.get(mod, layer=1)) == set("ifgoch")


@pytest.mark.parametrize("kw", [{}, dict(layer_norm=True), dict(recurrent_dropout=0.3), dict(zoneout=(0.2, 0.1))],
                         ids=["plain", "layer_norm", "recurrent_dropout", "zoneout"])
def test_auto_backend_reports_its_choice(kw):
    torch.manual_seed(0)
    auto = LSTM(I, H, num_layers=2, **kw, dtype=torch.float64)
    ref = LSTM(I, H, num_layers=2, **kw, dtype=torch.float64, backend="reference")
    ref.load_state_dict(auto.state_dict())
    assert auto.last_dispatch is None or hasattr(auto.last_dispatch, "backend")
    x = torch.randn(T, B, I, dtype=torch.float64)
    for train in (True, False):
        auto.train(train)
        ref.train(train)
        torch.manual_seed(4)
        out_a, _ = auto(x)
        torch.manual_seed(4)
        out_r, _ = ref(x)
        d = auto.last_dispatch
        assert d.backend in ("reference", "fused", "compiled") and isinstance(d.reason, str)
        assert (d.reason == "") == (d.backend == "compiled"), f"a refusal should say why: {d}"
        torch.testing.assert_close(out_a, out_r, **TOL64)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["reference", "fused", "compiled"])
@pytest.mark.parametrize("label,cls,extra", [
    ("rnn_tanh", RNN, {"nonlinearity": "tanh"}), ("gru", GRU, {}), ("lstm", LSTM, {}),
    ("lstm_proj", LSTM, {"proj_size": 1}),
], ids=["rnn_tanh", "gru", "lstm", "lstm_proj"])
def test_gradcheck_with_every_variant(label, cls, extra, backend, train):
    """gradcheck in float64 through LayerNorm, recurrent dropout, weight drop and zoneout; the masks are fixed by
    seeding inside the function, so every evaluation of the finite differences sees the same ones."""
    from torch.autograd import gradcheck

    t, b, i, hid = 3, 2, 3, 2
    zo = (0.3, 0.2) if _is_lstm(label) else 0.3
    mod = cls(i, hid, bidirectional=True, **extra, layer_norm=True, recurrent_dropout=0.4, weight_drop=0.3,
              zoneout=zo, dtype=torch.float64, backend=backend).train(train)
    names, params = zip(*[(n, p.detach().clone().requires_grad_(True)) for n, p in mod.named_parameters()])
    Pout = extra.get("proj_size", 0) or hid
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, b, i, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(2, b, Pout, dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(2, b, hid, dtype=torch.float64, generator=g, requires_grad=_is_lstm(label))
    lengths = torch.tensor([3, 2])

    def f(x, h0, c0, *ps):
        torch.manual_seed(7)
        hx = (h0, c0) if _is_lstm(label) else h0
        out, st = torch.func.functional_call(mod, dict(zip(names, ps)), (x, hx), {"lengths": lengths})
        return (out, *_states(label, st))

    assert gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-5)
