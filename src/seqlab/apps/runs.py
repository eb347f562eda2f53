"""Runs: train an application into a run directory, and rebuild it from that directory alone.

:func:`train_run` is what ``seqlab train`` does; :func:`load_run` is what every inference
command (and ``seqlab eval``) starts with. Settings are checked before any data is read or
any weight allocated, so a typo costs nothing.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import seqlab
from seqlab.train.checkpoint import (BEST, Checkpoint, CheckpointError, best_checkpoint, latest_checkpoint,
                                     load_checkpoint)

from .base import App, ConfigError, holds_run, prepare_out, split_settings, write_json
from .classify import ClassifyApp
from .generate import GenerateApp
from .lm import LMApp
from .seq2seq import Seq2SeqApp
from .tag import TagApp

APPS: dict[str, type[App]] = {a.kind: a for a in (LMApp, ClassifyApp, TagApp, Seq2SeqApp, GenerateApp)}


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
    return (f"train {kind} {mcfg.arch}, {parameters:,} parameters{steps}\n"
            f"  model: {words(mcfg.to_dict(), ('kind', 'arch'))}\n  train: {words(tcfg.to_dict())}\n"
            f"  data:  {words(options.to_dict())}")


def train_run(kind: str, *, arch: Optional[str] = None, task: Optional[str] = None, data: Optional[str] = None,
              valid: Optional[str] = None, test: Optional[str] = None, settings: Optional[dict[str, Any]] = None,
              out: str | Path, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Train a ``kind`` application into ``out`` (see ``seqlab train --help``); returns the
    trainer's result dict plus ``parameters``."""
    from seqlab.models import count_parameters
    from seqlab.train import distributed
    from seqlab.train.loop import Trainer, TrainConfig

    ModelConfig, build_model = _model_api()
    cls = app_class(kind)
    out = Path(out)
    settings = dict(settings or {})
    if "arch" in settings or "model.arch" in settings:
        value = settings.pop("arch", None) or settings.pop("model.arch")
        if arch is not None and value != arch:
            raise ConfigError(f"--arch {arch} and arch={value!r} disagree; expected one arch")
        arch = value
    if not resume and arch is not None:
        given = {key.rpartition(".")[2] for key in settings}
        settings = {**{k: v for k, v in cls.defaults(arch).items() if k not in given}, **settings}
    if not resume and settings.get("max_time") and "max_steps" not in settings:
        settings["max_steps"] = 0  # a time budget and no step count: the schedule follows the budget
    model_s, train_s, data_s = split_settings(settings, *setting_keys(kind))
    for name, value in {"data": data, "valid": valid, "test": test}.items():
        if value is not None:
            data_s[name] = value
    for name in ("data", "valid", "test"):
        if isinstance(data_s.get(name), str):
            data_s[name] = str(Path(data_s[name]).resolve())  # eval / resume may run from another directory
    if task is not None:
        data_s["task"] = task

    rank, world = distributed.setup()
    try:
        if resume:
            if force:
                raise ConfigError("give --resume or --force, not both")
            if not holds_run(out):
                raise CheckpointError(f"--resume {out}: holds no run to resume (expected a 'latest' file and "
                                      f"checkpoints)")
            if latest_checkpoint(out) is None and best_checkpoint(out) is not None:
                # stopped after its first evaluation but before its first checkpoint: best-* has the
                # weights but no optimizer state, so training cannot continue exactly from it
                raise CheckpointError(f"--resume {out}: the run stopped before its first checkpoint ('latest' "
                                      f"is missing), so there is nothing to resume; its best evaluation is "
                                      f"kept in {out / BEST} (weights only, for eval and sample); give "
                                      f"--force to start the run again")
            ckpt = load_checkpoint(out)
            cfg = ckpt.config
            if cfg.get("kind") != kind:
                raise CheckpointError(f"{out}: holds a {cfg.get('kind')} run, got `train {kind} --resume`")
            changed = {k: v for k, v in {**model_s, **data_s}.items()
                       if (cfg["model"] | cfg["data"]).get(k, object()) != v}
            if arch is not None and arch != cfg["model"]["arch"]:
                changed["arch"] = arch
            if changed:
                k, v = next(iter(changed.items()))
                raise ConfigError(f"--resume continues the run as it was: only training settings may change, "
                                  f"got {k}={v!r} (the run has {(cfg['model'] | cfg['data']).get(k)!r})")
            try:
                options = cls.Options.from_dict(cfg["data"])
                app = cls(options)
                app.load_vocab(ckpt.state["extra"]["vocab"])
                mcfg = ModelConfig.from_dict(cfg["model"])
                tdict = {**cfg["train"], **train_s}
            except (KeyError, TypeError) as e:
                raise CheckpointError(f"{ckpt.path}: not a seqlab {kind} run ({type(e).__name__}: {e})") from None
        else:
            if arch is None:
                raise ConfigError("--arch is required: expected one of rnn, lstm, gru, transformer, mingru, minlstm")
            # Check every setting before reading data or touching the output directory.
            try:
                ModelConfig.from_dict({"kind": kind, "arch": arch, "vocab_size": 8, "num_classes": 2, **model_s})
                TrainConfig.from_dict(train_s)
            except ValueError as e:
                raise _config_error(e) from None
            options = cls.Options.from_dict(data_s)
            prepare_out(out, force=force, check_only=True)  # before the data: fail fast
            app = cls(options)
            app.build()
            if rank == 0:
                prepare_out(out, force=force)
            mcfg = None
            tdict = train_s
        app.examples("validation")  # fail now, not at the first evaluation, if there is none
        try:
            tcfg = TrainConfig.from_dict(tdict)
            if mcfg is None:
                mcfg = ModelConfig.from_dict({"kind": kind, "arch": arch, **app.model_sizes(), **model_s})
        except ValueError as e:
            raise _config_error(e) from None
        torch.manual_seed(tcfg.seed)
        model = build_model(mcfg)
        if progress and rank == 0:
            print(describe_settings(kind, mcfg, tcfg, options, count_parameters(model)), file=sys.stderr, flush=True)
        config = {"model_class": type(model).__name__, "kind": kind, "model": mcfg.to_dict(),
                  "train": dataclasses.asdict(tcfg), "data": options.to_dict(), "seqlab": seqlab.__version__}
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
    finally:
        distributed.cleanup()
