"""minGRU / minLSTM: every fast path against the reference step loop, plus layout and argument checks."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqlab.kernels import _testing, compiled
from seqlab.kernels.minrnn_scan import cell_step, linear_scan_
from seqlab.nn.minrnn import MinGRU, MinLSTM

CLASSES = [MinGRU, MinLSTM]
# the paths checked against 'reference' (the specification); 'compiled' only where the C++ builds
FAST_BACKENDS = (("compiled",) if compiled.available() else ()) + ("scan", "log_scan")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# The log-space scan cancels numbers of size |Σ log a| (kernels/minrnn_scan.py): its
# float32 gradients agree to ~1e-4 even at T=11, so it gets its own bound.
TOL_LOG_SCAN_F32 = dict(rtol=1e-4, atol=1e-4)


def _run(m, x, h0, lengths, backend, grad_out):
    """Output, h_n and the gradients of every input and parameter, for one backend."""
    out, h_n = m(x, h0, lengths=lengths, backend=backend)
    loss = (out * grad_out[0]).sum() + (h_n * grad_out[1]).sum()
    inputs = [x] + ([h0] if h0 is not None else []) + list(m.parameters())
    return [out, h_n, *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,backend,batch_first,bidirectional,num_layers,with_h0,with_lengths", list(itertools.product(
    CLASSES, ["compiled", "scan", "log_scan"], [False, True], [False, True], [1, 2], [False, True], [False, True])))
def test_fast_paths_match_reference(cls, backend, batch_first, bidirectional, num_layers, with_h0, with_lengths, dtype):
    torch.manual_seed(0)
    T, B, I, H = 11, 3, 7, 5
    D = 2 if bidirectional else 1
    m = cls(I, H, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, requires_grad=True)
    h0 = torch.randn(D * num_layers, B, H, dtype=dtype, requires_grad=True) if with_h0 else None
    lengths = torch.tensor([T, 4, 1]) if with_lengths else None
    out_shape = (B, T, D * H) if batch_first else (T, B, D * H)
    g = torch.Generator().manual_seed(1)
    grad_out = (torch.randn(out_shape, generator=g, dtype=dtype), torch.randn(D * num_layers, B, H, generator=g, dtype=dtype))
    ref = _run(m, x, h0, lengths, "reference", grad_out)
    got = _run(m, x, h0, lengths, backend, grad_out)
    assert ref[0].shape == out_shape and ref[1].shape == (D * num_layers, B, H)
    tol = TOL_LOG_SCAN_F32 if (backend, dtype) == ("log_scan", torch.float32) else TOL[dtype]
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, **tol)
    if with_lengths:  # padded outputs are exactly zero
        out = got[0] if not batch_first else got[0].transpose(0, 1)
        assert out[4:, 1].abs().max() == 0 and out[1:, 2].abs().max() == 0


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", ["compiled", "scan", "log_scan", "reference"])
def test_gradcheck_float64(cls, backend):
    torch.manual_seed(0)
    m = cls(3, 2, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    def f(x, h0, *ps):
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip([n for n, _ in m.named_parameters()], ps))):
            out, h_n = m(x, h0, lengths=torch.tensor([6, 4]), backend=backend)
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))


@pytest.mark.parametrize("cls", CLASSES)
def test_zero_h0_equals_none_and_h_n_continues_the_sequence(cls):
    torch.manual_seed(0)
    m = cls(7, 5, num_layers=2)
    x = torch.randn(20, 3, 7)
    out, h_n = m(x)
    out0, h_n0 = m(x, torch.zeros(2, 3, 5))
    torch.testing.assert_close(out0, out, rtol=0, atol=0)
    torch.testing.assert_close(h_n0, h_n, rtol=0, atol=0)
    # h_0 enters linearly, so any state (here a previous h_n) continues the sequence
    out1, h1 = m(x[:8])
    out2, h2 = m(x[8:], h1)
    torch.testing.assert_close(torch.cat([out1, out2]), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h_n, rtol=1e-5, atol=1e-6)
    # negative initial states are fine on every path
    h_neg = -torch.rand(2, 3, 5)
    ref = m(x, h_neg, backend="reference")
    for backend in FAST_BACKENDS:
        for r, o in zip(ref, m(x, h_neg, backend=backend)):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", ["compiled", "scan", "log_scan", "reference"])
def test_lengths_match_each_sequence_alone(cls, backend):
    torch.manual_seed(0)
    T, B, I, H = 9, 4, 7, 5
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([9, 3, 6, 1])
    x_padded = x.clone()
    for b, n in enumerate(lengths):
        x_padded[b, n:] = float("nan")  # whatever sits in the padding must not leak
    out, h_n = m(x_padded, lengths=lengths, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    for b, n in enumerate(lengths.tolist()):
        out_b, h_b = m(x[b:b + 1, :n], backend=backend)
        torch.testing.assert_close(out[b:b + 1, :n], out_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h_n[:, b:b + 1], h_b, rtol=1e-5, atol=1e-6)
        assert out[b, n:].abs().max() == 0 if n < T else True
    # a PackedSequence carries the same lengths
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, h_p = m(packed, backend=backend)
    torch.testing.assert_close(pad_packed_sequence(out_p, batch_first=True, total_length=T)[0], out)
    torch.testing.assert_close(h_p, h_n)


@pytest.mark.parametrize("cls", CLASSES)
def test_step_reproduces_forward_and_unbatched_input(cls):
    torch.manual_seed(0)
    m = cls(7, 5, num_layers=3).eval()
    x = torch.randn(12, 2, 7)
    out, h_n = m(x, backend="scan")
    h = None
    for t in range(12):
        h = m.step(x[t], h)
        torch.testing.assert_close(h[-1], out[t], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_n, rtol=1e-5, atol=1e-6)
    # unbatched: (T, I) in, (T, H) and (L, H) out
    out_u, h_u = m(x[:, 0])
    torch.testing.assert_close(out_u, out[:, 0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(h_u, h_n[:, 0], rtol=1e-6, atol=1e-7)
    assert m.step(x[0, 0]).shape == (3, 5)


@pytest.mark.parametrize("cls", CLASSES)
def test_long_sequence_stays_finite_and_accurate(cls):
    torch.manual_seed(0)
    m = cls(3, 4)
    x = torch.randn(4096, 2, 3, requires_grad=True)
    ref = _run(m, x, None, None, "reference", (torch.ones(4096, 2, 4), torch.ones(1, 2, 4)))
    for backend in FAST_BACKENDS:
        got = _run(m, x, None, None, backend, (torch.ones(4096, 2, 4), torch.ones(1, 2, 4)))
        assert all(torch.isfinite(v).all() for v in got), backend
        # the chunked scan and the C++ loop keep float32 accuracy at any length; the
        # log-space scan does not (see kernels/minrnn_scan.py)
        if backend != "log_scan":
            for r, o in zip(ref, got):
                torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_extreme_preactivations_stay_finite(cls):
    m = cls(2, 3)
    with torch.no_grad():
        m.weight_ih_l0.fill_(60.0)  # pre-activations of ±120: σ(−120) underflows to 0 in float32, so f + i = 0
    x = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]], [[-1.0, -1.0]]], requires_grad=True)
    for backend in FAST_BACKENDS:
        out, h_n = m(x, backend=backend)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(h_n).all() and torch.isfinite(g).all(), backend


def test_linear_scan_kernel_both_directions():
    torch.manual_seed(0)
    for T in (1, 2, 3, 10, 17, 64, 65):
        a, b, h0 = torch.rand(T, 2, 3, dtype=torch.float64), torch.randn(T, 2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        fwd, rev = b.clone(), b.clone()
        linear_scan_(a, fwd, h0)
        linear_scan_(a, rev, h0, reverse=True)
        h, want_f = h0, []
        for t in range(T):
            h = a[t] * h + b[t]
            want_f.append(h)
        h, want_r = h0, [None] * T
        for t in reversed(range(T)):
            h = a[t] * h + b[t]
            want_r[t] = h
        torch.testing.assert_close(fwd, torch.stack(want_f), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rev, torch.stack(want_r), rtol=1e-12, atol=1e-12)


def test_reference_step_is_the_papers_equations():
    torch.manual_seed(0)
    k, p, h = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    z, h_tilde = torch.sigmoid(k), torch.where(p >= 0, p + 0.5, torch.sigmoid(p))
    torch.testing.assert_close(cell_step("mingru", torch.cat([k, p], -1), h), (1 - z) * h + z * h_tilde)
    kf, ki = torch.randn(3, 4), torch.randn(3, 4)
    f, i = torch.sigmoid(kf), torch.sigmoid(ki)
    torch.testing.assert_close(cell_step("minlstm", torch.cat([kf, ki, p], -1), h),
                               f / (f + i) * h + i / (f + i) * h_tilde)


def test_backend_choice_and_layout_details():
    torch.manual_seed(0)
    m = MinGRU(7, 5)
    m(torch.randn(1, 2, 7))
    assert m.last_dispatch.backend == "reference"
    m(torch.randn(4, 2, 7))
    assert m.last_dispatch.backend == ("compiled" if compiled.available() else "scan"), m.last_dispatch
    m(torch.randn(4, 2, 7), backend="scan")
    assert m.last_dispatch.backend == "scan"
    m(torch.randn(4, 2, 7), backend="log_scan")
    assert m.last_dispatch.backend == "log_scan"
    assert [n for n, _ in MinLSTM(7, 5, num_layers=2, bidirectional=True).named_parameters()] == [
        "weight_ih_l0", "bias_ih_l0", "weight_ih_l0_reverse", "bias_ih_l0_reverse",
        "weight_ih_l1", "bias_ih_l1", "weight_ih_l1_reverse", "bias_ih_l1_reverse"]
    assert MinLSTM(7, 5, num_layers=2, bidirectional=True).weight_ih_l1.shape == (15, 10)
    nb = MinGRU(7, 5, bias=False)
    assert len(list(nb.parameters())) == 1
    # non-contiguous input
    x = torch.randn(7, 2, 9)[..., :7]  # (T, B, 7) view with row stride 9
    for backend in FAST_BACKENDS:
        torch.testing.assert_close(nb(x, backend=backend)[0], nb(x.contiguous(), backend=backend)[0])
    # dropout between layers only in training
    d = MinGRU(7, 5, num_layers=2, dropout=0.5).eval()
    x = torch.randn(6, 2, 7)
    torch.testing.assert_close(d(x)[0], d(x)[0])


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments_say_what_was_expected(cls):
    m = cls(7, 5, num_layers=2)
    with pytest.raises(ValueError, match="2D .* or 3D"):
        m(torch.randn(3, 2, 7, 1))
    with pytest.raises(ValueError, match="expected input with 7 features"):
        m(torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 2, 5\)"):
        m(torch.randn(3, 2, 7), torch.zeros(1, 2, 5))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(3, 2, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match="Tensor"):
        m([[1.0] * 7])
    with pytest.raises(ValueError, match="backend must be one of"):
        m(torch.randn(3, 2, 7), backend="fast")
    with pytest.raises(ValueError, match="lengths should be <= the sequence length 3"):
        m(torch.randn(3, 2, 7), lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        cls(7, 0)
    with pytest.raises(ValueError, match="input_size must be >= 1, got -1"):
        cls(-1, 5)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        cls(7, 5, num_layers=0)
    with pytest.raises(TypeError, match="hidden_size should be an int"):
        cls(7, 5.0)
    with pytest.raises(ValueError, match="dropout should be a probability in \\[0, 1\\), got 1.0"):
        cls(7, 5, num_layers=2, dropout=1.0)
    with pytest.raises(ValueError, match="dropout should be a probability"):
        cls(7, 5, num_layers=2, dropout=-0.1)
    with pytest.raises(ValueError, match="backend must be one of"):
        cls(7, 5, backend="parallel")
    with pytest.raises(ValueError, match="bidirectional layer needs the whole sequence"):
        cls(7, 5, bidirectional=True).step(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 3, 5\)"):
        m.step(torch.randn(3, 7), torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="x_t to be 1D"):
        m.step(torch.randn(1, 3, 7))


@pytest.mark.parametrize("cls", CLASSES)
def test_compiled_gradients_of_every_output_form(cls):
    """The C++ backward reads ∂L/∂h through its strides and takes ∂L/∂h_n as a separate input."""
    if not compiled.available():
        pytest.skip(f"the compiled path is not available here: {compiled.build_error()}")
    torch.manual_seed(0)
    m = cls(6, 4)
    x = torch.randn(9, 3, 6, requires_grad=True)
    params = [x, *m.parameters()]
    losses = {
        "out.sum() (an expanded scalar gradient)": lambda out, h_n: out.sum(),
        "h_n only (no gradient reaches out)": lambda out, h_n: (h_n ** 2).sum(),
        "a transposed gradient": lambda out, h_n: (out * torch.arange(out.numel()).view(4, 3, 9).permute(2, 1, 0)).sum(),
        "a slice of out": lambda out, h_n: out[::2, :, 1:].sum() + h_n.sum(),
    }
    for what, loss in losses.items():
        ref = torch.autograd.grad(loss(*m(x, backend="reference")), params)
        got = torch.autograd.grad(loss(*m(x, backend="compiled")), params)
        for r, o in zip(ref, got):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5, msg=what)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("brgemm", [0, 1], ids=["mkl", "brgemm"])
def test_compiled_projection_on_each_product_path(cls, brgemm):
    """The projection X W^T + b runs on MKL or on oneDNN's brgemm (the default on one AVX-512
    thread, where the bias is copied into the rows first): both match the reference path."""
    if not compiled.available():
        pytest.skip(f"the compiled path is not available here: {compiled.build_error()}")
    torch.manual_seed(0)
    m = cls(6, 5)
    x = torch.randn(40, 4, 6, requires_grad=True)
    params = [x, *m.parameters()]
    with _testing.product_switches(brgemm=brgemm):
        got = m(x, backend="compiled")
        got_grads = torch.autograd.grad(got[0].sum() + got[1].sum(), params)
    ref = m(x, backend="reference")
    ref_grads = torch.autograd.grad(ref[0].sum() + ref[1].sum(), params)
    for r, o in zip((*ref, *ref_grads), (*got, *got_grads)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_compiled_output_is_an_ordinary_tensor(cls):
    """The output comes from the C++ buffer pool (T*B rows of 2 MiB and more): it can still be
    resized and used as out= of another size, like torch.nn's outputs."""
    if not compiled.available():
        pytest.skip(f"the compiled path is not available here: {compiled.build_error()}")
    torch.manual_seed(0)
    m = cls(8, 64)
    x = torch.randn(1024, 16, 8)  # h: 1024 * 16 * 64 floats = 4 MiB, a pooled buffer
    with torch.no_grad():
        out, _ = m(x, backend="compiled")
        assert m.last_dispatch.backend == "compiled"
        want = m(x, backend="scan")[0]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    kept = out[:3].clone()
    out.resize_(2048, 16, 64)  # larger: moved to fresh memory, the data kept
    assert out.shape == (2048, 16, 64) and torch.equal(out[:3], kept)
    out.resize_(0)  # emptied, then grown again as the out= of another shape
    torch.add(torch.ones(5), 1, out=out)
    assert out.shape == (5,) and torch.equal(out, torch.full((5,), 2.0))


