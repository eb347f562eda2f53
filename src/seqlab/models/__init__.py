"""The application models of seqlab, each on any sequence stack (``arch``) of seqlab.nn.

==================  =========================================================================
module              what lives there
==================  =========================================================================
config              ModelConfig (one typed config for every model), KINDS, ARCHS
encoders            the one embedding + stack builder every model shares
lm                  LanguageModel: next token, truncated BPTT state, cached generation;
                    ContinuousCache (scoring with a memory of past hidden states)
classifier          Classifier (many-to-one, last/mean/attention pooling), Tagger (many-to-many)
seq2seq             Seq2Seq: context vector, Bahdanau / Luong attention, Transformer
generator           ConditionalGenerator: a condition sets the initial state (one-to-many)
==================  =========================================================================

Every model has ``.config`` and a class attribute ``kind``; tensors are
batch-first, PAD = 0, lengths (B,) on the CPU. Models that generate follow the
``seqlab.decoding`` contract, ``step(tokens (N,), state) -> (logits (N, V), state)``
and ``reorder(state, index)``.

>>> model = build_model(ModelConfig(kind="tag", arch="gru", vocab_size=20, num_classes=5, embed_dim=8,
...                                 hidden_size=8, num_layers=1))
>>> model(torch.randint(4, 20, (2, 7)), torch.tensor([7, 3])).shape
torch.Size([2, 7, 5])
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# config is torch-free and loaded at once: the `seqlab` command's parser takes KINDS and ARCHS
# from it without paying for torch. The models load on first use (PEP 562).
from .config import ARCHS, KINDS, ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .classifier import Classifier, Tagger
    from .generator import ConditionalGenerator
    from .lm import ContinuousCache, LanguageModel
    from .seq2seq import Seq2Seq, Seq2SeqState

__all__ = ["ModelConfig", "build_model", "count_parameters", "LanguageModel", "ContinuousCache", "Classifier",
           "Tagger", "Seq2Seq", "Seq2SeqState", "ConditionalGenerator", "ARCHS", "KINDS", "MODELS"]

_LAZY = {"Classifier": "classifier", "Tagger": "classifier", "ConditionalGenerator": "generator",
         "LanguageModel": "lm", "ContinuousCache": "lm", "Seq2Seq": "seq2seq", "Seq2SeqState": "seq2seq"}
_MODEL_OF_KIND = {"lm": "LanguageModel", "classify": "Classifier", "tag": "Tagger", "seq2seq": "Seq2Seq",
                  "generate": "ConditionalGenerator"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "MODELS":
        models = {kind: __getattr__(cls) for kind, cls in _MODEL_OF_KIND.items()}
        globals()["MODELS"] = models
        return models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(config: ModelConfig) -> "nn.Module":
    """The model of ``config.kind`` (a dict is accepted too and checked by ModelConfig.from_dict)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model: expected a ModelConfig, got {type(config).__name__}")
    return __getattr__("MODELS")[config.kind](config)


def count_parameters(model: "nn.Module") -> int:
    """Trainable parameters, each shared tensor (tied weights) counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
