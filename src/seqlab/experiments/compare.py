"""``seqlab compare``: run the experiment grid that tests the textbook claims, and write the report.

The grid is a list of *cells*, each one JSON record in ``DIR/results.json`` under a key:

==========================  =================================================================
key                         what it holds
==========================  =================================================================
copy/ARCH/T{T}              copy-memory training: loss vs baseline, recalled-symbol accuracy
adding/ARCH/T{T}            adding-problem training: MSE vs 1/6
ablation/adding/lstm/T{T}   the LSTM again with torch.nn's forget-gate init (forget_bias None)
gradflow/ARCH               ||dL/dh_t|| vs T - t at initialisation and after training (adding
                            task); for rnn also with W_hh rescaled to several spectral norms
speed/ARCH                  training tokens/s, latency per token, activation memory vs length
gates/TASK/ARCH             LSTM forget gate / GRU update gate over time, init and trained
lm/ARCH/P{params}           character LM: validation bits per character against time
==========================  =================================================================

``results.json`` is rewritten atomically after every cell, each cell with the exact config (and
seed) that produced it. A cell is skipped on a later run when a record with the same config is
already there, so an interrupted compare resumes where it stopped; change a setting and only the
cells it touches run again. The memory cells are trained by :class:`seqlab.train.Trainer`
(through :func:`seqlab.experiments.tasks.train_memory`), whose one final checkpoint per cell lies
under ``DIR/models/`` so that the gradient-flow and gate cells can read them after a resume.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import SECTIONS
from .tasks import ARCHS, MemoryConfig, build_memory_model, train_memory

FORMAT = "seqlab-compare-1"
RECURRENT = ("rnn", "lstm", "gru")


@dataclass
class CompareConfig:
    """Everything that decides what ``seqlab compare`` runs. ``quick()`` and ``full()`` are the profiles."""

    profile: str = "quick"
    archs: tuple = ARCHS
    sections: tuple = SECTIONS
    copy_T: tuple = (10, 25)
    adding_T: tuple = (50,)
    # Training seconds per (task, arch, T) cell: 60 s keeps the quick profile near 10 minutes,
    # and the 40K GRU needs about 8000 steps (batch 32) to solve copy memory at T = 10, about
    # 60 s at 130 steps/s on one core.
    budget: float = 60.0
    # Bai et al. (2018) used about 16K for copy memory; at 16K neither gated RNN reached 75% recall
    # at T = 10 in 60 s (lr 1e-2), at 40K the GRU solves it.
    copy_params: int = 40_000
    adding_params: int = 16_000          # Bai et al.: about 70K for adding (the full profile uses that)
    batch_size: int = 32                 # 16 and 64 learned copy memory slower per second
    lr: float = 1e-2                     # Adam, the recurrent models; 1e-3 and 2e-3 solved no copy lag
    transformer_lr_scale: float = 0.1    # the transformer at 1e-3, where it solved copy up to T = 100
    forget_bias: Optional[float] = 1.0
    gradflow_T: int = 100                # adding-task length for gradient flow (a trained cell if run)
    gradflow_sigmas: tuple = (0.5, 1.5, 3.0)
    speed_lengths: tuple = (64, 128, 256, 512, 1024)
    speed_batch: int = 8
    speed_repeats: int = 7               # median of these, after a warm-up
    speed_max_step_seconds: float = 5.0
    lm_budget: float = 25.0
    lm_params: tuple = (30_000,)
    lm_train_chars: int = 1_000_000
    lm_valid_chars: int = 20_000
    seed: int = 0
    threads: int = 1                     # torch threads; 1 is fastest for these small models on a shared CPU

    @classmethod
    def quick(cls, **kw) -> "CompareConfig":
        return cls(**kw)

    @classmethod
    def full(cls, **kw) -> "CompareConfig":
        base = dict(profile="full", copy_T=(10, 25, 50, 100, 200, 500, 1000), adding_T=(50, 100, 200, 600),
                    budget=600.0, adding_params=70_000, gradflow_T=200,
                    speed_lengths=(64, 128, 256, 512, 1024, 2048, 4096), speed_max_step_seconds=30.0,
                    lm_budget=600.0, lm_params=(50_000, 200_000), lm_train_chars=2_000_000,
                    lm_valid_chars=100_000)
        base.update(kw)
        return cls(**base)

    def __post_init__(self) -> None:
        self.archs = tuple(self.archs)
        self.sections = tuple(self.sections)
        for a in self.archs:
            if a not in ARCHS:
                raise ValueError(f"expected archs from {','.join(ARCHS)}, got {a!r}")
        for s in self.sections:
            if s not in SECTIONS:
                raise ValueError(f"expected tasks from {','.join(SECTIONS)}, got {s!r}")
        if not self.archs:
            raise ValueError("expected at least one arch, got none")
        if self.budget <= 0 or self.lm_budget <= 0:
            raise ValueError(f"expected budgets > 0 seconds, got budget={self.budget}, lm_budget={self.lm_budget}")
        for name in ("copy_T", "adding_T", "gradflow_sigmas", "speed_lengths", "lm_params"):
            setattr(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: dict) -> "CompareConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CompareConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------
# results.json


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_results(out: Path) -> dict:
    path = out / "results.json"
    if not path.exists():
        return {"format": FORMAT, "cells": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected a results file written by seqlab compare, got unreadable JSON ({e})")
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, got {data.get('format')!r}")
    return data


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------
# The cells


@dataclass
class Cell:
    key: str
    config: dict                               # compared on resume
    run: Callable[[Callable[[float], None]], dict]
    estimate: float                            # seconds, for the progress bar
    needs: tuple = field(default_factory=tuple)  # keys whose records must exist first


def _model_dir(out: Path, key: str) -> Path:
    return out / "models" / key.replace("/", "-")


def _load_model(out: Path, key: str):
    from ..train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(_model_dir(out, key), model_class="MemoryModel")
    model = build_memory_model(MemoryConfig.from_dict(ckpt.config["memory"]))
    model.load_state_dict(ckpt.model_state)
    return model


def _memory_cell(cfg: CompareConfig, out: Path, task: str, arch: str, T: int, *, ablation: bool = False) -> Cell:
    # the ablation trains the LSTM with torch.nn's forget-gate init instead of cfg.forget_bias
    mc = MemoryConfig(task=task, arch=arch, T=T, budget=cfg.budget, batch_size=cfg.batch_size, lr=cfg.lr,
                      transformer_lr_scale=cfg.transformer_lr_scale,
                      forget_bias=None if ablation else cfg.forget_bias, seed=cfg.seed,
                      target_params=cfg.copy_params if task == "copy" else cfg.adding_params)
    key = f"ablation/{task}/{arch}/T{T}" if ablation else f"{task}/{arch}/T{T}"

    def run(tick):
        run_dir = _model_dir(out, key)
        # A rerun (changed config) starts fresh: a stale checkpoint with more steps would sort after
        # the new one and be the one that the gradient-flow and gate cells load.
        shutil.rmtree(run_dir, ignore_errors=True)
        return train_memory(mc, run_dir=run_dir, tick=tick).record

    return Cell(key, mc.to_dict(), run, cfg.budget)


def _finished(results: dict, key: str) -> Optional[str]:
    rec = results["cells"].get(key)
    return None if rec is None else rec.get("finished_at")


def _gradflow_cell(cfg: CompareConfig, out: Path, results: dict, arch: str) -> Cell:
    from . import gradflow

    T = cfg.gradflow_T
    if "adding" in cfg.sections and cfg.adding_T:
        # measure where a trained model exists: the adding length closest to the asked one
        T = min(cfg.adding_T, key=lambda n: (abs(n - cfg.gradflow_T), -n))
    source = f"adding/{arch}/T{T}"
    conf = {"task": "adding", "T": T, "arch": arch, "seed": cfg.seed, "params": cfg.adding_params,
            "sigmas": list(cfg.gradflow_sigmas) if arch == "rnn" else [], "batch_size": 16,
            "trained_from": source, "trained_at": _finished(results, source)}

    def run(tick):
        torch.manual_seed(cfg.seed)
        model = build_memory_model(MemoryConfig("adding", arch, T, target_params=cfg.adding_params,
                                                forget_bias=cfg.forget_bias))
        rec = {"config": conf, "init": gradflow.gradient_profile(model, "adding", T)}
        if arch == "rnn":
            rec["sigma"] = {}
            for s in cfg.gradflow_sigmas:
                torch.manual_seed(cfg.seed)  # the same initial weights, only W_hh rescaled
                m = build_memory_model(MemoryConfig("adding", arch, T, target_params=cfg.adding_params))
                rec["sigma_init"] = gradflow.scale_spectral_norm(m, s)  # the default init's largest singular value
                rec["sigma"][str(s)] = gradflow.gradient_profile(m, "adding", T)
        if conf["trained_at"] is not None:
            rec["trained"] = gradflow.gradient_profile(_load_model(out, source), "adding", T)
        else:
            rec["trained"] = None
            rec["trained_missing"] = f"no trained model: the cell {source} was not run in this profile"
        tick(1.0)
        return rec

    return Cell(f"gradflow/{arch}", conf, run, 5.0 + (10.0 if arch == "rnn" else 0.0))


def _gates_cell(cfg: CompareConfig, out: Path, results: dict, task: str, arch: str) -> Cell:
    from .gates import gate_statistics

    Ts = cfg.copy_T if task == "copy" else cfg.adding_T
    # the longest lag this arch solved, else the shortest run: the gates of a model that learned the task
    solved = [T for T in Ts if results["cells"].get(f"{task}/{arch}/T{T}", {}).get("solved")]
    T = max(solved) if solved else min(Ts)
    source = f"{task}/{arch}/T{T}"
    params = cfg.copy_params if task == "copy" else cfg.adding_params
    conf = {"task": task, "arch": arch, "T": T, "seed": cfg.seed, "trained_from": source,
            "trained_at": _finished(results, source)}

    def run(tick):
        torch.manual_seed(cfg.seed)
        model = build_memory_model(MemoryConfig(task, arch, T, target_params=params, forget_bias=cfg.forget_bias))
        rec = {"config": conf, "init": gate_statistics(model, task, T)}
        rec["trained"] = gate_statistics(_load_model(out, source), task, T) if conf["trained_at"] else None
        rec["solved"] = bool(solved)
        tick(1.0)
        return rec

    return Cell(f"gates/{task}/{arch}", conf, run, 2.0)


def _speed_cell(cfg: CompareConfig, arch: str) -> Cell:
    from .speed import measure_speed

    conf = {"arch": arch, "lengths": list(cfg.speed_lengths), "batch_size": cfg.speed_batch,
            "params": cfg.copy_params, "max_step_seconds": cfg.speed_max_step_seconds, "seed": cfg.seed,
            "threads": cfg.threads, "repeats": cfg.speed_repeats}
    per = 4.0 if arch != "transformer" else 6.0

    def run(tick):
        return measure_speed(arch, list(cfg.speed_lengths), batch_size=cfg.speed_batch, repeats=cfg.speed_repeats,
                             target_params=cfg.copy_params, max_step_seconds=cfg.speed_max_step_seconds,
                             seed=cfg.seed, tick=lambda: tick(per))

    return Cell(f"speed/{arch}", conf, run, per * len(cfg.speed_lengths))


def _lm_cell(cfg: CompareConfig, arch: str, params: int) -> Cell:
    from .lm import LMCellConfig, train_lm

    lc = LMCellConfig(arch=arch, target_params=params, budget=cfg.lm_budget, train_chars=cfg.lm_train_chars,
                      valid_chars=cfg.lm_valid_chars, seed=cfg.seed)
    return Cell(f"lm/{arch}/P{params}", lc.to_dict(), lambda tick: train_lm(lc, tick=tick), cfg.lm_budget)


def plan(cfg: CompareConfig, out: Path, results: dict) -> list[Callable[[], Cell]]:
    """The cells in run order, as thunks: derived cells are planned when their turn comes, so they see
    the records (and solved lags) of the training cells run before them."""
    thunks: list[Callable[[], Cell]] = []
    for task, Ts in (("copy", cfg.copy_T), ("adding", cfg.adding_T)):
        if task in cfg.sections:
            for T in Ts:
                for arch in cfg.archs:
                    thunks.append(lambda task=task, arch=arch, T=T: _memory_cell(cfg, out, task, arch, T))
    if "ablation" in cfg.sections and "adding" in cfg.sections and "lstm" in cfg.archs and cfg.forget_bias is not None:
        for T in cfg.adding_T:
            thunks.append(lambda T=T: _memory_cell(cfg, out, "adding", "lstm", T, ablation=True))
    if "gradflow" in cfg.sections:
        for arch in cfg.archs:
            thunks.append(lambda arch=arch: _gradflow_cell(cfg, out, results, arch))
    if "gates" in cfg.sections:
        for task in ("copy", "adding"):
            if task in cfg.sections:
                for arch in cfg.archs:
                    if arch in ("lstm", "gru"):
                        thunks.append(lambda task=task, arch=arch: _gates_cell(cfg, out, results, task, arch))
    if "speed" in cfg.sections:
        for arch in cfg.archs:
            thunks.append(lambda arch=arch: _speed_cell(cfg, arch))
    if "lm" in cfg.sections:
        for params in cfg.lm_params:
            for arch in cfg.archs:
                thunks.append(lambda arch=arch, params=params: _lm_cell(cfg, arch, params))
    return thunks


def _json_safe(obj: Any) -> Any:
    """Round-trip through JSON so that a stored config compares equal to a fresh one (tuples -> lists)."""
    return json.loads(json.dumps(obj))


def run_compare(cfg: CompareConfig, out: str | os.PathLike, *, progress: bool = True, report: bool = True) -> dict:
    """Run (or resume) the grid of ``cfg`` into ``out``; write results.json after every cell, then the report.

    Returns the results dict; ``results["ran"]`` lists the cells run this time, ``results["skipped"]``
    those found finished with the same config.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    results = load_results(out)
    results.update(format=FORMAT, profile=cfg.to_dict(), environment=environment())
    thunks = plan(cfg, out, results)
    ran, skipped = [], []
    started = time.time()
    # A first estimate of the total from the planned training budgets; refined as cells finish.
    n_memory = sum(len(Ts) for s, Ts in (("copy", cfg.copy_T), ("adding", cfg.adding_T)) if s in cfg.sections)
    estimate = cfg.budget * n_memory * len(cfg.archs)
    estimate += (cfg.lm_budget * len(cfg.lm_params) * len(cfg.archs)) if "lm" in cfg.sections else 0
    if "ablation" in cfg.sections and "adding" in cfg.sections and "lstm" in cfg.archs:
        estimate += cfg.budget * len(cfg.adding_T)
    estimate += (5 * len(cfg.speed_lengths) * len(cfg.archs)) if "speed" in cfg.sections else 0
    estimate += 30 if "gradflow" in cfg.sections else 0
    # smoothing=0: the time left from the average pace of the whole run. tqdm's default moving
    # average swung between 40 s and 10 min left whenever a cell stopped early (solved) and its
    # unspent budget arrived at once.
    bar = tqdm(total=round(estimate), unit="s", disable=not progress, dynamic_ncols=True, mininterval=1.0,
               smoothing=0, bar_format="{desc} |{bar}| {n:.0f}/{total:.0f} s est. [{elapsed}<{remaining}]")
    try:
        for thunk in thunks:
            cell = thunk()
            stored = results["cells"].get(cell.key)
            if stored is not None and stored.get("config") == _json_safe(cell.config):
                skipped.append(cell.key)
                # off the total rather than counted as done in no time, which would make the pace
                # (and so the time left) look far faster than it is
                bar.total = max(bar.n, bar.total - cell.estimate)
                bar.refresh()
                continue
            bar.set_description_str(f"compare: {cell.key}")
            done = [0.0]

            def tick(seconds: float, _done=done, _cell=cell) -> None:
                step = min(seconds, max(0.0, _cell.estimate - _done[0]))
                _done[0] += step
                bar.update(step)

            t0 = time.time()
            record = cell.run(tick)
            record["config"] = _json_safe(cell.config)
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
            record["wall_time"] = round(time.time() - t0, 3)
            results["cells"][cell.key] = record
            bar.update(max(0.0, cell.estimate - done[0]))
            ran.append(cell.key)
            results["wall_time"] = round(time.time() - started, 3)
            write_json_atomic(out / "results.json", _strip_run_lists(results))
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
    results["wall_time"] = round(time.time() - started, 3)
    write_json_atomic(out / "results.json", _strip_run_lists(results))
    if report:
        from .report import write_report

        write_report(results, out)
    results["ran"], results["skipped"] = ran, skipped
    return results


def _strip_run_lists(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("ran", "skipped")}


# ----------------------------------------------------------------------------
# Command line


def _csv(text: str, what: str, cast=str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list of {what}, got {text!r}")
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {what}, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    kw: dict = {"archs": _csv(args.archs, "architectures"), "sections": _csv(args.tasks, "tasks"),
                "seed": args.seed, "threads": args.threads}
    if args.budget is not None:
        kw["budget"] = kw["lm_budget"] = args.budget
    if args.copy_T:
        kw["copy_T"] = _csv(args.copy_T, "integers", int)
    if args.adding_T:
        kw["adding_T"] = _csv(args.adding_T, "integers", int)
    return CompareConfig.full(**kw) if args.full else CompareConfig.quick(**kw)


def command(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"seqlab compare: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        results = run_compare(cfg, args.out, progress=not args.no_progress)
    except ValueError as e:
        print(f"seqlab compare: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"ran {len(results['ran'])} cells, kept {len(results['skipped'])} finished ones, "
          f"in {time.time() - t0:.0f} s")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from .cli import add_compare_arguments

    parser = argparse.ArgumentParser(prog="python -m seqlab.experiments.compare", description=__doc__.split("\n")[0])
    add_compare_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