def test_compiled_backend_refuses_what_it_cannot_run():
    m = MinGRU(3, 2).to(torch.bfloat16)
    with pytest.raises(ValueError, match="backend='compiled' cannot run this call: .*float32 and float64.*bfloat16"):
        m(torch.randn(4, 1, 3, dtype=torch.bfloat16), backend="compiled")
    m(torch.randn(4, 1, 3, dtype=torch.bfloat16))  # auto falls back to the scan, saying why
    assert m.last_dispatch.backend == "scan" and "compiled path refused" in m.last_dispatch.reason


@pytest.mark.parametrize("cls", CLASSES)
def test_deprecated_mode_keyword_still_chooses_the_path(cls):
    """mode= (the former name of backend=) works until the next release: it warns, names the backend it
    maps to, and runs that path; a bad value or a conflicting backend= raises."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 7)
    for mode, backend in (("sequential", "reference"), ("scan", "scan"), ("log_scan", "log_scan"), ("auto", "auto")):
        with pytest.warns(DeprecationWarning, match=f"mode='{mode}' is deprecated .* use backend='{backend}'") as rec:
            m = cls(7, 5, mode=mode)
        assert rec[0].filename == __file__  # the warning points at the caller's line
        assert m.backend == backend and "mode" not in vars(m)
        want = cls(7, 5, backend=backend)
        want.load_state_dict(m.state_dict())
        with pytest.warns(DeprecationWarning, match=f"use backend='{backend}'") as rec:
            got = m(x, mode=mode)
        assert rec[0].filename == __file__
        torch.testing.assert_close(got, want(x), rtol=0, atol=0)
        assert m.last_dispatch.backend == want.last_dispatch.backend
    with pytest.raises(ValueError, match="mode must be one of .* got 'parallel'"):
        cls(7, 5, mode="parallel")
    with pytest.raises(ValueError, match="mode must be one of .* got 'fast'"):
        cls(7, 5)(x, mode="fast")
    with pytest.raises(TypeError, match="backend='scan' and mode='sequential'"):
        cls(7, 5, backend="scan", mode="sequential")
    with pytest.raises(TypeError, match="backend='scan' and mode='sequential'"):
        cls(7, 5)(x, backend="scan", mode="sequential")
