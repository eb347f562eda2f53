r"""The training loop. It has nothing to do with any particular model.

The trainer knows three things about the task, all passed in by the caller:

* ``batches``: iterating it yields batches (any objects); it is re-iterated when an epoch
  ends, and ``state_dict()`` / ``load_state_dict()`` (JSON) save and restore its position.
* ``loss_fn(model, batch) -> (loss_sum, count)``: the loss summed over ``count`` units
  (tokens, examples), padding already left out. The trainer minimises ``loss_sum / count``
  and reports units per second.
* ``evaluate(model) -> {name: value}`` (optional): validation metrics; ``monitor`` and
  ``mode`` pick the one that decides the best score and early stopping.
* ``stop_when(metrics) -> bool`` (optional): a goal, asked after every periodic evaluation
  (not the final one, which has no decision left to make); True ends the run with
  ``stopped == "goal"``, e.g. once a task counts as solved, so that the time to reach it is
  measured and the rest of a budget is not spent.

One step is::

    batch = next(batches)                           # the GLOBAL batch, the same on every rank
    loss_sum, count = loss_fn(model, shard(batch))  # this rank's rows
    N = sum of count over ranks
    backward(loss_sum / (N / world))                # DDP averages over ranks -> grad of sum/N
    clip to clip_norm; optimizer step (AdamW, or Muon + AdamW); schedule step

so W processes on a global batch give the same update as one process on the whole batch.
Every ``eval_every`` steps rank 0 evaluates; every ``checkpoint_every`` steps and at the end
rank 0 writes a checkpoint (seqlab.train.checkpoint) holding the weights, the optimizer,
the schedule, every RNG and the data position, so ``fit(resume=True)`` in a new process
continues exactly where the checkpoint left off. Whenever an evaluation improves on the
best score (``keep_best``), rank 0 also writes the weights as ``RUN/best-STEP`` and points
``RUN/best`` at it, so an early-stopped run still has the weights it stopped for.

Time is training time: the clock runs while batches are fetched and steps are taken and stops
while the trainer evaluates and writes checkpoints. ``train_time`` (seconds, cumulative across
resumes) is stamped on every history entry (one per evaluation) and log entry, ``max_time``
and the log's units per second count the same clock, so "validation metric against training
seconds" curves and time budgets do not depend on how often or how slowly one evaluates.
The clock is wall time, or (``clock = "cpu"``) the process's CPU time, which other work on a
shared machine does not stretch.

A time budget without a step count (``max_steps = 0``, ``max_time > 0``) still gets a whole
schedule: at the end of the warm-up (after at least ``PLAN_MIN_STEPS`` steps, or once a tenth of
the budget is spent) the trainer fixes the horizon from the median step time so far,

.. math:: S = t + \left\lfloor \frac{\text{max\_time} - \text{train\_time}}{\text{median step time}} \right\rfloor

(the warm-up cut to at most S/10 if the budget is short), and decays to the end of the budget.
The plan is saved in every checkpoint, so a resumed run follows it instead of measuring again.
Such a run stops by the clock: if its steps turn out faster than measured, it trains at the
schedule's final rate from step S to the end of the budget.
Rank 0 writes the log and the evaluations as TensorBoard scalars in ``RUN/tensorboard``
(``tensorboard = True``): ``tensorboard --logdir runs/`` shows every run's curves.

SIGINT (Ctrl-C) and SIGTERM do not kill a fitting trainer mid-step: the step in progress
finishes, a checkpoint is written and ``fit`` returns with ``stopped == "interrupted"`` and
``signal`` set, so the caller can save its summary and exit 130 / 143. The flag travels with the
step's loss all-reduce, so under torchrun every rank stops at the same step. A second signal
raises KeyboardInterrupt at once; checkpoints are written atomically, so that loses only the
steps since the last one. A run resumed from an interrupt's checkpoint ends with the weights of
an uninterrupted run whenever the batches carry no state of their own between steps (an lm that
carries its hidden state restarts it only at ``checkpoint_every`` boundaries).
"""
from __future__ import annotations

