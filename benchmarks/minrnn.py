"""Training-step speed of minGRU / minLSTM against a GRU of the same width, as ratios in one process.

    python benchmarks/minrnn.py                  # hidden 128, batch 16, T in {256, 1024, 4096}
    python benchmarks/minrnn.py --quick          # tiny sizes, one repeat: a smoke test
    python benchmarks/minrnn.py --threads 1 --repeats 7 --input-grad
    python benchmarks/minrnn.py --threads 1 --markdown   # also into benchmarks/RESULTS.md
    python benchmarks/minrnn.py --threads 1 --clock cpu  # on a shared machine: CPU time, not wall time

For each T it times, after warm-up, the median of repeats of one training step
(``zero_grad`` + forward + backward of ``output.sum() + h_n.sum()``) for

- the GRU baseline: ``seqlab.nn.GRU`` when it imports, else ``torch.nn.GRU``
  (the row says which);
- MinGRU with ``backend='auto'`` (what a user gets: the C++ loop on the CPU
  where the extension builds; the row names the path), ``'scan'`` (the
  chunked scan in torch ops), ``'reference'`` (the step loop) and
  ``'log_scan'`` (the paper's log-space scan);
- MinLSTM with ``backend='auto'`` and ``'scan'``.

It prints ms, tokens/s (batch · T / time) and the speed-up over the GRU
(GRU ms / this row's ms, so above 1 is faster). By default the input does not
require grad, as for a first layer fed by data; ``--input-grad`` adds ∂L/∂x.
The target: MinGRU (auto) ≥ 10x the GRU at T=4096.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

try:
    import seqlab.nn.minrnn as mr
except ImportError:  # run from a checkout without installing: python benchmarks/minrnn.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import seqlab.nn.minrnn as mr

from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402
from recurrent import CLOCKS, gemm_gflops  # noqa: E402  (benchmarks/ is the script's folder, so on sys.path)

try:
    from seqlab.nn import GRU as BaselineGRU

    BASELINE = "seqlab.nn.GRU"
except ImportError:
    BaselineGRU = nn.GRU
    BASELINE = "torch.nn.GRU"

STEPS = (256, 1024, 4096)
TARGET_SPEEDUP = 10.0  # MinGRU (auto)'s target against the GRU at T=4096


@dataclass
class Config:
    steps: tuple[int, ...] = STEPS
    batch: int = 16
    hidden: int = 128  # input size = hidden size
    warmup: int = 2  # untimed calls first: allocator, thread pool and lazy imports settle
    repeats: int = 5  # the median of this many timed calls is reported
    max_reference_steps: int = 4096  # the reference loop is slow; skip it above this T
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    input_grad: bool = False
    clock: str = "wall"  # 'wall' (perf_counter) or 'cpu' (process_time), as in recurrent.py


def median_ms(fn: Callable[[], None], warmup: int, repeats: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()  # CPU only: no device to synchronise
        times.append(clock() - t0)
    return statistics.median(times) * 1e3


def train_step_ms(mod: nn.Module, x: torch.Tensor, cfg: Config, repeats: int, **kw) -> float:
    def step() -> None:
        mod.zero_grad(set_to_none=True)
        if x.grad is not None:
            x.grad = None
        out, h_n = mod(x, **kw)
        (out.sum() + h_n.sum()).backward()

    return median_ms(step, cfg.warmup, repeats, CLOCKS[cfg.clock])


def _baseline(H: int) -> tuple[nn.Module, str]:
    """seqlab's GRU when it imports and runs a training step, else torch.nn.GRU; and its label."""
    gru = BaselineGRU(H, H)
    if BaselineGRU is nn.GRU:
        return gru, BASELINE
    try:
        out, h_n = gru(torch.randn(3, 2, H))
        (out.sum() + h_n.sum()).backward()
    except Exception as e:  # seqlab's GRU is developed alongside; say why it was not used
        print(f"# {BASELINE} failed a training step ({type(e).__name__}: {e}); using torch.nn.GRU instead")
        return nn.GRU(H, H), "torch.nn.GRU"
    return gru, f"{BASELINE}, {getattr(gru, 'last_dispatch', None) and gru.last_dispatch.backend} path"


