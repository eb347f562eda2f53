"""The ``seqlab`` command.

::

    seqlab info
    seqlab train {lm,classify,tag,seq2seq,generate} [--task NAME | --data PATH] --arch ARCH
                 [--config FILE.toml] [key=value ...] --out DIR [--resume | --force]
    seqlab sample DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
    seqlab translate DIR TEXT... [--beam N]
    seqlab classify DIR TEXT...
    seqlab tag DIR TEXT...
    seqlab generate DIR --condition LABEL [--n N]
    seqlab eval DIR [--split test] [--json]

Settings for ``train`` are the keys of ModelConfig, TrainConfig and the application's data
options, given (lowest priority first) in a TOML file (flat, or tables [model] [train] [data]),
as ``key=value`` (the value is read as TOML: ``lr=3e-4``, ``bidirectional=true``), or as the
flags for the common ones. An unknown key stops the run. Under
``torchrun --nproc_per_node N -m seqlab.cli train ...`` the trainer runs data-parallel.

Errors the user can fix (a missing or malformed file, an unknown task, arch or key, a run
directory without a checkpoint, of another kind or locked by another writer, an unknown label, a
full or read-only disk, a diverged training) print ONE line on stderr and exit with status 2;
anything else is a bug and keeps its traceback. Warnings (labels training never shows, prompt
characters outside the vocabulary) are one ``seqlab CMD: warning: ...`` line each. SIGINT and
SIGTERM during training save a checkpoint and exit 130 / 143 (see seqlab.train.loop).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import warnings
from typing import Any, Optional, Sequence

import seqlab
from seqlab.experiments.cli import add_compare_parser, add_explain_parser
from seqlab.models.config import ARCHS, KINDS

SEED_LIMIT = 2 ** 32  # as seqlab.apps.base.SEED_LIMIT, which imports torch

# The flags that stand for common settings: flag dest -> setting key.
SETTING_FLAGS = {"max_steps": "max_steps", "batch_size": "batch_size", "lr": "lr", "attention": "attention",
                 "hidden_size": "hidden_size", "num_layers": "num_layers", "max_time": "max_time", "seed": "seed"}


class UsageError(Exception):
    """A mistake in the command line that argparse does not see (e.g. a stray word)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the message, not the usage block, on stderr (status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------
# Commands


def _info(args: argparse.Namespace) -> int:
    import torch

    from seqlab.kernels.dispatch import BACKENDS, MIN_BACKENDS

    print(f"seqlab {seqlab.__version__}")
    print(f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()})")
    print(f"recurrent backends: {', '.join(BACKENDS)}; minGRU / minLSTM: {', '.join(MIN_BACKENDS)}")
    try:
        from seqlab.kernels import fused  # noqa: F401
        print("fused path: available")
    except ImportError as e:  # pragma: no cover
        print(f"fused path: unavailable ({e})")
    return 0


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _train(args: argparse.Namespace) -> int:
    from seqlab.apps import parse_overrides, read_config_file, train_run
    from seqlab.train.checkpoint import BEST

    settings: dict[str, Any] = {}
    if args.config is not None:
        settings.update(read_config_file(args.config))
    settings.update(parse_overrides(args.overrides))
    for dest, key in SETTING_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            settings[key] = value
    if args.task is not None and args.data is not None:
        raise UsageError(f"give --task or --data, not both; got --task {args.task} and --data {args.data}")

    result = train_run(args.kind, arch=args.arch, task=args.task, data=args.data, valid=args.valid, test=args.test,
                       settings=settings, out=args.out, resume=args.resume, force=args.force,
                       progress=not args.quiet)
    if result.get("stopped") == "interrupted":
        if _is_main_process():
            print(f"interrupted at step {result.get('step')}: saved; --resume to continue", file=sys.stderr)
        return 128 + int(result.get("signal") or signal.SIGINT)
    if _is_main_process():
        print(f"{args.kind}: {result.get('parameters', 0):,} parameters, stopped at step {result.get('step')} "
              f"({result.get('stopped')}); run saved in {args.out}")
        if result.get("best_checkpoint"):
            print(f"best validation score {result['best']:.4g}: {os.path.join(args.out, BEST)} "
                  f"({os.path.basename(result['best_checkpoint'])})")
        if result.get("metrics"):
            print(_table(result["metrics"]))
    return 0


