"""Speed of seqlab's recurrent layers against torch.nn, as ratios measured in the same process.

    python benchmarks/recurrent.py                    # RNN, GRU, LSTM and the LSTM variants, every size
    python benchmarks/recurrent.py --quick            # tiny sizes, one repeat: a smoke test
    python benchmarks/recurrent.py --cells lstm --repeats 9 --threads 1 --json runs/rnn.json
    python benchmarks/recurrent.py --threads 1 --clock cpu   # on a shared machine: CPU time, not wall time
    python benchmarks/recurrent.py --threads 1 --clock cpu --markdown   # also into benchmarks/RESULTS.md

For each cell and (batch, steps, hidden = input) it times, after warm-up, the
median of repeats of

- training: ``zero_grad`` + forward + backward of ``output.sum() + h_n.sum()``;
- inference: forward in eval mode under ``torch.no_grad()``;

for torch.nn and for seqlab's paths (``backend='fused'``, and ``'compiled'``, the C++
loop, when it builds on this machine), all with the same weights and timed in turns
(each repeat calls every module once), and reports seqlab / torch (below 1 means
seqlab is faster) and tokens/s (batch * steps / median time). Next to the ratios
stands a floor: the time the layer's matrix products alone take at this machine's
float32 product rate (measured in the same run), over torch.nn's time. No
implementation that does those products at that rate gets below it.

The LSTM variants (layer_norm=True; recurrent_dropout=0.25; weight_drop=0.25;
zoneout=0.1; one at a time) are timed for seqlab's fused and compiled paths (and the
LayerNorm LSTM on the reference loop too) against torch.nn's plain LSTM: the speed a
user gives up to get them. The output is two markdown tables: one row per path, then the paths side by side
(ratio per path and the floors, one row per cell and size). ``--markdown`` also writes the
side-by-side table, headed with the machine, versions, date and command, into this
benchmark's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

try:
    import seqlab.nn as snn
except ImportError:  # run from a checkout without installing: python benchmarks/recurrent.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import seqlab.nn as snn

from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402

SIZES = [(16, 200, 64), (32, 100, 256), (64, 100, 512), (128, 50, 128)]  # (batch, steps, hidden = input)
# the GPU grid of the Triton kernels: batch {1, 16, 64} x hidden {64, 256, 1024} x 512 steps
GPU_SIZES = [(b, 512, h) for b in (1, 16, 64) for h in (64, 256, 1024)]
QUICK_SIZES = [(4, 8, 16)]
CELLS = ("rnn", "gru", "lstm")
# the "lstm+<variant>" rows: one variant each, so the cost of each is visible on its own
VARIANTS = {"layer_norm": dict(layer_norm=True), "recurrent_dropout": dict(recurrent_dropout=0.25),
            "weight_drop": dict(weight_drop=0.25), "zoneout": dict(zoneout=0.1)}


@dataclass
class Config:
    cells: tuple[str, ...] = CELLS
    sizes: list[tuple[int, int, int]] = field(default_factory=lambda: list(SIZES))
    warmup: int = 2  # untimed calls first: allocator, thread pool and lazy imports settle
    repeats: int = 5  # the median of this many timed calls is reported
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    device: str = "cpu"
    variants: bool = True  # also time LSTM with layer_norm / recurrent_dropout / weight_drop / zoneout
    compiled: bool = True  # also time backend='compiled' (skipped when the extension does not build)
    # 'wall' (perf_counter) or 'cpu' (process_time: the CPU time of this process, all threads). With
    # --threads 1 on a machine shared with other jobs, CPU time is far less noisy than wall time.
    clock: str = "wall"


@dataclass
class Row:
    cell: str  # 'rnn', 'gru', 'lstm' or 'lstm+<variant>'
    impl: str  # seqlab's backend: 'fused', 'compiled', 'reference', or 'auto (<the path of its last call>)'
    batch: int
    steps: int
    hidden: int
    torch_train_ms: float
    torch_infer_ms: float
    train_ms: Optional[float]  # None when this implementation could not run (see error)
    infer_ms: Optional[float]
    error: str = ""
    # the layer's matrix products at this machine's 1024^3 product rate (see matmul_flops)
    floor_train_ms: Optional[float] = None
    floor_infer_ms: Optional[float] = None

    @property
    def train_ratio(self) -> Optional[float]:
        return None if self.train_ms is None else self.train_ms / self.torch_train_ms

    @property
    def infer_ratio(self) -> Optional[float]:
        return None if self.infer_ms is None else self.infer_ms / self.torch_infer_ms

    @property
    def floor_train_ratio(self) -> Optional[float]:
        """The lowest train ratio that products at the 1024^3 rate allow: below it only by faster products."""
        return None if self.floor_train_ms is None else self.floor_train_ms / self.torch_train_ms

    @property
    def floor_infer_ratio(self) -> Optional[float]:
        return None if self.floor_infer_ms is None else self.floor_infer_ms / self.torch_infer_ms

    def tokens_per_s(self, ms: Optional[float]) -> Optional[float]:
        return None if ms is None else self.batch * self.steps / (ms / 1e3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _call(mod: nn.Module, x: torch.Tensor, train: bool) -> None:
    """One training step (zero_grad + forward + backward of output.sum() + states.sum()) or one
    no-grad forward."""
    if train:
        mod.zero_grad(set_to_none=True)
        out, st = mod(x)
        (out.sum() + _states_sum(st)).backward()
    else:
        with torch.no_grad():
            mod(x)


def round_robin_ms(mods: dict[str, nn.Module], x: torch.Tensor, cfg: Config, device: torch.device,
                   train: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms per module, timed in turns: each repeat calls every module once.

    On a shared machine the load drifts over seconds; timing torch.nn first and seqlab
    afterwards turned that drift into swings of +-30% in the ratios between runs. In turns,
    a slow spell reaches every module alike and the medians stay comparable. Returns
    (ms by name, error by name) for the modules that raised (they drop out of later turns).
    """
    clock = CLOCKS[cfg.clock]
    times: dict[str, list[float]] = {k: [] for k in mods}
    errors: dict[str, str] = {}
    for m in mods.values():
        m.train(train)
    for r in range(cfg.warmup + cfg.repeats):
        for k, m in mods.items():
            if k in errors:
                continue
            _sync(device)
            t0 = clock()
            try:
                _call(m, x, train)
                _sync(device)  # GPU work is asynchronous: wait for it before stopping the clock
            except Exception as e:  # report and go on: one broken path should not hide the others
                errors[k] = f"{type(e).__name__}: {e}"
                continue
            if r >= cfg.warmup:  # untimed first turns: allocator, thread pool and lazy imports settle
                times[k].append(clock() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items() if k not in errors}, errors


