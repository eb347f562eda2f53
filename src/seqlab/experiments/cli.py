"""The ``compare`` and ``explain`` subcommands, for ``seqlab.cli`` to register::

    sub = parser.add_subparsers(...)
    add_compare_parser(sub)
    add_explain_parser(sub)

Each sets ``func`` to a function taking the parsed arguments and returning the exit status
(0 success, 2 an error the user can fix, printed as one line).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import ARCHS, SECTIONS


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="test the textbook claims: rnn, lstm, gru, transformer on memory tasks, gradient flow, "
                        "speed, gates and language modelling; writes results.json, report.md, report.html",
        description="Run the comparison grid (quick profile by default, --full for the whole grid) into --out, "
                    "resuming finished cells, and write results.json, report.md and a self-contained report.html.")
    add_compare_arguments(p)
    p.set_defaults(func=_compare)
    return p


def _compare(args: argparse.Namespace) -> int:
    if args.threads < 1:
        print(f"seqlab compare: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"seqlab compare: --out {args.out}: is a file, expected a results directory", file=sys.stderr)
        return 2
    from .compare import command  # imports torch: only once the command runs, not for --help

    return command(args)


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true",
                   help="the whole grid (copy T=10..1000, adding T=50..600, 600 s per cell: hours); "
                        "default: the quick profile (about 10 minutes on 2 cores)")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    p.add_argument("--tasks", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (ablation retrains the adding LSTM "
                        "with torch.nn's forget-gate init; gradflow uses the adding models, gates the copy and "
                        "adding models, when those tasks are selected too)")
    p.add_argument("--budget", type=float, default=None,
                   help="training seconds per (task, arch, T) cell and per LM cell (default: the profile's)")
    p.add_argument("--out", default="runs/compare", help="results directory (default runs/compare); "
                   "an existing one is resumed: cells finished with the same settings are kept")
    p.add_argument("--copy-T", default=None, help="comma-separated copy-memory lags (default: the profile's)")
    p.add_argument("--adding-T", default=None, help="comma-separated adding-problem lengths (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _explain(args: argparse.Namespace) -> int:
    from ..train.checkpoint import CheckpointError
    from .explain import ExplainError, explain

    text = args.text
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            print(f"seqlab explain: cannot read --text-file: {e}", file=sys.stderr)
            return 2
    if text is None:
        print("seqlab explain: expected --text TEXT or --text-file FILE, got neither", file=sys.stderr)
        return 2
    if args.out is not None:
        if os.path.isdir(args.out):
            print(f"seqlab explain: --out {args.out}: is a directory, expected an HTML file name", file=sys.stderr)
            return 2
        if os.path.exists(args.out) and not args.force:
            print(f"seqlab explain: --out {args.out}: exists; give --force to overwrite it", file=sys.stderr)
            return 2
    try:
        out = explain(args.run_dir, text, args.out, layer=args.layer, quantity=args.gate, unit=args.unit)
    except (ExplainError, CheckpointError) as e:
        print(f"seqlab explain: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def add_explain_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain", help="colour a text by a recurrent LM unit's activation or gate value (HTML page)",
        description="Read TEXT with the character-level language model of RUN_DIR (written by `seqlab train lm`, "
                    "arch rnn, lstm or gru) and write an HTML page colouring each character by a chosen unit's "
                    "value; the page has selectors for layer, quantity (h, c, gates) and unit.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `seqlab train lm` run directory")
    p.add_argument("--text", default=None, help="the text to read")
    p.add_argument("--text-file", default=None, help="read the text from this file instead")
    p.add_argument("--out", default=None, help="the HTML file to write (default RUN_DIR/explain.html)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--layer", type=int, default=0, help="layer shown first (default 0)")
    p.add_argument("--gate", default="h", help="quantity shown first: h, c (LSTM) or a gate: LSTM i f g o, "
                   "GRU r z n (default h)")
    p.add_argument("--unit", type=int, default=0, help="unit shown first (default 0)")
    p.set_defaults(func=_explain)
    return p