def run(cfg: Config) -> list[tuple]:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    H, B = cfg.hidden, cfg.batch
    gru, baseline = _baseline(H)
    mingru, minlstm = mr.MinGRU(H, H), mr.MinLSTM(H, H)
    rows = []
    for T in cfg.steps:
        x = torch.randn(T, B, H, requires_grad=cfg.input_grad)
        base = train_step_ms(gru, x, cfg, cfg.repeats)
        cases = [(f"GRU ({baseline})", gru, {}, cfg.repeats),
                 ("MinGRU auto", mingru, {}, cfg.repeats),
                 ("MinGRU scan", mingru, {"backend": "scan"}, cfg.repeats),
                 ("MinGRU log_scan", mingru, {"backend": "log_scan"}, cfg.repeats),
                 ("MinLSTM auto", minlstm, {}, cfg.repeats),
                 ("MinLSTM scan", minlstm, {"backend": "scan"}, cfg.repeats)]
        if T <= cfg.max_reference_steps:
            # the loop is as slow as the GRU: fewer repeats keep the run short
            cases.insert(3, ("MinGRU reference", mingru, {"backend": "reference"}, max(1, cfg.repeats // 2)))
        for name, mod, kw, reps in cases:
            ms = base if mod is gru else train_step_ms(mod, x, cfg, reps, **kw)
            if name.endswith(" auto"):
                name += f" ({mod.last_dispatch.backend})"
            rows.append((T, name, ms, B * T / (ms / 1e3), base / ms))
    return rows


def product_flops(layer: str, cfg: Config, steps: int) -> float:
    """Flops of the matrix products of one training step (input size = hidden size H).

    GRU: x W_ih^T and W_hh h_{t-1} forward, dW_ih, dW_hh and dh backward (+ dx), each
    2 T B H 3H. MinGRU: x W^T forward ([z | h~], 2H outputs), dW backward (+ dx), each 2 T B H 2H.
    """
    H = cfg.hidden
    if layer == "gru":
        return 2.0 * steps * cfg.batch * H * 3 * H * (6 if cfg.input_grad else 5)
    return 2.0 * steps * cfg.batch * H * 2 * H * (3 if cfg.input_grad else 2)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: a smoke test")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--input-grad", action="store_true", help="also compute the gradient of the input")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (less noisy with --threads 1 on a shared machine)")
    add_markdown_arguments(ap)
    args = ap.parse_args(argv)
    cfg = Config(steps=tuple(args.steps), batch=args.batch, hidden=args.hidden, repeats=args.repeats,
                 threads=args.threads, input_grad=args.input_grad, clock=args.clock)
    if args.quick:
        cfg = Config(steps=(16, 64), batch=2, hidden=8, warmup=1, repeats=1, threads=args.threads,
                     input_grad=args.input_grad, clock=args.clock)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)  # before the header, which reports it
    print(f"# minRNN training step (forward + backward), batch {cfg.batch}, hidden = input = {cfg.hidden}, "
          f"input grad {'on' if cfg.input_grad else 'off'}")
    print(f"# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"median of {cfg.repeats} after {cfg.warmup} warm-up, {cfg.clock} clock")
    rows = run(cfg)
    print(table(rows))
    summary = verdict(cfg, rows)
    print("\n" + summary)
    if args.markdown:
        how = [f"training step (forward + backward), batch {cfg.batch}, hidden = input = {cfg.hidden}, input grad "
               f"{'on' if cfg.input_grad else 'off'}; median of {cfg.repeats} after {cfg.warmup} warm-up, "
               f"{cfg.clock} clock"]
        command = command_line(None if argv is None else [__file__, *argv])
        section = results_section("minGRU and minLSTM against the GRU", command, table(rows), summary,
                                  notes=how + args.note)
        print(f"\nwrote the 'minrnn' section of {write_section(args.markdown, 'minrnn', section)}")


def table(rows: list[tuple]) -> str:
    lines = ["| T | layer | ms | tokens/s | speed-up vs GRU |", "| ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {T} | {name} | {ms:.1f} | {tps:,.0f} | {speedup:.2f}x |" for T, name, ms, tps, speedup in rows]
    return "\n".join(lines)


def verdict(cfg: Config, rows: list[tuple]) -> str:
    """MinGRU (auto) against the target at the longest T, and the product rate the target would need."""
    longest = max(cfg.steps)
    name, got = next((name, s) for T, name, _, _, s in rows if T == longest and name.startswith("MinGRU auto"))
    meets = "meets" if got >= TARGET_SPEEDUP else "misses"
    gru_ms = next(ms for T, n, ms, _, _ in rows if T == longest and n.startswith("GRU"))
    need = product_flops("mingru", cfg, longest) / (gru_ms / TARGET_SPEEDUP / 1e3) / 1e9
    return (f"{name} at T={longest}: {got:.1f}x the GRU ({meets} the {TARGET_SPEEDUP:.0f}x target). "
            f"Products per step at T={longest}: GRU {product_flops('gru', cfg, longest) / 1e9:.1f} GFLOP, MinGRU "
            f"{product_flops('mingru', cfg, longest) / 1e9:.1f} GFLOP. At {TARGET_SPEEDUP:.0f}x the GRU, MinGRU's "
            f"products alone would have to run at {need:.0f} GFLOP/s; float32 products (1024^3) run at "
            f"{gemm_gflops(torch.device('cpu')):.0f} GFLOP/s here.")


if __name__ == "__main__":
    main()
