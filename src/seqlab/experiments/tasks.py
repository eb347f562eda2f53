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

import base64
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import adding_baseline, adding_problem, copy_memory, copy_memory_baseline
from ..data.synthetic import COPY_LENGTH, COPY_VOCAB
from ..nn import GRU, LSTM, RNN, SinusoidalPositionalEncoding, TransformerEncoder, TransformerEncoderLayer, causal_mask
from ..train import DivergenceError, TrainConfig, Trainer
from . import ARCHS

MEMORY_TASKS = ("copy", "adding")
FEATURES = {"copy": COPY_VOCAB, "adding": 2}
OUTPUTS = {"copy": COPY_VOCAB, "adding": 1}

# What "solved" means: near-perfect recall for copy memory, and for adding an MSE far below the
# 1/6 of always answering 1.
COPY_SOLVED_ACCURACY = 0.99
ADDING_SOLVED_MSE = 0.01


@dataclass
class MemoryConfig:
    """How one (task, arch, T) cell is trained; stored with its result.

    Training is :class:`seqlab.train.Trainer` with the settings of :func:`train_config`. Fresh
    batches are drawn every step from a generator seeded with ``seed`` (no example is seen twice);
    evaluation, every ``eval_every`` steps, uses ``eval_size`` held-out sequences from seed
    ``seed + 10_000``.
    """

    task: str
    arch: str
    T: int
    target_params: int = 16_000      # Bai et al. (2018) used about 16K for copy memory, 70K for adding
    budget: float = 30.0             # seconds of training (evaluation excluded)
    max_steps: int = 100_000
    batch_size: int = 32
    lr: float = 1e-2                 # Adam; 1e-3 left the gated RNNs far from solving copy memory
    transformer_lr_scale: float = 0.1  # the transformer trains at lr * this: 1e-3, where it solves copy fast
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
        if self.eval_every < 1:
            raise ValueError(f"eval_every should be >= 1 step (the solved check needs evaluations), got {self.eval_every}")

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