import base64
import math
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as D
from .checkpoint import (CheckpointError, best_checkpoint, latest_checkpoint, load_checkpoint, restore_training,
                         resumable_checkpoint, rng_state, save_checkpoint, set_rng_state)
from .optim import OPTIMIZERS, build_optimizer
from .schedule import DECAYS, WarmupDecayLR

STOPS = ("max_steps", "early_stop", "goal", "max_time", "interrupted")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
UNPLANNED = 2 ** 62  # the horizon of a time-budgeted run before its plan is fixed: the rate stays at its peak
PLAN_MIN_STEPS = 20  # a time-budgeted run fixes its plan after at least this many steps ...
PLAN_SKIP_STEPS = 5  # ... leaving out the first few, which pay for allocation and lazy set-up
FINAL_STOPS = ("early_stop", "goal")  # a resumed run that stopped so stays stopped
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard: the event files (a --force restart removes them)
PRECISIONS = ("float32", "bf16-mixed", "auto")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    bfloat16, or a CPU with AMX tiles or AVX-512 BF16 (oneDNN's bfloat16 kernels). Elsewhere
    bfloat16 products are emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """TrainConfig.precision as run on ``device``: "auto" becomes "bf16-mixed" or "float32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device) else "float32"
    return precision


class DivergenceError(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the weights were not updated with it."""


@dataclass
class TrainConfig:
    """Settings of one training run. ``from_dict`` rejects unknown keys; bad values raise ValueError."""

    # optimizer updates, not epochs: runs of different data sizes compare by compute. 0 = as many as
    # max_time allows: the schedule's horizon is then fixed from the step time measured in warm-up
    max_steps: int = 1000
    batch_size: int = 32  # the GLOBAL batch: split across processes, so results do not depend on their number
    lr: float = 2e-3  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.01  # decoupled decay, on matrices only (not biases, norms' gains)
    # "adamw", or "muon": Muon for the recurrent / attention / feed-forward matrices, AdamW for the
    # rest (embeddings, output layers, vectors); see seqlab.train.optim
    optimizer: str = "adamw"
    warmup_steps: int = 100  # linear warm-up: Adam's second-moment estimates are noisy at first
    decay: str = "cosine"  # after warm-up: "cosine", "linear" or "constant", down to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    clip_norm: float = 1.0  # clip the global gradient norm (RNNs' exploding gradients); 0 = off
    eval_every: int = 200  # steps between evaluations; 0 = only at the end
    checkpoint_every: int = 200  # steps between checkpoints; 0 = only at the end
    patience: int = 0  # evaluations without improvement before stopping early; 0 = never stop early
    seed: int = 0  # seeds Python's and torch's RNGs (rank r uses seed + r) at the start of a fresh run; < 2**32
    log_every: int = 10  # steps between progress-bar updates and entries of the training log
    max_time: float = 0.0  # training seconds in this invocation, evaluation and checkpoints excluded; 0 = no limit
    # what max_time and train_time count: "wall" seconds, or "cpu" seconds of this process (all its
    # threads), which a busy shared machine does not stretch (use one thread to compare with wall time)
    clock: str = "wall"
    keep_checkpoints: int = 2  # the newest ones kept on disk
    keep_best: bool = True  # when evaluating: also keep the best-scoring weights (RUN/best -> best-STEP)
    # under torchrun: DDP's option for a model whose loss leaves some parameters unused (an extra
    # pass over the autograd graph every step, so off unless needed)
    find_unused_parameters: bool = False
    tensorboard: bool = True  # also write the curves as TensorBoard event files in RUN/tensorboard (rank 0)
    # "float32"; "bf16-mixed": the loss (forward pass) under torch.autocast in bfloat16, so matrix
    # products run in bfloat16 while weights, gradients and optimizer states stay float32; "auto":
    # bf16-mixed where the model's device multiplies bfloat16 in hardware (native_bf16), else float32.
    # Recurrent layers under autocast leave the compiled CPU loop (it is float32/64), so for them
    # bf16-mixed is slower on the CPU; it pays for the transformer's large products.
    precision: str = "float32"

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise ValueError(f"TrainConfig.{f.name}: expected true or false, got {v!r}")
            elif f.type in ("int", int):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError(f"TrainConfig.{f.name}: expected an int, got {v!r}")
            elif f.type in ("float", float):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ValueError(f"TrainConfig.{f.name}: expected a finite number, got {v!r}")
                setattr(self, f.name, float(v))
        if self.max_steps == 0 and not self.max_time > 0:
            raise ValueError("TrainConfig.max_steps: 0 means as many steps as max_time allows, so it needs "
                             f"max_time > 0; got max_time={self.max_time!r}")
        if self.max_steps < 0:
            raise ValueError(f"TrainConfig.max_steps: expected an int >= 0, got {self.max_steps!r}")
        positive = ("batch_size", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}: expected an int >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "patience", "weight_decay", "clip_norm",
                     "max_time"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}: expected a value >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.seed < 2 ** 32:  # torch.manual_seed and numpy refuse larger ones mid-run
            raise ValueError(f"TrainConfig.seed: expected an int in [0, 2**32), got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr: expected a number > 0, got {self.lr!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"TrainConfig.clock: expected one of {list(CLOCKS)}, got {self.clock!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer: expected one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay: expected one of {list(DECAYS)}, got {self.decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"TrainConfig: expected a dict, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; expected some of {known}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class _DDP(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that lets ``loss_fn`` reach the model's own attributes.

    ``loss_fn`` is written for the bare model (``model.detach_state``, ``model.config``);
    attributes DDP does not have are looked up on the wrapped module. The gradient
    all-reduce is armed by DDP's ``forward``, so the training computation must go through
    ``model(...)``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def _rng_to_json() -> dict:
    """This process's RNG states as JSON (for ranks > 0, whose states rank 0 saves in its checkpoint)."""
    meta, tensors = rng_state()
    meta["tensors"] = {k: base64.b64encode(v.numpy().tobytes()).decode("ascii") for k, v in tensors.items()}
    return meta


def _rng_from_json(meta: dict) -> None:
    tensors = {k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8)
               for k, v in meta["tensors"].items()}
    set_rng_state(meta, tensors)


class Trainer:
    """Train ``model`` on ``batches`` with AdamW, warm-up + decay, clipping, evaluation,
    early stopping and exact-resume checkpoints, in one process or under torchrun.

    Arguments are described in the module docstring (``stop_when`` among them); in addition ``run_dir`` is where
    checkpoints go, ``config`` (a JSON dict holding ``"model_class"``) is saved with them,
    ``extra()`` returns more JSON for every checkpoint (vocabularies), ``shard(batch, rank,
    world)`` picks a rank's rows (default :func:`seqlab.train.distributed.shard_batch`), and
    ``progress`` turns the tqdm bar on rank 0 on or off.

    Under DDP all ranks iterate the same ``batches`` (same data, same seed) and each keeps
    its share of every batch; rank 0 alone evaluates and writes checkpoints, and broadcasts
    its early-stopping, goal and time-limit decisions so every rank stops at the same step.
    ``loss_fn`` receives the DDP wrapper, which also answers the model's own attributes; the
    forward pass must go through ``model(...)`` and use every parameter, unless
    ``cfg.find_unused_parameters`` is set (DDP's option of that name). Dropout masks differ
    between ranks, so a run with dropout matches one process in distribution, not bitwise.

    Resuming: model, optimizer (including its learning rates), RNGs, data position and the
    trainer's counters (``train_time`` included) come from the checkpoint; the schedule follows
    the current config, so raising ``max_steps`` continues a finished run along the longer schedule. A loss_fn
    that carries state between batches (a hidden state across BPTT windows) resumes exactly
    only if it restarts that state at checkpoint boundaries, since the trainer cannot see it.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, batches: Any,
                 loss_fn: Callable[[nn.Module, Any], tuple], evaluate: Optional[Callable[[nn.Module], dict]] = None,
                 run_dir: str | Path, config: dict, extra: Optional[Callable[[], dict]] = None,
                 monitor: str = "loss", mode: str = "min", progress: bool = True,
                 shard: Optional[Callable[[Any, int, int], Any]] = None,
                 stop_when: Optional[Callable[[dict], bool]] = None,
                 clock: Optional[Callable[[], float]] = None):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(config, dict) or "model_class" not in config:
            got = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"config: expected a dict holding 'model_class', got {got}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        for name in ("state_dict", "load_state_dict", "__iter__"):
            if not hasattr(batches, name):
                raise ValueError(f"batches: expected an iterable with state_dict() and load_state_dict(), "
                                 f"got {type(batches).__name__} without {name}")
        if cfg.patience > 0 and evaluate is None:
            raise ValueError(f"patience={cfg.patience} needs an evaluate function, got evaluate=None")
        if stop_when is not None and (evaluate is None or not cfg.eval_every):
            raise ValueError(f"stop_when needs periodic evaluations, got evaluate={'None' if evaluate is None else 'set'}"
                             f" and eval_every={cfg.eval_every}")
        if stop_when is not None and not callable(stop_when):
            raise ValueError(f"stop_when: expected a function of the metrics dict, got {type(stop_when).__name__}")
        self.model, self.cfg, self.batches = model, cfg, batches
        self.loss_fn, self.evaluate_fn, self.extra_fn, self.stop_when = loss_fn, evaluate, extra, stop_when
        self.run_dir, self.config = Path(run_dir), config
        self.monitor, self.mode, self.progress = monitor, mode, progress
        self.shard = shard or D.shard_batch
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
        self._device_type = next(model.parameters()).device.type  # where autocast acts
        self.precision = resolve_precision(cfg.precision, self._device_type)  # "float32" or "bf16-mixed"
        # The schedule's horizon: max_steps, or (max_steps = 0) the plan fixed during the run.
        self.plan: Optional[dict] = None  # {"total_steps", "warmup_steps", "step_seconds"} once fixed
        self.scheduler = WarmupDecayLR(self.optimizer, cfg.warmup_steps, cfg.max_steps or UNPLANNED, cfg.decay,
                                       cfg.min_lr_ratio)
        self.clock = clock or CLOCKS[cfg.clock]  # the training clock (tests pass a fake one)
        self._step_seconds: list[float] = []  # this invocation's step times, until the plan is fixed
        self._writer = None  # TensorBoard's SummaryWriter while fitting (rank 0)
        self.step = 0
        self.best: Optional[float] = None
        self.bad_evals = 0  # evaluations since the best one
        self.metrics: dict[str, float] = {}  # of the last evaluation
        self.history: list[dict] = []  # one entry per evaluation
        self.log: list[dict] = []  # one entry per log_every steps
        self.stopped: Optional[str] = None
        self.train_time = 0.0  # seconds of training so far, across resumes; evaluation and checkpoints excluded
        self._window_start = 0.0  # train_time at the last log entry
        self._since_eval = [0.0, 0.0]  # (loss sum, count) since the last evaluation
        self._window = [0.0, 0.0]  # ... since the last log entry
        self._grad_norm = self._lr = math.nan  # of the latest update, for the log
        self._signal = 0  # SIGINT / SIGTERM received while fitting (0: none); acted on after the step
        self.interrupted_by = 0  # the signal that stopped the last fit, or 0

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> dict:
        """Train to ``max_steps`` (or an early stop, a goal reached, or ``max_time``); returns the run's summary."""
        cfg, rank, world = self.cfg, D.get_rank(), D.get_world_size()
        if cfg.batch_size < world:
            raise ValueError(f"batch_size: expected at least one row per process ({world}), got {cfg.batch_size}")
        if not (resume and self._resume()):
            random.seed(cfg.seed + rank)
            torch.manual_seed(cfg.seed + rank)
        if self.stopped in FINAL_STOPS or (self.step >= self.horizon and self.train_time >= self._plan_end()):
            return self.summary()  # a finished run stays finished
        self.stopped = None
        net = self.model
        if world > 1:
            dev = next(self.model.parameters()).device
            net = _DDP(self.model, device_ids=[dev] if dev.type == "cuda" else None,
                       find_unused_parameters=cfg.find_unused_parameters)
        self.model.train()
        data = iter(self.batches)
        bar = tqdm(total=None if self.horizon == UNPLANNED else self.horizon, initial=self.step, desc="train",
                   dynamic_ncols=True, disable=not (self.progress and rank == 0))
        budget_end = self.train_time + cfg.max_time  # max_time counts this invocation only
        started = self.train_time
        self._open_writer()
        previous = self._catch_signals()
        running = self.clock()  # the training clock runs from here to the next pause
        try:
            while self.stopped is None:
                batch, data = self._next_batch(data)
                loss, count = self._train_step(net, batch, rank, world)
                bar.update(1)
                for acc in (self._since_eval, self._window):
                    acc[0] += loss * count
                    acc[1] += count
                seconds = self.clock() - running  # the clock stops: what follows is not training
                self.train_time += seconds
                if self.horizon == UNPLANNED:
                    self._step_seconds.append(seconds)
                    if self.step >= PLAN_MIN_STEPS and (self.step >= cfg.warmup_steps
                                                        or self.train_time - started >= 0.1 * cfg.max_time):
                        self._fix_plan(budget_end - self.train_time, bar)
                if self.step % cfg.log_every == 0:
                    entry = self._log_entry()
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}",
                                    tok_s=f"{entry['tokens_per_s']:.0f}")
                evaluated = False
                if self.evaluate_fn is not None and cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.stopped = self._evaluate(bar)  # "early_stop", "goal" or None
                    evaluated = True
                if self.stopped is None and cfg.max_time > 0:
                    if D.broadcast_object(self.train_time >= budget_end):  # rank 0's clock decides
                        self.stopped = "max_time"
                if self.stopped is None and self.step >= self.horizon:
                    if D.broadcast_object(self.train_time >= self._plan_end()):  # rank 0's clock decides
                        self.stopped = "max_steps" if self.step == self.horizon else "max_time"
                    elif self.step == self.horizon:
                        bar.total = None  # the final-rate tail: steps until the budget ends
                if self.stopped is None and self._interrupt_agreed:
                    self.stopped = "interrupted"  # save below, without a final evaluation: the user is waiting
                    self.interrupted_by = self._signal or signal.SIGTERM  # another rank's signal: torchrun's TERM
                    self.save()
                    break
                if self.stopped is not None and self.evaluate_fn is not None and not evaluated:
                    self._evaluate(bar, final=True)  # the final score; no stop decision left to make
                if self.stopped is not None or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save()
                running = self.clock()
        finally:
            self._restore_signals(previous)
            bar.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.summary()

    # ------------------------------------------------------------------ the schedule's horizon

    @property
    def horizon(self) -> int:
        """The step the schedule ends at: max_steps, the plan's total, or UNPLANNED before the plan."""
        if self.cfg.max_steps:
            return self.cfg.max_steps
        return self.plan["total_steps"] if self.plan is not None else UNPLANNED

    def _plan_end(self) -> float:
        """The train_time at which a time-planned run ends once past its horizon (-inf: at the horizon).

        Steps that turn out faster than the plan measured (a machine that gets quieter) reach the
        plan's total before the budget; the rest of the budget trains at the schedule's final rate.
        The end is saved with the plan, so a resumed run ends where the uninterrupted one would have:
        whether a step runs depends on the clock, what it computes does not."""
        if self.cfg.max_steps or not self.cfg.max_time or self.plan is None:
            return -math.inf
        return self.plan.get("budget_end", -math.inf)  # a plan without it (older checkpoints): the horizon

    def _fix_plan(self, seconds_left: float, bar) -> None:
        """Fix the horizon (max_steps = 0) from the median step time so far, once, after warm-up.

        total = step + seconds_left / median step time; the warm-up is cut to a tenth of that
        total if the budget is too short for it; budget_end = train_time + seconds_left, the end
        of a run whose steps get faster (``_plan_end``). The plan is saved in every checkpoint, so a
        resumed run follows the same schedule instead of measuring again; broadcast from rank 0
        so every rank steps the same schedule.
        """
        plan = None
        if D.is_main():
            times = sorted(self._step_seconds[PLAN_SKIP_STEPS:])  # the first steps pay one-off costs
            per = max(times[len(times) // 2], 1e-9)
            total = self.step + max(1, int(seconds_left / per))
            warmup = min(self.cfg.warmup_steps, max(self.step, total // 10))
            plan = {"total_steps": total, "warmup_steps": warmup, "step_seconds": per,
                    "budget_end": self.train_time + seconds_left}
        self.plan = D.broadcast_object(plan)
        self._step_seconds = []
        self.scheduler.reconfigure(self.plan["warmup_steps"], self.plan["total_steps"], self.cfg.decay,
                                   self.cfg.min_lr_ratio)
        bar.total = self.plan["total_steps"]
        bar.refresh()

    def _open_writer(self) -> None:
        if not (self.cfg.tensorboard and D.is_main()):
            return
        from torch.utils.tensorboard import SummaryWriter  # imported late: it loads tensorboard

        self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def _scalars(self, prefix: str, values: dict) -> None:
        """TensorBoard scalars at the current step (no-op without a writer)."""
        if self._writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v) and k != "step":
                self._writer.add_scalar(f"{prefix}/{k}", v, self.step)
        self._writer.flush()

    def _next_batch(self, data: Iterator) -> tuple[Any, Iterator]:
        try:
            return next(data), data
        except StopIteration:  # an epoch ended: the next iter() starts the next one
            data = iter(self.batches)
            try:
                return next(data), data
            except StopIteration:
                raise ValueError("batches: expected a new epoch of batches, got an empty one") from None

    def _log_entry(self) -> dict:
        units, seconds = self._window[1], self.train_time - self._window_start
        entry = {"step": self.step, "loss": self._window[0] / units, "lr": self._lr,
                 "tokens_per_s": units / max(seconds, 1e-9), "grad_norm": self._grad_norm,
                 "train_time": self.train_time}
        self.log.append(entry)
        self._window, self._window_start = [0.0, 0.0], self.train_time
        self._scalars("train", entry)
        return entry

    def _train_step(self, net: nn.Module, batch: Any, rank: int, world: int) -> tuple[float, float]:
        step = self.step + 1  # the number this update will have
        with torch.autocast(self._device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"):
            out = self.loss_fn(net, self.shard(batch, rank, world) if world > 1 else batch)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], torch.Tensor)
                and out[0].dim() == 0):
            raise ValueError(f"loss_fn: expected (loss_sum scalar tensor, count), got {_describe(out)}")
        loss_sum, count = out
        # One collective gives the global loss (for the log) and the global count (for the mean).
        # The third entry is this rank's pending signal, so every rank learns of any rank's at once.
        stats = torch.stack([loss_sum.detach().double(),
                             torch.as_tensor(count, dtype=torch.float64, device=loss_sum.device),
                             torch.tensor(float(bool(self._signal)), dtype=torch.float64, device=loss_sum.device)])
        g_loss, g_count, g_signal = D.all_sum(stats).tolist()
        self._interrupt_agreed = g_signal > 0
        if not g_count > 0:
            raise ValueError(f"loss_fn: expected a positive count of units at step {step}, got {g_count}")
        if not math.isfinite(g_loss):
            raise self._diverged(f"the training loss became {g_loss} at step {step} (summed over {g_count:g} units)")
        self.optimizer.zero_grad(set_to_none=True)
        # DDP divides the summed gradients by world: scaling by world/N here makes them grad(sum)/N.
        (loss_sum / (g_count / world)).backward()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or math.inf)
        if not math.isfinite(float(norm)):
            raise self._diverged(f"the gradient norm became {float(norm)} at step {step} (loss {g_loss / g_count:.4g})")
        self._grad_norm = float(norm)  # before clipping: the log shows how often clipping bites
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate of this update (the next is set below)
        self.optimizer.step()
        self.scheduler.step()
        self.step = step
        return g_loss / g_count, g_count

    _interrupt_agreed = False  # some rank got SIGINT / SIGTERM before the step just taken

    def _catch_signals(self) -> dict:
        """Route SIGINT and SIGTERM to a flag the loop reads after each step; returns the handlers
        to restore. Only the main thread may set handlers (a trainer fitted in another thread keeps
        Python's defaults)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._signal = self.interrupted_by = 0
        self._interrupt_agreed = False

        def handler(signum, frame):
            if self._signal:  # the second one: the user does not want to wait (checkpoints are atomic)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self._signal = signum
            if self.progress and D.is_main():
                name = signal.Signals(signum).name
                print(f"\n{name}: finishing step {self.step + 1}, then saving (again to exit at once)",
                      file=sys.stderr, flush=True)

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _diverged(self, what: str) -> DivergenceError:
        return DivergenceError(f"{what}; the weights were not updated and no checkpoint was written for this step "
                               f"(latest good one: {latest_checkpoint(self.run_dir)}). Lower lr or clip_norm.")

    def _evaluate(self, bar, final: bool = False) -> Optional[str]:
        """Evaluate on rank 0 and share the result with every rank; returns "goal" when ``stop_when``
        says the goal is reached, "early_stop" when patience ran out, else None (always None if ``final``)."""
        decision = None
        if D.is_main():
            was_training = self.model.training
            self.model.eval()
            py_state = random.getstate()
            cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            # Evaluation may sample; forking the RNGs keeps the training stream the same with or
            # without it, so changing eval_every does not change the trained weights.
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                raw = self.evaluate_fn(self.model)
            random.setstate(py_state)
            self.model.train(was_training)
            if not isinstance(raw, dict):
                raise ValueError(f"evaluate: expected a dict of metrics, got {type(raw).__name__}")
            metrics = {k: float(v) for k, v in raw.items()}
            if self.monitor not in metrics:
                raise ValueError(f"evaluate: expected the monitored metric {self.monitor!r}, got {sorted(metrics)}")
            value = metrics[self.monitor]
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            best, bad = (value, 0) if better else (self.best, self.bad_evals + 1)
            since = self._since_eval
            entry = {"step": self.step, "train_time": self.train_time,
                     **({"train_loss": since[0] / since[1]} if since[1] else {}), **metrics}
            stop = None
            if not final and self.stop_when is not None and self.stop_when(dict(metrics)):
                stop = "goal"  # the goal wins over patience: it says why the run is done
            elif not final and self.cfg.patience > 0 and bad >= self.cfg.patience:
                stop = "early_stop"
            decision = (metrics, best, bad, entry, stop, better)
            if self.progress:
                bar.write(f"step {self.step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                          + (" (best)" if better else ""))
        metrics, best, bad, entry, stop, better = D.broadcast_object(decision)
        self.metrics, self.best, self.bad_evals = metrics, best, bad
        self.history.append(entry)
        self._scalars("validation", entry)
        self._since_eval = [0.0, 0.0]
        if better and self.cfg.keep_best:
            self.save_best()
        return stop

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """The trainer's own JSON state, saved as ``extra["trainer"]`` in every checkpoint."""
        return {"step": self.step, "best": self.best, "bad_evals": self.bad_evals, "metrics": self.metrics,
                "history": self.history, "log": self.log, "stopped": self.stopped,
                "data": self.batches.state_dict(), "since_eval": self._since_eval, "window": self._window,
                "train_time": self.train_time, "window_start": self._window_start,
                "train_config": self.cfg.to_dict(), "world_size": D.get_world_size(), "plan": self.plan}

    def _extra(self) -> dict:
        """``extra()``'s JSON plus the trainer's state, for a checkpoint."""
        extra = dict(self.extra_fn() if self.extra_fn is not None else {})
        if "trainer" in extra:
            raise ValueError("extra(): expected keys other than 'trainer' (the trainer's own), got 'trainer'")
        extra["trainer"] = self.state()
        return extra

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current step (rank 0 writes; every rank must call this)."""
        rngs = D.all_gather_object(_rng_to_json()) if D.get_world_size() > 1 else None
        path = None
        if D.is_main():
            extra = self._extra()
            if rngs is not None:
                extra["trainer"]["rank_rng"] = rngs
            path = save_checkpoint(self.run_dir, step=self.step, model=self.model, config=self.config,
                                   optimizer=self.optimizer, scheduler=self.scheduler, extra=extra,
                                   keep=self.cfg.keep_checkpoints)
        D.barrier()  # nobody runs ahead of (or exits before) a checkpoint being complete
        return path

    def save_best(self) -> Optional[Path]:
        """Write the current weights as the run's best checkpoint, ``best-STEP`` (rank 0 writes;
        every rank must call this). It holds what ``load_run`` needs (config, ``extra()``, the
        trainer's state), not the optimizer: training resumes from ``latest``."""
        path = None
        if D.is_main():
            path = save_checkpoint(self.run_dir, step=self.step, model=self.model, config=self.config,
                                   extra=self._extra(), best=True)
        D.barrier()
        return path

    def _resume(self) -> bool:
        path = resumable_checkpoint(self.run_dir)  # 'latest' if whole, else the newest whole ckpt-*
        if path is None:
            warnings.warn(f"resume: no checkpoint in {self.run_dir}, starting from step 0")
            return False
        ckpt = load_checkpoint(path, model_class=self.config["model_class"])
        ts = ckpt.state.get("extra", {}).get("trainer")
        if not isinstance(ts, dict):
            raise CheckpointError(f"{path}: expected trainer state in extra['trainer'], got none")
        self.model.load_state_dict(ckpt.model_state)
        restore_training(ckpt, optimizer=self.optimizer, scheduler=self.scheduler, rng=True)
        # The saved schedule is back; the current config's horizon wins (e.g. more max_steps
        # to train longer), else the saved plan of a time-budgeted run. Unchanged settings
        # rewrite the same rates, so resume stays exact.
        self.plan = ts.get("plan")
        if self.cfg.max_steps or self.plan is None:
            self.scheduler.reconfigure(self.cfg.warmup_steps, self.cfg.max_steps or UNPLANNED, self.cfg.decay,
                                       self.cfg.min_lr_ratio)
        else:
            self.scheduler.reconfigure(self.plan["warmup_steps"], self.plan["total_steps"], self.cfg.decay,
                                       self.cfg.min_lr_ratio)
        self.batches.load_state_dict(ts["data"])
        self.step, self.best, self.bad_evals = ts["step"], ts["best"], ts["bad_evals"]
        self.metrics, self.history, self.log, self.stopped = ts["metrics"], ts["history"], ts["log"], ts["stopped"]
        self._since_eval, self._window = list(ts["since_eval"]), list(ts["window"])
        # Rank 0's clock for every rank; checkpoints written before train_time existed start it at 0.
        self.train_time = float(ts.get("train_time", 0.0))
        self._window_start = float(ts.get("window_start", self.train_time))
        rank, world = D.get_rank(), D.get_world_size()
        if rank > 0:
            saved = ts.get("rank_rng")
            if saved is not None and len(saved) == world:
                _rng_from_json(saved[rank])
            else:  # saved by another number of processes: a fresh but reproducible stream
                random.seed(self.cfg.seed + rank + 1_000_003 * self.step)
                torch.manual_seed(self.cfg.seed + rank + 1_000_003 * self.step)
        return True

    def summary(self) -> dict:
        best_path = best_checkpoint(self.run_dir) if D.is_main() else None
        return {"step": self.step, "metrics": self.metrics, "best": self.best, "history": self.history,
                "plan": self.plan, "signal": int(self.interrupted_by),
                "stopped": self.stopped or "max_steps", "log": self.log, "train_time": self.train_time,
                "best_checkpoint": None if best_path is None else str(best_path)}


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of ({', '.join(_describe(v) for v in x)})"
    return type(x).__name__
