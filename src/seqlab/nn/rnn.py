r"""Elman RNN, LSTM and GRU layers and cells, drop-in for ``torch.nn``.

The Modules here own the parameters (torch.nn's names, shapes, gate order and
initialisation), the argument checks and the layout: batch_first, unbatched
input, ``PackedSequence``, ``lengths=``, the reversed direction, dropout
between layers and the masks of the variants. The time loop itself is a
kernel (``seqlab.kernels``): the reference loop, which is the specification,
the fused path with hand-written backpropagation through time, the compiled
C++ loop, the Triton kernels, or (plain configurations, all layers at once)
torch's own kernels. One dispatch chooses between them; ``module.last_dispatch``
says which ran and why. Beyond the forward call they behave as torch.nn's:
second derivatives (``create_graph=True``) on every path, ``torch.jit.trace``,
``torch.func``, ``torch.export`` and ONNX export (dispatch takes a path those can
follow), autocast (the layer computes in autocast's dtype), and pickling (no
run-time record is pickled).

Beyond torch.nn, all off by default so the defaults stay drop-in:

- ``layer_norm=True``: Ba, Kiros & Hinton (2016), "Layer Normalization": the
  input and recurrent pre-activations W_ih x_t and W_hh h_{t-1} are each
  normalised over all G·H gate units (as in the paper, one statistic for the
  whole gate vector) and, in the LSTM, the cell before its tanh. Adds the
  parameters ``ln_ih_{weight,bias}_l{k}``, ``ln_hh_{weight,bias}_l{k}`` and
  (LSTM) ``ln_c_{weight,bias}_l{k}``, initialised to 1 and 0.
- ``recurrent_dropout=p``: Gal & Ghahramani (2016), "A Theoretically Grounded
  Application of Dropout in Recurrent Neural Networks": one dropout mask per
  sequence (per layer and direction) on h_{t-1} where it enters W_hh,
  training mode only.
- ``weight_drop=p``: Wan et al. (2013), "Regularization of Neural Networks
  using DropConnect", on the recurrent weights as AWD-LSTM does (Merity,
  Keskar & Socher 2018): in training, each forward call draws one dropout
  mask on every ``weight_hh_l{k}`` and runs the whole sequence with
  W_hh ⊙ m / (1 - p): every step sees the same dropped connections, h_{t-1}
  itself is never masked, and every backend's time loop runs unchanged on
  the dropped matrix. Stepping a sequence one call at a time draws a new
  mask per call.
- ``zoneout=p`` or ``(p_h, p_c)``: Krueger et al. (2017), "Zoneout": each
  unit keeps its previous value with probability p at each step in training;
  in eval mode the expectation h_t = p h_{t-1} + (1 - p) h̃_t is used.
- ``forget_bias=b`` (LSTM): the forget-gate slice of ``bias_ih`` starts at b
  and that of ``bias_hh`` at 0 (Jozefowicz, Zaremba & Sutskever 2015 use 1).
- ``record_gates()``: a context manager that records, for every forward run
  inside it, the per-step gate activations and states of every layer and
  direction. Outside it nothing is recorded and nothing is paid.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..kernels import native, reference
from ..kernels.common import GATES, LayerWeights, Masks
from ..kernels.dispatch import BACKENDS, choose, choose_stack
from ._checks import _check_prob, _check_size
from ._driver import Layout, StackedRecurrent, gather_time, reverse_index, suffix, valid_mask
from .dropout import dropout as _dropout

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "record_gates", "GateRecorder"]


# ----------------------------------------------------------------------------
# Introspection


class GateRecorder:
    """What ``record_gates()`` collected: per module, per call, per (layer, direction).

    ``get(module, layer=0, direction=0, call=-1)`` returns a dict name -> tensor
    with one entry per time step, laid out like the module's output:
    (T, B, ·), or (B, T, ·) with batch_first, or (T, ·) for unbatched input.
    LSTM records i, f, g, o, c, h; GRU r, z, n, h; RNN h. The reverse
    direction is aligned with the original time index; padded steps are zero.
    """

    def __init__(self) -> None:
        self._calls: dict[int, list[dict[tuple[int, int], dict[str, Tensor]]]] = {}
        self._modules: dict[int, nn.Module] = {}  # keeps ids stable while recorded

    def _new_call(self, module: nn.Module) -> dict:
        self._modules[id(module)] = module
        call: dict[tuple[int, int], dict[str, Tensor]] = {}
        self._calls.setdefault(id(module), []).append(call)
        return call

    def calls(self, module: nn.Module) -> int:
        return len(self._calls.get(id(module), []))

    def get(self, module: nn.Module, layer: int = 0, direction: int = 0, call: int = -1) -> dict[str, Tensor]:
        calls = self._calls.get(id(module))
        if not calls:
            raise KeyError(f"nothing was recorded for {type(module).__name__}; was it run inside record_gates()?")
        entry = calls[call]
        if (layer, direction) not in entry:
            raise KeyError(f"expected layer in [0, {max(k[0] for k in entry)}] and direction in "
                           f"[0, {max(k[1] for k in entry)}], got layer={layer}, direction={direction}")
        return entry[(layer, direction)]


_RECORDERS: list[GateRecorder] = []


# the attribute prefix of each LayerWeights slot, in its field order (the suffix is _l{k}[_reverse])
_SLOT_ATTRS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "ln_ih_weight", "ln_ih_bias",
               "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")


@contextlib.contextmanager
def record_gates() -> Iterator[GateRecorder]:
    """Record gate activations and states of every seqlab recurrent layer run inside.

    >>> lstm = LSTM(3, 5)
    >>> with record_gates() as rec:
    ...     out, (h, c) = lstm(torch.randn(7, 2, 3))
    >>> rec.get(lstm)["f"].shape  # forget gate, (T, B, H)
    torch.Size([7, 2, 5])
    """
    recorder = GateRecorder()
    _RECORDERS.append(recorder)
    try:
        yield recorder
    finally:
        _RECORDERS.remove(recorder)


def _autocast_dtype(x) -> Optional[torch.dtype]:
    """The dtype autocast asks for on x's device, or None when it is off (or x is not a float it would cast)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or not torch.is_autocast_enabled(x.device.type):
        return None
    amp = torch.get_autocast_dtype(x.device.type)
    return None if amp == x.dtype else amp


