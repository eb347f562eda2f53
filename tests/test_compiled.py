"""What only the compiled C++ path has, against the reference loop (the specification) and torch.nn.

The float32 products of the time loop on each product path (BLAS called directly, ATen's mm,
oneDNN's linear, oneDNN's brgemm) on every variant of the contract; rows split over threads;
empty batches, saturating activations, each LayerNorm alone, the buffer pool, argument
checks; torch.nn parity through seqlab.nn with backend='compiled', dispatch, and the fallback
when the extension cannot be built. The path against the reference on the whole case set
(float64 and float32, gradcheck, partial requires_grad, zero steps, strided gradients, second
derivatives) is in test_kernels.py, with the other fast paths.

Tests that need the extension skip, with the build error as the reason, when it cannot be
built (no compiler); the fallback tests run everywhere.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import seqlab.nn as snn
from seqlab.kernels import _testing, compiled, fused, reference
from seqlab.kernels.common import GATES, LayerWeights, Masks
from seqlab.kernels.dispatch import choose

from kernel_cases import B, CELLS, H, I, P, T, TOL64, _flatten, _inputs, _run, compare, variants  # tests/kernel_cases.py



@pytest.fixture(scope="module")
def ext():
    if not compiled.available():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")
    return torch.ops.seqlab_compiled


@pytest.fixture(params=["blas", "aten", "onednn", "brgemm"])
def gemm(request, ext):
    """Run the float32 products of the time loop (and the brgemm projection) on BLAS called
    directly (the default where torch's BLAS is found), on ATen's mm (the fallback elsewhere),
    on oneDNN's linear for every size, or on oneDNN's brgemm micro-kernel for every size (the
    default on one thread with AVX-512; where torch has no brgemm kernel for this CPU, ATen's
    brgemm falls back to its gemm, which must give the same values)."""
    if request.param == "onednn" and not ext.has_onednn():
        pytest.skip("torch was built without oneDNN (mkldnn)")
    if request.param == "blas" and not ext.has_direct_blas():
        pytest.skip("torch's BLAS (sgemm_/dgemm_) was not found in libtorch_cpu")
    with _testing.product_switches(**_testing.PRODUCT_PATHS[request.param]):
        yield request.param


@pytest.fixture
def build_state():
    """A fresh build attempt for tests that fake a failure; the real record comes back after."""
    with _testing.build_attempt():
        yield


def _compare(cell, args, dtype, label):
    compare(compiled.run_layer, cell, args, dtype, label)


# ----------------------------------------------------------------------------
# The kernel against the reference


@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference_every_variant_f32(ext, gemm, cell):
    for bias, layer_norm, proj, rec, keep in variants(cell, "compiled", biases=(True,)):
        label = f"{cell} [{gemm}] ln={layer_norm} proj={proj} rec={rec} keep={keep}"
        _compare(cell, _inputs(cell, torch.float32, bias, layer_norm, proj, rec, keep), torch.float32, label)


@pytest.mark.parametrize("cell", CELLS)
def test_rows_split_over_threads(ext, cell):
    """On several threads a step's batch rows are split into chunks of at least 16384 values
    (recurrent.cpp, for_rows): with G*H values a row, 2 * 16384 / (G*H) rows and a few more make
    2 chunks. Each row is computed alone, so every variant must give what one thread gives. The
    products go to brgemm, one call in one thread either way, so only the weight gradients (MKL,
    which may sum in another order on two threads) can differ at all; left to choose, the paths
    differ between thread counts and LayerNorm over 4 units amplifies that. (Checked: reading the
    rows from 0 instead of from the chunk's start fails it, in the forward for every cell, in
    the backward for the LSTM, whose dc is updated in place; the GRU's and RNN's backward rows
    give the same values when computed twice.)"""
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's intra-op threads are not OpenMP's here: the rows run in one thread")
    old = torch.get_num_threads()
    b = 2 * (16384 // (GATES[cell] * H)) + 4
    projs = (0, P) if cell == "lstm" else (0,)
    try:
        with _testing.product_switches(brgemm=1):
            for layer_norm, proj, keep in itertools.product((False, True), projs, ("none", "zoneout")):
                args = _inputs(cell, torch.float32, True, layer_norm, proj, True, keep, t=3, b=b)
                runs = []
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    runs.append(_flatten(*_run(compiled.run_layer, cell, *args)))
                one, two = runs
                for name in one:
                    torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-5 * float(one[name].detach().abs().max()),
                                               msg=lambda m: f"{cell} ln={layer_norm} proj={proj} keep={keep} {name}: {m}")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_every_product_path(ext, gemm, cell):
    """B = 0: every product path gets zero rows (oneDNN's brgemm refuses zero sizes, so the
    kernel must not call it); outputs and gradients are empty, h0's gradient too."""
    _compare(cell, _inputs(cell, torch.float32, True, False, 0, False, "none", b=0), torch.float32,
             f"{cell} [{gemm}] B=0")


@pytest.mark.parametrize("cell", CELLS)
def test_saturating_activations_f32(ext, cell):
    """Large pre-activations: the float32 exp is clamped, σ and tanh must still reach 0/±1 exactly-ish."""
    x, h0, c0, w, masks = _inputs(cell, torch.float32, True, False, 0, False, "none")
    with torch.no_grad():
        x.mul_(300.0)
    _compare(cell, (x, h0, c0, w, masks), torch.float32, f"{cell} saturated")


@pytest.mark.parametrize("cell", CELLS)
def test_each_layer_norm_alone(ext, cell):
    """LN_ih, LN_hh and LN_c one at a time: the kernel fuses each into the step loop on its own
    (LN_ih's backward writes dL/dxp over da, or into a buffer of its own when, without LN_hh,
    da is also the recurrent gradient), so no combination may lean on another being present."""
    alone = {"ih": ("ln_ih_w", "ln_ih_b"), "hh": ("ln_hh_w", "ln_hh_b"), "c": ("ln_c_w", "ln_c_b")}
    for which, bias, keep in itertools.product(["ih", "hh", "c"] if cell == "lstm" else ["ih", "hh"],
                                               (True, False), ("none", "padding_zoneout")):
        x, h0, c0, w, masks = _inputs(cell, torch.float64, bias, True, 0, True, keep)
        w = w._replace(**{n: None for k, names in alone.items() if k != which for n in names})
        _compare(cell, (x, h0, c0, w, masks), torch.float64, f"{cell} LN_{which} only bias={bias} keep={keep}")


def test_large_buffers_match_reference_and_survive_retain_graph(ext):
    """Sizes where the loop's buffers (>= 2 MiB) come from the kernel's buffer pool: same values
    as the reference on two calls with different inputs (the second call runs in the first
    call's recycled, not zeroed, buffers), and a second backward through the same graph
    (retain_graph) gives the same gradients, so the backward does not write into the forward's
    saved buffers."""
    t, b, i, h = 8, 64, 5, 128  # (T, B, 4H) float64 = 2 MiB
    gen = torch.Generator().manual_seed(11)

    def r(*shape, scale=0.1):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    w = LayerWeights(w_ih=r(4 * h, i), w_hh=r(4 * h, h), b_ih=r(4 * h), b_hh=r(4 * h),
                     ln_ih_w=(1 + r(4 * h)).detach().requires_grad_(), ln_ih_b=r(4 * h),
                     ln_hh_w=(1 + r(4 * h)).detach().requires_grad_(), ln_hh_b=r(4 * h),
                     ln_c_w=(1 + r(h)).detach().requires_grad_(), ln_c_b=r(h))
    for call in range(2):
        x, h0, c0 = r(t, b, i, scale=1.0), r(b, h, scale=1.0), r(b, h, scale=1.0)
        leaves = [x, h0, c0, *(t for t in w if t is not None)]
        g_y = torch.randn(t, b, h, generator=gen, dtype=torch.float64)

        def grads(kernel, retain=False):
            res = kernel("lstm", x, h0, c0, w, Masks())
            loss = (res.y * g_y).sum() + res.h.sum() + res.c.sum()
            first = torch.autograd.grad(loss, leaves, retain_graph=retain)
            return res, first, (torch.autograd.grad(loss, leaves) if retain else None)

        res_ref, g_ref, _ = grads(reference.run_layer)
        res_com, g_com, g_again = grads(compiled.run_layer, retain=True)
        for a, b_ in ((res_com.y, res_ref.y), (res_com.h, res_ref.h), (res_com.c, res_ref.c)):
            torch.testing.assert_close(a, b_, **TOL64)
        for k, (got, again, want) in enumerate(zip(g_com, g_again, g_ref)):
            torch.testing.assert_close(got, want, **TOL64, msg=lambda m: f"call {call} leaf {k}: {m}")
            assert torch.equal(got, again), f"call {call} leaf {k}: the second backward differs"
        del res_com, g_com, g_again  # free the buffers, for the next call to reuse


def test_argument_checks(ext):
    x, h0, c0, w, masks = _inputs("lstm", torch.float32, True, False, 0, False, "none")
    with pytest.raises(ValueError, match=r"expected h0 of shape \(3, 4\), got \(3, 7\)"):
        compiled.run_layer("lstm", x, torch.zeros(B, 7), c0, w, masks)
    with pytest.raises(ValueError, match=r"masks.out"):
        compiled.run_layer("lstm", x, h0, c0, w, Masks(out=torch.ones(T, B, 2)))
    with pytest.raises(ValueError, match="LSTM needs c0"):
        compiled.run_layer("lstm", x, h0, None, w, masks)
    with pytest.raises(ValueError, match=r"computes in \(torch.float32, torch.float64\)"):
        compiled.run_layer("lstm", x.detach().to(torch.bfloat16), h0, c0, w, masks)


# ----------------------------------------------------------------------------
# Through the layers: torch.nn parity, dispatch


def _torch_pair(cls_t, cls_s, dtype, **kw):
    torch.manual_seed(0)
    mod_t = cls_t(I, H, **kw).to(dtype)
    mod_s = cls_s(I, H, **kw, backend="compiled").to(dtype)
    mod_s.load_state_dict(mod_t.state_dict())
    return mod_t, mod_s


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,cls_t,cls_s,kw", [
    ("rnn_tanh", nn.RNN, snn.RNN, {}),
    ("rnn_relu", nn.RNN, snn.RNN, dict(nonlinearity="relu")),
    ("gru", nn.GRU, snn.GRU, {}),
    ("lstm", nn.LSTM, snn.LSTM, {}),
    ("lstm_proj", nn.LSTM, snn.LSTM, dict(proj_size=P)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_matches_torch_nn(ext, name, cls_t, cls_s, kw, dtype):
    """Two layers, bidirectional, batch_first, given initial states, a packed batch: same as torch.nn."""
    tol = TOL64 if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    mod_t, mod_s = _torch_pair(cls_t, cls_s, dtype, num_layers=2, bidirectional=True, batch_first=True, **kw)
    x = torch.randn(B, T, I, dtype=dtype)
    p = P if kw.get("proj_size") else H
    h0 = torch.randn(4, B, p, dtype=dtype)
    hx = (h0, torch.randn(4, B, H, dtype=dtype)) if "lstm" in name else h0
    lengths = torch.tensor([T, 2, 4])
    outs = []
    for mod in (mod_t, mod_s):
        xx = x.clone().requires_grad_()
        hh = tuple(s.clone().requires_grad_() for s in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
        packed = nn.utils.rnn.pack_padded_sequence(xx, lengths, batch_first=True, enforce_sorted=False)
        y, st = mod(packed, hh)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True)
        states = st if isinstance(st, tuple) else (st,)
        weights = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
        loss = (y * weights).sum() + sum(s.pow(2).sum() for s in states)
        leaves = [xx] + list(hh if isinstance(hh, tuple) else (hh,)) + list(mod.parameters())
        outs.append([y, *states, *torch.autograd.grad(loss, leaves)])
    assert mod_s.last_dispatch.backend == "compiled", mod_s.last_dispatch
    for a, b in zip(outs[1], outs[0]):
        torch.testing.assert_close(a, b, **tol)


def test_variants_through_the_layer_match_reference(ext):
    """layer_norm + recurrent_dropout + zoneout + lengths, training mode, same masks (same seed)."""
    kw = dict(num_layers=2, bidirectional=True, layer_norm=True, recurrent_dropout=0.3, zoneout=(0.2, 0.1),
              dtype=torch.float64)
    torch.manual_seed(0)
    ref = snn.LSTM(I, H, **kw, backend="reference")
    com = snn.LSTM(I, H, **kw, backend="compiled")
    com.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([T, 3, 1])
    res = []
    for mod in (ref, com):
        torch.manual_seed(7)
        y, (h, c) = mod(x, lengths=lengths)
        grads = torch.autograd.grad(y.sum() + h.sum() + c.pow(2).sum(), list(mod.parameters()))
        res.append([y, h, c, *grads])
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, **TOL64)


def test_auto_prefers_compiled_on_cpu(ext):
    x, h0, c0, w, masks = _inputs("lstm", torch.float32, True, False, 0, False, "none")
    kernel, why = choose("auto", "lstm", x, w, masks)
    assert kernel is compiled.run_supported and why == ("compiled", "")
    # bfloat16: the compiled path refuses and says why; the fused path takes it
    cast = LayerWeights(*(None if t is None else t.detach().to(torch.bfloat16) for t in w))
    xb = x.detach().to(torch.bfloat16)
    kernel, why = choose("auto", "lstm", xb, cast, Masks())
    assert kernel is fused.run_layer and why.backend == "fused"
    assert "compiled" in why.reason and "bfloat16" in why.reason
    with pytest.raises(ValueError, match="backend='compiled' cannot run this call: .*bfloat16"):
        choose("compiled", "lstm", xb, cast, Masks())
    mod = snn.GRU(I, H)
    mod(torch.randn(T, B, I))
    assert mod.last_dispatch == ("compiled", "")


# ----------------------------------------------------------------------------
# The fallback: no extension (SEQLAB_NO_COMPILE=1, or a failed build)


def test_no_compile_env_falls_back_to_fused(build_state, monkeypatch):
    monkeypatch.setenv("SEQLAB_NO_COMPILE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switching it off on purpose is not worth a warning
        assert not compiled.available()
    assert "SEQLAB_NO_COMPILE" in compiled.build_error()
    x, h0, c0, w, masks = _inputs("gru", torch.float32, True, False, 0, False, "none")
    kernel, why = choose("auto", "gru", x, w, masks)
    assert kernel is fused.run_layer and why.backend == "fused" and "SEQLAB_NO_COMPILE" in why.reason
    with pytest.raises(ValueError, match="SEQLAB_NO_COMPILE"):
        choose("compiled", "gru", x, w, masks)


def test_a_library_of_other_sources_is_never_used(tmp_path):
    """A library is known by the stamp of its sources, compiled into it. One that sits under the name of
    these sources but was built from others (a file copied or renamed by hand, a build that another
    process botched) must be refused with an error, and removed so that the next process rebuilds;
    and a build whose loaded library is not of these sources must not be published."""
    lib = compiled.library_path()
    if not compiled.available() or not lib.is_file():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")
    script = f"""
import shutil, sys, torch
from torch.utils import cpp_extension
from seqlab.kernels import compiled
compiled._stamp = lambda: "0" * 40  # what these sources hash to, here
mine = compiled.library_path()
mine.parent.mkdir(parents=True, exist_ok=True)
if sys.argv[1] == "fast":
    shutil.copy({str(lib)!r}, mine)  # a library built from other sources, under the name of these
    why = "is not the build of these sources"
else:
    # a build that loads a library of other sources (another process's botched build): not published
    def botched(name, build_directory, **kw):
        built = shutil.copy({str(lib)!r}, build_directory)
        torch.ops.load_library(built)
    cpp_extension.load = botched
    why = "did not build these sources"
try:
    compiled.load()
except RuntimeError as e:
    assert why in str(e), e
    assert not mine.exists(), sys.argv[1] + ": left a library of other sources under the name of these"
    print("refused")
else:
    print(sys.argv[1] + ": used a library of other sources")
"""
    for path in ("fast", "slow"):  # one process each: a process can load the library only once
        env = {**os.environ, "SEQLAB_BUILD_DIR": str(tmp_path / path)}
        res = subprocess.run([sys.executable, "-c", script, path], env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0 and res.stdout.strip() == "refused", res.stdout + res.stderr


@pytest.mark.slow
def test_concurrent_cold_builds_all_load_the_compiled_path(tmp_path):
    """SLOW (one cold build of the extension, about a minute): three processes start at once on one
    build directory holding only what a killed build leaves, as DDP ranks or test workers do. One
    builds under the lock; the others wait for it and load its library. Every one must end on the
    compiled path, none on the fallback, and none may wait on the killed build's baton."""
    if not compiled.available():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")
    script = ("import warnings; warnings.simplefilter('error')\n"
              "from seqlab.kernels import compiled\n"
              "print(compiled.available(), compiled.build_error())\n")
    env = {**os.environ, "SEQLAB_BUILD_DIR": str(tmp_path / "cache")}
    env.pop("SEQLAB_NO_COMPILE", None)
    # what a build killed midway leaves: torch's baton file, which a build would wait on forever
    stale = tmp_path / "cache" / f"work-{compiled._stamp()[:16]}"  # load()'s work directory for these sources
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "True", out + err
    published = list((tmp_path / "cache").glob("seqlab_compiled-*.so"))
    assert [p.name for p in published] == [compiled.library_path().name]
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_failed_build_warns_once_and_falls_back(build_state, monkeypatch):
    monkeypatch.delenv("SEQLAB_NO_COMPILE", raising=False)

    def broken_load(verbose=False):
        raise RuntimeError("Error building extension 'seqlab_compiled':\n[1/2] c++ -O3 ...\n"
                           "recurrent.cpp:1:10: fatal error: ATen/ATen.h: No such file or directory")

    monkeypatch.setattr(compiled, "load", broken_load)
    torch.manual_seed(0)
    mod = snn.LSTM(I, H, num_layers=2)
    ref = snn.LSTM(I, H, num_layers=2, backend="fused")
    ref.load_state_dict(mod.state_dict())
    x = torch.randn(T, B, I)
    with pytest.warns(RuntimeWarning, match="could not be built.*fatal error: ATen/ATen.h.*fused Python path"):
        y, _ = mod(x)
    assert mod.last_dispatch.backend == "fused"
    assert "could not be built" in mod.last_dispatch.reason and "ATen.h" in mod.last_dispatch.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        y2, _ = mod(x)
    torch.testing.assert_close(y, ref(x)[0], atol=0, rtol=0)  # the fallback is the fused path itself
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
