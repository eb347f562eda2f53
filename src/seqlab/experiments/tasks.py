r"""The memory-task models, matched in parameter count, and their time-budgeted training.

One model shape serves both tasks and all four architectures::

    x (B, L, F) -> body (rnn | lstm | gru | causal transformer) -> h (B, L, H) -> head -> y

- copy memory (``F = 10``, one-hot symbols): a 10-way softmax at every step, trained on the mean
  cross-entropy over all ``L = T + 20`` steps (Bai et al. 2018), whose memoryless baseline is
  :math:`10 \ln 8 / (T + 20)`; scored by the accuracy on the 10 recalled symbols.
- adding problem (``F = 2``: value, marker): one regression output read at the last step,
  trained on the mean squared error, whose baseline (always answer 1) is 1/6.

The transformer is causal (each step sees only the past), so every architecture reads the input
in the same online order and the same output positions are scored. Its positions come from the
parameter-free sinusoidal table so that parameter matching compares the bodies only.

Parameters are matched by choosing each architecture's width (hidden size, or d_model for the
transformer) whose total parameter count, head included, is closest to a target.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import adding_baseline, adding_problem, copy_memory, copy_memory_baseline
from ..data.synthetic import COPY_LENGTH, COPY_VOCAB
from ..nn import GRU, LSTM, RNN, SinusoidalPositionalEncoding, TransformerEncoder, TransformerEncoderLayer, causal_mask

ARCHS = ("rnn", "lstm", "gru", "transformer")
MEMORY_TASKS = ("copy", "adding")
FEATURES = {"copy": COPY_VOCAB, "adding": 2}
OUTPUTS = {"copy": COPY_VOCAB, "adding": 1}

# What "solved" means (the thresholds).
COPY_SOLVED_ACCURACY = 0.99
ADDING_SOLVED_MSE = 0.01


@dataclass
class MemoryConfig:
    """How one (task, arch, T) cell is trained; stored with its result.

    Fresh batches are drawn every step from a generator seeded with ``seed`` (no example is seen
    twice); evaluation uses ``eval_size`` held-out sequences from seed ``seed + 10_000``.
    """

    task: str
    arch: str
    T: int
    target_params: int = 16_000      # Bai et al. (2018) used about 16K for copy memory, 70K for adding
    budget: float = 30.0             # seconds of training (evaluation excluded)
    max_steps: int = 100_000
    batch_size: int = 32
    lr: float = 1e-3                 # Adam; the transformer uses lr * transformer_lr_scale
    transformer_lr_scale: float = 0.5
    clip_norm: float = 1.0           # keeps the exploding-gradient case trainable, for all archs alike
    forget_bias: Optional[float] = 1.0  # LSTM only (Jozefowicz et al. 2015); None = torch.nn's init
    transformer_layers: int = 2
    nhead: int = 4
    eval_every: int = 50
    eval_size: int = 256
    stop_when_solved: bool = True    # saves budget and gives time-to-solve
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in MEMORY_TASKS:
            raise ValueError(f"task should be one of {MEMORY_TASKS}, got {self.task!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch should be one of {ARCHS}, got {self.arch!r}")
        if self.T < 2:
            raise ValueError(f"T should be >= 2, got {self.T}")
        if self.budget <= 0:
            raise ValueError(f"budget should be > 0 seconds, got {self.budget}")

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MemoryConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryModel(nn.Module):
    """Input projection-free body plus a linear head; ``forward(x (B, L, F)) -> (B, L, out)``."""

    def __init__(self, arch: str, in_features: int, out_features: int, width: int, *,
                 forget_bias: Optional[float] = None, transformer_layers: int = 2, nhead: int = 4) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch should be one of {ARCHS}, got {arch!r}")
        self.arch, self.width = arch, width
        if arch == "rnn":
            self.body = RNN(in_features, width, batch_first=True)
        elif arch == "lstm":
            self.body = LSTM(in_features, width, batch_first=True, forget_bias=forget_bias)
        elif arch == "gru":
            self.body = GRU(in_features, width, batch_first=True)
        else:
            if width % nhead:
                raise ValueError(f"d_model must be divisible by nhead={nhead}, got {width}")
            self.proj = nn.Linear(in_features, width)
            self.pos = SinusoidalPositionalEncoding(width, batch_first=True, max_len=1024)
            layer = TransformerEncoderLayer(width, nhead, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                            norm_first=True)
            self.body = TransformerEncoder(layer, transformer_layers, norm=nn.LayerNorm(width),
                                           enable_nested_tensor=False)
        self.head = nn.Linear(width, out_features)

    @property
    def recurrent(self) -> bool:
        return self.arch != "transformer"

    def embed(self, x: Tensor) -> Tensor:
        """The body's input: x itself for recurrent bodies, projection + positions for the transformer."""
        if self.recurrent:
            return x
        return self.pos(self.proj(x))  # (B, L, H)

    def run_body(self, u: Tensor) -> Tensor:
        if self.recurrent:
            return self.body(u)[0]  # (B, L, H)
        L = u.shape[1]
        return self.body(u, mask=causal_mask(L, device=u.device, dtype=u.dtype), is_causal=True)  # (B, L, H)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.run_body(self.embed(x)))  # (B, L, out)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _params_for(arch: str, task: str, width: int, cfg_kw: dict) -> int:
    return count_parameters(MemoryModel(arch, FEATURES[task], OUTPUTS[task], width, **cfg_kw))