# ----------------------------------------------------------------------------
# The layers


class _RNNBase(StackedRecurrent):
    """Shared machinery of RNN, LSTM and GRU: parameters, variants, dispatch; layout and stacking in the driver."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: Union[float, tuple[float, float]] = 0.0,
        forget_bias: Optional[float] = None,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.mode = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU"}[cell]
        self._init_stack(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dropout_one=True)  # torch.nn accepts dropout p = 1
        self.proj_size = _check_size("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size ({self.hidden_size}), got {self.proj_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._init_variants(layer_norm, recurrent_dropout, zoneout, forget_bias, weight_drop)

        factory = {"device": device, "dtype": dtype}
        G, H = GATES[cell], self.hidden_size
        P = self.proj_size or H

        def torch_nn_weights(layer: int, in_size: int) -> dict:
            # torch.nn's order (w_ih, w_hh, b_ih, b_hh, w_hr), so the same seed gives its weights
            shapes = {"weight_ih": (G * H, in_size), "weight_hh": (G * H, P)}
            if self.bias:
                shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
            if self.proj_size:
                shapes["weight_hr"] = (P, H)
            return shapes

        def layer_norms(layer: int, in_size: int) -> dict:
            shapes = {"ln_ih_weight": (G * H,), "ln_ih_bias": (G * H,), "ln_hh_weight": (G * H,),
                      "ln_hh_bias": (G * H,)}
            if cell == "lstm":
                shapes.update(ln_c_weight=(H,), ln_c_bias=(H,))
            return shapes

        self._flat_weights_names: list[str] = self._register_weights(torch_nn_weights, factory)
        self._ln_names: list[str] = self._register_weights(layer_norms, factory) if self.layer_norm else []
        # per (layer, direction): the attribute name of each LayerWeights slot, None where this
        # configuration has no such parameter. Looked up once here: formatting eleven names and
        # probing the absent ones (an AttributeError each) every forward cost more than a small step.
        registered = set(self._flat_weights_names) | set(self._ln_names)
        self._slot_names: dict[tuple[int, int], tuple[Optional[str], ...]] = {}
        for layer in range(self.num_layers):
            for direction in range(2 if self.bidirectional else 1):
                names = (n + suffix(layer, direction) for n in _SLOT_ATTRS)
                self._slot_names[layer, direction] = tuple(n if n in registered else None for n in names)
        self.reset_parameters()

    def _init_variants(self, layer_norm, recurrent_dropout, zoneout, forget_bias, weight_drop) -> None:
        """Check and keep the seqlab-only options (see the module docstring)."""
        self.layer_norm = bool(layer_norm)
        self.recurrent_dropout = _check_prob("recurrent_dropout", recurrent_dropout)
        self.weight_drop = _check_prob("weight_drop", weight_drop)
        if isinstance(zoneout, (tuple, list)):
            if len(zoneout) != 2:
                raise ValueError(f"zoneout should be a probability or a pair (p_h, p_c), got {zoneout!r}")
            p_h, p_c = zoneout
        else:
            p_h, p_c = zoneout, 0.0
        self.zoneout = (_check_prob("zoneout p_h", p_h), _check_prob("zoneout p_c", p_c))
        if self.cell != "lstm" and self.zoneout[1] > 0:
            raise ValueError(f"zoneout for {self.mode} takes one probability (it has no cell state), got {zoneout!r}")
        if forget_bias is not None and not self.bias:
            raise ValueError(f"forget_bias={forget_bias!r} sets the forget-gate bias, which needs bias=True, "
                             f"got bias=False")
        self.forget_bias = forget_bias

    @property
    def _name(self) -> str:
        return self.mode

    # -- parameters ---------------------------------------------------------

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every torch.nn weight; LayerNorm 1 and 0; then forget_bias."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name in self._flat_weights_names:
                nn.init.uniform_(getattr(self, name), -stdv, stdv)
            for name in self._ln_names:
                getattr(self, name).fill_(1.0 if "_weight_" in name else 0.0)
            if self.forget_bias is not None and self.bias:
                H = self.hidden_size
                for name in self._flat_weights_names:
                    # gate order i|f|g|o: the forget gate is the second block
                    if name.startswith("bias_ih"):
                        getattr(self, name)[H:2 * H].fill_(float(self.forget_bias))
                    elif name.startswith("bias_hh"):
                        getattr(self, name)[H:2 * H].zero_()

    def _weights(self, layer: int, direction: int) -> LayerWeights:
        # self._parameters first (a dict lookup; getattr through Module.__getattr__ is a tenth
        # of a one-step call over 11 slots), getattr when a parametrization
        # (torch.nn.utils.parametrize) has replaced the parameter with a property
        params = self._parameters
        return LayerWeights(*(None if n is None else params[n] if n in params else getattr(self, n)
                              for n in self._slot_names[layer, direction]))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.cell == "rnn_relu":
            s += ", nonlinearity='relu'"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("layer_norm", False), ("recurrent_dropout", 0.0), ("zoneout", (0.0, 0.0)),
                             ("weight_drop", 0.0), ("forget_bias", None), ("backend", "auto")):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    # -- forward ------------------------------------------------------------

    def forward(self, input, hx=None, lengths=None):
        # lengths is not keyword-only: torch.onnx.export (TorchScript) passes every parameter it
        # finds in the signature positionally, with its default
        is_lstm = self.cell == "lstm"
        layout = self._time_major(input, lengths)  # x (T, B, I) time-major
        x = layout.x
        h0, c0 = self._initial_state(hx, is_lstm, layout.unbatched, x.shape[1], x)  # (D*L, B, P), (D*L, B, H)

        # autocast: the layer computes in autocast's dtype, as torch's autocast runs its recurrent
        # ops (mkldnn_rnn_layer, cuDNN) in lower precision; the casts are differentiable, so the
        # float32 parameters still get their gradients
        amp = _autocast_dtype(x)
        if amp is not None:
            x, h0 = x.to(amp), h0.to(amp)
            c0 = c0.to(amp) if is_lstm else None
            with torch.autocast(x.device.type, enabled=False):
                output, h_n, c_n = self._run(input, layout._replace(x=x), h0, c0, amp)
        else:
            output, h_n, c_n = self._run(input, layout, h0, c0, None)
        output, (h_n, c_n) = self._caller_layout(output, (h_n, c_n), layout, input)
        return (output, (h_n, c_n)) if is_lstm else (output, h_n)

    def _variants(self, lengths, packed: bool, recording: bool) -> list[str]:
        """The seqlab-only features this call uses: any of them keeps torch's own kernels out."""
        used = []
        if self.layer_norm:
            used.append("layer_norm")
        if self.recurrent_dropout > 0 and self.training:
            used.append("recurrent_dropout")
        if any(p > 0 for p in self.zoneout):
            used.append("zoneout")
        if self.weight_drop > 0 and self.training:
            used.append("weight_drop")
        if lengths is not None and not packed:
            used.append("lengths=")
        if recording:
            used.append("record_gates()")
        return used

    def _run(self, input, layout: Layout, h0: Tensor, c0: Optional[Tensor], amp):
        """Every layer and direction over x (T, B, I) from h0 (D*L, B, P), c0 (D*L, B, H): (output, h_n, c_n).

        output is (T, B, D*P), or a PackedSequence when the native path ran on packed input.
        ``amp``: the autocast dtype every weight is cast to, or None.
        """
        x, lengths, packed = layout.x, layout.lengths, layout.packed
        is_lstm = self.cell == "lstm"
        cast = (lambda t: t) if amp is None else (lambda t: None if t is None else t.to(amp))  # noqa: E731

        # torch's own kernels take a whole plain call where they are the better path
        flat = [cast(getattr(self, n)) for n in self._flat_weights_names]  # getattr: parametrizations
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or h0.requires_grad or (is_lstm and c0.requires_grad) or any(w.requires_grad for w in flat))
        stack = choose_stack(self.backend, self.cell, x, flat, self._variants(lengths, packed, bool(_RECORDERS)),
                             needs_grad)
        if stack is not None:
            self.__dict__["last_dispatch"] = stack
            return self._run_native(input, x, packed, h0, c0, flat)

        T, B = x.shape[0], x.shape[1]
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        D = 2 if self.bidirectional else 1
        # masks shared by every path, drawn here so every path sees the same ones
        out_mask = valid_mask(lengths, T, x)
        out_mask = None if out_mask is None else out_mask.to(x.dtype)  # (T, B, 1)
        rev_idx = reverse_index(lengths, T, B, x.device) if self.bidirectional else None
        # every open record_gates() sees this call, so nested contexts each get a full record
        record_entries = [r._new_call(self) for r in _RECORDERS]

        def run_direction(layer: int, direction: int, seq: Tensor):
            k = layer * D + direction
            w = self._weights(layer, direction)
            if amp is not None:
                w = LayerWeights(*(cast(t) for t in w))
            if self.weight_drop > 0 and self.training:  # DropConnect: one mask on W_hh for the whole call
                w = w._replace(w_hh=_dropout(w.w_hh, self.weight_drop))
            masks = self._masks(T, B, P, H, x, out_mask)
            kernel, dispatch = choose(self.backend, self.cell, seq, w, masks)
            # a plain attribute: written to __dict__ directly, past Module.__setattr__'s checks
            self.__dict__["last_dispatch"] = dispatch
            res = kernel(self.cell, seq, h0[k], c0[k] if is_lstm else None, w, masks, record=bool(record_entries))
            if record_entries:
                laid_out = self._layout_record(res.record, direction, rev_idx, out_mask, layout.unbatched)
                for entry in record_entries:
                    entry[(layer, direction)] = laid_out
            return res.y, (res.h, res.c)

        output, (h_n, c_n) = self._run_stack(x, rev_idx, run_direction)
        return output, h_n, c_n  # (T, B, D*P), (D*L, B, P), (D*L, B, H) or None

    def _run_native(self, input, x: Tensor, packed: bool, h0: Tensor, c0: Optional[Tensor], flat: list):
        """torch's own kernels over the whole stack, on the packed data itself when the input was packed."""
        is_lstm = self.cell == "lstm"
        dropout = self.dropout if self.training else 0.0
        if not packed:
            return native.run_stack(self.cell, x, None, h0, c0, flat, self.bias, self.num_layers, dropout,
                                    self.training, self.bidirectional)
        data = input.data.to(x.dtype)  # the autocast dtype, where it is on
        idx = input.sorted_indices
        if idx is not None:  # the states in the packed (sorted) batch order, as torch.nn
            h0 = h0.index_select(1, idx)
            c0 = c0.index_select(1, idx) if is_lstm else None
        out, h_n, c_n = native.run_stack(self.cell, data, input.batch_sizes, h0, c0, flat, self.bias,
                                         self.num_layers, dropout, self.training, self.bidirectional)
        if input.unsorted_indices is not None:
            h_n = h_n.index_select(1, input.unsorted_indices)
            c_n = c_n.index_select(1, input.unsorted_indices) if is_lstm else None
        return PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices), h_n, c_n

    def _masks(self, T: int, B: int, P: int, H: int, x: Tensor, out_mask: Optional[Tensor]) -> Masks:
        """Draw this layer-direction's masks (see kernels.common for their meaning)."""
        p_h, p_c = self.zoneout
        rec = None
        if self.recurrent_dropout > 0 and self.training:
            q = 1.0 - self.recurrent_dropout
            rec = torch.empty((B, P), dtype=x.dtype, device=x.device).bernoulli_(q).div_(q)  # (B, P)
        keep = self._keep(p_h, (T, B, P), x, out_mask)
        keep_c = self._keep(p_c, (T, B, H), x, out_mask) if self.cell == "lstm" else None
        return Masks(keep=keep, keep_c=keep_c, out=out_mask, rec=rec)

    def _keep(self, p: float, shape, x: Tensor, out_mask: Optional[Tensor]) -> Optional[Tensor]:
        if p > 0:
            if self.training:
                k = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(p)  # (T, B, ·)
            else:
                k = x.new_full((1, 1, 1), p).expand(shape[0], shape[1], 1)  # (T, B, 1), the expectation
        else:
            k = None
        if out_mask is None:
            return k
        # padding keeps the state: k = 1 after the length, the zoneout draw before it
        return 1 - out_mask if k is None else 1 - out_mask * (1 - k)

    def _layout_record(self, rec: dict, direction: int, rev_idx, out_mask, unbatched: bool) -> dict:
        out = {}
        for name, v in rec.items():
            if direction == 1:
                v = gather_time(v, rev_idx)
            if out_mask is not None:
                v = v * out_mask
            if unbatched:
                v = v.squeeze(1)  # (T, 1, ·) -> (T, ·)
            elif self.batch_first:
                v = v.transpose(0, 1)  # (T, B, ·) -> (B, T, ·)
            out[name] = v
        return out


