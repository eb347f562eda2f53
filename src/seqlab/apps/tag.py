r"""Sequence tagging: one label per token (e.g. ner: BIO tags over words).

Tokens are words (the user's files give them split; ``seqlab tag`` splits on whitespace), so
the vocabulary is word level: ``level`` must be 'word'. Words seen fewer than ``min_freq``
(default 2) times in training become ``<unk>``, which teaches the model to tag by context
the names it has never seen (most names in a test split are new). The loss is cross-entropy
over the real tokens only (padding excluded):

.. math::
    \mathcal{L} = -\frac{1}{\sum_i T_i}\sum_{i}\sum_{t=1}^{T_i} \log p(y_{i,t} \mid x_i)

Evaluation reports token accuracy and entity F1 (exact type and span, micro-averaged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.data import BatchIterator, Labels, Vocab, pad_collate

from .base import App, Batches, ConfigError, DataOptions, chunks, unwrap

IGNORE = -100  # the tag of a padding position: cross_entropy's ignore_index


@dataclass
class TagOptions(DataOptions):
    level: str = "word"   # tokens are words: one tag each
    min_freq: int = 2     # words seen once become <unk> in training (see the module docstring)

    def validate(self) -> None:
        super().validate()
        if self.level != "word":
            raise ConfigError(f"tagging gives one tag per word, so level must be 'word', got {self.level!r}")


class TagApp(App):
    kind = "tag"
    default_task = "ner"
    Options = TagOptions
    monitor, mode = "entity_f1", "max"

    def __init__(self, options: TagOptions):
        super().__init__(options)
        self.vocab: Optional[Vocab] = None
        self.tags: Optional[Labels] = None

    def build(self) -> None:
        o = self.options
        train = self.examples("train")
        self.vocab = Vocab.build([toks for toks, _ in train], "word", min_freq=o.min_freq, max_size=o.max_vocab)
        self.tags = Labels.build([t for _, ts in train + self.examples("validation") for t in ts])

    def vocab_dict(self) -> dict:
        return {"tokens": self.vocab.to_dict(), "tags": self.tags.to_dict()}

    def load_vocab(self, d: dict) -> None:
        self.vocab, self.tags = Vocab.from_dict(d["tokens"]), Labels.from_dict(d["tags"])

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab), "num_classes": len(self.tags)}

    # -- batches ----------------------------------------------------------------------------

    def label_set(self):
        return self.tags

    def labels_of(self, example) -> list[str]:
        return list(example[1])

    def encoded(self, split: str) -> list:
        return [(self.vocab.encode(toks), [self.encode_label(t, split) for t in tags])
                for toks, tags in self.examples(split)]

    @staticmethod
    def collate(items: list) -> tuple[Tensor, Tensor, Tensor]:
        tokens, lengths = pad_collate([ids for ids, _ in items])  # (B, T), (B,)
        tags, _ = pad_collate([ys for _, ys in items], pad_id=IGNORE)  # (B, T)
        return tokens, lengths, tags

    def batches(self, batch_size: int, seed: int):
        return Batches(BatchIterator(self.encoded("train"), batch_size, seed=seed), self.collate)

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, Tensor]:
        tokens, lengths, tags = batch
        logits = model(tokens, lengths)  # (B, T, K)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")  # (B*T, K)
        return loss, lengths.sum()

    # -- evaluation and inference -----------------------------------------------------------

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False
                 ) -> dict[str, float]:
        from seqlab.train.metrics import entity_f1, token_accuracy

        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        total, count, pred_ids, gold_ids, pred_tags, gold_tags = 0.0, 0, [], [], [], []
        try:
            with torch.no_grad():
                for items in chunks(self.encoded(split), self.eval_batch_size):
                    tokens, lengths, tags = self.collate(items)
                    logits = raw(tokens, lengths)  # (B, T, K)
                    total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1),
                                                   ignore_index=IGNORE, reduction="sum"))  # (B*T, K)
                    count += int(lengths.sum())
                    pred = logits.argmax(-1)  # (B, T)
                    for b, n in enumerate(lengths.tolist()):
                        p, g = pred[b, :n].tolist(), tags[b, :n].tolist()
                        pred_ids += p
                        gold_ids += g
                        pred_tags.append([self.tags.decode(i) for i in p])
                        gold_tags.append([self.tags.decode(i) for i in g])
        finally:
            raw.train(was_training)
        ones = torch.ones(len(gold_ids), dtype=torch.bool)
        return {"loss": total / count,
                "token_accuracy": token_accuracy(torch.tensor(pred_ids), torch.tensor(gold_ids), ones),
                "entity_f1": entity_f1(pred_tags, gold_tags), "tokens": float(count)}

    @torch.no_grad()
    def tag(self, model: nn.Module, texts: list[str]) -> list[list[tuple[str, str]]]:
        """(token, tag) pairs of each whitespace-split text."""
        raw = unwrap(model)
        raw.eval()
        split = [t.split() for t in texts]
        for text, toks in zip(texts, split):
            if not toks:
                raise ConfigError(f"expected a text with at least one word, got {text!r}")
        tokens, lengths = pad_collate([self.vocab.encode(toks) for toks in split])  # (B, T), (B,)
        pred = raw(tokens, lengths).argmax(-1)  # (B, T)
        return [[(w, self.tags.decode(k)) for w, k in zip(toks, pred[b, : len(toks)].tolist())]
                for b, toks in enumerate(split)]
