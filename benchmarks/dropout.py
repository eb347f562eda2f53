"""seqlab's CPU dropout against torch.nn.functional.dropout, as ratios in one process.

    python benchmarks/dropout.py --threads 1               # the shapes of a 1M-parameter char LM
    python benchmarks/dropout.py --quick                   # tiny sizes, one repeat: a smoke test
    python benchmarks/dropout.py --threads 1 --markdown    # also into benchmarks/RESULTS.md

For each shape it times, after warm-up, the median of repeats of dropout's forward and backward
(``y = dropout(x, p)``, then ``y.backward(g)``) with ``torch.nn.functional.dropout`` and with
``seqlab.nn.dropout.dropout`` (masks from the compiled library's counter-based generator), the two
alternating repeat by repeat so that drift in a shared machine's load hits both alike. The shapes:
an LSTM language model's activations (batch 16, 128 steps, 256 wide), a transformer's attention
weights (batch 16, 4 heads, 128 x 128) and a large activation (32 x 512 x 1024). Prints ms per
call and torch / seqlab (above 1: seqlab is faster).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:
    import seqlab  # noqa: F401
except ImportError:  # run from a checkout without installing: python benchmarks/dropout.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402
from recurrent import CLOCKS  # noqa: E402  (benchmarks/ is the script's folder, so on sys.path)
from seqlab.kernels import compiled  # noqa: E402
from seqlab.nn.dropout import dropout  # noqa: E402

SHAPES = {"LSTM LM activations": (16, 128, 256), "attention weights": (16, 4, 128, 128),
          "large activation": (32, 512, 1024)}
QUICK = {"small": (4, 8, 16)}


def time_call(fn, x: torch.Tensor, g: torch.Tensor, p: float, clock) -> float:
    """Seconds of one forward (dropout) and backward (the mask applied to g)."""
    start = clock()
    y = fn(x, p, True)
    y.backward(g)
    x.grad = None
    return clock() - start


def run(shapes: dict, p: float, warmup: int, repeats: int, clock) -> list[tuple]:
    rows = []
    for name, shape in shapes.items():
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        times = {"torch": [], "seqlab": []}
        for i in range(warmup + repeats):
            for impl, fn in (("torch", F.dropout), ("seqlab", dropout)):
                t = time_call(fn, x, g, p, clock)
                if i >= warmup:
                    times[impl].append(t)
        ms_torch, ms_seqlab = (statistics.median(times[k]) * 1e3 for k in ("torch", "seqlab"))
        rows.append((name, shape, ms_torch, ms_seqlab, ms_torch / ms_seqlab))
    return rows


def table(rows: list[tuple]) -> str:
    lines = ["| tensor | shape | values | torch ms | seqlab ms | torch / seqlab |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, shape, ms_torch, ms_seqlab, ratio in rows:
        n = 1
        for s in shape:
            n *= s
        lines.append(f"| {name} | {tuple(shape)} | {n:,} | {ms_torch:.3f} | {ms_seqlab:.3f} | {ratio:.1f}x |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: a smoke test")
    ap.add_argument("--p", type=float, default=0.2, help="dropout probability (default 0.2)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (less noisy with --threads 1 on a shared machine)")
    add_markdown_arguments(ap)
    args = ap.parse_args(argv)
    if not 0.0 < args.p < 1.0:
        ap.error(f"--p must be in (0, 1), got {args.p}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # before the header, which reports it
    if not compiled.available():
        sys.exit(f"seqlab's dropout needs the compiled library, which is not available here: "
                 f"{compiled.build_error()}")
    shapes, warmup, repeats = (QUICK, 1, 1) if args.quick else (SHAPES, 3, args.repeats)
    how = (f"dropout p={args.p}, forward + backward, float32; median of {repeats} after {warmup} warm-up, the two "
           f"alternating; {args.clock} clock")
    print(f"# {how}\n# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    rows = run(shapes, args.p, warmup, repeats, CLOCKS[args.clock])
    print(table(rows))
    if args.markdown:
        command = command_line(None if argv is None else [__file__, *argv])
        section = results_section("Dropout on the CPU against torch", command, table(rows), notes=[how, *args.note])
        print(f"\nwrote the 'dropout' section of {write_section(args.markdown, 'dropout', section)}")


if __name__ == "__main__":
    main()