def _torch_layer(cell: str, hidden: int, device) -> nn.Module:
    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    return cls(hidden, hidden, device=device)


def _seqlab_layer(cell: str, hidden: int, device, backend: str, **variant) -> nn.Module:
    cls = {"rnn": snn.RNN, "gru": snn.GRU, "lstm": snn.LSTM}[cell]
    return cls(hidden, hidden, device=device, backend=backend, **variant)


def _states_sum(st) -> torch.Tensor:
    return sum(s.sum() for s in st) if isinstance(st, tuple) else st.sum()


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def matmul_flops(cell: str, batch: int, steps: int, hidden: int, train: bool) -> float:
    """Flops of the matrix products a layer cannot avoid (hidden = input, x without grad).

    Forward: x W_ih^T over all T*B rows and W_hh h_{t-1} per step, 2 T B H GH each (GH = gates * H).
    Training adds the backward's dW_ih, dW_hh and dh_{t-1} = da_t W_hh; the benchmark's x needs no
    gradient, so there is no dx. The variants (LayerNorm, dropouts, zoneout) add no products.
    """
    one = 2.0 * steps * batch * hidden * GATES[cell.split("+")[0]] * hidden
    return one * (5 if train else 2)


def gemm_gflops(device: torch.device, clock: Callable[[], float] = time.perf_counter, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate, GFLOP/s: the median of 1024^3 products into a
    reused output, timed like the layers (same clock and threads, same process)."""
    n = 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    times = []
    for r in range(3 + 2 * repeats):
        _sync(device)
        t0 = clock()
        torch.mm(a, b, out=out)
        _sync(device)
        if r >= 3:
            times.append(clock() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def bench(cfg: Config, log=print) -> list[Row]:
    device = torch.device(cfg.device)
    rows: list[Row] = []
    if device.type == "cuda":
        # on a GPU: the Triton kernels next to the fused path, both against cuDNN
        paths = ("fused", "triton") if triton_available(log) else ("fused",)
    else:
        paths = ("fused", "compiled") if cfg.compiled and compiled_available(log) else ("fused",)
    cases = [(cell, b, b, {}) for cell in cfg.cells for b in paths]
    # what a user gets without choosing: auto's pick for the plain layer (its row says which path ran)
    cases += [(cell, "auto", "auto", {}) for cell in cfg.cells]
    if cfg.variants and "lstm" in cfg.cells:
        cases += [(f"lstm+{name}", b, b, kw) for name, kw in VARIANTS.items() for b in paths]
        # what torch.nn users get for a custom cell today: a per-step Python loop (our reference)
        cases += [("lstm+layer_norm", "reference", "reference", VARIANTS["layer_norm"])]
    gflops = gemm_gflops(device, CLOCKS[cfg.clock], cfg.repeats)
    log(f"# float32 matrix products at {gflops:.1f} GFLOP/s (1024^3, median): the 'floor' columns are the "
        f"time of a layer's products at that rate over torch.nn's time")
    for batch, steps, hidden in cfg.sizes:
        x = torch.randn(steps, batch, hidden, device=device)  # (T, B, I), time-major like torch.nn
        for base_cell in cfg.cells:
            # torch.nn and every seqlab path of this cell, same weights, timed in turns
            torch.manual_seed(0)
            ref = _torch_layer(base_cell, hidden, device)
            mods: dict[str, nn.Module] = {"torch": ref}  # keyed "torch" and "<cell>/<impl>"
            errors: dict[str, str] = {}
            mine = [case for case in cases if case[0].split("+")[0] == base_cell]
            for cell, impl, backend, variant in mine:
                key = f"{cell}/{impl}"
                try:
                    m = _seqlab_layer(base_cell, hidden, device, backend, **variant)
                    m.load_state_dict(ref.state_dict(), strict=not variant)  # same weights as the baseline
                    mods[key] = m
                except Exception as e:
                    errors[key] = f"{type(e).__name__}: {e}"
            train, train_err = round_robin_ms(mods, x, cfg, device, train=True)
            infer, infer_err = round_robin_ms(mods, x, cfg, device, train=False)
            if "torch" not in train or "torch" not in infer:
                raise RuntimeError(f"torch.nn {base_cell} failed: {train_err.get('torch') or infer_err.get('torch')}")
            for cell, impl, backend, variant in mine:
                key = f"{cell}/{impl}"
                err = errors.get(key) or train_err.get(key) or infer_err.get(key) or ""
                dispatch = getattr(mods.get(key), "last_dispatch", None)
                if not err and dispatch is not None and backend != "auto" and dispatch.backend != backend:
                    err = f"ran {dispatch.backend}: {dispatch.reason}"
                if backend == "auto" and dispatch is not None:
                    impl = f"auto ({dispatch.backend})"
                row = Row(cell, impl, batch, steps, hidden, train["torch"], infer["torch"],
                          train.get(key), infer.get(key), err,
                          floor_train_ms=matmul_flops(cell, batch, steps, hidden, True) / gflops / 1e6,
                          floor_infer_ms=matmul_flops(cell, batch, steps, hidden, False) / gflops / 1e6)
                rows.append(row)
                log(f"# {cell:14s} {impl:9s} B={batch:<4d} T={steps:<4d} H={hidden:<4d} "
                    f"train {_fmt(row.train_ratio, 'x')} (floor {_fmt(row.floor_train_ratio, 'x')}) "
                    f"infer {_fmt(row.infer_ratio, 'x')} (floor {_fmt(row.floor_infer_ratio, 'x')})"
                    + (f"  [{err}]" if err else ""))
    return rows


def triton_available(log=print) -> bool:
    from seqlab.kernels import triton_rnn

    ok = triton_rnn.available()
    if not ok:
        log("# triton path skipped: triton is not installed")
    return ok


def compiled_available(log=print) -> bool:
    """Build (first time) the compiled extension; False, with the reason logged, when it cannot be."""
    from seqlab.kernels import compiled

    t0 = time.perf_counter()
    ok = compiled.available()
    if ok:
        log(f"# compiled extension ready in {time.perf_counter() - t0:.1f}s")
    else:
        log(f"# compiled path skipped: {compiled.build_error()}")
    return ok


def _fmt(v: Optional[float], unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def _fmt_tok(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e3:,.0f}k" if v >= 1e4 else f"{v:,.0f}"


def markdown(rows: list[Row]) -> str:
    head = ("| cell | seqlab backend | batch | steps | hidden | torch train ms | seqlab train ms | train ratio "
            "| seqlab train tok/s | torch infer ms | seqlab infer ms | infer ratio | seqlab infer tok/s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r.cell} | {r.impl} | {r.batch} | {r.steps} | {r.hidden} | {r.torch_train_ms:.2f} "
            f"| {_fmt(r.train_ms)} | {_fmt(r.train_ratio, 'x')} | {_fmt_tok(r.tokens_per_s(r.train_ms))} "
            f"| {r.torch_infer_ms:.2f} | {_fmt(r.infer_ms)} | {_fmt(r.infer_ratio, 'x')} "
            f"| {_fmt_tok(r.tokens_per_s(r.infer_ms))} |"
        )
    errors = [r for r in rows if r.error]
    if errors:
        lines.append("")
        for r in errors:
            lines.append(f"- {r.cell} / {r.impl} at ({r.batch}, {r.steps}, {r.hidden}): {r.error}")
    return "\n".join(lines)


def side_by_side(rows: list[Row]) -> str:
    """One line per (cell, size): torch.nn's ms, then each path's train and inference ratio, each
    followed by the floor: the ratio the layer's matrix products alone would take at this
    machine's 1024^3 product rate (a ratio near its floor has no time left to win outside the
    products)."""
    impls = [i for i in ("fused", "compiled", "reference") if any(r.impl == i for r in rows)]
    impls += sorted({r.impl for r in rows if r.impl.startswith("auto")})
    head = ("| cell | batch | steps | hidden | torch train ms | torch infer ms | "
            + " | ".join(f"{i} train" for i in impls) + " | floor train | "
            + " | ".join(f"{i} infer" for i in impls) + " | floor infer |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    groups: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.cell, r.batch, r.steps, r.hidden), {})[r.impl] = r
    for (cell, b, t, h), by in groups.items():
        any_row = next(iter(by.values()))
        train = [_fmt(by[i].train_ratio, "x") if i in by else "" for i in impls]
        infer = [_fmt(by[i].infer_ratio, "x") if i in by else "" for i in impls]
        lines.append(f"| {cell} | {b} | {t} | {h} | {any_row.torch_train_ms:.2f} | {any_row.torch_infer_ms:.2f} | "
                     + " | ".join(train) + f" | {_fmt(any_row.floor_train_ratio, 'x', 3)} | "
                     + " | ".join(infer) + f" | {_fmt(any_row.floor_infer_ratio, 'x', 3)} |")
    return "\n".join(lines)


def environment(cfg: Config) -> dict:
    return {
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "avx512": _has_avx512(),
        "threads": torch.get_num_threads(), "device": cfg.device, "clock": cfg.clock, **_product_paths(),
    }


def _has_avx512() -> Optional[bool]:
    """Whether the CPU has AVX-512 (None: not known here). The compiled path's products depend on it."""
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _product_paths() -> dict:
    """Which float32 product paths the compiled path has in this process (None: not built):
    oneDNN's linear (large per-step products on several threads, with AVX-512) and oneDNN's
    brgemm (AVX-512: every product on one thread, the small per-step ones on several)."""
    try:
        ext = torch.ops.seqlab_compiled
        return {"compiled_onednn": bool(ext.has_onednn()), "compiled_brgemm": bool(ext.brgemm_auto())}
    except (AttributeError, RuntimeError):
        return {"compiled_onednn": None, "compiled_brgemm": None}


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 warm-up and 1 repeat (a smoke test)")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of rnn,gru,lstm")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median; default 5)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    ap.add_argument("--no-variants", action="store_true", help="skip the LSTM + variants rows")
    ap.add_argument("--gpu-grid", action="store_true",
                    help="batch {1,16,64} x hidden {64,256,1024} x 512 steps (with --device cuda: triton vs cuDNN)")
    ap.add_argument("--no-compiled", action="store_true", help="skip backend='compiled' (no C++ build)")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (steadier on a shared machine with --threads 1)")
    ap.add_argument("--sizes", nargs="+", metavar="B,T,H", default=None,
                    help="(batch, steps, hidden = input) triples instead of the default grid")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    add_markdown_arguments(ap)
    args = ap.parse_args(argv)
    cells = tuple(c.strip().lower() for c in args.cells.split(",") if c.strip())
    unknown = [c for c in cells if c not in CELLS]
    if unknown or not cells:
        ap.error(f"--cells expects a comma-separated subset of {','.join(CELLS)}, got {args.cells!r}")
    cfg = Config(cells=cells, device=args.device, threads=args.threads, variants=not args.no_variants,
                 compiled=not args.no_compiled and args.device == "cpu", clock=args.clock)
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures host CPU time; use the wall clock for --device cuda")
    if args.gpu_grid:
        cfg.sizes = list(GPU_SIZES)
    if args.sizes:
        try:
            cfg.sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
        except ValueError:
            cfg.sizes = []
        if not cfg.sizes or any(len(s) != 3 or min(s) < 1 for s in cfg.sizes):
            ap.error(f"--sizes expects positive B,T,H triples, got {' '.join(args.sizes)}")
    if args.quick:
        cfg.sizes, cfg.warmup, cfg.repeats = list(QUICK_SIZES), 1, 1
    if args.repeats is not None:
        if args.repeats < 1:
            ap.error(f"--repeats must be >= 1, got {args.repeats}")
        cfg.repeats = args.repeats
    if args.warmup is not None:
        if args.warmup < 0:
            ap.error(f"--warmup must be >= 0, got {args.warmup}")
        cfg.warmup = args.warmup
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    return cfg, args


