r"""Conditional generation: a text drawn given a label (e.g. names: a locale -> a person name).

The condition sets the decoder's initial state; the text is produced token by token from
``<sos>`` until ``<eos>``. Training is teacher-forced cross-entropy over ``y <eos>`` (padding
excluded), exactly like a seq2seq target:

.. math::
    \mathcal{L} = -\frac{1}{\sum_i (|y_i| + 1)}\sum_i \sum_t \log p(y_{i,t} \mid y_{i,<t}, c_i)

Evaluation reports the loss, its perplexity, and the fraction of ``n_samples`` samples (the
conditions in turn, temperature 1, a fixed seed) that end with ``<eos>`` within twice the
longest training text + 10 tokens: a model that has not learnt where a name ends rambles on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.data import EOS, PAD, SOS, BatchIterator, Labels, Vocab, pad_collate
from seqlab.decoding import sample as sample_tokens

from .base import App, Batches, ConfigError, DataOptions, chunks, unwrap


@dataclass
class GenerateOptions(DataOptions):
    n_samples: int = 100    # samples drawn by evaluate() for the <eos> fraction

    def validate(self) -> None:
        super().validate()
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {self.n_samples}")


class GenerateApp(App):
    kind = "generate"
    default_task = "names"
    Options = GenerateOptions
    monitor, mode = "loss", "min"

    def __init__(self, options: GenerateOptions):
        super().__init__(options)
        self.vocab: Optional[Vocab] = None
        self.conditions: Optional[Labels] = None
        self.max_text_len = 0

    def build(self) -> None:
        o = self.options
        train = self.examples("train")
        self.vocab = Vocab.build([t for _, t in train], o.level, min_freq=o.min_freq, max_size=o.max_vocab)
        self.conditions = Labels.build([c for c, _ in train] + [c for c, _ in self.examples("validation")])
        self.max_text_len = max(len(self.vocab.tokenize(t)) for _, t in train)

    def vocab_dict(self) -> dict:
        return {"text": self.vocab.to_dict(), "conditions": self.conditions.to_dict(),
                "max_text_len": self.max_text_len}

    def load_vocab(self, d: dict) -> None:
        self.vocab, self.conditions = Vocab.from_dict(d["text"]), Labels.from_dict(d["conditions"])
        self.max_text_len = int(d["max_text_len"])

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab), "num_classes": len(self.conditions)}

    @property
    def sample_len(self) -> int:
        return 2 * self.max_text_len + 10

    # -- batches ----------------------------------------------------------------------------

    def label_set(self):
        return self.conditions

    def labels_of(self, example) -> list[str]:
        return [example[0]]

    def encoded(self, split: str) -> list:
        return [(self.encode_label(c, split), self.vocab.encode(t)) for c, t in self.examples(split)]

    @staticmethod
    def collate(items: list) -> tuple[Tensor, Tensor, Tensor]:
        cond = torch.tensor([c for c, _ in items], dtype=torch.long)  # (B,)
        tgt_in, _ = pad_collate([[SOS] + t for _, t in items])  # (B, T)
        tgt_out, _ = pad_collate([t + [EOS] for _, t in items])  # (B, T)
        return cond, tgt_in, tgt_out

    def batches(self, batch_size: int, seed: int):
        return Batches(BatchIterator(self.encoded("train"), batch_size, seed=seed), self.collate)

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, Tensor]:
        cond, tgt_in, tgt_out = batch
        logits = model(cond, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD,
                               reduction="sum")  # (B*T, V)
        return loss, (tgt_out != PAD).sum()

    # -- evaluation and inference -----------------------------------------------------------

    @torch.no_grad()
    def sample_ids(self, model: nn.Module, cond: list[int], *, temperature: float = 1.0, top_k: Optional[int] = None,
                   top_p: Optional[float] = None, seed: int = 0) -> list[list[int]]:
        raw = unwrap(model)
        c = torch.tensor(cond, dtype=torch.long)  # (N,)
        gen = torch.Generator().manual_seed(seed)
        out = sample_tokens(raw.step, raw.start(c), torch.full_like(c, SOS), max_len=self.sample_len, eos=EOS,
                            temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)  # (N, L)
        return out.tolist()

    def generate(self, model: nn.Module, condition: str, n: int = 1, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0) -> list[str]:
        """``n`` texts sampled for ``condition`` (a DataError if the model does not know it)."""
        c = self.conditions.encode(condition)
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        unwrap(model).eval()
        ids = self.sample_ids(model, [c] * n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return [self.vocab.decode(row) for row in ids]

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False
                 ) -> dict[str, float]:
        from seqlab.train.metrics import perplexity

        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for items in chunks(self.encoded(split), self.eval_batch_size):
                    loss, n = self.loss_fn(raw, self.collate(list(items)))
                    total, count = total + float(loss), count + int(n)
            n = self.options.n_samples
            ids = self.sample_ids(raw, [i % len(self.conditions) for i in range(n)], seed=0)
        finally:
            raw.train(was_training)
        ended = sum(EOS in row for row in ids)
        loss = total / count
        return {"loss": loss, "perplexity": float(perplexity(loss)), "eos_fraction": ended / n,
                "tokens": float(count)}
