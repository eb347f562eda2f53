"""Runs: train an application into a run directory, and rebuild it from that directory alone.

:func:`train_run` is what ``seqlab train`` does; :func:`load_run` is what every inference
command (and ``seqlab eval``) starts with. Settings are checked before any data is read or
any weight allocated, so a typo costs nothing.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import seqlab
from seqlab.models.config import ARCHS, KINDS
from seqlab.train.checkpoint import (BEST, Checkpoint, CheckpointError, RunLock, best_checkpoint, latest_checkpoint,
                                     load_checkpoint, remove_stale_temporaries, resumable_checkpoint)
from seqlab.train.loop import resolve_precision

from .base import App, ConfigError, holds_run, prepare_out, split_settings, write_json
from .classify import ClassifyApp
from .generate import GenerateApp
from .lm import LMApp
from .seq2seq import Seq2SeqApp
from .tag import TagApp

APPS: dict[str, type[App]] = {a.kind: a for a in (LMApp, ClassifyApp, TagApp, Seq2SeqApp, GenerateApp)}
if tuple(APPS) != KINDS:  # pragma: no cover - a new kind needs its app and its ModelConfig entry together
    raise ImportError(f"apps cover kinds {tuple(APPS)}, expected seqlab.models.config.KINDS {KINDS}")


def app_class(kind: str) -> type[App]:
    if kind not in APPS:
        raise ConfigError(f"unknown kind {kind!r}; expected one of {', '.join(APPS)}")
    return APPS[kind]


def _model_api():
    # Imported late: `seqlab info` and argument errors should not pay for building models.
    from seqlab.models import ModelConfig, build_model
    return ModelConfig, build_model


def _config_error(e: ValueError) -> ConfigError:
    return e if isinstance(e, ConfigError) else ConfigError(str(e).replace("\n", " "))


def setting_keys(kind: str) -> tuple[list[str], list[str], list[str]]:
    """The keys a ``train KIND`` run accepts: (model, train, data)."""
    from seqlab.train.loop import TrainConfig
    ModelConfig, _ = _model_api()
    return ([f.name for f in dataclasses.fields(ModelConfig)], [f.name for f in dataclasses.fields(TrainConfig)],
            list(app_class(kind).Options.keys()))


@dataclass
class Run:
    """A trained run rebuilt from its directory."""

    kind: str
    app: App
    model: nn.Module
    checkpoint: Checkpoint

    @property
    def config(self) -> dict:
        return self.checkpoint.config


def load_run(run_dir: str | Path, *, kind: Optional[str] = None, command: str = "") -> Run:
    """The application (options, vocabularies) and the model (weights loaded, eval mode) of the
    newest checkpoint of ``run_dir`` (or of the checkpoint ``run_dir`` names: ``RUN/best``, a
    checkpoint folder). ``kind``: the kind the caller needs; another kind is a CheckpointError
    naming both."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    cfg = ckpt.config
    where = ckpt.path
    got = cfg.get("kind") if isinstance(cfg, dict) else None
    if got not in APPS:
        raise CheckpointError(f"{where}: not a seqlab application run (expected a config with a kind in "
                              f"{list(APPS)}, got {got!r})")
    if kind is not None and got != kind:
        cmd = f"`seqlab {command}`" if command else "this command"
        raise CheckpointError(f"{run_dir}: holds a {got} model ({cfg.get('model_class')}), but {cmd} needs a "
                              f"{kind} model")
    ModelConfig, build_model = _model_api()
    try:
        app = APPS[got](APPS[got].Options.from_dict(cfg["data"]))
        app.load_vocab(ckpt.state["extra"]["vocab"])
        model = build_model(ModelConfig.from_dict(cfg["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: its config cannot rebuild the model ({type(e).__name__}: {e})") from None
    sizes = {k: v for k, v in app.model_sizes().items() if model.config.to_dict().get(k) != v}
    if sizes:  # a vocabulary edited apart from the model would fail later, on some id
        k, v = next(iter(sizes.items()))
        raise CheckpointError(f"{where}: its vocabulary gives {k}={v}, but the model was built with "
                              f"{k}={model.config.to_dict().get(k)}")
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{where}: weights do not fit the model its config describes "
                              f"({' '.join(first[:2])[:300]})") from None
    model.eval()
    return Run(got, app, model, ckpt)


def describe_settings(kind: str, mcfg: Any, tcfg: Any, options: Any, parameters: int) -> str:
    """The settings a run trains with, every one, as ``key=value`` words (what ``--config`` takes)."""
    def words(d: dict, skip: tuple = ()) -> str:
        return " ".join(f"{k}={v}" for k, v in d.items() if k not in skip and v is not None)
    steps = "" if tcfg.max_steps else f" (max_steps=0: as many steps as max_time={tcfg.max_time:g} s allows)"
    auto = (f" (precision=auto: {resolve_precision('auto', 'cpu')} on this CPU)"
            if tcfg.precision == "auto" else "")
    return (f"train {kind} {mcfg.arch}, {parameters:,} parameters{steps}{auto}\n"
            f"  model: {words(mcfg.to_dict(), ('kind', 'arch'))}\n  train: {words(tcfg.to_dict())}\n"
            f"  data:  {words(options.to_dict())}")


@dataclass
class _Plan:
    """What a run trains, settled before the run directory is touched."""

    app: App
    options: Any
    mcfg: Any  # ModelConfig
    tcfg: Any  # TrainConfig


def train_run(kind: str, *, arch: Optional[str] = None, task: Optional[str] = None, data: Optional[str] = None,
              valid: Optional[str] = None, test: Optional[str] = None, settings: Optional[dict[str, Any]] = None,
              out: str | Path, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Train a ``kind`` application into ``out`` (see ``seqlab train --help``); returns the
    trainer's result dict plus ``parameters``.

    Everything that can fail on the user's input (settings, data files, the output location)
    fails before the run directory is changed: with ``force`` the old run is removed only once
    the new one is ready to start. The run directory is locked (:class:`RunLock`) from then on,
    so a second writer stops with a CheckpointError naming the first one's pid.
    """
    from seqlab.train import distributed

    cls = app_class(kind)
    out = Path(out)
    if resume and force:
        raise ConfigError("give --resume or --force, not both")
    arch, settings = _arch_and_settings(cls, arch, dict(settings or {}), resume)
    model_s, train_s, data_s = _split_settings(kind, settings, data=data, valid=valid, test=test, task=task)
    rank, _ = distributed.setup()
    lock = RunLock(out)
    try:
        if resume:
            if rank == 0:
                if holds_run(out):
                    lock.acquire()  # before reading the checkpoint: nobody may be writing a newer one
                _check_resumable(out)
                remove_stale_temporaries(out)
            plan = _resume_plan(cls, arch, model_s, train_s, data_s, out)
        else:
            plan = _fresh_plan(cls, arch, model_s, train_s, data_s, out, force)
            if rank == 0:
                lock.acquire()
                prepare_out(out, force=force)  # the only place an old run is removed: all checks passed
        return _fit(kind, plan, out, resume=resume, progress=progress, rank=rank)
    finally:
        lock.release()
        distributed.cleanup()


def _arch_and_settings(cls: type[App], arch: Optional[str], settings: dict, resume: bool
                       ) -> tuple[Optional[str], dict]:
    """The arch (from --arch or an ``arch`` setting, which must agree) and the settings a fresh
    run starts from: the kind's defaults for the arch under the user's own."""
    if "arch" in settings or "model.arch" in settings:
        value = settings.pop("arch", None) or settings.pop("model.arch")
        if arch is not None and value != arch:
            raise ConfigError(f"--arch {arch} and arch={value!r} disagree; expected one arch")
        arch = value
    if arch is not None and arch not in ARCHS:
        raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if not resume and arch is not None:
        given = {key.rpartition(".")[2] for key in settings}
        settings = {**{k: v for k, v in cls.defaults(arch).items() if k not in given}, **settings}
    if not resume and settings.get("max_time") and "max_steps" not in settings:
        settings["max_steps"] = 0  # a time budget and no step count: the schedule follows the budget
    return arch, settings


def _split_settings(kind: str, settings: dict, **files: Optional[str]) -> tuple[dict, dict, dict]:
    """(model, train, data) settings, with --data / --valid / --test / --task in the data group."""
    model_s, train_s, data_s = split_settings(settings, *setting_keys(kind))
    for name in ("data", "valid", "test"):
        if files[name] is not None:
            data_s[name] = files[name]
        if isinstance(data_s.get(name), str):
            data_s[name] = str(Path(data_s[name]).resolve())  # eval / resume may run from another directory
    if files["task"] is not None:
        data_s["task"] = files["task"]
    return model_s, train_s, data_s


def _check_resumable(out: Path) -> None:
    if not holds_run(out):
        raise CheckpointError(f"--resume {out}: holds no run to resume (expected a 'latest' file and checkpoints)")
    if resumable_checkpoint(out) is None:
        if best_checkpoint(out) is not None:
            # stopped after its first evaluation but before its first checkpoint: best-* has the
            # weights but no optimizer state, so training cannot continue exactly from it
            raise CheckpointError(f"--resume {out}: the run stopped before its first checkpoint (no ckpt-* "
                                  f"folder), so there is nothing to resume; its best evaluation is kept in "
                                  f"{out / BEST} (weights only, for eval and sample); give --force to start "
                                  f"the run again")
        damaged = sorted(p.name for p in out.glob("ckpt-*") if p.is_dir())
        raise CheckpointError(f"--resume {out}: no checkpoint there is whole (checked {', '.join(damaged) or 'none'}"
                              f"); expected at least one that matches its manifest")
    pointed, found = latest_checkpoint(out), resumable_checkpoint(out)
    if pointed != found:
        what = f"'latest' names {pointed.name}, which is damaged" if pointed else "'latest' is missing"
        warnings.warn(f"--resume {out}: {what}; resuming from {found.name}, the newest whole checkpoint",
                      stacklevel=2)


def _resume_plan(cls: type[App], arch: Optional[str], model_s: dict, train_s: dict, data_s: dict,
                 out: Path) -> _Plan:
    """The app, its vocabulary and the settings of the run in ``out``; only training settings may change."""
    from seqlab.train.loop import TrainConfig

    ModelConfig, _ = _model_api()
    ckpt = load_checkpoint(resumable_checkpoint(out) or out)
    cfg = ckpt.config
    if cfg.get("kind") != cls.kind:
        raise CheckpointError(f"{out}: holds a {cfg.get('kind')} run, got `train {cls.kind} --resume`")
    try:
        fixed = cfg["model"] | cfg["data"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: not a seqlab {cls.kind} run ({type(e).__name__}: {e})") from None
    changed = {k: v for k, v in {**model_s, **data_s}.items() if fixed.get(k, object()) != v}
    if arch is not None and arch != cfg["model"].get("arch"):
        changed["arch"] = arch
    if changed:
        k, v = next(iter(changed.items()))
        raise ConfigError(f"--resume continues the run as it was: only training settings may change, "
                          f"got {k}={v!r} (the run has {fixed.get(k)!r})")
    try:
        options = cls.Options.from_dict(cfg["data"])
        app = cls(options)
        app.load_vocab(ckpt.state["extra"]["vocab"])
        mcfg = ModelConfig.from_dict(cfg["model"])
        tcfg = TrainConfig.from_dict({**cfg["train"], **train_s})
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: not a seqlab {cls.kind} run ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise _config_error(e) from None
    app.require("validation")  # fail now, not at the first evaluation, if there is none
    return _Plan(app, options, mcfg, tcfg)


def _fresh_plan(cls: type[App], arch: Optional[str], model_s: dict, train_s: dict, data_s: dict, out: Path,
                force: bool) -> _Plan:
    """Check every setting, then the output location, then read the data: each before the next
    costs anything, and all before anything in ``out`` changes."""
    from seqlab.train.loop import TrainConfig

    ModelConfig, _ = _model_api()
    if arch is None:
        raise ConfigError(f"--arch is required: expected one of {', '.join(ARCHS)}")
    try:
        probe = ModelConfig.from_dict({"kind": cls.kind, "arch": arch, "vocab_size": 8, "num_classes": 2, **model_s})
        tcfg = TrainConfig.from_dict(train_s)
    except ValueError as e:
        raise _config_error(e) from None
    options = cls.Options.from_dict(data_s)
    cls.check_model(probe, options)
    prepare_out(out, force=force, check_only=True)
    app = cls(options)
    app.build()
    app.check_splits()
    app.require("validation")  # fail now, not at the first evaluation, if there is none
    try:
        mcfg = ModelConfig.from_dict({"kind": cls.kind, "arch": arch, **app.model_sizes(), **model_s})
    except ValueError as e:
        raise _config_error(e) from None
    return _Plan(app, options, mcfg, tcfg)


def _fit(kind: str, plan: _Plan, out: Path, *, resume: bool, progress: bool, rank: int) -> dict:
    """Build the model of ``plan``, train it into ``out`` and write ``metrics.json`` (also when a
    signal stopped the run: it then describes the state the checkpoint holds)."""
    from seqlab.models import count_parameters
    from seqlab.train.loop import Trainer

    _, build_model = _model_api()
    app, mcfg, tcfg = plan.app, plan.mcfg, plan.tcfg
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg)
    if progress and rank == 0:
        print(describe_settings(kind, mcfg, tcfg, plan.options, count_parameters(model)), file=sys.stderr,
              flush=True)
    config = {"model_class": type(model).__name__, "kind": kind, "model": mcfg.to_dict(),
              "train": dataclasses.asdict(tcfg), "data": plan.options.to_dict(), "seqlab": seqlab.__version__}
    app.checkpoint_every = tcfg.checkpoint_every
    app.model_config = mcfg
    trainer = Trainer(model, tcfg, batches=app.batches(tcfg.batch_size, tcfg.seed), loss_fn=app.loss_fn,
                      evaluate=lambda m: app.evaluate(m, "validation", during_training=True), run_dir=out,
                      config=config, extra=lambda: {"vocab": app.vocab_dict()}, monitor=app.monitor,
                      mode=app.mode, progress=progress)
    result = dict(trainer.fit(resume=resume))
    result["parameters"] = count_parameters(model)
    if rank == 0:
        write_json(out / "metrics.json", {"kind": kind, "step": result.get("step"),
                                          "metrics": result.get("metrics"), "best": result.get("best"),
                                          "stopped": result.get("stopped"),
                                          "best_checkpoint": result.get("best_checkpoint"),
                                          "parameters": result["parameters"]})
    return result
