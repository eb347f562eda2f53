r"""Sequence to sequence: translate a source text into a target text (e.g. dates -> ISO 8601).

A pair becomes ``src`` (the source ids, no specials), ``tgt_in = <sos> y`` and
``tgt_out = y <eos>``; the decoder reads ``tgt_in`` (teacher forcing) and is trained to emit
``tgt_out``:

.. math::
    \mathcal{L} = -\frac{1}{\sum_i (|y_i| + 1)}\sum_i \sum_{t=1}^{|y_i|+1}
                  \log p(y_{i,t} \mid y_{i,<t}, x_i), \qquad y_{i,|y_i|+1} = \texttt{<eos>}

with padding excluded. ``teacher_forcing`` < 1 feeds the model its own argmax at random steps
(scheduled sampling) during training; evaluation decodes greedily (``beam`` > 1: beam search)
from ``<sos>`` until ``<eos>`` or ``max_decode_len`` tokens and reports exact match,
character error rate and corpus BLEU on the decoded strings, plus the teacher-forced loss.
During training only the first ``eval_examples`` validation pairs are decoded (decoding is the
slow part); ``seqlab eval`` decodes the whole split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.data import EOS, PAD, SOS, BatchIterator, Vocab, pad_collate
from seqlab.decoding import beam_search, greedy

from .base import App, Batches, ConfigError, DataOptions, chunks, unwrap


@dataclass
class Seq2SeqOptions(DataOptions):
    teacher_forcing: float = 1.0            # probability of feeding the gold token while training
    beam: int = 1                           # beam size of evaluation decoding (1 = greedy)
    eval_examples: int = 200                # validation pairs decoded during training (0 = all)
    max_decode_len: Optional[int] = None    # None = the longest training target + 10

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ConfigError(f"teacher_forcing must be in [0, 1], got {self.teacher_forcing}")
        if self.beam < 1:
            raise ConfigError(f"beam must be >= 1, got {self.beam}")
        if self.eval_examples < 0:
            raise ConfigError(f"eval_examples must be >= 0, got {self.eval_examples}")
        if self.max_decode_len is not None and self.max_decode_len < 1:
            raise ConfigError(f"max_decode_len must be >= 1, got {self.max_decode_len}")


class Seq2SeqApp(App):
    kind = "seq2seq"
    default_task = "dates"
    Options = Seq2SeqOptions
    monitor, mode = "exact_match", "max"

    def __init__(self, options: Seq2SeqOptions):
        super().__init__(options)
        self.src_vocab: Optional[Vocab] = None
        self.tgt_vocab: Optional[Vocab] = None
        self.max_target_len = 0

    def build(self) -> None:
        o = self.options
        train = self.examples("train")
        self.src_vocab = Vocab.build([s for s, _ in train], o.level, min_freq=o.min_freq, max_size=o.max_vocab)
        self.tgt_vocab = Vocab.build([t for _, t in train], o.level, min_freq=o.min_freq, max_size=o.max_vocab)
        self.max_target_len = max(len(self.tgt_vocab.tokenize(t)) for _, t in train)

    def vocab_dict(self) -> dict:
        return {"source": self.src_vocab.to_dict(), "target": self.tgt_vocab.to_dict(),
                "max_target_len": self.max_target_len}

    def load_vocab(self, d: dict) -> None:
        self.src_vocab, self.tgt_vocab = Vocab.from_dict(d["source"]), Vocab.from_dict(d["target"])
        self.max_target_len = int(d["max_target_len"])

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.src_vocab), "tgt_vocab_size": len(self.tgt_vocab)}

    @property
    def decode_len(self) -> int:
        return self.options.max_decode_len or self.max_target_len + 10

    # -- batches ----------------------------------------------------------------------------

    def encode_source(self, text: str) -> list[int]:
        ids = self.src_vocab.encode(text)
        if not ids:
            raise ConfigError(f"expected a source text with at least one {self.src_vocab.level}, got {text!r}")
        return ids

    def encoded(self, split: str) -> list:
        return [(self.encode_source(s), self.tgt_vocab.encode(t)) for s, t in self.examples(split)]

    @staticmethod
    def collate(items: list) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        src, src_lengths = pad_collate([s for s, _ in items])  # (B, S), (B,)
        tgt_in, _ = pad_collate([[SOS] + t for _, t in items])  # (B, T)
        tgt_out, _ = pad_collate([t + [EOS] for _, t in items])  # (B, T)
        return src, src_lengths, tgt_in, tgt_out

    def batches(self, batch_size: int, seed: int):
        return Batches(BatchIterator(self.encoded("train"), batch_size, seed=seed), self.collate)

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, Tensor]:
        src, src_lengths, tgt_in, tgt_out = batch
        ratio = self.options.teacher_forcing if model.training else 1.0
        logits = model(src, src_lengths, tgt_in, teacher_forcing=ratio)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD,
                               reduction="sum")  # (B*T, V)
        return loss, (tgt_out != PAD).sum()

    # -- evaluation and inference -----------------------------------------------------------

    @torch.no_grad()
    def decode_ids(self, model: nn.Module, sources: list[list[int]], beam: int = 1) -> list[list[int]]:
        raw = unwrap(model)
        src, src_lengths = pad_collate(sources)  # (B, S), (B,)
        state = raw.encode(src, src_lengths)
        start = torch.full((len(sources),), SOS, dtype=torch.long)
        if beam == 1:
            return greedy(raw.step, state, start, max_len=self.decode_len, eos=EOS).tolist()  # (B, L)
        hyps = beam_search(raw.step, raw.reorder, state, start, eos=EOS, beam_size=beam, max_len=self.decode_len)
        return [h[0].tokens for h in hyps]

    def translate(self, model: nn.Module, texts: list[str], *, beam: int = 1) -> list[str]:
        """The decoded target of each source text."""
        raw = unwrap(model)
        raw.eval()
        if beam < 1:
            raise ConfigError(f"beam must be >= 1, got {beam}")
        sources = [self.encode_source(t) for t in texts]
        out = []
        for part in chunks(sources, self.eval_batch_size):
            out += [self.tgt_vocab.decode(ids) for ids in self.decode_ids(raw, list(part), beam)]
        return out

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False,
                 beam: Optional[int] = None) -> dict[str, float]:
        from seqlab.train.metrics import bleu, char_error_rate, exact_match

        pairs = self.examples(split)
        data = self.encoded(split)
        if during_training and self.options.eval_examples:
            pairs, data = pairs[: self.options.eval_examples], data[: self.options.eval_examples]
        beam = beam or self.options.beam
        raw = unwrap(model)
        was_training = raw.training
        raw.eval()
        total, count, hyps = 0.0, 0, []
        try:
            with torch.no_grad():
                for items in chunks(data, self.eval_batch_size):
                    loss, n = self.loss_fn(raw, self.collate(list(items)))
                    total, count = total + float(loss), count + int(n)
                    hyps += [self.tgt_vocab.decode(ids) for ids in self.decode_ids(raw, [s for s, _ in items], beam)]
        finally:
            raw.train(was_training)
        refs = [t for _, t in pairs]
        return {"loss": total / count, "exact_match": exact_match(hyps, refs),
                "char_error_rate": char_error_rate(hyps, refs), "bleu": bleu(hyps, refs),
                "examples": float(len(refs))}
