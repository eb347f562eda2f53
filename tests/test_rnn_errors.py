"""Bad arguments and inputs: the right exception, and a message that says what was expected and what arrived.

Sizes are chosen so that no size divides another (input 5, hidden 7, batch 3,
11 steps), so a number in a message can only come from one place.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from seqlab.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

I, H, B, T = 5, 7, 3, 11
LAYERS = [RNN, GRU, LSTM]
CELLS = [RNNCell, GRUCell, LSTMCell]


def raises(exc, *patterns):
    """pytest.raises on the first pattern; the others must also appear in the message (regex search)."""
    return _Raises(exc, patterns)


class _Raises:
    def __init__(self, exc, patterns):
        self.exc, self.patterns = exc, patterns

    def __enter__(self):
        self.ctx = pytest.raises(self.exc, match=self.patterns[0])
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc_info):
        suppressed = self.ctx.__exit__(*exc_info)
        msg = str(self.info.value)
        for pat in self.patterns[1:]:
            assert re.search(pat, msg), f"{pat!r} not found in the message {msg!r}"
        return suppressed


def _shape(*dims):
    """A regex for a shape written as (2, 3, 7), [2, 3, 7] or torch.Size([2, 3, 7])."""
    return r",\s*".join(str(d) for d in dims)


# ----------------------------------------------------------------------------
# Constructor arguments


@pytest.mark.parametrize("cls", LAYERS + CELLS)
@pytest.mark.parametrize("arg", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [0, -7])
def test_non_positive_sizes(cls, arg, value):
    kw = {"input_size": I, "hidden_size": H, arg: value}
    with raises(ValueError, arg, re.escape(str(value))):
        cls(**kw)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("value", [0, -2])
def test_non_positive_num_layers(cls, value):
    with raises(ValueError, "num_layers", re.escape(str(value))):
        cls(I, H, num_layers=value)


@pytest.mark.parametrize("cls", LAYERS + CELLS)
@pytest.mark.parametrize("arg,value,shown", [
    ("input_size", 5.0, "float"), ("hidden_size", "7", "str"), ("hidden_size", 7.5, "float"),
])
def test_non_int_sizes(cls, arg, value, shown):
    kw = {"input_size": I, "hidden_size": H, arg: value}
    with raises(TypeError, arg, r"\bint", shown):
        cls(**kw)


@pytest.mark.parametrize("cls", LAYERS)
def test_non_int_num_layers(cls):
    with raises(TypeError, "num_layers", r"\bint", "float"):
        cls(I, H, num_layers=2.0)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("arg", ["dropout", "recurrent_dropout", "weight_drop", "zoneout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_probabilities_outside_unit_interval(cls, arg, value):
    if arg == "dropout" and value == 1.0:
        pytest.skip("dropout between layers accepts 1.0, as torch.nn does (tests/test_drop_in.py)")
    interval = r"\[0, 1\]" if arg == "dropout" else r"\[0, 1\)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with raises(ValueError, arg, re.escape(str(value)), interval):
            cls(I, H, num_layers=2, **{arg: value})


@pytest.mark.parametrize("value", [(0.1, 1.0), (-0.5, 0.1), (0.1, 0.2, 0.3)])
def test_lstm_zoneout_pair(value):
    with raises(ValueError, "zoneout"):
        LSTM(I, H, zoneout=value)


@pytest.mark.parametrize("value", [-1, H, H + 4])
def test_proj_size_range(value):
    with raises(ValueError, "proj_size", re.escape(str(value))):
        LSTM(I, H, proj_size=value)


def test_proj_size_message_names_hidden_size():
    with raises(ValueError, "proj_size", "hidden_size|7"):
        LSTM(I, H, proj_size=9)


@pytest.mark.parametrize("cls", [RNN, RNNCell])
def test_unknown_nonlinearity(cls):
    with raises(ValueError, "sigmoid", "tanh", "relu"):
        cls(I, H, nonlinearity="sigmoid")


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("value", ["cuda", "Fused"])
def test_unknown_backend(cls, value):
    with raises(ValueError, "backend", "reference", "fused", value):
        cls(I, H, backend=value)


# ----------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("rank", [1, 4])
def test_wrong_input_rank(cls, rank):
    mod = cls(I, H)
    x = torch.randn(2, T, B, I) if rank == 4 else torch.randn(I)
    with raises(ValueError, rf"{rank}-?D", r"2-?D", r"3-?D"):
        mod(x)


@pytest.mark.parametrize("cls", CELLS)
def test_cell_wrong_input_rank(cls):
    with raises(ValueError, r"3-?D", r"1-?D", r"2-?D"):
        cls(I, H)(torch.randn(B, 2, I))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("form", ["batched", "batch_first", "unbatched", "packed"])
def test_wrong_feature_size(cls, form):
    mod = cls(I, H, batch_first=form == "batch_first")
    x = {"batched": torch.randn(T, B, 6), "batch_first": torch.randn(B, T, 6), "unbatched": torch.randn(T, 6),
         "packed": pack_padded_sequence(torch.randn(T, B, 6), torch.tensor([11, 9, 2]))}[form]
    with raises(ValueError, r"\b5\b", r"\b6\b"):
        mod(x)


@pytest.mark.parametrize("cls", CELLS)
def test_cell_wrong_feature_size(cls):
    with raises(ValueError, r"\b5\b", r"\b6\b"):
        cls(I, H)(torch.randn(B, 6))


@pytest.mark.parametrize("cls", [RNN, GRU])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bad", ["layers", "batch", "hidden", "rank"])
def test_wrong_h0_shape(cls, bidirectional, bad):
    D = 2 if bidirectional else 1
    mod = cls(I, H, num_layers=2, bidirectional=bidirectional)
    good = (2 * D, B, H)
    shape = {"layers": (2 * D + 1, B, H), "batch": (2 * D, B + 1, H), "hidden": (2 * D, B, H + 1),
             "rank": (2 * D, H)}[bad]
    with raises(ValueError, _shape(*good), _shape(*shape)):
        mod(torch.randn(T, B, I), torch.randn(shape))


def test_wrong_h0_shape_unbatched():
    mod = GRU(I, H, num_layers=2)
    with raises(ValueError, _shape(2, H)):
        mod(torch.randn(T, I), torch.randn(2, 1, H))


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("which", ["h0", "c0"])
def test_wrong_lstm_state_shape(proj_size, which):
    mod = LSTM(I, H, num_layers=2, proj_size=proj_size)
    Pout = proj_size or H
    h0, c0 = torch.randn(2, B, Pout), torch.randn(2, B, H)
    if which == "h0":
        h0, good = torch.randn(2, B, Pout + 1), (2, B, Pout)
    else:
        c0, good = torch.randn(2, B, H + 1), (2, B, H)
    with raises(ValueError, _shape(*good)):
        mod(torch.randn(T, B, I), (h0, c0))


@pytest.mark.parametrize("cls", CELLS)
def test_cell_wrong_state_shape(cls):
    hx = torch.randn(B, H + 2)
    with raises(ValueError, _shape(B, H), _shape(B, H + 2)):
        cls(I, H)(torch.randn(B, I), (hx, hx) if cls is LSTMCell else hx)


@pytest.mark.parametrize("cls", LAYERS + CELLS)
def test_input_dtype_differs_from_parameters(cls):
    mod = cls(I, H)
    x = torch.randn((B, I) if cls in CELLS else (T, B, I), dtype=torch.float64)
    with raises((TypeError, ValueError), r"float64|[Dd]ouble", r"float32|[Ff]loat\b"):
        mod(x)


@pytest.mark.parametrize("cls", LAYERS)
def test_h0_dtype_differs_from_input(cls):
    mod = cls(I, H)
    h0 = torch.zeros(1, B, H, dtype=torch.float64)
    hx = (h0, torch.zeros(1, B, H)) if cls is LSTM else h0
    with raises((TypeError, ValueError), r"float64|[Dd]ouble", r"float32|[Ff]loat\b"):
        mod(torch.randn(T, B, I), hx)


def test_c0_dtype_differs_from_input():
    with raises((TypeError, ValueError), r"float64|[Dd]ouble"):
        LSTM(I, H)(torch.randn(T, B, I), (torch.zeros(1, B, H), torch.zeros(1, B, H, dtype=torch.float64)))


# ----------------------------------------------------------------------------
# lengths=


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_longer_than_sequence(cls, batch_first):
    mod = cls(I, H, batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    with raises(ValueError, "length", r"\b13\b", r"\b11\b"):
        mod(x, lengths=torch.tensor([11, 13, 2]))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("bad", [0, -3])
def test_lengths_below_one(cls, bad):
    with raises(ValueError, "length", re.escape(str(bad))):
        cls(I, H)(torch.randn(T, B, I), lengths=torch.tensor([11, bad, 2]))


@pytest.mark.parametrize("cls", LAYERS)
def test_lengths_not_1d(cls):
    with raises(ValueError, "length", r"1-?D|1-dim|one-dim"):
        cls(I, H)(torch.randn(T, B, I), lengths=torch.tensor([[11, 4, 2]]))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("n", [2, 4])
def test_lengths_wrong_batch_size(cls, n):
    with raises(ValueError, "length", rf"\b{n}\b", rf"\b{B}\b"):
        cls(I, H)(torch.randn(T, B, I), lengths=torch.full((n,), 4))


@pytest.mark.parametrize("cls", LAYERS)
def test_lengths_not_integer(cls):
    with raises((TypeError, ValueError), "length", "int|float"):
        cls(I, H)(torch.randn(T, B, I), lengths=torch.tensor([11.0, 4.0, 2.0]))


@pytest.mark.parametrize("cls", LAYERS)
def test_lengths_with_packed_sequence(cls):
    packed = pack_padded_sequence(torch.randn(T, B, I), torch.tensor([11, 9, 2]))
    with raises(ValueError, "lengths", "PackedSequence|packed"):
        cls(I, H)(packed, lengths=torch.tensor([11, 9, 2]))


def test_valid_lengths_on_either_device_and_dtype_are_accepted():
    """The other side of the checks above: int32/int64 CPU lengths, lengths == T, are fine."""
    mod = GRU(I, H)
    for lengths in (torch.tensor([11, 1, 5]), torch.tensor([11, 1, 5], dtype=torch.int32)):
        out, _ = mod(torch.randn(T, B, I), lengths=lengths)
        assert out.shape == (T, B, H)


def test_forget_bias_needs_bias():
    with pytest.raises(ValueError, match="bias=True"):
        LSTM(3, 5, bias=False, forget_bias=1.0)