def _check_sampling(args: argparse.Namespace) -> None:
    from seqlab.apps import ConfigError

    if not math.isfinite(args.temperature):  # inf samples uniform noise, nan fails inside softmax
        raise ConfigError(f"--temperature must be a finite number, got {args.temperature}")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    _check_seed(args.seed)


def _check_seed(seed: Optional[int]) -> None:
    from seqlab.apps import ConfigError

    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed must be in [0, 2**32), got {seed}")


def _sample(args: argparse.Namespace) -> int:
    from seqlab.apps import ConfigError, load_run

    _check_sampling(args)
    if args.length < 1:
        raise ConfigError(f"--length must be >= 1, got {args.length}")
    run = load_run(args.dir, kind="lm", command="sample")
    print(run.app.sample(run.model, args.prompt, length=args.length, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0


def _translate(args: argparse.Namespace) -> int:
    from seqlab.apps import ConfigError, load_run

    if args.beam < 1:
        raise ConfigError(f"--beam must be >= 1, got {args.beam}")
    run = load_run(args.dir, kind="seq2seq", command="translate")
    for out in run.app.translate(run.model, args.text, beam=args.beam):
        print(out)
    return 0


def _classify(args: argparse.Namespace) -> int:
    from seqlab.apps import load_run

    run = load_run(args.dir, kind="classify", command="classify")
    for text, (label, p) in zip(args.text, run.app.classify(run.model, args.text)):
        print(f"{label}\t{p:.3f}\t{text}")
    return 0


def _tag(args: argparse.Namespace) -> int:
    from seqlab.apps import load_run

    run = load_run(args.dir, kind="tag", command="tag")
    for pairs in run.app.tag(run.model, args.text):
        print(" ".join(f"{w}/{t}" for w, t in pairs))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from seqlab.apps import load_run

    _check_sampling(args)
    run = load_run(args.dir, kind="generate", command="generate")
    for text in run.app.generate(run.model, args.condition, args.n, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed):
        print(text)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from seqlab.apps import ConfigError, load_run

    run = load_run(args.dir, command="eval")
    kwargs = {}
    if args.beam is not None:
        if run.kind != "seq2seq":
            raise ConfigError(f"--beam is for seq2seq runs, got a {run.kind} run")
        if args.beam < 1:
            raise ConfigError(f"--beam must be >= 1, got {args.beam}")
        kwargs["beam"] = args.beam
    cache = {k: v for k, v in (("cache_size", args.cache), ("cache_theta", args.cache_theta),
                               ("cache_lambda", args.cache_lambda)) if v is not None}
    if cache:
        if run.kind != "lm":
            raise ConfigError(f"--cache, --cache-theta and --cache-lambda are for lm runs, got a {run.kind} run")
        for k, v in cache.items():
            setattr(run.app.options, k, v)
        run.app.options.validate()
    metrics = run.app.evaluate(run.model, args.split, **kwargs)
    if args.json:
        from seqlab.apps.base import finite_json

        print(json.dumps(finite_json({"run": str(args.dir), "kind": run.kind, "step": run.checkpoint.step,
                                      "split": args.split, "scoring": run.app.scoring(run.model),
                                      "metrics": metrics}), allow_nan=False))
    else:
        print(f"{run.kind} run {args.dir}, step {run.checkpoint.step}, split {args.split}")
        print(_table(metrics))
        if run.app.scoring(run.model):
            print(run.app.scoring(run.model))
    return 0


def _table(metrics: dict[str, float]) -> str:
    """A markdown table of metric, value."""
    width = max(len("metric"), *(len(k) for k in metrics))
    lines = [f"| {'metric':<{width}} | value      |", f"|{'-' * (width + 2)}|------------|"]
    for k, v in metrics.items():
        shown = f"{v:.0f}" if float(v).is_integer() and abs(v) >= 100 else (
            f"{v:.4f}" if math.isfinite(v) and abs(v) < 1e5 else f"{v:.4g}")
        lines.append(f"| {k:<{width}} | {shown:>10} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# The parser


RUN_DIR_HELP = ("a run directory (its newest checkpoint), DIR/best (the best-scoring one, kept when the run "
                "evaluated) or one checkpoint folder")
TRAIN_EPILOG = ("Setting keys: the model's (embed_dim, hidden_size, num_layers, dropout, bidirectional, layer_norm, "
                "recurrent_dropout, weight_drop, zoneout, forget_bias, nhead, dim_feedforward, bias, activation, "
                "attention_dropout, max_len, tie_weights, pooling, attention), training's (max_steps, batch_size, lr, "
                "weight_decay, optimizer, warmup_steps, decay, min_lr_ratio, clip_norm, eval_every, checkpoint_every, "
                "patience, seed, log_every, max_time, keep_checkpoints, keep_best, find_unused_parameters, "
                "tensorboard, clock, precision) "
                "and the data's (n_train, n_valid, n_test, data_seed, level, min_freq, max_vocab, max_line, format; "
                "lm: bptt, carry_state, eval_tokens, eval_rows, eval_stride, cache_size, cache_theta, cache_lambda; "
                "seq2seq: teacher_forcing, beam, eval_examples, max_decode_len; generate: n_samples). "
                "Ctrl-C or SIGTERM saves a checkpoint and exits 130 / 143; --resume continues. Example: seqlab train "
                "seq2seq --task dates --arch gru --attention bahdanau lr=3e-3 --out runs/dates")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqlab", description=seqlab.__doc__)
    parser.add_argument("--version", action="version", version=f"seqlab {seqlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions and the recurrence paths available here")
    p.set_defaults(func=_info)
    _add_train_parser(sub)
    _add_inference_parsers(sub)
    _add_eval_parser(sub)
    add_compare_parser(sub)
    add_explain_parser(sub)
    return parser


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model of one kind into a run directory",
                       usage="seqlab train KIND [--task NAME | --data PATH] --arch ARCH [--config FILE.toml] "
                             "[key=value ...] --out DIR [--resume | --force] [options]",
                       description="Train KIND into --out. Settings: key=value words (TOML values), --config "
                                   "FILE.toml, and the flags below (later ones win); an unknown key fails.",
                       epilog=TRAIN_EPILOG)
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=f"one of {', '.join(KINDS)}")
    src = p.add_argument_group("data")
    src.add_argument("--task", help="a generated task (default per kind: lm stdlib, classify langid, tag ner, "
                                    "seq2seq dates, generate names)")
    src.add_argument("--data", help="your training file: .txt (lm), .tsv or .jsonl")
    src.add_argument("--valid", help="your validation file (default: a hash split of --data)")
    src.add_argument("--test", help="your test file (default: a hash split of --data)")
    p.add_argument("--arch", choices=ARCHS, help="the sequence stack")
    p.add_argument("--config", metavar="FILE.toml", help="settings file (flat keys or [model] [train] [data])")
    p.add_argument("--out", required=True, metavar="DIR", help="the run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="start over in --out even if it holds a run (removed only "
                                                        "once the new run has passed every check)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common = p.add_argument_group("common settings (also as key=value)")
    common.add_argument("--max-steps", type=int)
    common.add_argument("--batch-size", type=int)
    common.add_argument("--lr", type=float)
    common.add_argument("--max-time", type=float, help="seconds of training (0 = no limit); without --max-steps, "
                                                       "warm-up and decay are fitted to it")
    common.add_argument("--seed", type=int)
    common.add_argument("--hidden-size", type=int)
    common.add_argument("--num-layers", type=int)
    common.add_argument("--attention", choices=("none", "bahdanau", "luong-dot", "luong-general"))
    p.set_defaults(func=_train, overrides=[])


def _add_sampling_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--top-k", type=int)
    q.add_argument("--top-p", type=float)
    q.add_argument("--seed", type=int, default=0)


def _add_inference_parsers(sub) -> None:
    p = sub.add_parser("sample", help="sample text from a language model run")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("--prompt", default="")
    p.add_argument("--length", type=int, default=200, help="at most this many tokens after the prompt")
    _add_sampling_arguments(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("translate", help="decode texts with a seq2seq run")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("text", nargs="+", metavar="TEXT")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.set_defaults(func=_translate)

    p = sub.add_parser("classify", help="label texts with a classify run (label, probability, text)")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("text", nargs="+", metavar="TEXT")
    p.set_defaults(func=_classify)

    p = sub.add_parser("tag", help="tag the words of texts with a tag run (word/TAG ...)")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("text", nargs="+", metavar="TEXT")
    p.set_defaults(func=_tag)

    p = sub.add_parser("generate", help="sample texts for a condition with a generate run")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("--condition", required=True, metavar="LABEL")
    p.add_argument("--n", type=int, default=5)
    _add_sampling_arguments(p)
    p.set_defaults(func=_generate)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a run on a split (a table, or --json)")
    p.add_argument("dir", metavar="DIR", help=RUN_DIR_HELP)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--json", action="store_true", help="one JSON object (strict: NaN and infinities as null)")
    p.add_argument("--beam", type=int, help="seq2seq: beam size (default: the run's)")
    p.add_argument("--cache", type=int, metavar="N",
                   help="lm: score with a continuous cache of the last N hidden states (0 = none; default: the run's)")
    p.add_argument("--cache-theta", type=float, metavar="THETA", help="lm: the cache's sharpness (default: the run's)")
    p.add_argument("--cache-lambda", type=float, metavar="LAMBDA",
                   help="lm: the cache's weight against the model, in [0, 1) (default: the run's)")
    p.set_defaults(func=_eval)


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    # key=value settings may stand anywhere after `train KIND`; argparse cannot interleave a
    # variable positional with options, so they are collected from what it did not recognise.
    args, rest = parser.parse_known_args(argv)
    words = [w for w in rest if "=" in w and not w.startswith("-")]
    stray = [w for w in rest if w not in words]
    if stray or (words and getattr(args, "command", None) != "train"):
        bad = (stray or words)[0]
        hint = "expected key=value settings after `train KIND`" if getattr(args, "command", None) == "train" \
            else "expected no extra arguments"
        parser.error(f"unrecognized argument {bad!r}; {hint}")
    if words:
        args.overrides = words
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    # Imported here, not at the top, to keep the error types next to the one place that catches them.
    from seqlab.apps.base import ConfigError
    from seqlab.data import DataError, DataWarning
    from seqlab.train.checkpoint import CheckpointError
    from seqlab.train.loop import DivergenceError

    def say(message: str) -> None:
        print(f"seqlab {args.command}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        say(f"warning: {message}")

    previous_term = _terminate_as_exception()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DataWarning)  # each one once, whatever PYTHONWARNINGS says
            warnings.filterwarnings("default", message="--resume")  # resuming from an older checkpoint
            warnings.showwarning = show_warning  # restored by catch_warnings
            return args.func(args)
    except (DataError, CheckpointError, ConfigError, UsageError, DivergenceError) as e:
        say(f"error: {e}")
        return 2
    except OSError as e:  # a full disk, a read-only or vanished directory: the environment, not a bug
        where = f"{e.filename}: " if e.filename else ""
        say(f"error: {where}{e.strerror or e}; the last complete checkpoint, if any, is kept")
        return 2
    except KeyboardInterrupt:
        say("interrupted; nothing half-written is kept (checkpoints are atomic), the last complete one remains")
        return 128 + signal.SIGINT
    except _Terminated:
        say("terminated; nothing half-written is kept (checkpoints are atomic), the last complete one remains")
        return 128 + signal.SIGTERM
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class _Terminated(BaseException):
    """SIGTERM outside the training loop (which handles it itself): unwinds like Ctrl-C."""


def _terminate_as_exception():
    """Make SIGTERM raise _Terminated in the main thread; returns the previous handler (None if not set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
