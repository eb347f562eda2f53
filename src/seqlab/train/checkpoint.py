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
                             # Python RNG, data position
        manifest.json        # the sha256 of the three files above
      .lock                  # held (flock) by the one process writing the run: RunLock

A checkpoint is first written completely into a hidden temporary folder,
flushed, then renamed into place; ``latest`` is replaced by ``os.replace`` from
a uniquely named, fsynced temporary file (:func:`atomic_write_text`). A crash at
any moment therefore leaves the previous checkpoint intact and ``latest``
pointing at a complete one; :func:`resumable_checkpoint` finds the newest
complete one even if ``latest`` is lost, and :func:`remove_stale_temporaries`
clears what a crash left half-written. Every file is covered by the manifest,
the vocabulary in state.json included, so a damaged checkpoint fails when it is
loaded rather than later. Weights are safetensors and everything else is JSON,
so loading a checkpoint runs no code from it. ``load_checkpoint`` takes a
checkpoint folder, a run directory (its newest) or a pointer file (``RUN/best``,
``RUN/latest``).
"""
from __future__ import annotations

import errno
import fcntl
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
MANIFEST = "manifest.json"
LOCK = ".lock"
HASHED = ("model.safetensors", "train.safetensors", "state.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or belongs to another model."""


class RunLockedError(CheckpointError):
    """Another process is writing the run directory."""


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by a file holding ``text``, all or nothing.

    The text goes to a uniquely named temporary file beside ``path`` (two writers never share
    one), is fsynced, renamed over ``path`` and the directory fsynced, so a crash leaves either
    the old file or the new one, never a mix, and no fixed-name leftover for the next writer.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a run's files from the other users of a machine
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


class RunLock:
    """The one writer of a run directory: an exclusive ``flock`` on ``RUN/.lock``, held from
    before the run's files are touched until it ends.

    The OS drops the lock when the process dies however it dies, so a crash never leaves a
    stale lock; the file keeps the holder's pid for the message a second writer gets. The file
    is never deleted: unlinking it would let two processes hold locks on two different files.

    >>> with RunLock(run_dir):      # doctest: +SKIP
    ...     train()
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"{self.run_dir}: another seqlab process (pid {holder}) is writing this run; "
                                     f"expected one writer per run directory (wait for it, or use another --out)"
                                     ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes left in ``run_dir`` (hidden ``.ckpt-*`` / ``.best-*``
    folders, ``.*.tmp`` files); returns them. Call it only while holding the run's lock: another
    writer's temporaries look the same."""
    run_dir = Path(run_dir)
    gone = []
    if not run_dir.is_dir():
        return gone
    for p in run_dir.iterdir():
        if p.name.startswith((".ckpt-", ".best-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
        elif p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


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
        state["manifest"] = MANIFEST  # a state.json that names its manifest cannot be loaded without it
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        manifest = {"format": FORMAT, "sha256": {f: _sha256(tmp / f) for f in HASHED}}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        for f in (*HASHED, MANIFEST):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = run_dir / name
        if final.exists():  # re-saving the same step (e.g. a resumed run's end): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run_dir / pointer, name + "\n")
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
        found = latest_checkpoint(path) or resumable_checkpoint(path)  # 'latest' lost: the newest whole one
        if found is None:
            raise CheckpointError(f"{path}: holds no checkpoint (expected a 'latest' file or a state.json)")
        path = found
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path / 'state.json'}: missing")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'state.json'}: unreadable or corrupted ({e})") from None
    _check_state(path, state)
    _verify_files(path)
    tensors = {}
    for fname in ("model.safetensors", "train.safetensors"):
        fpath = path / fname
        try:
            tensors[fname] = load_file(str(fpath))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{fpath}: not a valid safetensors file ({e})") from None
    saved_class = state["config"].get("model_class")
    if model_class is not None and saved_class != model_class:
        raise CheckpointError(f"{path}: made by model {saved_class!r}, expected {model_class!r}")
    return Checkpoint(path, tensors["model.safetensors"], state, tensors["train.safetensors"])


def _verify_files(path: Path) -> None:
    """Check every file of checkpoint folder ``path`` against its manifest (or, for checkpoints
    written before the manifest, the tensor files against the sha256 in state.json)."""
    for fname in ("model.safetensors", "train.safetensors", "state.json"):
        if not (path / fname).is_file():
            raise CheckpointError(f"{path / fname}: missing")
    if (path / MANIFEST).is_file():
        try:
            want = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["sha256"]
            if not isinstance(want, dict):
                raise TypeError(f"sha256 is a {type(want).__name__}")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path / MANIFEST}: unreadable or corrupted ({e})") from None
        names = HASHED
    else:
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path / 'state.json'}: unreadable or corrupted ({e})") from None
        if isinstance(state, dict) and state.get("manifest"):
            raise CheckpointError(f"{path / MANIFEST}: missing (state.json says the checkpoint has one)")
        want = state.get("sha256", {}) if isinstance(state, dict) else {}
        want = want if isinstance(want, dict) else {}
        names = ("model.safetensors", "train.safetensors")
    for fname in names:
        got = _sha256(path / fname)
        if want.get(fname) != got:
            raise CheckpointError(f"{path / fname}: corrupted or truncated (sha256 {got[:12]}…, "
                                  f"expected {str(want.get(fname))[:12]}…)")


def _check_state(path: Path, state: Any) -> None:
    """The shape of a state.json: what every reader of it relies on, checked once here."""
    where = path / "state.json"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where}: expected format {FORMAT!r}, "
                              f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
    for key, typ, what in (("step", int, "an int"), ("config", dict, "a JSON object"),
                           ("extra", dict, "a JSON object")):
        value = state.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise CheckpointError(f"{where}: expected '{key}' to be {what}, got {value!r:.60}")


def resumable_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint a run resumes from: the one ``latest`` names if it is whole, else the
    newest ``ckpt-*`` folder that verifies (a crash or a user may have lost ``latest``), else None."""
    run_dir = Path(run_dir)
    pointed = latest_checkpoint(run_dir)
    candidates = ([pointed] if pointed is not None else []) + sorted(
        (p for p in run_dir.glob("ckpt-*") if p.is_dir() and p != pointed), reverse=True)
    for path in candidates:
        try:
            _verify_files(path)
            _check_state(path, json.loads((path / "state.json").read_text(encoding="utf-8")))
        except (CheckpointError, OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        return path
    return None


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
