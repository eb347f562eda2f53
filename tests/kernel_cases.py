"""The one case set of the kernel tests, and the comparison, for every fast path (fused, compiled, Triton).

Tiny sizes, every variant of the kernel contract: weights with and without bias, LayerNorm
and projection; state-update masks for zoneout (training and eval), padding and both;
recurrent dropout; a non-contiguous x. ``variants`` is the part of that set a backend runs
(the Triton kernels refuse LayerNorm, projection and recurrent dropout), ``kernel`` its
``run_layer``. ``compare`` runs a fast path and the reference loop on the same inputs and
compares outputs, final states, recorded values and every gradient. tests/test_kernels.py runs
the set over every backend; the files of each path add what only that path has.
"""
from __future__ import annotations

import itertools

import torch

from seqlab.kernels import reference
from seqlab.kernels.common import GATES, LayerWeights, Masks, RECORDED

T, B, I, H, P = 5, 3, 7, 4, 3  # I = 7 is prime so no other size can divide it
TOL64 = dict(atol=1e-10, rtol=1e-10)
# float32 is judged against the float64 reference: the fused error may be at most F32_RATIO times
# the float32 reference's own error, plus F32_RTOL of the largest value, plus F32_ATOL. A fixed
# tolerance does not fit: LayerNorm over few units (G*H = 4 for the RNN) has a large rstd, which
# amplifies float32 rounding in both kernels. F32_RTOL is for sums over many rows (weight
# gradients, and dh0 through LayerNorm), which the fast paths add in another order than the
# reference's per-step autograd (errors of several 1e-6 of the largest value, where the
# reference's own error is 5-10x smaller). The float64 run must draw the same cotangents as the
# float32 one (see _run), else the reference's "error" is as large as the gradients.
F32_RATIO, F32_RTOL, F32_ATOL = 4.0, 2e-5, 1e-5
CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
#: how the state-update masks are drawn (see ``_masks``)
KEEPS = ("none", "zoneout", "zoneout_expect", "padding", "padding_zoneout")
#: the fast paths; every one is tested against the reference loop on ``variants``
BACKENDS = ("fused", "compiled", "triton")


def kernel(backend: str):
    """The ``run_layer`` of a fast path (tests/conftest.py skips a test whose path cannot run here)."""
    from seqlab.kernels import compiled, fused, triton_rnn

    return {"fused": fused, "compiled": compiled, "triton": triton_rnn}[backend].run_layer


def triton_skip_reason():
    """Why the Triton kernels cannot run in this process, or None (on the CPU they need the
    interpreter, which tests/conftest.py turns on before anything imports triton)."""
    from seqlab.kernels import triton_rnn

    if not triton_rnn.available():
        return "triton is not installed (pip install triton)"
    if not triton_rnn._INTERPRET:
        return ("the kernel tests run triton on CPU tensors, under its interpreter, but triton was imported "
                "before TRITON_INTERPRET=1 was set (or it is set to 0)")
    return None


def full(backend: str) -> bool:
    """Whether the path runs LayerNorm, projection and recurrent dropout (the Triton kernels do not)."""
    return backend != "triton"


def variants(cell: str, backend: str, biases=(True, False)) -> list[tuple]:
    """(bias, layer_norm, proj, rec, keep) for every variant of the contract that ``backend`` runs."""
    ext = (False, True) if full(backend) else (False,)
    projs = (0, P) if cell == "lstm" and full(backend) else (0,)
    return list(itertools.product(biases, ext, projs, ext, KEEPS))


def _weights(cell, dtype, bias, layer_norm, proj, gen, t_in=I, H=H) -> LayerWeights:
    G = GATES[cell]
    p = proj if proj else H

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()

    ln = layer_norm
    lstm = cell == "lstm"
    return LayerWeights(
        w_ih=r(G * H, t_in), w_hh=r(G * H, p),
        b_ih=r(G * H) if bias else None, b_hh=r(G * H) if bias else None,
        w_hr=r(p, H) if proj else None,
        # LN weights around 1 and biases around 0, but not exactly, so that their gradients matter
        ln_ih_w=(1 + r(G * H, scale=0.2)).detach().requires_grad_() if ln else None,
        ln_ih_b=r(G * H, scale=0.2) if ln else None,
        ln_hh_w=(1 + r(G * H, scale=0.2)).detach().requires_grad_() if ln else None,
        ln_hh_b=r(G * H, scale=0.2) if ln else None,
        ln_c_w=(1 + r(H, scale=0.2)).detach().requires_grad_() if ln and lstm else None,
        ln_c_b=r(H, scale=0.2) if ln and lstm else None,
    )


