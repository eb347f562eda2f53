r"""Character-level language modelling on the embedded stdlib corpus: bits per character against
training time and against parameters.

Every architecture is a :class:`seqlab.models.LanguageModel` of the same embedding size, untied
output, its width chosen so the parameter count is closest to the target. Every architecture is
trained the way ``seqlab train lm`` trains the transformer, as GPT models are: independent windows
of ``context + 1`` characters of the first ``train_chars`` of the training split, cut at a random
phase each epoch and served in a random order (:class:`seqlab.data.WindowSampler`), each from a
fresh zero state, so every architecture sees the same context of at most ``context`` characters
and the verdicts compare architectures, not training recipes. Validation bits per
character are measured on non-overlapping windows of the first ``valid_chars`` of the validation
split, before training and every ``eval_every`` steps:

.. math:: \text{bpc} = \frac{1}{N \ln 2} \sum_{i=1}^{N} -\ln p(x_i \mid x_{<i})

The loop is :class:`seqlab.train.Trainer` with ``max_time = budget``: its clock counts training
only (evaluation and checkpoints excluded) and stamps ``train_time`` on every evaluation, which
is the time axis of the curve. The optimiser is AdamW without weight decay, with ``train lm``'s
schedule for a time budget: a linear warm-up, then a cosine whose horizon the trainer fixes from
the step time it measures during the warm-up (``max_steps = 0``).
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import Vocab, WindowSampler, stdlib_corpus
from ..models import ModelConfig, build_model
from ..models.lm import next_token_nll
from ..train import TrainConfig, Trainer


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
    lr: float = 3e-3                # peak rate; transformer lr * transformer_lr_scale
    warmup_steps: int = 50
    transformer_lr_scale: float = 0.33
    clip_norm: float = 1.0
    budget: float = 60.0            # seconds of training (evaluation excluded)
    eval_every: int = 0             # steps between evaluations; 0 = about eval_points over the budget
    eval_points: int = 20           # for eval_every = 0: the step time is measured before training
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
    windows = valid[: n * context + 1].unfold(0, context + 1, context)  # (N, C+1), each from a zero state
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        total += next_token_nll(model, windows[i:i + batch_size])[0].item()
    model.train(was)
    return total / (n * context) / math.log(2)


def _steps_per_eval(cfg: LMCellConfig, model, window: torch.Tensor) -> int:
    """``cfg.eval_every``, or (if 0) the steps that make about ``eval_points`` evaluations in the budget,
    from the median time of a few training steps on a copy of the model (the weights and RNGs stay
    untouched). Timing is noisy on a busy machine, so the number of points is only roughly right."""
    if cfg.eval_every:
        return cfg.eval_every
    if cfg.eval_points < 1:
        raise ValueError(f"LMCellConfig.eval_points: expected an int >= 1 (with eval_every = 0), got {cfg.eval_points}")
    probe = copy.deepcopy(model)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    seconds = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(4):
            t0 = time.perf_counter()
            loss, count, _ = next_token_nll(probe, window)
            opt.zero_grad(set_to_none=True)
            (loss / count).backward()
            opt.step()
            seconds.append(time.perf_counter() - t0)
    step = sorted(seconds[1:])[1]  # the median, leaving out the first step's one-off costs (allocation)
    return max(1, round(cfg.budget / (cfg.eval_points * step)))


def train_lm(cfg: LMCellConfig, *, tick: Optional[Callable[[float], None]] = None,
             run_dir: Optional[str | Path] = None) -> dict:
    """Train one LM cell for ``cfg.budget`` seconds of training; returns a JSON-able record with the
    bpc history (``time`` is training seconds). The trainer's checkpoint goes to ``run_dir``, or to a
    temporary directory that is removed afterwards."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="seqlab-lm-") as tmp:
            return train_lm(cfg, tick=tick, run_dir=tmp)
    vocab, train, valid = lm_data(cfg.train_chars, cfg.valid_chars)
    mcfg = matched_lm_config(cfg, len(vocab))
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg)
    batches = WindowSampler(train, cfg.batch_size, cfg.context, seed=cfg.seed)
    eval_every = _steps_per_eval(cfg, model, next(iter(WindowSampler(train, cfg.batch_size, cfg.context))))
    tcfg = TrainConfig(
        max_steps=0,  # the budget ends the run, and the schedule is fitted to it
        batch_size=cfg.batch_size, lr=cfg.lr * (cfg.transformer_lr_scale if cfg.arch == "transformer" else 1.0),
        weight_decay=0.0, warmup_steps=cfg.warmup_steps, decay="cosine", clip_norm=cfg.clip_norm,
        eval_every=eval_every, checkpoint_every=0, seed=cfg.seed, log_every=eval_every, max_time=cfg.budget,
        keep_checkpoints=1, keep_best=False, tensorboard=False)
    tokens = [0]

    def loss_fn(net, window):
        loss, count, _ = next_token_nll(net, window)  # every window from a zero state
        tokens[0] += count
        return loss, count

    last = [0.0]

    def evaluate(net) -> dict:
        if tick is not None:
            tick(trainer.train_time - last[0])
            last[0] = trainer.train_time
        return {"bpc": valid_bpc(net, valid, cfg.context)}

    trainer = Trainer(model, tcfg, batches=batches, loss_fn=loss_fn, evaluate=evaluate, run_dir=run_dir,
                      config={"model_class": type(model).__name__, "model": mcfg.to_dict(), "lm": cfg.to_dict()},
                      monitor="bpc", progress=False)
    history = [{"step": 0, "time": 0.0, "bpc": valid_bpc(model, valid, cfg.context)}]
    result = trainer.fit()
    history += [{"step": h["step"], "time": round(h["train_time"], 3), "train_bpc": h["train_loss"] / math.log(2),
                 "bpc": h["bpc"]} for h in result["history"]]
    return {
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(vocab),
        "steps": result["step"],
        "stopped": result["stopped"],  # max_time, or max_steps: the schedule fitted to the budget ended first
        "eval_every": eval_every,
        "train_time": round(result["train_time"], 3),
        "tokens_per_s": tokens[0] / max(result["train_time"], 1e-9),
        "final_bpc": history[-1]["bpc"],
        "best_bpc": min(h["bpc"] for h in history),
        "history": history,
    }