def matched_width(arch: str, task: str, target_params: int, *, transformer_layers: int = 2, nhead: int = 4) -> int:
    """The width whose model has the parameter count closest to ``target_params``.

    Parameter counts grow monotonically with the width, so a bisection over the allowed widths
    (multiples of ``nhead`` for the transformer) finds the closest.
    """
    if target_params < 1:
        raise ValueError(f"target_params should be >= 1, got {target_params}")
    kw = {"transformer_layers": transformer_layers, "nhead": nhead}
    step = nhead if arch == "transformer" else 1
    lo, hi = 1, 4096 // step
    count = lambda k: _params_for(arch, task, k * step, kw)  # noqa: E731
    while lo < hi:  # smallest k with count(k) >= target
        mid = (lo + hi) // 2
        if count(mid) >= target_params:
            hi = mid
        else:
            lo = mid + 1
    best = min((k for k in (lo - 1, lo) if k >= 1), key=lambda k: abs(count(k) - target_params))
    return best * step


def build_memory_model(cfg: MemoryConfig) -> MemoryModel:
    width = matched_width(cfg.arch, cfg.task, cfg.target_params, transformer_layers=cfg.transformer_layers,
                          nhead=cfg.nhead)
    return MemoryModel(cfg.arch, FEATURES[cfg.task], OUTPUTS[cfg.task], width,
                       forget_bias=cfg.forget_bias if cfg.arch == "lstm" else None,
                       transformer_layers=cfg.transformer_layers, nhead=cfg.nhead)


def make_batch(task: str, batch_size: int, T: int, seed) -> tuple[Tensor, Tensor]:
    """Model-ready ``(x (B, L, F) float, y)``; y is (B, L) symbols for copy, (B,) sums for adding."""
    if task == "copy":
        x, y = copy_memory(batch_size, T, seed=seed)
        return F.one_hot(x, COPY_VOCAB).float(), y  # (B, L) -> (B, L, 10)
    if task == "adding":
        return adding_problem(batch_size, T, seed=seed)
    raise ValueError(f"task should be one of {MEMORY_TASKS}, got {task!r}")


def task_loss(task: str, out: Tensor, y: Tensor) -> Tensor:
    """The training loss: mean cross-entropy over every step (copy) or MSE at the last step (adding)."""
    if task == "copy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))  # (B*L, 10) vs (B*L,)
    return F.mse_loss(out[:, -1, 0], y)


def baseline(task: str, T: int) -> float:
    return copy_memory_baseline(T) if task == "copy" else adding_baseline()


@torch.no_grad()
def evaluate(model: MemoryModel, task: str, x: Tensor, y: Tensor) -> dict:
    """Loss, and accuracy on the recalled symbols (copy) or MSE (adding), in eval mode."""
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    loss = task_loss(task, out, y).item()
    if task == "copy":
        pred = out[:, -COPY_LENGTH:].argmax(-1)  # (B, 10)
        acc = (pred == y[:, -COPY_LENGTH:]).float().mean().item()
        return {"loss": loss, "accuracy": acc}
    return {"loss": loss, "mse": loss}


def is_solved(task: str, metrics: dict) -> bool:
    if task == "copy":
        return metrics["accuracy"] >= COPY_SOLVED_ACCURACY
    return metrics["mse"] <= ADDING_SOLVED_MSE


@dataclass
class TrainResult:
    model: MemoryModel
    record: dict = field(default_factory=dict)


def train_memory(cfg: MemoryConfig, *, tick: Optional[Callable[[float], None]] = None) -> TrainResult:
    """Train one cell for ``cfg.budget`` seconds (or ``max_steps``, or until solved).

    ``tick(seconds)`` is called after every evaluation with the training seconds since the last
    call, for a progress bar. Returns the trained model and a JSON-able record: the config, the
    parameter count and width, the final and best metrics, the eval history and time-to-solve.
    """
    torch.manual_seed(cfg.seed)
    model = build_memory_model(cfg)
    lr = cfg.lr * (cfg.transformer_lr_scale if cfg.arch == "transformer" else 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_eval, y_eval = make_batch(cfg.task, cfg.eval_size, cfg.T, seed=cfg.seed + 10_000)
    history: list[dict] = []
    init = evaluate(model, cfg.task, x_eval, y_eval)
    history.append({"step": 0, "time": 0.0, **init})
    train_time, step, solved_at = 0.0, 0, None
    last_tick = 0.0
    best = dict(init)
    stopped = "budget"
    while True:
        t0 = time.perf_counter()
        x, y = make_batch(cfg.task, cfg.batch_size, cfg.T, seed=gen)
        loss = task_loss(cfg.task, model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        train_time += time.perf_counter() - t0
        step += 1
        done_time = train_time >= cfg.budget
        if step % cfg.eval_every == 0 or done_time or step >= cfg.max_steps:
            m = evaluate(model, cfg.task, x_eval, y_eval)
            if not math.isfinite(m["loss"]):
                stopped = "diverged"
            history.append({"step": step, "time": round(train_time, 3), "train_loss": loss.item(), **m})
            if m["loss"] < best["loss"]:
                best = dict(m)
            if tick is not None:
                tick(train_time - last_tick)
                last_tick = train_time
            if solved_at is None and is_solved(cfg.task, m):
                solved_at = {"step": step, "time": round(train_time, 3)}
                if cfg.stop_when_solved:
                    stopped = "solved"
                    break
            if stopped == "diverged":
                break
        if done_time:
            break
        if step >= cfg.max_steps:
            stopped = "max_steps"
            break
    final = history[-1]
    record = {
        "config": cfg.to_dict(),
        "params": count_parameters(model),
        "width": model.width,
        "baseline": baseline(cfg.task, cfg.T),
        "steps": step,
        "train_time": round(train_time, 3),
        "stopped": stopped,
        "final": {k: v for k, v in final.items() if k not in ("step", "time")},
        "best": best,
        "solved": solved_at is not None,
        "solved_at": solved_at,
        "history": history,
    }
    return TrainResult(model, record)