def _masks(cell, keep, rec, t, b, p, dtype, gen, H=H) -> Masks:
    lstm = cell == "lstm"

    def bern(shape, prob):
        return torch.bernoulli(torch.full(shape, prob, dtype=dtype), generator=gen)

    k = kc = out = None
    if keep in ("zoneout", "padding_zoneout"):  # training-mode zoneout: 0/1 draws per unit
        k, kc = bern((t, b, p), 0.4), (bern((t, b, H), 0.3) if lstm else None)
    elif keep == "zoneout_expect":  # eval-mode zoneout: the expectation, broadcast (T, B, 1)
        k = torch.full((1, 1, 1), 0.3, dtype=dtype).expand(t, b, 1)
        kc = torch.full((1, 1, 1), 0.2, dtype=dtype).expand(t, b, 1) if lstm else None
    if keep.startswith("padding"):
        lengths = torch.tensor(([t, max(t - 2, 1), 1, t, 2] * (b // 5 + 1))[:b])
        out = (torch.arange(t).unsqueeze(1) < lengths.unsqueeze(0)).to(dtype).unsqueeze(-1)  # (T, B, 1)
        k = 1 - out if k is None else 1 - out * (1 - k)
        if lstm:
            kc = 1 - out if kc is None else 1 - out * (1 - kc)
    m = bern((b, p), 0.6) / 0.6 if rec else None
    return Masks(keep=k, keep_c=kc, out=out, rec=m)


def _inputs(cell, dtype, bias, layer_norm, proj, rec, keep, seed=0, t=T, b=B, h=H):
    """(x, h0, c0, w, masks) of one variant; t, b and h change the sizes (h: the hidden size)."""
    gen = torch.Generator().manual_seed(seed)
    H = h
    p = proj if proj else H
    w = _weights(cell, dtype, bias, layer_norm, proj, gen, H=H)
    # x non-contiguous on purpose: a batch-first tensor seen time-major
    x = torch.randn(b, t, I, generator=gen, dtype=dtype).transpose(0, 1).requires_grad_()
    h0 = torch.randn(b, p, generator=gen, dtype=dtype).requires_grad_()
    c0 = torch.randn(b, H, generator=gen, dtype=dtype).requires_grad_() if cell == "lstm" else None
    return x, h0, c0, w, _masks(cell, keep, rec, t, b, p, dtype, gen, H=H)


def _run(kernel, cell, x, h0, c0, w, masks, seed=1):
    """Outputs, recorded values and the gradients of every input that requires grad."""
    res = kernel(cell, x, h0, c0, w, masks, record=True)
    gen = torch.Generator().manual_seed(seed)

    def cotangent(shape):
        # drawn in float64 and rounded: randn draws different numbers in float32 and float64
        # (from 16 values on), and the float32 runs are judged against a float64 run's gradients
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(x.dtype)

    loss = (res.y * cotangent(res.y.shape)).sum()
    loss = loss + (res.h * cotangent(res.h.shape)).sum()
    if res.c is not None:
        loss = loss + (res.c * cotangent(res.c.shape)).sum()
    leaves = {"x": x, "h0": h0, "c0": c0, **w._asdict()}
    leaves = {k: v for k, v in leaves.items() if v is not None and v.requires_grad}
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return res, grads


def _flatten(res, grads) -> dict:
    """name -> tensor for everything compared: y, h, c, record[·], d·."""
    out = {"y": res.y, "h": res.h}
    if res.c is not None:
        out["c"] = res.c
    out.update({f"record[{k}]": v for k, v in res.record.items()})
    out.update({f"d{k}": v for k, v in grads.items()})
    return out


def _to64(args):
    """The same inputs in float64, as fresh leaves where the originals require grad."""
    def cast(t):
        if t is None:
            return None
        return t.detach().double().requires_grad_(t.requires_grad)

    x, h0, c0, w, masks = args
    return (cast(x), cast(h0), cast(c0), LayerWeights(*(cast(t) for t in w)), Masks(*(cast(t) for t in masks)))


def compare(kernel, cell, args, dtype, label):
    """``kernel`` against ``reference.run_layer`` on ``args``: float64 at TOL64; float32 judged
    against the float64 reference (see F32_RATIO)."""
    ref, g_ref = _run(reference.run_layer, cell, *args)
    fast, g_fast = _run(kernel, cell, *args)
    if cell != "lstm":
        assert fast.c is None
    assert set(fast.record) == set(RECORDED[cell])
    assert not any(v.requires_grad for v in fast.record.values())
    got, want = _flatten(fast, g_fast), _flatten(ref, g_ref)
    assert set(got) == set(want), (label, set(got) ^ set(want))
    if dtype == torch.float64:
        for name in want:
            torch.testing.assert_close(got[name], want[name], **TOL64, msg=lambda m: f"{label} {name}: {m}")
        return
    truth = _flatten(*_run(reference.run_layer, cell, *_to64(args)))
    for name in want:
        assert got[name].dtype == torch.float32, (label, name)
        err_fast = (got[name].double() - truth[name]).abs().max().item() if got[name].numel() else 0.0
        err_ref = (want[name].double() - truth[name]).abs().max().item() if want[name].numel() else 0.0
        scale = truth[name].abs().max().item() if truth[name].numel() else 0.0
        assert err_fast <= F32_RATIO * err_ref + F32_RTOL * scale + F32_ATOL, (
            f"{label} {name}: float32 error {err_fast:.2e} against float64, the reference's is {err_ref:.2e} "
            f"(largest value {scale:.2e})")
