r"""Character-level language modelling on the embedded stdlib corpus: bits per character against
wall-clock time and against parameters.

Every architecture is a :class:`seqlab.models.LanguageModel` of the same embedding size, untied
output, its width chosen so the parameter count is closest to the target. Training draws random
windows of ``context + 1`` characters from the first ``train_chars`` of the training split (a
fresh zero state for each window, so every architecture sees the same context of at most
``context`` characters); validation bits per character are measured on non-overlapping windows of
the first ``valid_chars`` of the validation split, every ``eval_every`` steps:

.. math:: \text{bpc} = \frac{1}{N \ln 2} \sum_{i=1}^{N} -\ln p(x_i \mid x_{<i})

The loop here is a plain time-budgeted Adam loop rather than ``seqlab.train.Trainer``: the
comparison needs a clock that excludes evaluation and a history sampled in time, and none of the
trainer's checkpointing.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..data import Vocab, stdlib_corpus
from ..models import ModelConfig, build_model


@dataclass
class LMCellConfig:
    """One (arch, size) cell of the language-modelling comparison."""

    arch: str
    target_params: int = 100_000
    embed_dim: int = 32
    num_layers: int = 1             # recurrent layers; the transformer uses transformer_layers
    transformer_layers: int = 2
    nhead: int = 4
    context: int = 128              # characters per training window
    batch_size: int = 32
    lr: float = 3e-3                # Adam; transformer lr * transformer_lr_scale
    transformer_lr_scale: float = 0.33
    clip_norm: float = 1.0
    budget: float = 60.0            # seconds of training (evaluation excluded)
    eval_every: int = 50
    train_chars: int = 1_000_000
    valid_chars: int = 20_000
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "LMCellConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LMCellConfig keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _model_config(cfg: LMCellConfig, vocab_size: int, hidden: int) -> ModelConfig:
    transformer = cfg.arch == "transformer"
    # ModelConfig refuses options an arch does not have, so each arch gets only its own
    options = {"nhead": cfg.nhead, "dim_feedforward": 2 * hidden} if transformer else {}
    if cfg.arch == "lstm":
        options["forget_bias"] = 1.0
    return ModelConfig(kind="lm", arch=cfg.arch, vocab_size=vocab_size, embed_dim=cfg.embed_dim, hidden_size=hidden,
                       num_layers=cfg.transformer_layers if transformer else cfg.num_layers, dropout=0.0,
                       max_len=cfg.context + 1, tie_weights=False, **options)


def _count(config: ModelConfig) -> int:
    return sum(p.numel() for p in build_model(config).parameters())


def matched_lm_config(cfg: LMCellConfig, vocab_size: int) -> ModelConfig:
    """The ModelConfig of ``cfg.arch`` whose parameter count is closest to ``cfg.target_params``."""
    step = cfg.nhead if cfg.arch == "transformer" else 1
    count = lambda k: _count(_model_config(cfg, vocab_size, k * step))  # noqa: E731
    lo, hi = 1, 2048 // step
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= cfg.target_params:
            hi = mid
        else:
            lo = mid + 1
    best = min((k for k in (lo - 1, lo) if k >= 1), key=lambda k: abs(count(k) - cfg.target_params))
    return _model_config(cfg, vocab_size, best * step)


_DATA: dict = {}


def lm_data(train_chars: int, valid_chars: int) -> tuple[Vocab, torch.Tensor, torch.Tensor]:
    """Vocabulary (from the training slice) and the two id streams, cached per size."""
    key = (train_chars, valid_chars)
    if key not in _DATA:
        corpus = stdlib_corpus()
        train, valid = corpus[0][:train_chars], corpus[1][:valid_chars]
        vocab = Vocab.build([train], "char")
        _DATA[key] = (vocab, torch.tensor(vocab.encode(train)), torch.tensor(vocab.encode(valid)))
    return _DATA[key]


@torch.no_grad()
def valid_bpc(model, valid: torch.Tensor, context: int, batch_size: int = 64) -> float:
    n = (valid.numel() - 1) // context
    if n < 1:
        raise ValueError(f"the validation slice needs more than {context} characters, got {valid.numel()}")
    x = valid[: n * context].view(n, context)  # (N, C)
    y = valid[1: n * context + 1].view(n, context)  # (N, C)
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        logits, _ = model(x[i:i + batch_size])  # (b, C, V)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch_size].reshape(-1),
                                 reduction="sum").item()
    model.train(was)
    return total / (n * context) / math.log(2)


def train_lm(cfg: LMCellConfig, *, tick: Optional[Callable[[float], None]] = None) -> dict:
    """Train one LM cell for ``cfg.budget`` seconds; returns a JSON-able record with the bpc history."""
    vocab, train, valid = lm_data(cfg.train_chars, cfg.valid_chars)
    mcfg = matched_lm_config(cfg, len(vocab))
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg)
    lr = cfg.lr * (cfg.transformer_lr_scale if cfg.arch == "transformer" else 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.context + 1)  # (C+1,)
    history = [{"step": 0, "time": 0.0, "bpc": valid_bpc(model, valid, cfg.context)}]
    train_time, step, last_tick = 0.0, 0, 0.0
    while train_time < cfg.budget:
        t0 = time.perf_counter()
        starts = torch.randint(0, train.numel() - cfg.context - 1, (cfg.batch_size,), generator=gen)
        window = train[starts.unsqueeze(1) + offsets]  # (B, C+1)
        logits, _ = model(window[:, :-1])  # (B, C, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        train_time += time.perf_counter() - t0
        step += 1
        if step % cfg.eval_every == 0 or train_time >= cfg.budget:
            history.append({"step": step, "time": round(train_time, 3), "train_bpc": loss.item() / math.log(2),
                            "bpc": valid_bpc(model, valid, cfg.context)})
            if tick is not None:
                tick(train_time - last_tick)
                last_tick = train_time
    return {
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(vocab),
        "steps": step,
        "train_time": round(train_time, 3),
        "tokens_per_s": step * cfg.batch_size * cfg.context / max(train_time, 1e-9),
        "final_bpc": history[-1]["bpc"],
        "best_bpc": min(h["bpc"] for h in history),
        "history": history,
    }
