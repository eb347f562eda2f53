"""What only the Triton path has, on the CPU under TRITON_INTERPRET=1 (set by tests/conftest.py).

Both schedules (the persistent kernel, and per-step tiling forced at tiny size) with several
batch and hidden tiles, the half types, the Module path against torch.nn, second derivatives
through the Module, the refusals and dispatch, import without triton, and a compile for sm_90.
The path against the reference on the kernel case set (every cell, bias or not, every way the
state-update masks are drawn, float32 and float64) is in test_kernels.py, with the other fast
paths; the tests here take their inputs and the comparison from the same tests/kernel_cases.py.

The interpreter runs each Triton program as NumPy on the CPU: it checks indexing, masking
and the equations, not GPU concurrency or speed. Everything skips, saying why, when triton
cannot run.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import seqlab.nn as snn
from seqlab.kernels import reference, triton_rnn
from seqlab.kernels.common import LayerWeights, Masks
from seqlab.kernels.dispatch import choose

from kernel_cases import B, CELLS, H, I, TOL64, _flatten, _inputs, _run, compare, triton_skip_reason  # tests/kernel_cases.py

_WHY = triton_skip_reason()
needs_triton = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _compare(cell, keep, **size):
    """The Triton path against the reference on one float64 case of the set, with biases."""
    args = _inputs(cell, torch.float64, True, False, 0, False, keep, **size)
    compare(triton_rnn.run_layer, cell, args, torch.float64, f"triton {cell} keep={keep} {size}")


@needs_triton
@pytest.mark.parametrize("cell,keep", list(itertools.product(CELLS, ("none", "padding_zoneout"))))
def test_per_step_tiling_matches_reference(cell, keep, monkeypatch):
    monkeypatch.setattr(triton_rnn, "PERSISTENT_MAX_HIDDEN", 0)  # every size takes the per-step launches
    _compare(cell, keep)


@needs_triton
@pytest.mark.parametrize("cell,persistent", list(itertools.product(CELLS, (True, False))))
def test_several_tiles_match_reference(cell, persistent, monkeypatch):
    # 17 batch rows = two batch tiles of 16; hidden 20 in tiles of 16 = two hidden tiles, the second
    # partly masked: every step reads h_{t-1} across tiles and writes its own
    monkeypatch.setattr(triton_rnn, "MAX_TILE", 16)
    if not persistent:
        monkeypatch.setattr(triton_rnn, "PERSISTENT_MAX_HIDDEN", 0)
    _compare(cell, "padding_zoneout", t=3, b=17, h=20)


@needs_triton
@pytest.mark.parametrize("cell,half", list(itertools.product(CELLS, (torch.bfloat16, torch.float16))))
def test_half_runs_close_to_float32(cell, half):
    x, h0, c0, w, masks = _inputs(cell, torch.float32, True, False, 0, False, "padding_zoneout")
    lo = [None if t is None else t.detach().to(half).requires_grad_() for t in (x, h0, c0)]
    wb = LayerWeights(*(None if t is None else t.detach().to(half).requires_grad_() for t in w))
    mb = Masks(*(None if t is None else t.to(half) for t in masks))
    got = _flatten(*_run(triton_rnn.run_layer, cell, *lo, wb, mb))
    # the reference in float32 on the same (rounded) numbers; bfloat16 keeps ~3 significant digits
    # (float16 ~4) and the weight gradients sum T*B terms: a loose tolerance (the fused path is as far off)
    f32 = [None if t is None else t.detach().float().requires_grad_() for t in lo]
    wf = LayerWeights(*(None if t is None else t.detach().float().requires_grad_() for t in wb))
    want = _flatten(*_run(reference.run_layer, cell, *f32, wf, Masks(*(None if t is None else t.float() for t in mb))))
    for name in want:
        assert got[name].dtype == half, name
        torch.testing.assert_close(got[name].float(), want[name], atol=0.15, rtol=0.05, msg=lambda m: f"{name}: {m}")


@needs_triton
@pytest.mark.parametrize("cls,kw", [(snn.LSTM, {}), (snn.GRU, {}), (snn.RNN, {"nonlinearity": "relu"})])
def test_module_matches_torch_nn(cls, kw):
    """backend='triton' through the Module (2 layers, both directions, lengths) against torch.nn."""
    torch.manual_seed(0)
    ref = getattr(nn, cls.__name__)(I, H, num_layers=2, bidirectional=True, **kw).double()
    ours = cls(I, H, num_layers=2, bidirectional=True, backend="triton", **kw).double()
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, I, dtype=torch.float64, requires_grad=True)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_ref, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0])
    y, _ = ours(x, lengths=lengths)
    assert ours.last_dispatch == ("triton", "")
    torch.testing.assert_close(y, y_ref, **TOL64)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), [x, *ours.parameters()])
    want = torch.autograd.grad((y_ref * g).sum(), [x, *ref.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


@needs_triton
@pytest.mark.parametrize("cls", [snn.LSTM, snn.GRU, snn.RNN])
def test_second_derivatives_via_reference(cls):
    """create_graph=True through backend='triton': gradgradcheck passes (never an all-zero second derivative)."""
    torch.manual_seed(0)
    ours = cls(2, 3, backend="triton", dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: ours(x)[0], (x,), fast_mode=True)
    assert ours.last_dispatch.backend == "triton"


@needs_triton
def test_refusals_say_why(monkeypatch):
    x, h0, c0, w, masks = _inputs("lstm", torch.float32, True, False, 0, False, "none")
    assert triton_rnn.supports("lstm", x, w, masks) is None
    G4 = 4 * H
    ln = w._replace(ln_ih_w=torch.ones(G4), ln_ih_b=torch.zeros(G4), ln_hh_w=torch.ones(G4),
                    ln_hh_b=torch.zeros(G4), ln_c_w=torch.ones(H), ln_c_b=torch.zeros(H))
    assert "layer_norm" in triton_rnn.supports("lstm", x, ln, masks)
    proj = w._replace(w_hh=torch.randn(G4, 3), w_hr=torch.randn(3, H))
    assert "proj_size" in triton_rnn.supports("lstm", x, proj, masks)
    assert "recurrent dropout" in triton_rnn.supports("lstm", x, w, masks._replace(rec=torch.ones(B, H)))
    assert "dtype" in triton_rnn.supports("lstm", x.double(), w, masks)  # the shared checks of refuse_call
    assert "floating" in triton_rnn.supports("lstm", x.detach().long(), w, masks)
    with pytest.raises(ValueError, match="the triton path cannot run this call: .*layer_norm"):
        triton_rnn.run_layer("lstm", x, h0, c0, ln, masks)
    monkeypatch.setattr(triton_rnn, "_INTERPRET", False)
    assert "CUDA" in triton_rnn.supports("lstm", x, w, masks)
    monkeypatch.setattr(triton_rnn, "triton", None)
    assert triton_rnn.supports("lstm", x, w, masks) == "triton is not installed"


@needs_triton
def test_dispatch(monkeypatch):
    x, h0, c0, w, masks = _inputs("gru", torch.float32, True, False, 0, False, "none")
    kernel, why = choose("triton", "gru", x, w, masks)
    assert kernel is triton_rnn.run_layer and why == ("triton", "")
    # on the CPU, auto never takes the triton path, interpreter or not
    kernel, why = choose("auto", "gru", x, w, masks)
    assert why.backend in ("compiled", "fused") and "triton" not in why.reason
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: .*recurrent dropout"):
        choose("triton", "gru", x, w, masks._replace(rec=torch.ones(B, H)))
    monkeypatch.setattr(triton_rnn, "_INTERPRET", False)
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: .*CUDA"):
        choose("triton", "gru", x, w, masks)


def test_imports_and_refuses_without_triton():
    """No triton at all: the module imports, supports() says so, dispatch falls back."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from seqlab.kernels import triton_rnn\n"
        "from seqlab.kernels.common import LayerWeights, Masks\n"
        "from seqlab.kernels.dispatch import choose\n"
        "x, w = torch.zeros(2, 1, 3), LayerWeights(torch.zeros(4, 3), torch.zeros(4, 4))\n"
        "print(triton_rnn.supports('rnn_tanh', x, w, Masks()))\n"
        "try:\n"
        "    choose('triton', 'rnn_tanh', x, w, Masks())\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "print(choose('auto', 'rnn_tanh', x, w, Masks())[1].backend)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SEQLAB_NO_COMPILE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["triton is not installed",
                                       "backend='triton' cannot run this call: triton is not installed",
                                       "fused"]


_COMPILE_SCRIPT = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from seqlab.kernels import triton_rnn as tr

def compile(fn, const):
    sig = {n: "constexpr" if n in const else ("*fp32" if n.endswith("_ptr") else "i32") for n in fn.arg_names}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": tr._NUM_WARPS})

for cell, G in ((2, 4), (3, 3)):
    base = dict(CELL=cell, G=G, HAS_KEEP=True, HAS_KEEPC=cell == 2, BB=16, BN=tr.MAX_TILE, BK=tr.MAX_TILE,
                ACC=tl.float32, DOT=tl.float32)
    compile(tr._fwd_persistent, dict(base, HAS_BHH=cell == 3))
    compile(tr._bwd_persistent, base)
print("compiled")
"""


@needs_triton
def test_kernels_compile_for_sm90():
    """The interpreter never compiles; this does, for an H100 (sm_90) with the ptxas in triton's wheel,
    no GPU needed: the LSTM and GRU persistent kernels, forward and backward, every flag on. In a
    subprocess, since this module runs triton in interpreter mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, timeout=300,
                         env=env)
    if out.returncode != 0 and "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip(f"no ptxas to compile with: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "compiled"