class RNN(_RNNBase):
    r"""Elman recurrent network, a drop-in for :class:`torch.nn.RNN`.

    For each layer and time step t:

    .. math::
        h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    (or ReLU with ``nonlinearity='relu'``). Parameters ``weight_ih_l{k}``
    (H, I or D·H), ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}``
    (H,), ``_reverse`` for the backward direction, all initialised from
    U(-1/sqrt(H), 1/sqrt(H)). The plain loop it is equivalent to is
    ``seqlab.kernels.reference.run_layer``.

    Extra keywords (seqlab only, default off): ``backend``, ``layer_norm``,
    ``recurrent_dropout``, ``weight_drop``, ``zoneout``; see the module docstring. ``forward``
    also takes ``lengths=`` for variable-length batches without packing.

    >>> rnn = RNN(4, 8, num_layers=2)
    >>> out, h_n = rnn(torch.randn(5, 3, 4))
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 8]), torch.Size([2, 3, 8]))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", layer_norm=False,
                 recurrent_dropout=0.0, zoneout=0.0, weight_drop=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout, weight_drop=weight_drop)


class LSTM(_RNNBase):
    r"""Long short-term memory, a drop-in for :class:`torch.nn.LSTM`.

    For each layer and time step t (σ the logistic sigmoid, ⊙ the elementwise product):

    .. math::
        i_t = σ(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi})      \text{input gate}
        f_t = σ(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})      \text{forget gate}
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})  \text{candidate}
        o_t = σ(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho})      \text{output gate}
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                             \text{cell}
        h_t = o_t ⊙ \tanh(c_t)                                      \text{hidden}

    With ``proj_size`` P > 0 (Sak et al. 2014), h_t = W_{hr} (o_t ⊙ tanh(c_t))
    is P-dimensional and W_hh is (4H, P). The gates are stacked i|f|g|o in
    ``weight_ih_l{k}`` (4H, I), ``weight_hh_l{k}`` (4H, P), ``bias_*`` (4H,),
    exactly as torch.nn, so state_dicts load both ways.

    Extra keywords (seqlab only, default off): ``backend``, ``layer_norm``
    (then c is normalised before its tanh: h_t = o_t ⊙ tanh(LN(c_t))),
    ``recurrent_dropout``, ``weight_drop``, ``zoneout=p or (p_h, p_c)``,
    ``forget_bias``; see the module docstring.

    >>> lstm = LSTM(4, 8, batch_first=True, forget_bias=1.0)
    >>> out, (h_n, c_n) = lstm(torch.randn(3, 5, 4), lengths=torch.tensor([5, 2, 4]))
    >>> out.shape, bool(out[1, 2:].eq(0).all())
    (torch.Size([3, 5, 8]), True)
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto", layer_norm=False,
                 recurrent_dropout=0.0, zoneout=0.0, forget_bias=None, weight_drop=0.0):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout, forget_bias=forget_bias,
                         weight_drop=weight_drop)


