r"""The Triton path: the time loop of the cell as GPU kernels, with hand-written backpropagation through time.

It computes the cell of ``common.py`` (``reference.py`` is the specification it is
tested against) for plain RNN (tanh, relu), GRU and LSTM, with h0 / c0, the ``keep``
and ``keep_c`` state-update masks (zoneout, padding) and the ``out`` mask. LayerNorm,
``proj_size`` and recurrent dropout are refused by ``supports`` (dispatch then runs
the fused path).

The work is split the way ``fused.py`` splits it; only the part inside the time loop
is a Triton kernel:

Forward
    * xw = X W_ih^T + b_ih for all steps is one torch matmul before the loop (b_hh is
      folded in too, except for the GRU, where r multiplies the n block of hw);
    * the kernel runs, per step, hw_t = W_hh h_{t-1} (+ b_hh for the GRU), the gates,
      c̃_t, h̃_t and the keep blend, and writes the per-step values the backward needs.

Backward (a reverse loop)
    * phase 1 of a step turns dL/dh_t (and dL/dc_t) into the gate gradients dhw_t,
      pointwise, from the values the forward stored;
    * phase 2 is dh_{t-1} = dhw_t W_hh + k_t ⊙ dh_t (+ z ⊙ dh̃_t for the GRU);
    * dW_hh, dW_ih, the biases and dx are each one torch matmul / reduction over all
      T·B rows after the loop.

Two schedules share the same step code (``_fwd_chunk``, ``_bwd_gates``, ``_bwd_dh``):

    persistent (H <= PERSISTENT_MAX_HIDDEN): one program per tile of BB batch rows
        owns the whole hidden dimension and runs the time loop itself, one launch per
        layer call. A step needs all of h_{t-1}, so the step is walked in BN-wide
        column chunks, h_t goes to the (T+1, B, H) state buffer and a block barrier
        separates the steps; h_{t-1} and W_hh are re-read from L1/L2 every step.
    per-step tiling (larger H): a Python loop over t with one launch per step
        (two per step backward), each program one (BB, BN) tile; the launch boundary
        is the grid-wide barrier that a step needs.

W_hh is re-read every step (from L2) rather than held in registers or shared memory: at
H = 256 the LSTM's W_hh is 1 MiB in float32, more than one SM's registers and shared memory
together. A variant holding W_hh on chip where it fits (small H) is left out until GPU
timings show that it pays. Tiles: 16 batch rows (BB) by up to MAX_TILE hidden units (BN = BK), 8 warps.

Arithmetic is in float32 (float64 for float64 inputs); the recurrent product is
``tl.dot`` on the storage dtype with an exact ("ieee") float32 accumulation, so float32
is not rounded to TF32. tanh(v) is 2σ(2v) - 1, as in ``fused.py``. ``tl.dot`` needs
tiles of at least 16 in each dimension, so batch and hidden tiles are padded to 16
(masked): at batch 1 fifteen of the sixteen rows are idle.

The projection before the loop and the weight gradients after it are the shell in
``common.py``, shared with the fused and compiled paths; this file keeps the kernels, their
launches and the buffers they write.

Import never needs triton or CUDA: without triton ``supports`` says "triton is not
installed". On CPU tensors the kernels run only under the interpreter
(``TRITON_INTERPRET=1``, set before this module is first imported): that is how the
tests run them. Second derivatives go through the reference loop (``reference.differentiable_backward``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .common import (CELL_ID, GATES, GRAD_NAMES, LayerWeights, Masks, backward_start, fast_run_layer,
                     function_grads, grad_needs, input_weight_grads, layer_outputs, project_inputs, record_views,
                     recurrent_weight_grads, refuse_call, run_accepted, split_slots, state_grad)

__all__ = ["run_layer", "supports", "available", "PERSISTENT_MAX_HIDDEN", "MAX_TILE"]

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; supports() refuses every call
    triton = None
    tl = None

#: hidden sizes up to this run the persistent kernel (time loop inside); above it, per-step tiling.
#: A module attribute so the tests can force per-step tiling at tiny sizes.
PERSISTENT_MAX_HIDDEN = 256
#: widest hidden tile (BN = BK); a module attribute so the tests can make several tiles at tiny sizes.
#: 32 with 8 warps is the widest that ptxas (sm_90, triton 3.9) compiles without spilling registers
#: for every kernel; 64 spills in the LSTM and GRU backward.
MAX_TILE = 32
_NUM_WARPS = 8

#: dtypes the kernels take (stored as given; computed in float32, or float64 for float64)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BB = 16  # batch rows per tile: tl.dot's minimum

#: the interpreter is chosen when triton.jit decorates the kernels, i.e. at this module's import
_INTERPRET = False
if triton is not None:
    try:
        from triton import knobs as _knobs

        _INTERPRET = bool(_knobs.runtime.interpret)  # TRITON_INTERPRET, read the way triton.jit reads it
    except ImportError:  # triton before 3.4 has no knobs
        _INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    return triton is not None


# ----------------------------------------------------------------------------
# Public entry points


def supports(cell: str, x: Tensor, w: LayerWeights, masks: Masks) -> Optional[str]:
    """None when the Triton path can run this call, else a one-line reason why not."""
    if triton is None:
        return "triton is not installed"
    why = refuse_call("triton", cell, x, w, masks, _FLOATS)
    if why is not None:
        return why
    if x.device.type != "cuda" and not _INTERPRET:
        return (f"the triton path runs on CUDA tensors, got {x.device.type}; on the CPU only under "
                "TRITON_INTERPRET=1 set before seqlab.kernels.triton_rnn is imported")
    if w.layer_norm or w.ln_hh_w is not None or w.ln_c_w is not None:
        return "layer_norm is not implemented in the triton kernels"
    if w.w_hr is not None:
        return "proj_size is not implemented in the triton kernels"
    if masks.rec is not None:
        return "recurrent dropout (masks.rec) is not implemented in the triton kernels"
    if (x.shape[0] + 1) * x.shape[1] * w.w_ih.shape[0] >= 2 ** 31:
        # the kernels index the (T+1, B, G*H) buffers with 32-bit offsets
        return f"(T+1)*B*G*H = {(x.shape[0] + 1) * x.shape[1] * w.w_ih.shape[0]} elements needs 64-bit offsets"
    return None


def _run_accepted(cell, x, h0, c0, w, masks, record):
    return run_accepted(_TritonRNN.apply, cell, x, h0, c0, w, masks, record)  # P == H: no proj_size here


run_layer = fast_run_layer("triton", supports, _run_accepted)


# ----------------------------------------------------------------------------
# The kernels. Shape contract (all contiguous, row-major; G gate blocks, GH = G*H):
#   xw     (T, B, GH)  W_ih x_t + b_ih (+ b_hh except GRU)      read
#   w_hh   (GH, H)     torch.nn's layout, gate order of GATES    read
#   b_hh   (GH,)       GRU only (HAS_BHH)                        read
#   h      (T+1, B, H) h[0] = h0; step t writes h[t+1] = h_t      read/write
#   c      (T+1, B, H) the same for the LSTM's c                 read/write
#   act    (T, B, GH)  LSTM i|f|g|o, GRU r|z|n (after σ / tanh)  write (forward), read (backward)
#   aux    (T, B, H)   RNN h̃_t, LSTM c̃_t, GRU hw_n (with b_hn)   write (forward), read (backward)
#   keep   (T, B, KW)  KW = H or 1; KN = 1 or 0 (column stride)  read
#   dy     (T, B, H)   dL/dy ⊙ out on entry; step t leaves dL/dh_t (total) in dy[t]
#   dhw    (T, B, GH)  dL/d hw_t (dL/d xw_t too, except the GRU's n block)
#   dan    (T, B, H)   GRU: dL/d xw_n
#   dh, dc (B, H)      running dL/dh, dL/dc from the step after; end as dL/dh0, dL/dc0

if triton is not None:

    @triton.jit
    def _sigmoid(v):
        return 1.0 / (1.0 + tl.exp(-v))

    @triton.jit
    def _tanh(v):
        return 2.0 * _sigmoid(2.0 * v) - 1.0

    @triton.jit
    def _gate_dot(h_ptr, w_ptr, row0, offs_b, mb, offs_n, mn, H, BB: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """(BB, BN) = h (BB, H) @ W[row0 + n, :]^T: one gate block of W_hh h_{t-1}."""
        acc = tl.zeros((BB, BN), dtype=ACC)
        for k0 in range(0, H, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < H
            hk = tl.load(h_ptr + offs_b[:, None] * H + offs_k[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
            # W^T block (BK, BN): element (k, n) is W[row0 + n, k]
            wk = tl.load(w_ptr + (row0 + offs_n[None, :]) * H + offs_k[:, None], mask=mk[:, None] & mn[None, :],
                         other=0.0)
            acc += tl.dot(hk.to(DOT), wk.to(DOT), input_precision="ieee", out_dtype=ACC)
        return acc

    @triton.jit
    def _grad_dot(d_ptr, w_ptr, row0, offs_b, mb, offs_n, mn, H, GH, BB: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """(BB, BN) = dhw[:, row0:row0+H] (BB, H) @ W[row0:row0+H, n]: one gate block of dhw_t W_hh."""
        acc = tl.zeros((BB, BN), dtype=ACC)
        for k0 in range(0, H, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < H
            dk = tl.load(d_ptr + offs_b[:, None] * GH + row0 + offs_k[None, :], mask=mb[:, None] & mk[None, :],
                         other=0.0)
            wk = tl.load(w_ptr + (row0 + offs_k[:, None]) * H + offs_n[None, :], mask=mk[:, None] & mn[None, :],
                         other=0.0)
            acc += tl.dot(dk.to(DOT), wk.to(DOT), input_precision="ieee", out_dtype=ACC)
        return acc

    @triton.jit
    def _pre_activation(xw_t, bg, m2, h_prev_ptr, w_ptr, row0, offs_b, mb, offs_n, mn, H, BB: tl.constexpr,
                        BN: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """(BB, BN) = xw_t + W_hh h_{t-1} for the gate block whose rows start at row0."""
        a = tl.load(xw_t + row0 + bg, mask=m2, other=0.0).to(ACC)
        return a + _gate_dot(h_prev_ptr, w_ptr, row0, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT)

    @triton.jit
    def _keep_tile(keep_ptr, t, B, KW, KN, offs_b, offs_n, m2, ACC: tl.constexpr):
        """(BB, BN) tile of a (T, B, KW) state-update mask at step t (KN = 0: one column, broadcast)."""
        return tl.load(keep_ptr + t * B * KW + offs_b[:, None] * KW + offs_n[None, :] * KN, mask=m2,
                       other=0.0).to(ACC)

    @triton.jit
    def _fwd_chunk(t, b0, n0, xw_ptr, w_ptr, bhh_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr, keepc_ptr,
                   B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr, HAS_BHH: tl.constexpr,
                   HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """Step t for batch rows b0:b0+BB and hidden units n0:n0+BN; reads h[t] (all of it), writes h[t+1]."""
        GH = G * H
        offs_b = b0 + tl.arange(0, BB)
        offs_n = n0 + tl.arange(0, BN)
        mb = offs_b < B
        mn = offs_n < H
        m2 = mb[:, None] & mn[None, :]
        bn = offs_b[:, None] * H + offs_n[None, :]  # (BB, BN) offsets into a (B, H) slab
        bg = offs_b[:, None] * GH + offs_n[None, :]  # into a (B, GH) slab, gate block 0
        h_prev_ptr = h_ptr + t * B * H  # h[t] = h_{t-1}
        xw_t = xw_ptr + t * B * GH
        act_t = act_ptr + t * B * GH
        out_ty = h_ptr.dtype.element_ty
        h_prev = tl.load(h_prev_ptr + bn, mask=m2, other=0.0).to(ACC)

        if CELL <= 1:
            # h̃_t = act(xw_t + W_hh h_{t-1})
            a = _pre_activation(xw_t, bg, m2, h_prev_ptr, w_ptr, 0, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT)
            if CELL == 0:
                h_tilde = _tanh(a)
            else:
                h_tilde = tl.maximum(a, 0.0)
            tl.store(aux_ptr + t * B * H + bn, h_tilde.to(out_ty), mask=m2)
        elif CELL == 2:
            # i, f, g, o = σ, σ, tanh, σ of (xw_t + W_hh h_{t-1}); c̃_t = f ⊙ c_{t-1} + i ⊙ g
            pre = (xw_t, bg, m2, h_prev_ptr, w_ptr)  # the arguments every gate block shares
            i = _sigmoid(_pre_activation(*pre, 0, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT))
            f = _sigmoid(_pre_activation(*pre, H, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT))
            g = _tanh(_pre_activation(*pre, 2 * H, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT))
            o = _sigmoid(_pre_activation(*pre, 3 * H, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT))
            c_prev = tl.load(c_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            c_tilde = f * c_prev + i * g
            h_tilde = o * _tanh(c_tilde)
            tl.store(act_t + bg, i.to(out_ty), mask=m2)
            tl.store(act_t + H + bg, f.to(out_ty), mask=m2)
            tl.store(act_t + 2 * H + bg, g.to(out_ty), mask=m2)
            tl.store(act_t + 3 * H + bg, o.to(out_ty), mask=m2)
            tl.store(aux_ptr + t * B * H + bn, c_tilde.to(out_ty), mask=m2)
            # c_t = kc_t ⊙ c_{t-1} + (1 - kc_t) ⊙ c̃_t
            c = c_tilde
            if HAS_KEEPC:
                kc = _keep_tile(keepc_ptr, t, B, KCW, KCN, offs_b, offs_n, m2, ACC)
                c = kc * c_prev + (1.0 - kc) * c_tilde
            tl.store(c_ptr + (t + 1) * B * H + bn, c.to(out_ty), mask=m2)
        else:
            # r, z = σ(xw + hw); n = tanh(xw_n + r ⊙ hw_n), hw = W_hh h_{t-1} + b_hh
            hw_r = _gate_dot(h_prev_ptr, w_ptr, 0, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT)
            hw_z = _gate_dot(h_prev_ptr, w_ptr, H, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT)
            hw_n = _gate_dot(h_prev_ptr, w_ptr, 2 * H, offs_b, mb, offs_n, mn, H, BB, BN, BK, ACC, DOT)
            if HAS_BHH:
                hw_r += tl.load(bhh_ptr + offs_n, mask=mn, other=0.0).to(ACC)[None, :]
                hw_z += tl.load(bhh_ptr + H + offs_n, mask=mn, other=0.0).to(ACC)[None, :]
                hw_n += tl.load(bhh_ptr + 2 * H + offs_n, mask=mn, other=0.0).to(ACC)[None, :]
            r = _sigmoid(tl.load(xw_t + bg, mask=m2, other=0.0).to(ACC) + hw_r)
            z = _sigmoid(tl.load(xw_t + H + bg, mask=m2, other=0.0).to(ACC) + hw_z)
            n = _tanh(tl.load(xw_t + 2 * H + bg, mask=m2, other=0.0).to(ACC) + r * hw_n)
            # h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
            h_tilde = (1.0 - z) * n + z * h_prev
            tl.store(act_t + bg, r.to(out_ty), mask=m2)
            tl.store(act_t + H + bg, z.to(out_ty), mask=m2)
            tl.store(act_t + 2 * H + bg, n.to(out_ty), mask=m2)
            tl.store(aux_ptr + t * B * H + bn, hw_n.to(out_ty), mask=m2)

        # h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t
        h = h_tilde
        if HAS_KEEP:
            k = _keep_tile(keep_ptr, t, B, KW, KN, offs_b, offs_n, m2, ACC)
            h = k * h_prev + (1.0 - k) * h_tilde
        tl.store(h_ptr + (t + 1) * B * H + bn, h.to(out_ty), mask=m2)

    @triton.jit
    def _bwd_gates(t, b0, n0, dy_ptr, dh_ptr, dc_ptr, dhw_ptr, dan_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr,
                   keepc_ptr, B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr,
                   HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                   ACC: tl.constexpr):
        """Phase 1 of reverse step t, pointwise on one (BB, BN) tile: dL/dh_t -> dhw_t (and dc_{t-1})."""
        GH = G * H
        offs_b = b0 + tl.arange(0, BB)
        offs_n = n0 + tl.arange(0, BN)
        mb = offs_b < B
        mn = offs_n < H
        m2 = mb[:, None] & mn[None, :]
        bn = offs_b[:, None] * H + offs_n[None, :]
        bg = offs_b[:, None] * GH + offs_n[None, :]
        act_t = act_ptr + t * B * GH
        dhw_t = dhw_ptr + t * B * GH
        g_ty = dhw_ptr.dtype.element_ty

        # dL/dh_t = from y_t + from step t+1; left in dy[t] for phase 2
        dh = tl.load(dy_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
        dh += tl.load(dh_ptr + bn, mask=m2, other=0.0).to(ACC)
        tl.store(dy_ptr + t * B * H + bn, dh.to(dy_ptr.dtype.element_ty), mask=m2)
        dht = dh  # dL/dh̃_t = (1 - k_t) ⊙ dL/dh_t
        if HAS_KEEP:
            k = _keep_tile(keep_ptr, t, B, KW, KN, offs_b, offs_n, m2, ACC)
            dht = dh * (1.0 - k)

        if CELL <= 1:
            h_tilde = tl.load(aux_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            if CELL == 0:
                da = dht * (1.0 - h_tilde * h_tilde)
            else:
                da = tl.where(h_tilde > 0.0, dht, 0.0)
            tl.store(dhw_t + bg, da.to(g_ty), mask=m2)
        elif CELL == 2:
            i = tl.load(act_t + bg, mask=m2, other=0.0).to(ACC)
            f = tl.load(act_t + H + bg, mask=m2, other=0.0).to(ACC)
            g = tl.load(act_t + 2 * H + bg, mask=m2, other=0.0).to(ACC)
            o = tl.load(act_t + 3 * H + bg, mask=m2, other=0.0).to(ACC)
            c_tilde = tl.load(aux_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            c_prev = tl.load(c_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            dc = tl.load(dc_ptr + bn, mask=m2, other=0.0).to(ACC)
            tc = _tanh(c_tilde)  # recomputed: cheaper than storing it
            dc_x = dc  # the part of dL/dc_t that reaches c̃_t
            if HAS_KEEPC:
                kc = _keep_tile(keepc_ptr, t, B, KCW, KCN, offs_b, offs_n, m2, ACC)
                dc_x = dc * (1.0 - kc)
            # dc̃ = dh̃ ⊙ o ⊙ (1 - tanh²(c̃)) + dc;  da_i = dc̃ ⊙ g ⊙ i(1-i), da_f = dc̃ ⊙ c_{t-1} ⊙ f(1-f),
            # da_g = dc̃ ⊙ i ⊙ (1-g²), da_o = dh̃ ⊙ tanh(c̃) ⊙ o(1-o)
            dct = dht * o * (1.0 - tc * tc) + dc_x
            tl.store(dhw_t + bg, (dct * g * i * (1.0 - i)).to(g_ty), mask=m2)
            tl.store(dhw_t + H + bg, (dct * c_prev * f * (1.0 - f)).to(g_ty), mask=m2)
            tl.store(dhw_t + 2 * H + bg, (dct * i * (1.0 - g * g)).to(g_ty), mask=m2)
            tl.store(dhw_t + 3 * H + bg, (dht * tc * o * (1.0 - o)).to(g_ty), mask=m2)
            # dc_{t-1} = f ⊙ dc̃_t + kc_t ⊙ dc_t
            dc_prev = f * dct
            if HAS_KEEPC:
                dc_prev += kc * dc
            tl.store(dc_ptr + bn, dc_prev.to(dc_ptr.dtype.element_ty), mask=m2)
        else:
            r = tl.load(act_t + bg, mask=m2, other=0.0).to(ACC)
            z = tl.load(act_t + H + bg, mask=m2, other=0.0).to(ACC)
            n = tl.load(act_t + 2 * H + bg, mask=m2, other=0.0).to(ACC)
            hw_n = tl.load(aux_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            h_prev = tl.load(h_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
            # dn_pre = dh̃ ⊙ (1-z)(1-n²) = da_n;  dhw_n = dn_pre ⊙ r;  da_r = dhw_r = dn_pre ⊙ hw_n ⊙ r(1-r)
            # da_z = dhw_z = dh̃ ⊙ (h_{t-1} - n) ⊙ z(1-z)
            dn = dht * (1.0 - z) * (1.0 - n * n)
            tl.store(dhw_t + bg, (dn * hw_n * r * (1.0 - r)).to(g_ty), mask=m2)
            tl.store(dhw_t + H + bg, (dht * (h_prev - n) * z * (1.0 - z)).to(g_ty), mask=m2)
            tl.store(dhw_t + 2 * H + bg, (dn * r).to(g_ty), mask=m2)
            tl.store(dan_ptr + t * B * H + bn, dn.to(g_ty), mask=m2)

    @triton.jit
    def _bwd_dh(t, b0, n0, dy_ptr, dh_ptr, dhw_ptr, w_ptr, act_ptr, keep_ptr, B, H, KW, KN,
                CELL: tl.constexpr, G: tl.constexpr, HAS_KEEP: tl.constexpr, BB: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """Phase 2 of reverse step t on one (BB, BN) tile: dh_{t-1} = dhw_t W_hh + k_t ⊙ dh_t (+ z ⊙ dh̃_t)."""
        GH = G * H
        offs_b = b0 + tl.arange(0, BB)
        offs_n = n0 + tl.arange(0, BN)
        mb = offs_b < B
        mn = offs_n < H
        m2 = mb[:, None] & mn[None, :]
        bn = offs_b[:, None] * H + offs_n[None, :]
        dhw_t = dhw_ptr + t * B * GH
        acc = _grad_dot(dhw_t, w_ptr, 0, offs_b, mb, offs_n, mn, H, GH, BB, BN, BK, ACC, DOT)
        for gate in tl.static_range(1, G):
            acc += _grad_dot(dhw_t, w_ptr, gate * H, offs_b, mb, offs_n, mn, H, GH, BB, BN, BK, ACC, DOT)
        if HAS_KEEP or CELL == 3:
            dh = tl.load(dy_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)  # dL/dh_t, from phase 1
            dht = dh
            if HAS_KEEP:
                k = _keep_tile(keep_ptr, t, B, KW, KN, offs_b, offs_n, m2, ACC)
                acc += k * dh
                dht = dh * (1.0 - k)
            if CELL == 3:  # the direct path of h̃_t = … + z ⊙ h_{t-1}
                z = tl.load(act_ptr + t * B * GH + H + offs_b[:, None] * GH + offs_n[None, :], mask=m2,
                            other=0.0).to(ACC)
                acc += z * dht
        tl.store(dh_ptr + bn, acc.to(dh_ptr.dtype.element_ty), mask=m2)

    @triton.jit
    def _fwd_persistent(T, xw_ptr, w_ptr, bhh_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr, keepc_ptr,
                        B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr, HAS_BHH: tl.constexpr,
                        HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """One program per batch tile runs all T steps; grid (cdiv(B, BB),)."""
        b0 = tl.program_id(0) * BB
        for t in range(T):
            for n0 in range(0, H, BN):
                _fwd_chunk(t, b0, n0, xw_ptr, w_ptr, bhh_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr, keepc_ptr,
                           B, H, KW, KN, KCW, KCN, CELL, G, HAS_BHH, HAS_KEEP, HAS_KEEPC, BB, BN, BK, ACC, DOT)
            tl.debug_barrier()  # h_t of every chunk is written before step t+1 reads it

    @triton.jit
    def _fwd_step(t, xw_ptr, w_ptr, bhh_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr, keepc_ptr,
                  B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr, HAS_BHH: tl.constexpr,
                  HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """Step t, one (BB, BN) tile per program; grid (cdiv(B, BB), cdiv(H, BN))."""
        _fwd_chunk(t, tl.program_id(0) * BB, tl.program_id(1) * BN, xw_ptr, w_ptr, bhh_ptr, h_ptr, c_ptr, act_ptr,
                   aux_ptr, keep_ptr, keepc_ptr, B, H, KW, KN, KCW, KCN, CELL, G, HAS_BHH, HAS_KEEP, HAS_KEEPC,
                   BB, BN, BK, ACC, DOT)

    @triton.jit
    def _bwd_persistent(T, dy_ptr, dh_ptr, dc_ptr, dhw_ptr, dan_ptr, w_ptr, h_ptr, c_ptr, act_ptr, aux_ptr,
                        keep_ptr, keepc_ptr, B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr,
                        HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        """One program per batch tile runs the reverse loop; grid (cdiv(B, BB),)."""
        b0 = tl.program_id(0) * BB
        for s in range(T):
            t = T - 1 - s
            for n0 in range(0, H, BN):
                _bwd_gates(t, b0, n0, dy_ptr, dh_ptr, dc_ptr, dhw_ptr, dan_ptr, h_ptr, c_ptr, act_ptr, aux_ptr,
                           keep_ptr, keepc_ptr, B, H, KW, KN, KCW, KCN, CELL, G, HAS_KEEP, HAS_KEEPC, BB, BN, ACC)
            tl.debug_barrier()  # all of dhw_t is written (and dh read) before phase 2 overwrites dh
            for n0 in range(0, H, BN):
                _bwd_dh(t, b0, n0, dy_ptr, dh_ptr, dhw_ptr, w_ptr, act_ptr, keep_ptr, B, H, KW, KN,
                        CELL, G, HAS_KEEP, BB, BN, BK, ACC, DOT)
            tl.debug_barrier()

    @triton.jit
    def _bwd_gates_step(t, dy_ptr, dh_ptr, dc_ptr, dhw_ptr, dan_ptr, h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr,
                        keepc_ptr, B, H, KW, KN, KCW, KCN, CELL: tl.constexpr, G: tl.constexpr,
                        HAS_KEEP: tl.constexpr, HAS_KEEPC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                        ACC: tl.constexpr):
        _bwd_gates(t, tl.program_id(0) * BB, tl.program_id(1) * BN, dy_ptr, dh_ptr, dc_ptr, dhw_ptr, dan_ptr,
                   h_ptr, c_ptr, act_ptr, aux_ptr, keep_ptr, keepc_ptr, B, H, KW, KN, KCW, KCN, CELL, G, HAS_KEEP,
                   HAS_KEEPC, BB, BN, ACC)

    @triton.jit
    def _bwd_dh_step(t, dy_ptr, dh_ptr, dhw_ptr, w_ptr, act_ptr, keep_ptr, B, H, KW, KN, CELL: tl.constexpr,
                     G: tl.constexpr, HAS_KEEP: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
        _bwd_dh(t, tl.program_id(0) * BB, tl.program_id(1) * BN, dy_ptr, dh_ptr, dhw_ptr, w_ptr, act_ptr,
                keep_ptr, B, H, KW, KN, CELL, G, HAS_KEEP, BB, BN, BK, ACC, DOT)


# ----------------------------------------------------------------------------
# The autograd.Function: allocation, the torch matmuls around the loop, launches


def _tiles(H: int) -> tuple[int, int]:
    """(BN, BK): hidden tile widths, powers of two, at least 16 (tl.dot's minimum), at most MAX_TILE."""
    b = min(MAX_TILE, max(16, triton.next_power_of_2(H)))
    return b, b


def _mask_args(mask: Optional[Tensor], like: Tensor) -> tuple[Tensor, int, int]:
    """(tensor, KW, KN): a (T, B, H) or (T, B, 1) mask as row width and column stride; a dummy when absent."""
    if mask is None:
        return like, 1, 0  # never read: HAS_KEEP is False
    mask = mask.contiguous()
    width = mask.shape[-1]
    return mask, width, (1 if width > 1 else 0)


class _TritonRNN(torch.autograd.Function):
    """One layer, one direction on the Triton kernels, launched from here.

    Arguments and results: those of ``common.run_accepted``'s ``apply``."""

    @staticmethod
    def forward(ctx, cell, recorded, x, h0, c0, *slots):
        w, m = split_slots(slots)
        T, B, I = x.shape
        G = GATES[cell]
        GH = w.w_ih.shape[0]
        H = GH // G
        gru = cell == "gru"
        new = x.new_empty
        x_rows, xw, _ = project_inputs(cell, x, w)  # no LN_ih here (supports refuses it)

        w_hh = w.w_hh.contiguous()
        b_hh = w.b_hh.contiguous() if (gru and w.b_hh is not None) else w_hh
        h_ext = new((T + 1, B, H))  # h_ext[0] = h0, h_ext[t+1] = h_t
        h_ext[0] = h0
        c_ext = None
        if cell == "lstm":
            c_ext = new((T + 1, B, H))
            c_ext[0] = c0
        act = new((T, B, GH)) if cell in ("lstm", "gru") else xw  # xw as a never-written dummy for the RNN
        aux = new((T, B, H))
        keep, KW, KN = _mask_args(m.keep, xw)
        keep_c, KCW, KCN = _mask_args(m.keep_c, xw)
        args = (xw, w_hh, b_hh, h_ext, c_ext if c_ext is not None else h_ext, act, aux, keep, keep_c,
                B, H, KW, KN, KCW, KCN)
        BN, BK = _tiles(H)
        meta = dict(CELL=CELL_ID[cell], G=G, HAS_BHH=gru and w.b_hh is not None, HAS_KEEP=m.keep is not None,
                    HAS_KEEPC=m.keep_c is not None, BB=_BB, BN=BN, BK=BK, ACC=_acc(x.dtype),
                    DOT=_dot(x.dtype))
        nb = triton.cdiv(B, _BB)
        with _on(x.device):
            if H <= PERSISTENT_MAX_HIDDEN:
                _fwd_persistent[(nb,)](T, *args, **meta, num_warps=_NUM_WARPS)
            else:
                grid = (nb, triton.cdiv(H, BN))
                for t in range(T):
                    _fwd_step[grid](t, *args, **meta, num_warps=_NUM_WARPS)

        h_all, c_all = h_ext[1:], (c_ext[1:] if c_ext is not None else None)  # (T, B, H) views
        y, h_T, c_T = layer_outputs(h_all, c_all, m.out)
        if recorded is not None:
            recorded.update(record_views(cell, H, h_all, act, c_all))
        if any(ctx.needs_input_grad):
            reference.keep_inputs(ctx, cell, x, h0, c0, slots)
            ctx.cell, ctx.dims, ctx.meta = cell, (T, B, I, H), meta
            ctx.save_for_backward(x_rows, h_ext, c_ext, act, aux, w.w_ih, w_hh, m.keep, m.keep_c, m.out)
            ctx.persistent = H <= PERSISTENT_MAX_HIDDEN
        return y, h_T, c_T

    @staticmethod
    @reference.differentiable_backward
    def backward(ctx, dy, dh_T, dc_T):
        x_rows, h_ext, c_ext, act, aux, w_ih, w_hh, keep_m, keep_c_m, out_m = ctx.saved_tensors
        cell = ctx.cell
        T, B, I, H = ctx.dims
        G = GATES[cell]
        GH = G * H
        gru = cell == "gru"
        need = grad_needs(ctx)
        new = x_rows.new_empty

        # dL/dh_t arriving from y_t; the kernel adds what comes back from t+1, in place
        dY, dh = backward_start(dy, dh_T, out_m)
        dc = state_grad(dc_T, dh) if cell == "lstm" else None
        dhw = new((T, B, GH))
        dan = new((T, B, H)) if gru else dhw  # the GRU's dL/d xw_n; a dummy otherwise
        keep, KW, KN = _mask_args(keep_m, dhw)
        keep_c, KCW, KCN = _mask_args(keep_c_m, dhw)
        c_arg = c_ext if c_ext is not None else h_ext
        dc_arg = dc if dc is not None else dh
        meta = ctx.meta
        BB, BN, BK, DOT, HAS_KEEPC = meta["BB"], meta["BN"], meta["BK"], meta["DOT"], meta["HAS_KEEPC"]
        common = dict(CELL=meta["CELL"], G=G, HAS_KEEP=meta["HAS_KEEP"], BB=BB, BN=BN, ACC=meta["ACC"],
                      num_warps=_NUM_WARPS)
        gate_args = (dY, dh, dc_arg, dhw, dan, h_ext, c_arg, act, aux, keep, keep_c, B, H, KW, KN, KCW, KCN)
        nb = triton.cdiv(B, BB)
        with _on(x_rows.device):
            if ctx.persistent:
                _bwd_persistent[(nb,)](T, dY, dh, dc_arg, dhw, dan, w_hh, h_ext, c_arg, act, aux, keep, keep_c,
                                       B, H, KW, KN, KCW, KCN, HAS_KEEPC=HAS_KEEPC, BK=BK, DOT=DOT, **common)
            else:
                grid = (nb, triton.cdiv(H, BN))
                for t in range(T - 1, -1, -1):
                    _bwd_gates_step[grid](t, *gate_args, HAS_KEEPC=HAS_KEEPC, **common)
                    _bwd_dh_step[grid](t, dY, dh, dhw, w_hh, act, keep, B, H, KW, KN, BK=BK, DOT=DOT, **common)

        # dxw equals dhw except the GRU's n block (dhw_n = da_n ⊙ r)
        dxw = torch.cat((dhw[..., :2 * H], dan), dim=-1) if gru else dhw  # (T, B, GH)
        grads = dict.fromkeys(GRAD_NAMES)
        grads["h0"] = dh if need["h0"] else None
        grads["c0"] = dc if need["c0"] else None
        # h_ext[:-1] holds every h_{t-1} in one buffer: dW_hh is one product over all T*B rows
        recurrent_weight_grads(grads, need, dhw, dhw, h_in=h_ext[:-1])
        input_weight_grads(grads, need, dxw, x_rows, w_ih)
        return function_grads(grads)


def _on(device: torch.device):
    """Launch on the tensors' GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _acc(dtype: torch.dtype):
    """The dtype the kernels compute in: float64 for float64 storage, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot(dtype: torch.dtype):
    """The operand dtype of tl.dot: the storage dtype (tensor cores for the half types), except
    bfloat16 under the interpreter, whose tl.dot gives wrong numbers for bfloat16 operands
    (triton 3.9: it multiplies the raw 16-bit patterns); there the operands go up to float32."""
    if dtype == torch.bfloat16 and _INTERPRET:
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[dtype]