def task_loss(task: str, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """The training loss: cross-entropy over every step (copy) or squared error at the last step (adding).

    ``reduction="mean"`` averages over the units (B * L steps for copy, B sequences for adding);
    ``"sum"`` sums them, as the Trainer's ``loss_fn`` wants (see :func:`loss_units`).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction should be 'mean' or 'sum', got {reduction!r}")
    if task == "copy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1),  # (B*L, 10) vs (B*L,)
                               reduction=reduction)
    return F.mse_loss(out[:, -1, 0], y, reduction=reduction)


def loss_units(task: str, y: Tensor) -> int:
    """How many terms :func:`task_loss` averages: every step of every sequence (copy), or one per sequence."""
    return y.numel() if task == "copy" else y.shape[0]


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


class MemoryBatches:
    """Fresh ``make_batch`` batches for ever, drawn from a generator seeded with ``seed``: no example
    is seen twice. The Trainer's data contract: ``state_dict()`` holds the generator's state
    (JSON), so a resumed run draws exactly the batches an uninterrupted one would have."""

    def __init__(self, task: str, batch_size: int, T: int, seed: int) -> None:
        if task not in MEMORY_TASKS:
            raise ValueError(f"task should be one of {MEMORY_TASKS}, got {task!r}")
        self.task, self.batch_size, self.T = task, batch_size, T
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:  # an endless stream: the Trainer's step and time limits end the run
            yield make_batch(self.task, self.batch_size, self.T, seed=self.generator)

    def state_dict(self) -> dict:
        raw = self.generator.get_state().numpy().tobytes()
        return {"generator": base64.b64encode(raw).decode("ascii")}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError(f"MemoryBatches state: expected a dict holding 'generator', got {state!r:.80}")
        raw = bytearray(base64.b64decode(state["generator"]))
        self.generator.set_state(torch.frombuffer(raw, dtype=torch.uint8))


def train_config(cfg: MemoryConfig) -> TrainConfig:
    """The Trainer settings of one cell: Adam (AdamW without decay) at a constant rate, so that the
    architectures differ only in the body and time-to-solve is not shaped by a schedule's horizon.
    Checkpoints are written once, at the end (the cells are minutes long; the grid resumes per cell)."""
    lr = cfg.lr * (cfg.transformer_lr_scale if cfg.arch == "transformer" else 1.0)
    return TrainConfig(max_steps=cfg.max_steps, batch_size=cfg.batch_size, lr=lr, weight_decay=0.0,
                       warmup_steps=0, decay="constant", clip_norm=cfg.clip_norm, eval_every=cfg.eval_every,
                       checkpoint_every=0, patience=0, seed=cfg.seed, log_every=cfg.eval_every,
                       max_time=cfg.budget, keep_checkpoints=1, keep_best=False)


@dataclass
class TrainResult:
    model: MemoryModel
    record: dict = field(default_factory=dict)


def train_memory(cfg: MemoryConfig, *, run_dir: Optional[str | os.PathLike] = None,
                 tick: Optional[Callable[[float], None]] = None) -> TrainResult:
    """Train one cell with :class:`seqlab.train.Trainer` for ``cfg.budget`` training seconds (or
    ``max_steps``, or until solved when ``stop_when_solved``).

    The final checkpoint (weights, ``config={"model_class": "MemoryModel", "memory": cfg}``) goes to
    ``run_dir``, or to a temporary folder that is removed. ``tick(seconds)`` is called after every
    evaluation with the training seconds since the last call, for a progress bar. Returns the
    trained model and a JSON-able record: the config, the parameter count and width, the final and
    best (lowest loss) metrics, the evaluation history from step 0 and time-to-solve. ``stopped``
    is the Trainer's reason ("goal" = solved, "max_time" = the budget, "max_steps") or "diverged".
    """
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="seqlab-memory-") as tmp:
            return train_memory(cfg, run_dir=tmp, tick=tick)
    torch.manual_seed(cfg.seed)
    model = build_memory_model(cfg)
    x_eval, y_eval = make_batch(cfg.task, cfg.eval_size, cfg.T, seed=cfg.seed + 10_000)
    ticked = [0.0]  # training seconds already reported to tick
    trainer: Optional[Trainer] = None

    def evaluate_fn(m: nn.Module) -> dict:
        metrics = evaluate(m, cfg.task, x_eval, y_eval)
        if tick is not None and trainer is not None:
            tick(trainer.train_time - ticked[0])
            ticked[0] = trainer.train_time
        return metrics

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        x, y = batch
        return task_loss(cfg.task, m(x), y, reduction="sum"), loss_units(cfg.task, y)

    init = evaluate_fn(model)  # the untrained score: where every curve starts
    trainer = Trainer(model, train_config(cfg), batches=MemoryBatches(cfg.task, cfg.batch_size, cfg.T, cfg.seed),
                      loss_fn=loss_fn, evaluate=evaluate_fn, run_dir=run_dir,
                      config={"model_class": "MemoryModel", "memory": cfg.to_dict()}, progress=False,
                      stop_when=(lambda m: is_solved(cfg.task, m)) if cfg.stop_when_solved else None)
    try:
        trainer.fit()
        stopped = trainer.stopped
    except DivergenceError:
        # The weights are those before the bad step; keep them (the gradient-flow and gate cells
        # read the saved model) and report the divergence instead of failing the whole grid.
        stopped = "diverged"
        trainer.save()
    history = [{"step": 0, "time": 0.0, **init}]
    history += [{"step": h["step"], "time": round(h["train_time"], 3),
                 **{k: v for k, v in h.items() if k not in ("step", "train_time")}} for h in trainer.history]
    names = list(init)  # the metrics, without step, time and train_loss
    best = min(history, key=lambda h: h["loss"] if math.isfinite(h["loss"]) else math.inf)
    solved_at = next(({"step": h["step"], "time": h["time"]} for h in history[1:] if is_solved(cfg.task, h)),
                     None)  # the first trained evaluation that passed
    record = {
        "config": cfg.to_dict(),
        "params": count_parameters(model),
        "width": model.width,
        "baseline": baseline(cfg.task, cfg.T),
        "steps": trainer.step,
        "train_time": round(trainer.train_time, 3),
        "stopped": stopped,
        "final": {k: history[-1][k] for k in names},
        "best": {k: best[k] for k in names},
        "solved": solved_at is not None,
        "solved_at": solved_at,
        "history": history,
    }
    return TrainResult(model, record)
