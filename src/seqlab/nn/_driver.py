r"""The layer driver shared by the recurrent families: RNN, LSTM, GRU (``rnn.py``) and MinGRU, MinLSTM (``minrnn.py``).

A recurrent layer is ``num_layers`` layers of D = 1 or 2 directions, each run over
the whole sequence by a kernel. Everything around those kernels is the same for
every cell and lives here, in :class:`StackedRecurrent`, the base of both families:

- layout: batch_first, unbatched (T, I) input, ``PackedSequence`` and ``lengths=``
  are brought to time-major (T, B, I) plus lengths (:meth:`~StackedRecurrent._time_major`),
  and the output back to the caller's form (:meth:`~StackedRecurrent._caller_layout`);
- lengths: checked (:func:`check_lengths`), the valid steps as a (T, B, 1) mask
  (:func:`valid_mask`), and the reverse direction run over each sequence within its
  own length (:func:`reverse_index`, :func:`gather_time`), so padding stays at the end;
- directions and stacking (:meth:`~StackedRecurrent._run_stack`): each layer's
  directions over the previous layer's output, concatenated, dropout between layers;
- state shapes: h_0 (and the LSTM's c_0) checked against (D·num_layers, B, ·) and
  h_n stacked in the same order; parameters registered per layer and direction under
  torch.nn's names, ``weight_ih_l{k}{_reverse}``.

A family keeps its parameters' shapes and initialisation, its kernels and their
choice (``kernels/dispatch.py``), and says what runs one layer in one direction.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..kernels.dispatch import Dispatch
from ._checks import _check_prob, _check_size
from .dropout import dropout

# run_direction(layer, direction, seq (T, B, ·)) -> (y (T, B, ·), final states, each (B, ·) or None)
RunDirection = Callable[[int, int, Tensor], "tuple[Tensor, tuple[Optional[Tensor], ...]]"]


def suffix(layer: int, direction: int) -> str:
    """torch.nn's parameter-name suffix: _l{layer}, plus _reverse for the backward direction."""
    return f"_l{layer}{'_reverse' if direction == 1 else ''}"


def check_lengths(lengths, T: int, B: int) -> Tensor:
    """``lengths=`` as an int64 tensor (B,) with every entry in [1, T], or an error saying what arrived."""
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths should be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths should be 1D with one entry per sequence, got {lengths.dim()}D "
                         f"of shape {tuple(lengths.shape)}")
    if lengths.numel() != B:
        raise ValueError(f"lengths should have one entry per sequence in the batch ({B}), got {lengths.numel()}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1:
        raise ValueError(f"lengths should be >= 1, got a length of {lo}")
    if hi > T:
        raise ValueError(f"lengths should be <= the sequence length {T}, got a length of {hi}")
    return lengths.to(torch.int64)


def valid_mask(lengths: Optional[Tensor], T: int, x: Tensor) -> Optional[Tensor]:
    """(T, B, 1) bool, True on each sequence's steps and False on its padding; None without lengths."""
    if lengths is None:
        return None
    steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    return (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)


def reverse_index(lengths: Optional[Tensor], T: int, B: int, device) -> Optional[Tensor]:
    """Time index that reverses each sequence within its own length (an involution).

    idx[t, b] = len_b - 1 - t for t < len_b, and t on padding, so padding stays
    at the end and the reversed direction starts at each sequence's last token.
    """
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)  # (T, 1)
    lens = lengths.to(device).unsqueeze(0)  # (1, B)
    return torch.where(t < lens, lens - 1 - t, t)  # (T, B)


def gather_time(v: Tensor, idx: Optional[Tensor]) -> Tensor:
    """v (T, B, F) reordered in time per batch column by idx (T, B); idx None flips all."""
    if idx is None:
        return v.flip(0)
    return v.gather(0, idx.unsqueeze(-1).expand(-1, -1, v.shape[-1]))  # (T, B, F)


def repack(output: Tensor, input: PackedSequence, lengths: Tensor) -> PackedSequence:
    """A padded (T, B, ·) output in the caller's batch order as a PackedSequence laid out as ``input``."""
    sorted_idx = input.sorted_indices
    out_sorted = output if sorted_idx is None else output.index_select(1, sorted_idx)  # (T, B, ·)
    lens_sorted = lengths if sorted_idx is None else lengths.index_select(0, sorted_idx.cpu())
    data = pack_padded_sequence(out_sorted, lens_sorted, enforce_sorted=True).data  # (N, ·)
    return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)


