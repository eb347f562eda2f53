"""The ``seqlab`` command.

Subcommands arrive with the issues that build them (train, sample, translate,
compare, ...). Errors the user can fix print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

import seqlab


def _info(args: argparse.Namespace) -> int:
    import torch

    from seqlab.kernels.dispatch import BACKENDS

    print(f"seqlab {seqlab.__version__}")
    print(f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()})")
    print(f"recurrent backends: {', '.join(BACKENDS)}")
    try:
        from seqlab.kernels import fused  # noqa: F401
        print("fused path: available")
    except ImportError as e:  # pragma: no cover
        print(f"fused path: unavailable ({e})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqlab", description=seqlab.__doc__)
    parser.add_argument("--version", action="version", version=f"seqlab {seqlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions and the recurrence paths available here")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
