"""Checkpoints that never lose data and never unpickle.

A run directory holds numbered checkpoints, a pointer to the newest and, when the
trainer evaluates, a copy of the best-scoring one with its own pointer::

    RUN/
      latest                 # text: the name of the newest complete checkpoint
      best                   # text: the name of the best-scoring one (best-STEP)
      best-00000150/         # weights and state as below, no optimizer state
      ckpt-00000200/
        model.safetensors    # the weights
        train.safetensors    # optimizer tensors and torch RNG states
        state.json           # config, vocabulary, metrics, step, optimizer/scheduler scalars,
                             # Python RNG, data position, and the sha256 of both tensor files

A checkpoint is first written completely into a hidden temporary folder,
flushed, then renamed into place; ``latest`` is replaced by ``os.replace``.
A crash at any moment therefore leaves the previous checkpoint intact and
``latest`` pointing at a complete one. Weights are safetensors and everything
else is JSON, so loading a checkpoint runs no code from it. ``load_checkpoint``
takes a checkpoint folder, a run directory (its newest) or a pointer file
(``RUN/best``, ``RUN/latest``).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "seqlab-checkpoint-1"
LATEST = "latest"
BEST = "best"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or belongs to another model."""


@dataclass
class Checkpoint:
    """What a checkpoint holds once loaded (tensors on the CPU)."""

    path: Path
    model_state: dict[str, torch.Tensor]
    state: dict[str, Any]  # the parsed state.json
    train_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def config(self) -> dict:
        return self.state["config"]


# ----------------------------------------------------------------------------
# Pieces of training state as (JSON, tensors)


def _optimizer_split(sd: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """torch optimizer state_dict -> (JSON-able dict, flat tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        scalars[str(idx)] = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[str(idx)][name] = v
    return {"scalars": scalars, "param_groups": sd["param_groups"]}, tensors


def _optimizer_join(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["scalars"].items()}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])  # JSON has no tuples; Adam's code unpacks either
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Every random generator training touches: Python's and torch's (CPU, and CUDA if present)."""
    version, internal, gauss = random.getstate()
    tensors = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda_{i}"] = s
    return {"python": [version, list(internal), gauss]}, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["rng/torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# Saving and loading


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    config: dict,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    extra: Optional[dict] = None,
    keep: int = 2,
    best: bool = False,
) -> Path:
    """Write checkpoint ``ckpt-{step}`` into ``run_dir`` atomically and point ``latest`` at it.

    ``config`` must hold ``model_class`` (checked on load); ``extra`` carries
    anything JSON-able the caller needs back (vocabulary, metrics, data
    position). The ``keep`` newest checkpoints are kept, older ones removed.
    ``best``: write ``best-{step}`` and point ``best`` at it instead, keeping only
    that one of the best-* folders (``latest`` and the ckpt-* folders are left alone).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix, pointer, keep = ("best", BEST, 1) if best else ("ckpt", LATEST, keep)
    name = f"{prefix}-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=run_dir))
    try:
        # Shared storage (tied weights) is saved once per name; safetensors refuses aliases.
        model_state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(model_state, str(tmp / "model.safetensors"))
        train_tensors: dict[str, torch.Tensor] = {}
        state: dict[str, Any] = {"format": FORMAT, "step": int(step), "config": config, "extra": extra or {}}
        if optimizer is not None:
            state["optimizer"], t = _optimizer_split(optimizer.state_dict())
            train_tensors.update(t)
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        state["rng"], t = rng_state()
        train_tensors.update(t)
        save_file(train_tensors, str(tmp / "train.safetensors"))
        state["sha256"] = {f: _sha256(tmp / f) for f in ("model.safetensors", "train.safetensors")}
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        for f in ("model.safetensors", "train.safetensors"):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
        final = run_dir / name
        if final.exists():  # re-saving the same step (e.g. a resumed run's end): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer_tmp = run_dir / f".{pointer}.tmp"
    pointer_tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(pointer_tmp, run_dir / pointer)
    _fsync_dir(run_dir)
    for old in sorted(p for p in run_dir.glob(f"{prefix}-*") if p.is_dir())[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _pointed(pointer: Path) -> Optional[Path]:
    """The checkpoint folder a pointer file (``latest``, ``best``) names, or None."""
    if not pointer.is_file():
        return None
    try:
        with open(pointer, encoding="utf-8") as f:
            name = f.read(256).strip()  # a folder name; not a whole file a user passed by mistake
    except (OSError, UnicodeDecodeError):
        return None
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    path = pointer.parent / name
    return path if path.is_dir() else None


def latest_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint of ``run_dir``, or None if it holds none."""
    return _pointed(Path(run_dir) / LATEST)


def best_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The best-scoring checkpoint of ``run_dir`` (written by the trainer when it evaluates), or None."""
    return _pointed(Path(run_dir) / BEST)


def load_checkpoint(path: str | os.PathLike, *, model_class: Optional[str] = None) -> Checkpoint:
    """Load a checkpoint folder, the newest one of a run directory, or the one a pointer file
    (``RUN/best``, ``RUN/latest``) names, and verify it.

    Raises CheckpointError naming what is wrong: no checkpoint, a missing or
    corrupted file (sha256 mismatch, truncated safetensors, invalid JSON), or
    a checkpoint made by another model class than ``model_class``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if path.is_file():
        found = _pointed(path)
        if found is None:
            raise CheckpointError(f"{path}: is a file that names no checkpoint folder next to it (expected a "
                                  f"checkpoint folder, a run directory or a pointer file such as RUN/best)")
        path = found
    if not (path / "state.json").exists():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: holds no checkpoint (expected a 'latest' file or a state.json)")
        path = found
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'state.json'}: unreadable or corrupted ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'state.json'}: expected format {FORMAT!r}, "
                              f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
    tensors = {}
    for fname in ("model.safetensors", "train.safetensors"):
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: missing")
        want = state.get("sha256", {}).get(fname)
        got = _sha256(fpath)
        if want != got:
            raise CheckpointError(f"{fpath}: corrupted or truncated (sha256 {got[:12]}…, expected {str(want)[:12]}…)")
        try:
            tensors[fname] = load_file(str(fpath))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{fpath}: not a valid safetensors file ({e})") from None
    saved_class = state.get("config", {}).get("model_class")
    if model_class is not None and saved_class != model_class:
        raise CheckpointError(f"{path}: made by model {saved_class!r}, expected {model_class!r}")
    return Checkpoint(path, tensors["model.safetensors"], state, tensors["train.safetensors"])


def restore_training(ckpt: Checkpoint, *, optimizer=None, scheduler=None, rng: bool = True) -> None:
    """Put optimizer, scheduler and RNG back as they were when ``ckpt`` was saved."""
    if optimizer is not None:
        if "optimizer" not in ckpt.state:
            raise CheckpointError(f"{ckpt.path}: holds no optimizer state")
        optimizer.load_state_dict(_optimizer_join(ckpt.state["optimizer"], ckpt.train_tensors))
    if scheduler is not None and "scheduler" in ckpt.state:
        scheduler.load_state_dict(ckpt.state["scheduler"])
    if rng:
        set_rng_state(ckpt.state["rng"], ckpt.train_tensors)