class Layout(NamedTuple):
    x: Tensor  # (T, B, I), time-major
    lengths: Optional[Tensor]  # (B,) int64 in the caller's batch order, or None: every sequence is T long
    packed: bool  # the input was a PackedSequence
    unbatched: bool  # the input was (T, I): B = 1 here, squeezed again on the way out


class StackedRecurrent(nn.Module):
    """The driver of a stack of recurrent layers, whatever the cell: see the module docstring.

    A subclass calls :meth:`_init_stack` in its ``__init__``, defines ``_name`` (the layer's
    name in messages) and ``proj_size`` (0 where h_t is the hidden state itself), and in its
    ``forward`` goes :meth:`_time_major`, :meth:`_initial_state`, :meth:`_run_stack` with its
    own ``run_direction``, :meth:`_caller_layout`.
    """

    _name: str
    proj_size: int

    def _init_stack(self, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
                    dropout: float, bidirectional: bool, *, dropout_one: bool) -> None:
        """The arguments every recurrent layer takes, checked; ``dropout_one``: accept p = 1 as torch.nn does."""
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = _check_prob("dropout", dropout, one=dropout_one)
        self.bidirectional = bool(bidirectional)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={self.dropout} and num_layers={self.num_layers}",
                stacklevel=4,  # the user's call: LSTM(...) -> _RNNBase.__init__ -> here
            )
        self.last_dispatch: Optional[Dispatch] = None  # which path the last call took, and why

    def _register_weights(self, shapes: Callable[[int, int], dict], factory: dict) -> list[str]:
        """Register ``shapes(layer, in_size)`` -> {name: shape} per layer and direction, in torch.nn's order
        (layer, then direction, then the dict's order), so the same seed gives torch.nn's weights."""
        names = []
        D = 2 if self.bidirectional else 1
        out_size = self.proj_size or self.hidden_size
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else out_size * D
            for direction in range(D):
                for name, shape in shapes(layer, in_size).items():
                    full = name + suffix(layer, direction)
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(full)
        return names

    def __getstate__(self) -> dict:
        # last_dispatch records the last call; it is no state of the layer. Left out so that a
        # pickled module holds only what torch.load(weights_only=True) can be told about (the
        # user's safe_globals list of the model's classes), not seqlab's internal records.
        state = self.__dict__.copy()
        state["last_dispatch"] = None
        return state

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction, the torch.nn parameters (as torch.nn's ``all_weights``)."""
        per = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        w = self._flat_weights
        return [w[i:i + per] for i in range(0, len(w), per)]

    def flatten_parameters(self) -> None:
        """Accepted for drop-in compatibility; seqlab keeps no flattened cuDNN buffer."""

    # -- layout -------------------------------------------------------------

    def _check_features(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{self._name}: expected input with {self.input_size} features "
                             f"(input.size(-1) == input_size), got {x.shape[-1]}")

    def _time_major(self, input, lengths) -> Layout:
        """Every input form as (T, B, I) plus checked lengths, in the parameters' dtype or an error."""
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with a PackedSequence, which carries its own lengths")
            if input.data.dim() != 2:
                raise ValueError(f"{self._name}: expected PackedSequence data to be 2D, "
                                 f"got {input.data.dim()}D instead")
            self._check_features(input.data)
            x, lengths = pad_packed_sequence(input)  # (T, B, I), original batch order
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{self._name}: expected input to be a Tensor or PackedSequence, "
                                f"got {type(input).__name__}")
            if input.dim() not in (2, 3):
                batched = "(B, T, I)" if self.batch_first else "(T, B, I)"
                raise ValueError(f"{self._name}: expected input to be 2D (T, I) or 3D {batched}, "
                                 f"got {input.dim()}D of shape {tuple(input.shape)}")
            self._check_features(input)
            unbatched = input.dim() == 2
            if unbatched:
                if lengths is not None:
                    raise ValueError("lengths= needs batched (3D) input; unbatched input is one whole sequence")
                x = input.unsqueeze(1)  # (T, I) -> (T, 1, I)
            else:
                x = input.transpose(0, 1) if self.batch_first else input  # (B, T, I) -> (T, B, I)
        dtype = getattr(self, self._flat_weights_names[0]).dtype  # weight_ih_l0 (getattr: parametrizations)
        if x.dtype != dtype:
            raise TypeError(f"{self._name}: expected input of dtype {dtype} (the parameters' dtype), got {x.dtype}")
        if lengths is not None and not packed:
            lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        return Layout(x, lengths, packed, unbatched)

    def _initial_state(self, hx, is_lstm: bool, unbatched: bool, B: int, x: Tensor):
        """h_0 (D·L, B, P) and c_0 (D·L, B, H) (None but for the LSTM), zeros for hx None; checked."""
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        DL = (2 if self.bidirectional else 1) * self.num_layers
        if hx is None:
            h0 = x.new_zeros((DL, B, P))
            return h0, (x.new_zeros((DL, B, H)) if is_lstm else None)
        if is_lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{self._name}: expected hx to be a tuple (h_0, c_0), got {type(hx).__name__}")
            states = [("h_0", hx[0], P), ("c_0", hx[1], H)]
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{self._name}: expected hx to be a Tensor, got {type(hx).__name__}")
            states = [("h_0", hx, H)]
        out = []
        for name, s, size in states:
            if not isinstance(s, Tensor):
                raise TypeError(f"{self._name}: expected {name} to be a Tensor, got {type(s).__name__}")
            want = (DL, size) if unbatched else (DL, B, size)
            if tuple(s.shape) != want:
                kind = "unbatched" if unbatched else "batched"
                raise ValueError(f"{self._name}: expected {name} of shape {want} (D·num_layers, "
                                 f"{'' if unbatched else 'B, '}{'H' if size == H else 'proj_size'}) for {kind} "
                                 f"input, got {tuple(s.shape)}")
            if s.dtype != x.dtype:
                raise TypeError(f"{self._name}: expected {name} of dtype {x.dtype} (the input's), got {s.dtype}")
            out.append(s.unsqueeze(1) if unbatched else s)  # (DL, size) -> (DL, 1, size)
        return out[0], (out[1] if is_lstm else None)

    def _caller_layout(self, output, states: tuple, layout: Layout, input) -> tuple:
        """output (T, B, ·) and the final states (D·L, B, ·) in the caller's form (states: None stays None).

        An output that is already a PackedSequence (torch's own kernels ran on the packed data) is kept.
        """
        if isinstance(output, PackedSequence):
            pass
        elif layout.packed:
            output = repack(output, input, layout.lengths)
        elif layout.unbatched:
            output = output.squeeze(1)  # (T, 1, ·) -> (T, ·)
            states = tuple(None if s is None else s.squeeze(1) for s in states)  # (D·L, 1, ·) -> (D·L, ·)
        elif self.batch_first:
            output = output.transpose(0, 1)  # (T, B, ·) -> (B, T, ·)
        return output, states

    # -- directions and stacking ----------------------------------------------

    def _run_stack(self, x: Tensor, rev_idx: Optional[Tensor], run_direction: RunDirection) -> tuple:
        """Every layer and direction over x (T, B, I): output (T, B, D·P) and the final states (D·L, B, ·).

        ``run_direction(layer, direction, seq)`` runs one layer in one direction over seq
        (T, B, ·), which for the reverse direction is already reversed (within each
        sequence's length by ``rev_idx``, see :func:`reverse_index`); it returns y (T, B, P)
        in the same reversed time and a tuple of final states, each (B, ·) or None. The
        states come back stacked per slot in torch.nn's order, layer-major: index
        layer·D + direction.
        """
        D = 2 if self.bidirectional else 1
        L = self.num_layers
        layer_input, finals = x, []
        for layer in range(L):
            outs = []
            for direction in range(D):
                seq = layer_input if direction == 0 else gather_time(layer_input, rev_idx)  # (T, B, ·)
                y, states = run_direction(layer, direction, seq)
                outs.append(y if direction == 0 else gather_time(y, rev_idx))
                finals.append(states)
            layer_output = outs[0] if D == 1 else torch.cat(outs, dim=-1)  # (T, B, D·P)
            if self.dropout > 0 and self.training and layer < L - 1:
                layer_output = dropout(layer_output, self.dropout, training=True)
            layer_input = layer_output
        states = [None if slot[0] is None else torch.stack(slot) for slot in zip(*finals)]  # (D·L, B, ·) each
        return layer_input, states