class GRU(_RNNBase):
    r"""Gated recurrent unit, a drop-in for :class:`torch.nn.GRU`.

    For each layer and time step t:

    .. math::
        r_t = σ(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr})            \text{reset gate}
        z_t = σ(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})            \text{update gate}
        n_t = \tanh(W_{in} x_t + b_{in} + r_t ⊙ (W_{hn} h_{t-1} + b_{hn})) \text{candidate}
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    Where the reset gate sits: Cho et al. (2014) apply it before the matrix
    product, n_t = tanh(W_in x_t + W_hn (r_t ⊙ h_{t-1})). torch.nn (like
    cuDNN) applies it after, to W_hn h_{t-1} + b_hn, so that W_hh h_{t-1}
    for all three gates is one matrix product that does not wait for r_t.
    seqlab follows torch.nn so weights and results carry across.

    Gates are stacked r|z|n in ``weight_ih_l{k}`` (3H, I), ``weight_hh_l{k}``
    (3H, H) and the biases (3H,). Extra keywords as for :class:`LSTM`
    (zoneout takes one probability).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", layer_norm=False,
                 recurrent_dropout=0.0, zoneout=0.0, weight_drop=0.0):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend=backend, layer_norm=layer_norm,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout, weight_drop=weight_drop)


# ----------------------------------------------------------------------------
# The cells: one step of the same equations, for users who write their own loop


def _shape_str(dims: List[int]) -> str:
    """A shape as Python prints a tuple, (5,) or (3, 5); TorchScript cannot call tuple() on a list."""
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join([str(d) for d in dims]) + ")"


class _CellBase(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, bias: bool, device, dtype) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.cell = cell
        self._name = type(self).__name__  # for messages; TorchScript cannot ask type(self)
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        G = GATES[cell]
        self.weight_ih = nn.Parameter(torch.empty((G * self.hidden_size, self.input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G * self.hidden_size, self.hidden_size), **factory))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(G * self.hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G * self.hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.cell == "rnn_relu":
            s += ", nonlinearity='relu'"
        return s

    def _check(self, input: Tensor, states: List[Tensor]) -> None:
        """torch.nn's checks with seqlab's messages; written so that TorchScript compiles them."""
        name = self._name
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.size(-1) != self.input_size:
            raise ValueError(f"{name}: expected input with {self.input_size} features, got {input.size(-1)}")
        if input.dtype != self.weight_ih.dtype:
            raise TypeError(f"{name}: expected input of dtype {self.weight_ih.dtype}, got {input.dtype}")
        want = [self.hidden_size] if input.dim() == 1 else [input.size(0), self.hidden_size]
        for s in states:
            if list(s.shape) != want:
                raise ValueError(f"{name}: expected hidden state of shape {_shape_str(want)}, "
                                 f"got {_shape_str(list(s.shape))}")
            if s.dtype != input.dtype:
                raise TypeError(f"{name}: expected hidden state of dtype {input.dtype}, got {s.dtype}")

    @torch.jit.unused
    def _check_types(self, input, hx, is_lstm: bool) -> None:
        # eager only (TorchScript checks the annotated types itself): what arrived when it is no Tensor
        name = self._name
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
        if hx is None:
            return
        if is_lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"{name}: expected hx to be a tuple (h, c), got {type(hx).__name__}")
        for s in (hx if is_lstm else (hx,)):
            if not isinstance(s, Tensor):
                raise ValueError(f"{name}: expected hidden state of shape "
                                 f"{(self.hidden_size,) if input.dim() == 1 else (input.shape[0], self.hidden_size)}, "
                                 f"got {type(s).__name__}")

    def _step(self, input: Tensor, h: Optional[Tensor], c: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """One step of the cell (``reference.cell_step``, the layers' equations) in the caller's layout."""
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (I,) -> (1, I)
        B, H = x.size(0), self.hidden_size
        h = x.new_zeros((B, H)) if h is None else (h.unsqueeze(0) if unbatched else h)  # (H,) -> (1, H)
        if self.cell == "lstm":
            c = x.new_zeros((B, H)) if c is None else (c.unsqueeze(0) if unbatched else c)
        h, c = reference.cell_step(self.cell, x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if unbatched:
            h = h.squeeze(0)
            c = None if c is None else c.squeeze(0)
        return h, c


class RNNCell(_CellBase):
    r"""One step of :class:`RNN`: h' = tanh(W_ih x + b_ih + W_hh h + b_hh); drop-in for torch.nn.RNNCell."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            self._check_types(input, hx, False)
        self._check(input, [] if hx is None else [hx])
        return self._step(input, hx, None)[0]


class LSTMCell(_CellBase):
    r"""One step of :class:`LSTM` (same i, f, g, o equations); returns (h', c'). Drop-in for torch.nn.LSTMCell."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            self._check_types(input, hx, True)
        if hx is None:
            self._check(input, [])
            h, c = self._step(input, None, None)
        else:
            self._check(input, [hx[0], hx[1]])
            h, c = self._step(input, hx[0], hx[1])
        assert c is not None  # the LSTM step always returns c; narrows Optional for TorchScript
        return h, c


class GRUCell(_CellBase):
    r"""One step of :class:`GRU` (same r, z, n equations, torch's reset placement). Drop-in for torch.nn.GRUCell."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            self._check_types(input, hx, False)
        self._check(input, [] if hx is None else [hx])
        return self._step(input, hx, None)[0]
