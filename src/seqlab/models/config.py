"""ModelConfig: the one typed description of every seqlab model.

A config says which model (``kind``), which sequence stack (``arch``) and the
sizes and options; :func:`seqlab.models.build_model` turns it into a Module.
Every value is checked when the config is made, so a bad value fails before
any weight is allocated, with "expected X, got Y". Options that the chosen
arch or kind cannot use fail too when set away from their default, rather
than being silently ignored (a ``zoneout=0.1`` that a Transformer drops would
make a comparison lie).

>>> cfg = ModelConfig.from_dict({"kind": "lm", "arch": "lstm", "vocab_size": 100})
>>> ModelConfig.from_dict(cfg.to_dict()) == cfg
True
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["ModelConfig", "KINDS", "ARCHS", "RECURRENT_ARCHS", "ATTENTIONS", "POOLINGS"]

KINDS = ("lm", "classify", "tag", "seq2seq", "generate")
ARCHS = ("rnn", "lstm", "gru", "transformer", "mingru", "minlstm")
RECURRENT_ARCHS = ("rnn", "lstm", "gru", "mingru", "minlstm")
ATTENTIONS = ("none", "bahdanau", "luong-dot", "luong-general")
POOLINGS = ("last", "mean", "attention")

# Which of the recurrent options each arch's seqlab.nn layer accepts (its constructor keywords).
# seqlab.nn.RNN takes layer_norm, recurrent_dropout, weight_drop and zoneout like the LSTM and GRU;
# only the LSTM has a forget gate; MinGRU / MinLSTM take none of them (their gates never see h_{t-1}).
ARCH_OPTIONS = {
    "rnn": ("layer_norm", "recurrent_dropout", "weight_drop", "zoneout"),
    "lstm": ("layer_norm", "recurrent_dropout", "weight_drop", "zoneout", "forget_bias"),
    "gru": ("layer_norm", "recurrent_dropout", "weight_drop", "zoneout"),
    "mingru": (),
    "minlstm": (),
    "transformer": ("nhead", "dim_feedforward", "activation", "bias", "attention_dropout"),
}
_ARCH_SPECIFIC = ("layer_norm", "recurrent_dropout", "weight_drop", "zoneout", "forget_bias", "nhead",
                  "dim_feedforward", "activation", "bias", "attention_dropout")
ACTIVATIONS = ("relu", "gelu")


@dataclass
class ModelConfig:
    """What to build. Batch-first everywhere; PAD = 0 is the padding token of every vocabulary."""

    kind: str  # one of KINDS: lm, classify, tag, seq2seq, generate
    arch: str  # one of ARCHS: rnn, lstm, gru, transformer, mingru, minlstm
    vocab_size: int  # input vocabulary (the source vocabulary for seq2seq), specials included
    tgt_vocab_size: int = 0  # seq2seq target vocabulary; 0 = the same size as vocab_size
    num_classes: int = 0  # classes (classify), tags (tag) or conditions (generate)
    embed_dim: int = 128
    hidden_size: int = 256  # per direction for recurrent archs; d_model for the transformer
    num_layers: int = 2  # per stack (seq2seq: the encoder and the decoder each)
    dropout: float = 0.1  # on embeddings, between layers and before every output layer
    bidirectional: Optional[bool] = None  # None = the kind's default (True for tag, classify, seq2seq encoder)
    layer_norm: bool = False  # rnn/lstm/gru: Ba et al. (2016) inside the cell
    recurrent_dropout: float = 0.0  # rnn/lstm/gru: Gal & Ghahramani (2016), one mask per sequence
    weight_drop: float = 0.0  # rnn/lstm/gru: DropConnect on W_hh, one mask per forward call (AWD-LSTM)
    zoneout: float = 0.0  # rnn/lstm/gru: Krueger et al. (2017)
    forget_bias: Optional[float] = None  # lstm: initial forget-gate bias (1.0 is Jozefowicz et al.'s)
    nhead: int = 4  # transformer: attention heads; must divide hidden_size
    dim_feedforward: int = 0  # transformer: 0 = 4 * hidden_size, the paper's ratio
    activation: str = "relu"  # transformer: the feed-forward block's nonlinearity, relu or gelu
    bias: bool = True  # transformer: additive biases in its projections and norms (GPT-2 style models drop them)
    # transformer: dropout on the attention weights; None = ``dropout``, torch.nn's one rate for both.
    # 0 keeps the residual and feed-forward dropout but lets attention run on the fused kernel
    attention_dropout: Optional[float] = None
    max_len: int = 512  # transformer: positions trained on; the lm's context window
    tie_weights: bool = True  # lm/generate: share the input embedding with the output layer
    pooling: str = "last"  # classify: last (final states), mean or attention
    attention: str = "none"  # recurrent seq2seq: none, bahdanau, luong-dot, luong-general

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("arch", self.arch, ARCHS)
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("tgt_vocab_size", self.tgt_vocab_size, 0)
        _check_int("num_classes", self.num_classes, 0)
        _check_int("embed_dim", self.embed_dim, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_layers", self.num_layers, 1)
        _check_prob("dropout", self.dropout)
        if self.bidirectional is not None and not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional: expected true, false or null, got {self.bidirectional!r}")
        _check_bool("layer_norm", self.layer_norm)
        _check_prob("recurrent_dropout", self.recurrent_dropout)
        _check_prob("weight_drop", self.weight_drop)
        _check_prob("zoneout", self.zoneout)
        if self.forget_bias is not None:
            if isinstance(self.forget_bias, bool) or not isinstance(self.forget_bias, numbers.Real):
                raise ValueError(f"forget_bias: expected a number or null, got {self.forget_bias!r}")
            self.forget_bias = float(self.forget_bias)
        _check_int("nhead", self.nhead, 1)
        _check_int("dim_feedforward", self.dim_feedforward, 0)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_bool("bias", self.bias)
        if self.attention_dropout is not None:
            _check_prob("attention_dropout", self.attention_dropout)
        _check_int("max_len", self.max_len, 2)
        _check_bool("tie_weights", self.tie_weights)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("attention", self.attention, ATTENTIONS)

        # -- options that the arch does not have --
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        allowed = ARCH_OPTIONS[self.arch]
        for name in _ARCH_SPECIFIC:
            if name not in allowed and getattr(self, name) != defaults[name]:
                users = [a for a, opts in ARCH_OPTIONS.items() if name in opts]
                raise ValueError(f"{name}={getattr(self, name)!r} is not an option of arch {self.arch!r}: expected "
                                 f"the default {defaults[name]!r}, or an arch in {users}")
        if self.arch == "transformer" and self.hidden_size % self.nhead != 0:
            raise ValueError(f"the transformer needs hidden_size (d_model) divisible by nhead: expected a multiple "
                             f"of {self.nhead}, got hidden_size={self.hidden_size}")

        # -- options that the kind does not have --
        if self.kind in ("classify", "tag", "generate") and self.num_classes < 1:
            what = {"classify": "classes", "tag": "tags", "generate": "conditions"}[self.kind]
            raise ValueError(f"kind {self.kind!r} needs num_classes (the number of {what}): expected >= 1, "
                             f"got {self.num_classes}")
        if self.kind in ("lm", "generate") and self.bidirectional:
            raise ValueError(f"kind {self.kind!r} predicts the next token, so it cannot look ahead: expected "
                             f"bidirectional false or null, got {self.bidirectional!r}")
        if self.pooling != "last" and self.kind != "classify":
            raise ValueError(f"pooling is an option of kind 'classify': expected the default 'last' for kind "
                             f"{self.kind!r}, got {self.pooling!r}")
        if self.attention != "none" and not (self.kind == "seq2seq" and self.arch in RECURRENT_ARCHS):
            why = ("the transformer seq2seq always attends" if self.kind == "seq2seq"
                   else f"kind {self.kind!r} has no decoder")
            raise ValueError(f"attention is an option of the recurrent seq2seq ({why}): expected 'none', "
                             f"got {self.attention!r}")

    # -- derived values ------------------------------------------------------

    @property
    def is_bidirectional(self) -> bool:
        """The encoder's direction after the kind's default: True for tag, classify and seq2seq."""
        if self.bidirectional is not None:
            return self.bidirectional
        return self.kind in ("tag", "classify", "seq2seq")

    @property
    def target_vocab_size(self) -> int:
        """The seq2seq target vocabulary (vocab_size when tgt_vocab_size is 0)."""
        return self.tgt_vocab_size or self.vocab_size

    @property
    def feedforward_size(self) -> int:
        return self.dim_feedforward or 4 * self.hidden_size

    # -- (de)serialisation ---------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (str, int, float, bool, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; an unknown key fails, naming it and listing the known ones."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict of config values, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; known keys: {known}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"ModelConfig needs {missing}: expected them among the keys, got {sorted(d)}")
        return cls(**d)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_prob(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {type(value).__name__} {value!r}")
