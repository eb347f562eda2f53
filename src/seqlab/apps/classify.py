r"""Sequence classification: one label per text (e.g. langid: a word -> its language).

Texts are padded to (B, T) with their lengths; the model pools its encoder states into one
vector per text and gives logits (B, C). The loss is cross-entropy summed over the examples,

.. math::
    \mathcal{L} = -\frac{1}{B}\sum_{i=1}^{B} \log p(y_i \mid x_i),

and evaluation reports accuracy and macro-F1 (the unweighted mean of per-class F1, which a
classifier that ignores rare classes cannot hide behind).

The label set is built from the training and validation examples, so a label that appears only
in the validation file still has an output (it cannot be learnt, but it is scored as missed
rather than failing the run).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.data import BatchIterator, Labels, Vocab, pad_collate

from .base import App, Batches, ConfigError, DataOptions, chunks, unwrap


class ClassifyApp(App):
    kind = "classify"
    default_task = "langid"
    Options = DataOptions
    monitor, mode = "accuracy", "max"

    def __init__(self, options: DataOptions):
        super().__init__(options)
        self.vocab: Optional[Vocab] = None
        self.labels: Optional[Labels] = None

    def build(self) -> None:
        o = self.options
        train = self.examples("train")
        self.vocab = Vocab.build([t for t, _ in train], o.level, min_freq=o.min_freq, max_size=o.max_vocab)
        self.labels = Labels.build([y for _, y in train] + [y for _, y in self.examples("validation")])

    def vocab_dict(self) -> dict:
        return {"text": self.vocab.to_dict(), "labels": self.labels.to_dict()}

    def load_vocab(self, d: dict) -> None:
        self.vocab, self.labels = Vocab.from_dict(d["text"]), Labels.from_dict(d["labels"])

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab), "num_classes": len(self.labels)}

    # -- batches ----------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        ids = self.vocab.encode(text)
        if not ids:
            raise ConfigError(f"expected a text with at least one {self.vocab.level}, got {text!r}")
        return ids

    def collate(self, items: list) -> tuple[Tensor, Tensor, Tensor]:
        tokens, lengths = pad_collate([ids for ids, _ in items])  # (B, T), (B,)
        return tokens, lengths, torch.tensor([y for _, y in items], dtype=torch.long)  # (B,)

    def label_set(self):
        return self.labels

    def labels_of(self, example) -> list[str]:
        return [example[1]]

    def encoded(self, split: str) -> list:
        return [(self.encode_text(t), self.encode_label(y, split)) for t, y in self.examples(split)]

    def batches(self, batch_size: int, seed: int):
        return Batches(BatchIterator(self.encoded("train"), batch_size, seed=seed), self.collate)

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, int]:
        tokens, lengths, labels = batch
        logits = model(tokens, lengths)  # (B, C)
        return F.cross_entropy(logits, labels, reduction="sum"), labels.numel()

    # -- evaluation and inference -----------------------------------------------------------

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False
                 ) -> dict[str, float]:
        from seqlab.train.metrics import accuracy, macro_f1

        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        total, preds, gold = 0.0, [], []
        try:
            with torch.no_grad():
                for items in chunks(self.encoded(split), self.eval_batch_size):
                    tokens, lengths, labels = self.collate(items)
                    logits = raw(tokens, lengths)  # (B, C)
                    total += float(F.cross_entropy(logits, labels, reduction="sum"))
                    preds += logits.argmax(-1).tolist()
                    gold += labels.tolist()
        finally:
            raw.train(was_training)
        return {"loss": total / len(gold), "accuracy": accuracy(preds, gold),
                "macro_f1": macro_f1(preds, gold, num_classes=len(self.labels)), "examples": float(len(gold))}

    @torch.no_grad()
    def classify(self, model: nn.Module, texts: list[str]) -> list[tuple[str, float]]:
        """(label, probability) of each text."""
        raw = unwrap(model)
        raw.eval()
        tokens, lengths = pad_collate([self.encode_text(t) for t in texts])  # (B, T), (B,)
        probs = raw(tokens, lengths).softmax(-1)  # (B, C)
        p, i = probs.max(-1)
        return [(self.labels.decode(k), float(q)) for k, q in zip(i.tolist(), p.tolist())]
