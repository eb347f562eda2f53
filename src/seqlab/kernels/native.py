r"""The native path: torch's own fused recurrent kernels, ``torch._VF.lstm / gru / rnn_tanh / rnn_relu``.

These are the kernels ``torch.nn.LSTM`` and friends call: oneDNN's LSTM primitive (and
torch's C++ loops) on the CPU, cuDNN on CUDA. They run the plain cell of ``common.py``
(no LayerNorm, recurrent dropout, zoneout, ``lengths=`` or gate recording) over the whole
stack of layers and both directions in one call, so unlike the other paths this one does
not take a layer at a time: ``run_stack`` takes what ``torch.nn``'s forward passes to
``_VF``, the flat weight list in torch.nn's order (per layer and direction:
w_ih, w_hh[, b_ih, b_hh][, w_hr]).

Why seqlab has it: for plain configurations it is torch.nn itself, so

* where it is faster than seqlab's own loops (plain LSTM inference on a CPU with
  AVX-512 or on more than one thread, where oneDNN's primitive beats the compiled loop; every plain
  cell on CUDA, where cuDNN is tuned and the Triton kernels are not yet checked on a GPU) ``auto``
  takes it;
* it is what ``torch.jit.trace`` (one ``aten::lstm`` node that runs at any length, which
  ``torch.onnx.export`` turns into an ONNX ``LSTM``), ``torch.func`` transforms and
  ``torch.export`` understand, so ``auto`` takes it for plain layers under them.

Second derivatives are whatever torch provides for these ops (correct on the CPU).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["supports", "run_stack"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def supports(cell: str, x, weights: list, variants: list[str]) -> Optional[str]:
    """None when torch's kernel can run this call, else a one-line reason.

    ``variants`` names the seqlab-only features the call uses (the Module lists them).
    """
    if variants:
        return f"torch's kernels run the plain cell only, this call uses {', '.join(variants)}"
    if not isinstance(x, Tensor):
        return f"input is a {type(x).__name__}, not a Tensor"
    if x.dtype not in _FLOATS:
        return f"input dtype {x.dtype} is not a floating dtype"
    for w in weights:
        if w.dtype != x.dtype or w.device != x.device:
            return f"a weight is {w.dtype} on {w.device} but the input is {x.dtype} on {x.device}"
    return None


def run_stack(cell: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
              weights: list[Tensor], bias: bool, num_layers: int, dropout: float, training: bool,
              bidirectional: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """All layers and directions: (output, h_n, c_n or None), as torch.nn.{RNN, LSTM, GRU}.forward.

    x: (T, B, I) time-major, or the (N, I) data of a PackedSequence with its ``batch_sizes``
    (then h0 / c0 are in the packed batch order). h0 (D*L, B, P), c0 (D*L, B, H) (LSTM only).
    output: (T, B, D*P), or packed data (N, D*P).
    """
    fn = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn_tanh": torch._VF.rnn_tanh,
          "rnn_relu": torch._VF.rnn_relu}[cell]
    hx = (h0, c0) if cell == "lstm" else h0
    if batch_sizes is None:
        res = fn(x, hx, weights, bias, num_layers, dropout, training, bidirectional, False)
    else:
        res = fn(x, batch_sizes, hx, weights, bias, num_layers, dropout, training, bidirectional)
    if cell == "lstm":
        return res[0], res[1], res[2]
    return res[0], res[1], None
