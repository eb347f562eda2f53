r"""minGRU and minLSTM: recurrent layers whose gates see only the input.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi (2024), "Were RNNs All We Needed?"
drop h_{t-1} from the gates of the GRU and the LSTM. Every step is then the
linear recurrence

.. math::
    h_t = a_t ⊙ h_{t-1} + b_t

with a_t and b_t known for all t from the input alone, so training computes
all T steps at once with a parallel scan, and generation runs one step at a
time in constant memory (:meth:`MinGRU.step`).

The layers share the RNN family's driver (``_driver.py``: layout, lengths and
packing, directions, stacking, state shapes) and vocabulary: ``backend=``
chooses the path, ``module.last_dispatch`` (a ``Dispatch``) says which ran and
why. The paths are in ``seqlab.kernels.minrnn_scan``: ``'reference'``, the step
loop (the specification); ``'log_scan'``, the paper's log-space scan;
``'scan'``, a chunked scan in linear space with a hand-written backward; and
``'compiled'``, one C++ pass over time each way (the default for T > 1 on the
CPU; auto takes 'scan' where the extension is absent and on GPUs). That
module's docstring says why the default is not the paper's log-space scan.
The former ``mode=`` keyword (``'sequential'`` for the step loop) still works,
with a DeprecationWarning, until the next release.

The initial state enters linearly, not in log space. The paper puts
``log g(h_0)`` in the scan as the first b term, which needs h_0 > 0 and
changes the meaning of h_0 (feeding h_n back in would not continue the
sequence). Here h_t = (Π_{s≤t} a_s) h_0 + (the scan from a zero state), which
is exact for any real h_0 (zero, negative, a previous h_n) on every path, so
``forward(x2, forward(x1)[1])`` equals running ``cat(x1, x2)``.

Parameters follow torch.nn's rules: ``weight_ih_l{k}{_reverse}`` and
``bias_ih_l{k}{_reverse}`` per layer and direction, initialised
U(-1/√H, 1/√H) like :class:`torch.nn.GRU` (the paper's code uses
``nn.Linear``'s U(-1/√I, 1/√I); we follow the GRU so the two start alike in
comparisons). There is no ``weight_hh``: that is the point of the model.
The paper's optional expansion factor and output projection are left out;
compose them with ``nn.Linear`` if wanted.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.dispatch import MIN_BACKENDS, choose_min
from ..kernels.minrnn_scan import GATES, cell_step
from ._driver import StackedRecurrent, reverse_index, suffix, valid_mask
from .dropout import dropout

__all__ = ["MinGRU", "MinLSTM"]

_NAMES = {"mingru": "MinGRU", "minlstm": "MinLSTM"}
# the deprecated mode= keyword, kept until the next release: each value and the backend it now names
_MODE_BACKENDS = {"auto": "auto", "compiled": "compiled", "scan": "scan", "log_scan": "log_scan",
                  "sequential": "reference"}
MODES = tuple(_MODE_BACKENDS)


def _backend_from_mode(name: str, mode, backend: Optional[str], stacklevel: int) -> str:
    """The backend a deprecated ``mode=`` names, with a DeprecationWarning; an error for a bad value or both given."""
    if mode not in _MODE_BACKENDS:
        raise ValueError(f"mode must be one of {MODES} (and is deprecated: use backend= with one of "
                         f"{MIN_BACKENDS}), got {mode!r}")
    new = _MODE_BACKENDS[mode]
    if backend not in (None, "auto", new):
        raise TypeError(f"{name}: expected backend= or its deprecated alias mode=, got backend={backend!r} "
                        f"and mode={mode!r}")
    warnings.warn(f"{name}: mode={mode!r} is deprecated and will be removed in the next release; "
                  f"use backend={new!r}", DeprecationWarning, stacklevel=stacklevel + 1)
    return new


class _MinRNNBase(StackedRecurrent):
    """Parameters and the call of the minRNN kernels, shared by MinGRU and MinLSTM; the rest is the driver's."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", mode: Optional[str] = None) -> None:
        super().__init__()
        self.cell = cell
        self._init_stack(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dropout_one=False)
        self.proj_size = 0  # as torch.nn.GRU's: h_t is the hidden state itself
        if mode is not None:
            backend = _backend_from_mode(self._name, mode, backend, stacklevel=3)
        if backend not in MIN_BACKENDS:
            raise ValueError(f"backend must be one of {MIN_BACKENDS}, got {backend!r}")
        self.backend = backend
        G, H = GATES[cell], self.hidden_size

        def weights(layer: int, in_size: int) -> dict:
            return {"weight_ih": (G * H, in_size), **({"bias_ih": (G * H,)} if self.bias else {})}

        self._flat_weights_names: list[str] = self._register_weights(weights, {"device": device, "dtype": dtype})
        self.reset_parameters()

    @property
    def _name(self) -> str:
        return _NAMES[self.cell]

    def reset_parameters(self) -> None:
        """U(-1/√H, 1/√H) for every parameter, as torch.nn.GRU."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name in self._flat_weights_names:
                nn.init.uniform_(getattr(self, name), -stdv, stdv)

    def _weights(self, layer: int, direction: int) -> tuple[Tensor, Optional[Tensor]]:
        sfx = suffix(layer, direction)
        return getattr(self, "weight_ih" + sfx), getattr(self, "bias_ih" + sfx, None)

    def _project(self, x: Tensor, layer: int, direction: int) -> Tensor:
        """x (…, in) -> the pre-activations of every gate (…, G·H); the gates need only x_t."""
        return F.linear(x, *self._weights(layer, direction))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("backend", "auto")):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    # -- forward ------------------------------------------------------------

    def forward(self, input, hx: Optional[Tensor] = None, lengths=None, *, backend: Optional[str] = None,
                mode: Optional[str] = None):
        """input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence.

        Returns ``(output, h_n)`` as :class:`torch.nn.GRU`: output (T, B, D·H)
        (or batch-first, or (T, D·H)), h_n (D·num_layers, B, H) (or (D·num_layers, H)).
        ``lengths`` (B,) marks variable lengths without packing: padded outputs
        are 0 and h_n is each sequence's state at its last valid step; the
        reverse direction runs each sequence backwards within its own length.
        ``backend`` overrides the module's ``backend`` for this call (``mode``: its deprecated name).
        """
        if mode is not None:
            backend = _backend_from_mode(self._name, mode, backend, stacklevel=4)  # the user's module call
        layout = self._time_major(input, lengths)
        x, lengths = layout.x, layout.lengths  # (T, B, I)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ValueError(f"{self._name}: expected at least one time step, got an input of shape "
                             f"{tuple(input.shape)}")
        h0, _ = self._initial_state(hx, False, layout.unbatched, B, x)  # (D·L, B, H)
        kernel, dispatch = choose_min(self.backend if backend is None else backend, x, *self._weights(0, 0), h0)
        self.__dict__["last_dispatch"] = dispatch  # a plain attribute, past Module.__setattr__'s checks

        valid = valid_mask(lengths, T, x)  # (T, B, 1) bool
        if valid is not None:
            # Whatever sits in the padding must not reach a kernel (a NaN there
            # would survive the masking below as 0 · NaN).
            x = torch.where(valid, x, x.new_zeros(()))
            last_idx = (lengths.to(x.device) - 1).view(1, B, 1).expand(1, B, self.hidden_size)  # (1, B, H)
        rev_idx = reverse_index(lengths, T, B, x.device) if self.bidirectional else None
        D = 2 if self.bidirectional else 1

        def run_direction(layer: int, direction: int, seq: Tensor):
            y, h_T = kernel(self.cell, seq, *self._weights(layer, direction), h0[layer * D + direction])
            if valid is not None:
                # padding comes after each sequence (also reversed), so no valid step
                # depended on it; h_n is picked out and the padded outputs zeroed
                h_T = y.gather(0, last_idx).squeeze(0)  # (B, H)
                y = y * valid
            return y, (y[-1] if h_T is None else h_T,)  # (T, B, H), ((B, H),)

        output, states = self._run_stack(x, rev_idx, run_direction)  # (T, B, D·H), ((D·L, B, H),)
        output, (h_n,) = self._caller_layout(output, states, layout, input)
        return output, h_n

    def step(self, x_t: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """One token in, the next state out, in constant memory: the generation path.

        x_t (B, I) or (I,); h (num_layers, B, H) or (num_layers, H), None for
        zeros; returns the new h of the same shape, whose last layer ``h[-1]``
        is this step's output. Uses the same equations as ``backend='reference'``,
        so stepping through a sequence reproduces ``forward`` (dropout aside).
        """
        if self.bidirectional:
            raise ValueError(f"{self._name}.step: a bidirectional layer needs the whole sequence (its reverse "
                             "direction starts at the end); call forward instead")
        if not isinstance(x_t, Tensor):
            raise TypeError(f"{self._name}.step: expected x_t to be a Tensor, got {type(x_t).__name__}")
        if x_t.dim() not in (1, 2):
            raise ValueError(f"{self._name}.step: expected x_t to be 1D (I,) or 2D (B, I), "
                             f"got {x_t.dim()}D of shape {tuple(x_t.shape)}")
        self._check_features(x_t)
        unbatched = x_t.dim() == 1
        x = x_t.unsqueeze(0) if unbatched else x_t  # (I,) -> (1, I)
        dtype = getattr(self, self._flat_weights_names[0]).dtype
        if x.dtype != dtype:
            raise TypeError(f"{self._name}.step: expected x_t of dtype {dtype} (the parameters' dtype), got {x.dtype}")
        h0, _ = self._initial_state(h, False, unbatched, x.shape[0], x)  # (L, B, H)
        new = []
        for layer in range(self.num_layers):
            x = cell_step(self.cell, self._project(x, layer, 0), h0[layer])  # (B, H)
            new.append(x)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = dropout(x, self.dropout, training=True)
        h_new = torch.stack(new)  # (L, B, H)
        return h_new.squeeze(1) if unbatched else h_new  # (L, 1, H) -> (L, H)


class MinGRU(_MinRNNBase):
    r"""minGRU (Feng et al. 2024), with :class:`torch.nn.GRU`'s signature and return values.

    For each layer and time step t, with gates that do not see h_{t-1}:

    .. math::
        z_t = σ(W_{iz} x_t + b_{iz})                      \text{update gate}
        \tilde h_t = g(W_{ih} x_t + b_{ih})                \text{candidate}
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    with g(x) = x + 0.5 for x ≥ 0 and σ(x) otherwise (the paper's g, which keeps
    h̃ > 0 for its log-space scan; used on every path so all paths compute the
    same function). Equivalent to the loop (``backend='reference'``)::

        for t in range(T):
            k, p = (x[t] @ weight_ih.T + bias_ih).chunk(2, -1)
            z = torch.sigmoid(k)
            h = (1 - z) * h + z * g(p)

    Gates are stacked z|h̃ in ``weight_ih_l{k}`` (2H, I or D·H) and ``bias_ih_l{k}``
    (2H,). ``backend``: 'auto' (the default: 'compiled' when T > 1 on the CPU,
    else 'scan'; 'reference' for one step), 'reference', 'scan', 'log_scan' or
    'compiled'; see the module docstring. h_0 may be any real tensor; h_n is
    returned unchanged in meaning, so it can be fed back.

    >>> rnn = MinGRU(3, 5, batch_first=True)
    >>> out, h_n = rnn(torch.randn(2, 7, 3))
    >>> out.shape, h_n.shape
    (torch.Size([2, 7, 5]), torch.Size([1, 2, 5]))
    >>> h = rnn.step(torch.randn(2, 3), h_n)  # one more token, constant memory
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", mode=None):
        super().__init__("mingru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, mode=mode)


class MinLSTM(_MinRNNBase):
    r"""minLSTM (Feng et al. 2024), with :class:`torch.nn.GRU`'s signature and return values.

    For each layer and time step t:

    .. math::
        f_t = σ(W_{if} x_t + b_{if}),  i_t = σ(W_{ii} x_t + b_{ii}),  \tilde h_t = g(W_{ih} x_t + b_{ih})
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
        h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ \tilde h_t

    There is no cell state and no output gate (the paper removes both), so
    forward returns ``(output, h_n)`` like a GRU, not ``(output, (h_n, c_n))``.
    The scans form f'_t = σ(log f_t − log i_t) with ``logsigmoid``, which stays
    finite where f_t + i_t would underflow. Gates are stacked f|i|h̃ in
    ``weight_ih_l{k}`` (3H, I or D·H) and ``bias_ih_l{k}`` (3H,). Other
    arguments as :class:`MinGRU`.

    >>> rnn = MinLSTM(3, 5, num_layers=2)
    >>> out, h_n = rnn(torch.randn(7, 2, 3))
    >>> out.shape, h_n.shape
    (torch.Size([7, 2, 5]), torch.Size([2, 2, 5]))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", mode=None):
        super().__init__("minlstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, mode=mode)

