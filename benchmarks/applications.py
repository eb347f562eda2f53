"""What the applications reach on this machine in a fixed time budget (a measurement, not a test).

    python benchmarks/applications.py --what dates --budget 600     # ~20 min: two models
    python benchmarks/applications.py --what lm --budget 600        # ~45 min: four models
    python benchmarks/applications.py --what all --budget 30        # a smoke run
    python benchmarks/applications.py --what all --budget 600 --markdown   # also into benchmarks/RESULTS.md

(1) **dates**: human-written dates in 17 locales -> ISO 8601 (``seqlab.data`` task ``dates``),
a bidirectional-GRU encoder and a GRU decoder, trained for at most ``--budget`` seconds each:
with Bahdanau attention, and the plain context-vector model (the decoder sees the source only
through the encoder's final state) with the same budget. Reported: exact match on the whole
test split (1000 dates, greedy decoding), character error rate, steps done.

(2) **lm**: character-level language models of the embedded Python-documentation corpus
(``stdlib``) at about 1M parameters each (hidden size searched per arch; counts reported),
rnn, lstm, gru and transformer, ``--budget`` seconds each. Reported: validation bits per
character on the whole validation split (~300k characters), steps and tokens/s.

The learning-rate schedule needs a horizon, so each run first times a few training steps and
sets ``max_steps`` to what fits in 90% of the budget; ``max_time`` is the hard stop. Evaluation
happens once, at the end, outside the budget. Prints a markdown table and writes JSON;
``--markdown`` also writes the table, headed with the machine, versions, date and command, into
this benchmark's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import seqlab  # noqa: F401
except ImportError:  # run from a checkout without installing: python benchmarks/applications.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402
from seqlab.apps import app_class, load_run, train_run  # noqa: E402
from seqlab.models import ModelConfig, build_model, count_parameters  # noqa: E402

# Chosen to reach >= 99% exact match on dates within 10 minutes on 2 CPU cores: short inputs
# (<= ~30 chars) make a 1-layer, 128-unit GRU cheap enough for thousands of steps at batch 64.
DATES = {"embed_dim": 64, "hidden_size": 128, "num_layers": 1, "dropout": 0.1, "batch_size": 64, "lr": 3e-3,
         "warmup_steps": 100, "n_train": 10_000, "n_valid": 500, "eval_examples": 200}
LM_TARGET = 1_000_000
LM_COMMON = {"batch_size": 32, "lr": 2e-3, "warmup_steps": 100, "bptt": 128, "dropout": 0.1, "eval_tokens": 20_000}
LM_ARCHS = {"rnn": {"num_layers": 2}, "lstm": {"num_layers": 2}, "gru": {"num_layers": 2},
            # carries a context window like the recurrent archs carry their state: independent
            # 255-token blocks (bptt=255, carry_state=false) give twice the tokens/s but no
            # better bits/char in 600 s on one thread
            "transformer": {"num_layers": 4, "nhead": 4, "max_len": 256, "lr": 1e-3}}
MODEL_KEYS = {f for f in ModelConfig.__dataclass_fields__}


def _split(settings: dict) -> tuple[dict, dict]:
    model = {k: v for k, v in settings.items() if k in MODEL_KEYS}
    return model, {k: v for k, v in settings.items() if k not in MODEL_KEYS}


def steps_for(kind: str, arch: str, settings: dict, budget: float, probe_steps: int = 8) -> tuple[int, float]:
    """(max_steps that fit in 90% of ``budget``, seconds per step) from timing a few real steps."""
    app_cls = app_class(kind)
    model_s, rest = _split(settings)
    data = {k: v for k, v in rest.items() if k in app_cls.Options.keys()}
    app = app_cls(app_cls.Options.from_dict(data))
    app.build()
    model = build_model(ModelConfig.from_dict({"kind": kind, "arch": arch, **app.model_sizes(), **model_s}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    it = iter(app.batches(settings["batch_size"], 0))
    times = []
    for i in range(probe_steps + 2):
        t = time.perf_counter()
        loss, count = app.loss_fn(model, next(it))
        opt.zero_grad()
        (loss / count).backward()
        opt.step()
        if i >= 2:  # the first steps pay for allocation and lazy initialisation
            times.append(time.perf_counter() - t)
    per_step = sorted(times)[len(times) // 2]
    return max(10, int(0.9 * budget / per_step)), per_step


def train_and_score(kind: str, arch: str, settings: dict, budget: float, split: str, out: Path) -> dict:
    max_steps, per_step = steps_for(kind, arch, settings, budget)
    run_settings = {**settings, "max_steps": max_steps, "max_time": float(budget), "eval_every": 0,
                    "checkpoint_every": 0, "log_every": max(1, min(50, max_steps // 10))}
    t0 = time.perf_counter()
    result = train_run(kind, arch=arch, settings=run_settings, out=out, force=True, progress=False)
    train_s = time.perf_counter() - t0
    run = load_run(out)
    t0 = time.perf_counter()
    metrics = run.app.evaluate(run.model, split)
    log = result.get("log") or []
    tok_s = sorted(e["tokens_per_s"] for e in log)[len(log) // 2] if log else float("nan")
    return {"kind": kind, "arch": arch, "parameters": count_parameters(run.model), "steps": result["step"],
            "planned_steps": max_steps, "probe_s_per_step": per_step, "stopped": result["stopped"],
            "train_s": train_s, "eval_s": time.perf_counter() - t0, "tokens_per_s": tok_s, "split": split,
            "metrics": metrics, "settings": run_settings}


def lm_size(arch: str, target: int = LM_TARGET) -> tuple[int, int]:
    """(hidden size, parameter count) of the char-level stdlib LM closest to ``target`` parameters."""
    app = app_class("lm")(app_class("lm").Options())
    app.build()
    extra = {k: v for k, v in LM_ARCHS[arch].items() if k in MODEL_KEYS}
    best = None
    step = 8 if arch != "transformer" else 4 * extra.get("nhead", 4)
    for h in range(step, 1025, step):
        cfg = {"kind": "lm", "arch": arch, **app.model_sizes(), "hidden_size": h, "embed_dim": h, **extra}
        n = count_parameters(build_model(ModelConfig.from_dict(cfg)))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (h, n)
        if n > target:
            break
    return best


def bench_dates(budget: float, out: Path) -> list[dict]:
    rows = []
    for attention in ("bahdanau", "none"):
        settings = {**DATES, "attention": attention}
        r = train_and_score("seq2seq", "gru", settings, budget, "test", out / f"dates-{attention}")
        r["name"] = f"dates gru {attention}"
        rows.append(r)
        _print_row(r)
    return rows


def bench_lm(budget: float, out: Path, archs: tuple[str, ...] = tuple(LM_ARCHS)) -> list[dict]:
    rows = []
    for arch, extra in ((a, LM_ARCHS[a]) for a in archs):
        hidden, n = lm_size(arch)
        settings = {**LM_COMMON, **extra, "hidden_size": hidden, "embed_dim": hidden}
        r = train_and_score("lm", arch, settings, budget, "validation", out / f"lm-{arch}")
        r["name"] = f"lm {arch} h={hidden}"
        rows.append(r)
        _print_row(r)
    return rows


def _print_row(r: dict) -> None:
    m = r["metrics"]
    score = (f"exact match {m['exact_match']:.4f}" if "exact_match" in m else f"bpc {m['bits_per_char']:.4f}")
    print(f"  {r['name']}: {r['parameters']:,} params, {r['steps']} steps in {r['train_s']:.0f}s -> {score}",
          file=sys.stderr, flush=True)


def table(rows: list[dict]) -> str:
    lines = ["| model | params | steps | train s | tokens/s | split | metric | value | also |",
             "|---|---:|---:|---:|---:|---|---|---:|---|"]
    for r in rows:
        m = r["metrics"]
        if "exact_match" in m:
            metric, value, also = "exact match", m["exact_match"], f"CER {m['char_error_rate']:.4f}, BLEU {m['bleu']:.1f}"
        else:
            metric, value, also = "bits/char", m["bits_per_char"], f"ppl {m['perplexity']:.3f}"
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['steps']} | {r['train_s']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {r['split']} | {metric} | {value:.4f} | {also} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=("dates", "lm", "all"), default="all")
    p.add_argument("--lm-archs", default=",".join(LM_ARCHS), help="comma-separated subset of the LM archs")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model (default 600)")
    # One thread by default: these matrices are small (batch 32-64 x a few hundred units), so a
    # second thread gains little, and on a shared machine its spin-waiting can cost 10x.
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default; default 1)")
    p.add_argument("--json", default="runs/applications.json", help="where to write the results")
    p.add_argument("--runs", default=None, help="where the run directories go (default: a temporary folder)")
    add_markdown_arguments(p)
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be > 0, got {args.budget}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="seqlab-apps-") as tmp:
        out = Path(args.runs) if args.runs else Path(tmp)
        rows = []
        if args.what in ("dates", "all"):
            rows += bench_dates(args.budget, out)
        if args.what in ("lm", "all"):
            archs = tuple(a.strip() for a in args.lm_archs.split(",") if a.strip())
            unknown = [a for a in archs if a not in LM_ARCHS]
            if unknown or not archs:
                p.error(f"--lm-archs expects a comma-separated subset of {','.join(LM_ARCHS)}, got {args.lm_archs!r}")
            rows += bench_lm(args.budget, out, archs)
    header = (f"budget {args.budget:g} s per model, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}")
    print(header)
    print()
    print(table(rows))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"budget_s": args.budget, "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "results": rows}, indent=1) + "\n")
    print(f"\nwrote {path}")
    if args.markdown:
        how = [f"at most {args.budget:g} s of training per model (steps fitted to 90% of it from a timed probe), "
               f"{torch.get_num_threads()} torch threads; evaluation after training, outside the budget"]
        command = command_line(None if argv is None else [__file__, *argv])
        section = results_section("What the applications reach in a fixed time", command, table(rows),
                                  notes=how + args.note)
        print(f"wrote the 'applications' section of {write_section(args.markdown, 'applications', section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