def results_markdown(cfg: Config, env: dict, rows: list[Row], command: str, notes: list[str]) -> str:
    """This run's section of RESULTS.md: the paths side by side, with how they were timed."""
    title = "Recurrent layers against torch.nn" + (f" ({cfg.device})" if cfg.device != "cpu" else "")
    how = [f"warm-up {cfg.warmup}, median of {cfg.repeats}, {cfg.clock} clock; ratio = seqlab / torch.nn "
           "(below 1: seqlab faster), training = forward + backward, inference = forward under no_grad",
           "sizes: " + ", ".join(f"({b}, {t}, {h})" for b, t, h in cfg.sizes) + " as (batch, steps, hidden = input)",
           f"compiled path products: brgemm {env.get('compiled_brgemm')}, oneDNN linear available "
           f"{env.get('compiled_onednn')}"]
    failed = [f"{r.cell} / {r.impl} at ({r.batch}, {r.steps}, {r.hidden}) failed: {r.error}" for r in rows if r.error]
    return results_section(title, command, side_by_side(rows), notes=how + list(notes) + failed)


def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    json_path = args.json
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = environment(cfg)
    print(f"# torch {env['torch']}, {env['threads']} threads, {cfg.device}; "
          f"warm-up {cfg.warmup}, median of {cfg.repeats}, {cfg.clock} clock; "
          f"ratio = seqlab / torch.nn (< 1: seqlab faster)",
          flush=True)
    rows = bench(cfg, log=lambda s: print(s, flush=True))
    env.update(_product_paths())  # known only once bench() has loaded the extension
    print(f"# compiled path products: brgemm {env['compiled_brgemm']}, oneDNN linear available "
          f"{env['compiled_onednn']}; AVX-512 {env['avx512']}")
    print()
    print(markdown(rows))
    print()
    print(side_by_side(rows))
    if json_path:
        out = {"config": asdict(cfg), "environment": env,
               "rows": [{**asdict(r), "train_ratio": r.train_ratio, "infer_ratio": r.infer_ratio,
                         "floor_train_ratio": r.floor_train_ratio, "floor_infer_ratio": r.floor_infer_ratio,
                         "train_tokens_per_s": r.tokens_per_s(r.train_ms),
                         "infer_tokens_per_s": r.tokens_per_s(r.infer_ms)} for r in rows]}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
    if args.markdown:
        key = "recurrent" if cfg.device == "cpu" else "recurrent-gpu"
        command = command_line(None if argv is None else [__file__, *argv])
        path = write_section(args.markdown, key, results_markdown(cfg, env, rows, command, args.note))
        print(f"\nwrote the '{key}' section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
