"""What the applications reach on this machine in a fixed time budget (a measurement, not a test).

    python benchmarks/applications.py --what dates --budget 600     # ~20 min: two models
    python benchmarks/applications.py --what lm --budget 600        # ~45 min: four models
    python benchmarks/applications.py --what all --budget 30        # a smoke run
    python benchmarks/applications.py --what all --budget 600 --markdown   # also into benchmarks/RESULTS.md
    python benchmarks/applications.py --what numbers --budget 600 --clock cpu   # seqlab's best and the peer

(1) **dates**: human-written dates in 17 locales -> ISO 8601 (``seqlab.data`` task ``dates``),
a bidirectional-GRU encoder and a GRU decoder, trained for at most ``--budget`` seconds each:
with Bahdanau attention, and the plain context-vector model (the decoder sees the source only
through the encoder's final state) with the same budget. Reported: exact match on the whole
test split (1000 dates, greedy decoding), character error rate, steps done.

(2) **lm**: character-level language models of the embedded Python-documentation corpus
(``stdlib``) at about 1M parameters each (hidden size searched per arch; counts reported),
rnn, lstm, gru and transformer, ``--budget`` seconds each. Reported: validation bits per
character on the whole validation split (~300k characters), steps and tokens/s.

(3) **numbers**: English number words -> French (``seqlab.data`` task ``numbers``,
num2words; "forty-two thousand, two hundred and sixteen" -> "quarante-deux mille deux cent seize"),
10,000 training pairs, scored on the 1,000 test pairs. seqlab's seq2seq (``--numbers-models``,
default the best one; ``NUMBERS`` lists the candidates) against ``tutorial-peer``, written here
from the PyTorch tutorial "NLP From Scratch: Translation with a Sequence to Sequence Network and
Attention" (it shares no code with seqlab): words as tokens (split on spaces), a 1-layer GRU
encoder and a GRU decoder with Bahdanau (additive) attention, hidden size 128, dropout 0.1 on the
embeddings, every sequence padded to the longest with index 0 and the loss (NLL of log-softmax)
taken over every position as the tutorial does, full teacher forcing, Adam at lr 1e-3, batch 32,
no schedule, epochs of shuffled pairs until the budget is spent; greedy decoding up to the longest
target. Both train on the same pairs for the same ``--budget`` on the same ``--clock`` (``cpu`` =
``time.process_time``, which a busy machine does not stretch: use one thread). seqlab's budget
is ``max_time`` with no step count, so its warm-up and decay are planned from the budget.
Reported: exact match, BLEU (sacrebleu) and CER on the test split, greedy and (seqlab) beam 5;
target words (+ <eos>) and pairs per training second. Both programs reach 1.0 on this task well
within 600 s, so the runs also score the same 200 validation pairs every ``--numbers-eval-every``
steps (clocks paused): a curve of exact match against training seconds, and the seconds each
took to reach 0.99.

The learning-rate schedule of (1) and (2) needs a horizon, so each run first times a few training steps and
sets ``max_steps`` to what fits in 90% of the budget; ``max_time`` is the hard stop. Evaluation
happens once, at the end, outside the budget. Prints a markdown table and writes JSON;
``--markdown`` also writes the table, headed with the machine, versions, date and command, into
this benchmark's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

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


# -- (3) numbers: seqlab's seq2seq against the PyTorch tutorial's recipe -------------------------

NUMBERS_DATA = {"task": "numbers", "n_train": 10_000, "n_valid": 500, "n_test": 1_000}
NUMBERS_BEAM = 5
# seqlab's candidates: name -> (arch, settings). Words as tokens, as the peer reads them: a
# number is at most 11 words (71 characters), so word-level decoders take 6x fewer steps.
NUMBERS_COMMON = {"level": "word", "batch_size": 32, "lr": 3e-3, "dropout": 0.1,
                  "eval_examples": 200}
NUMBERS = {
    "gru-bahdanau": ("gru", {"embed_dim": 128, "hidden_size": 128, "num_layers": 1, "attention": "bahdanau"}),
    "lstm-bahdanau": ("lstm", {"embed_dim": 128, "hidden_size": 128, "num_layers": 1, "attention": "bahdanau"}),
    "gru-luong": ("gru", {"embed_dim": 128, "hidden_size": 128, "num_layers": 1, "attention": "luong-general"}),
    "transformer": ("transformer", {"embed_dim": 128, "hidden_size": 128, "num_layers": 2, "nhead": 4,
                                    "lr": 1e-3}),
}
NUMBERS_BEST = "gru-luong"  # 1.0 test exact match in 60 CPU seconds, the most steps per second
NUMBERS_EVAL_EVERY = 100  # steps (of 32 pairs, for both programs) between validation scores of the curve
NUMBERS_CURVE_S = (2, 5, 10, 20, 40, 80, 160, 320, 600)  # elapsed training seconds the curve table reads


def curve_at(curve: list[dict], seconds: float) -> float | None:
    """The validation exact match of the last evaluation at or before ``seconds`` of training."""
    seen = [c["exact_match"] for c in curve if c["train_time"] <= seconds]
    return seen[-1] if seen else None


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation with validation exact match >= ``target``."""
    return next((c["train_time"] for c in curve if c["exact_match"] >= target), None)


def bench_numbers_seqlab(name: str, budget: float, clock: str, out: Path, eval_every: int) -> dict:
    """seqlab's ``name`` model trained for ``budget`` seconds of ``clock``, scored on the test split.

    Every ``eval_every`` steps the trainer scores the first ``eval_examples`` validation pairs
    (greedy) with its clock paused: that is the curve."""
    arch, extra = NUMBERS[name]
    settings = {**NUMBERS_DATA, **NUMBERS_COMMON, **extra, "max_time": float(budget), "clock": clock,
                "eval_every": eval_every, "checkpoint_every": 0, "log_every": 20}
    result = train_run("seq2seq", arch=arch, settings=settings, out=out / f"numbers-{name}", force=True,
                       progress=False)
    run = load_run(out / f"numbers-{name}")
    t0 = time.perf_counter()
    greedy_m = run.app.evaluate(run.model, "test", beam=1)
    beam_m = run.app.evaluate(run.model, "test", beam=NUMBERS_BEAM)
    log = result.get("log") or []
    train_time = result["train_time"]
    return {"name": f"numbers seqlab {name}", "program": "seqlab", "model": name, "arch": arch,
            "parameters": count_parameters(run.model), "steps": result["step"], "stopped": result["stopped"],
            "plan": result.get("plan"), "train_s": train_time, "clock": clock, "eval_s": time.perf_counter() - t0,
            "tokens_per_s": sorted(e["tokens_per_s"] for e in log)[len(log) // 2] if log else float("nan"),
            "pairs_per_s": result["step"] * settings["batch_size"] / max(train_time, 1e-9),
            "split": "test", "metrics": greedy_m, "beam_metrics": beam_m, "settings": settings,
            "curve": [{"step": h["step"], "train_time": h["train_time"], "exact_match": h["exact_match"]}
                      for h in result.get("history") or []]}


class _Lang:
    """The tutorial's word index: SOS = 0, EOS = 1, then words in order of appearance (0 doubles as padding)."""

    def __init__(self, texts: list[str]):
        self.index = {"<sos>": 0, "<eos>": 1}
        for text in texts:
            for w in text.split(" "):
                self.index.setdefault(w, len(self.index))
        self.words = list(self.index)

    def ids(self, text: str, length: int) -> list[int]:
        # the tutorial has no unknown word (it would fail); here every test word occurs in training,
        # and one that did not would read as padding
        ids = [self.index.get(w, 0) for w in text.split(" ")] + [1]
        return (ids + [0] * length)[:length]


class _PeerEncoder(nn.Module):
    def __init__(self, vocab: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.gru(self.dropout(self.embedding(x)))  # (B, S, H), (1, B, H)


class _PeerBahdanau(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.Wa, self.Ua, self.Va = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, query, keys):  # (B, 1, H), (B, S, H)
        scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys))).squeeze(2).unsqueeze(1)  # (B, 1, S)
        weights = F.softmax(scores, dim=-1)
        return torch.bmm(weights, keys)  # (B, 1, H)


class _PeerDecoder(nn.Module):
    def __init__(self, hidden: int, vocab: int, max_len: int, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.attention = _PeerBahdanau(hidden)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.dropout = nn.Dropout(dropout)
        self.max_len = max_len

    def forward(self, enc_out, enc_hidden, target=None):
        """Log-probabilities (B, max_len, V): the gold previous word fed when ``target`` is given."""
        x = torch.zeros(enc_out.shape[0], 1, dtype=torch.long)  # (B, 1) <sos>
        hidden, outs = enc_hidden, []
        for i in range(self.max_len):
            context = self.attention(hidden.permute(1, 0, 2), enc_out)  # (B, 1, H)
            out, hidden = self.gru(torch.cat((self.dropout(self.embedding(x)), context), dim=2), hidden)
            outs.append(self.out(out))  # (B, 1, V)
            x = target[:, i].unsqueeze(1) if target is not None else outs[-1].argmax(-1).detach()  # (B, 1)
        return F.log_softmax(torch.cat(outs, dim=1), dim=-1)  # (B, T, V)


def bench_numbers_peer(budget: float, clock: str, eval_every: int, seed: int = 0) -> dict:
    """The PyTorch tutorial's seq2seq (see the module docstring) on the same pairs and budget."""
    from seqlab.data import load_task
    from seqlab.train.metrics import bleu, char_error_rate, exact_match

    now = time.process_time if clock == "cpu" else time.perf_counter
    torch.manual_seed(seed)
    rng = random.Random(seed)
    d = NUMBERS_DATA
    train = load_task(d["task"], "train", n=d["n_train"])
    test = load_task(d["task"], "test", n=d["n_test"])
    src_lang, tgt_lang = _Lang([s for s, _ in train]), _Lang([t for _, t in train])
    src_len = max(len(s.split(" ")) for s, _ in train) + 1  # + <eos>
    tgt_len = max(len(t.split(" ")) for _, t in train) + 1
    hidden, batch = 128, 32
    enc, dec = _PeerEncoder(len(src_lang.words), hidden), _PeerDecoder(hidden, len(tgt_lang.words), tgt_len)
    params = list(enc.parameters()) + list(dec.parameters())
    opt_e, opt_d = torch.optim.Adam(enc.parameters(), lr=1e-3), torch.optim.Adam(dec.parameters(), lr=1e-3)
    src = torch.tensor([src_lang.ids(s, src_len) for s, _ in train])  # (N, S)
    tgt = torch.tensor([tgt_lang.ids(t, tgt_len) for _, t in train])  # (N, T)
    tokens_per_pair = [len(t.split(" ")) + 1 for _, t in train]

    def decode(pairs: list) -> list[str]:
        """Greedy: the argmax word at each of tgt_len steps, cut at the first <eos>."""
        enc.eval(), dec.eval()
        hyps = []
        with torch.no_grad():
            for k in range(0, len(pairs), 256):
                x = torch.tensor([src_lang.ids(s, src_len) for s, _ in pairs[k:k + 256]])  # (B, S)
                for row in dec(*enc(x)).argmax(-1).tolist():  # (B, T)
                    row = row[:row.index(1)] if 1 in row else row
                    hyps.append(" ".join(tgt_lang.words[i] for i in row))
        enc.train(), dec.train()
        return hyps

    # the curve scores the validation pairs seqlab's trainer scores (eval_examples of them), clock paused
    valid = load_task(d["task"], "validation", n=d["n_valid"])[:NUMBERS_COMMON["eval_examples"]]
    curve = []
    enc.train(), dec.train()
    spent, steps, tokens, epochs = 0.0, 0, 0, 0
    while spent < budget:
        order = list(range(len(train)))
        rng.shuffle(order)
        for k in range(0, len(order), batch):
            t0 = now()
            idx = order[k:k + batch]
            opt_e.zero_grad(), opt_d.zero_grad()
            enc_out, enc_hidden = enc(src[idx])
            logp = dec(enc_out, enc_hidden, tgt[idx])  # (B, T, V)
            loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), tgt[idx].reshape(-1))  # padding included, as the tutorial
            loss.backward()
            opt_e.step(), opt_d.step()
            spent += now() - t0
            steps, tokens = steps + 1, tokens + sum(tokens_per_pair[i] for i in idx)
            if eval_every and steps % eval_every == 0:
                curve.append({"step": steps, "train_time": spent,
                              "exact_match": exact_match(decode(valid), [t for _, t in valid])})
            if spent >= budget:
                break
        epochs += 1
    t0 = time.perf_counter()
    hyps = decode(test)
    refs = [t for _, t in test]
    metrics = {"exact_match": exact_match(hyps, refs), "char_error_rate": char_error_rate(hyps, refs),
               "bleu": bleu(hyps, refs), "examples": float(len(refs))}
    return {"name": "numbers tutorial-peer", "program": "peer", "model": "tutorial-peer", "arch": "gru",
            "parameters": sum(p.numel() for p in params), "steps": steps, "epochs": epochs, "stopped": "max_time",
            "train_s": spent, "clock": clock, "eval_s": time.perf_counter() - t0,
            "tokens_per_s": tokens / max(spent, 1e-9), "pairs_per_s": steps * batch / max(spent, 1e-9),
            "split": "test", "metrics": metrics, "beam_metrics": None, "curve": curve,
            "settings": {"hidden_size": hidden, "batch_size": batch, "lr": 1e-3, "optimizer": "Adam",
                         "dropout": 0.1, "level": "word", "src_len": src_len, "tgt_len": tgt_len, **d}}


def bench_numbers(budget: float, clock: str, models: tuple[str, ...], peer: bool, out: Path,
                  eval_every: int = NUMBERS_EVAL_EVERY) -> list[dict]:
    rows = []
    for name in models:
        rows.append(bench_numbers_seqlab(name, budget, clock, out, eval_every))
        _print_row(rows[-1])
    if peer:
        rows.append(bench_numbers_peer(budget, clock, eval_every))
        _print_row(rows[-1])
    return rows


def numbers_table(rows: list[dict]) -> str:
    lines = ["| program | model | params | steps | train s | tokens/s | pairs/s | exact match | BLEU | CER "
             f"| exact match, beam {NUMBERS_BEAM} | BLEU, beam {NUMBERS_BEAM} | s to 0.99 (valid) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, b = r["metrics"], r["beam_metrics"]
        beam = f"{b['exact_match']:.4f} | {b['bleu']:.2f}" if b else "- | -"
        lines.append(f"| {r['program']} | {r['model']} | {r['parameters']:,} | {r['steps']} | {r['train_s']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {r['pairs_per_s']:.0f} | {m['exact_match']:.4f} | {m['bleu']:.2f} | "
                     f"{m['char_error_rate']:.4f} | {beam} | {_fmt(time_to(r['curve'], 0.99), '.1f')} |")
    budget = max(r["settings"]["max_time"] if "max_time" in r["settings"] else r["train_s"] for r in rows)
    times = [t for t in NUMBERS_CURVE_S if t <= budget]
    lines += ["", "validation exact match (first eval_examples pairs, greedy) after t training seconds:", "",
              "| program | model | " + " | ".join(f"{t} s" for t in times) + " |",
              "|---|---|" + "---:|" * len(times)]
    for r in rows:
        lines.append(f"| {r['program']} | {r['model']} | "
                     + " | ".join(_fmt(curve_at(r["curve"], t), ".3f") for t in times) + " |")
    return "\n".join(lines)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


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
    p.add_argument("--what", choices=("dates", "lm", "numbers", "all"), default="all")
    p.add_argument("--lm-archs", default=",".join(LM_ARCHS), help="comma-separated subset of the LM archs")
    p.add_argument("--numbers-models", default=NUMBERS_BEST,
                   help=f"numbers: comma-separated seqlab models of {','.join(NUMBERS)} (default {NUMBERS_BEST})")
    p.add_argument("--no-peer", action="store_true", help="numbers: skip the tutorial peer")
    p.add_argument("--numbers-eval-every", type=int, default=NUMBERS_EVAL_EVERY,
                   help=f"numbers: steps between the curve's validation scores (default {NUMBERS_EVAL_EVERY})")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="numbers: what the budget counts, wall seconds or this process's CPU seconds")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model (default 600)")
    # One thread by default: these matrices are small (batch 32-64 x a few hundred units), so a
    # second thread gains little, and on a shared machine its spin-waiting can cost 10x.
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default; default 1)")
    p.add_argument("--json", default="runs/applications.json", help="where to write the results")
    p.add_argument("--runs", default=None, help="where the run directories go (default: a temporary folder)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="train nothing: print (and with --markdown publish) the tables of an earlier run's --json "
                        "file; its budget, clock and threads replace the flags'")
    add_markdown_arguments(p)
    args = p.parse_args(argv)
    if args.from_json:
        try:
            earlier = json.loads(Path(args.from_json).read_text())
            rows, args.budget, args.clock = earlier["results"], float(earlier["budget_s"]), earlier.get("clock", "wall")
            args.threads = int(earlier["threads"])
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--from-json expects a JSON file written by this script's --json, got {args.from_json!r}: {e}")
        torch.set_num_threads(args.threads)
        return report(args, argv, rows, write_json=False)
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
        if args.what in ("numbers", "all"):
            models = tuple(m.strip() for m in args.numbers_models.split(",") if m.strip())
            unknown = [m for m in models if m not in NUMBERS]
            if unknown:
                p.error(f"--numbers-models expects a comma-separated subset of {','.join(NUMBERS)}, "
                        f"got {args.numbers_models!r}")
            rows += bench_numbers(args.budget, args.clock, models, not args.no_peer, out, args.numbers_eval_every)
    return report(args, argv, rows)


def report(args: argparse.Namespace, argv: Optional[list], rows: list, write_json: bool = True) -> int:
    """Print the tables of ``rows``; write the JSON and, with ``--markdown``, this script's section."""
    header = (f"budget {args.budget:g} s per model ({args.clock} clock for numbers), torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}")
    print(header)
    print()
    others = [r for r in rows if r.get("program") is None]
    if others:
        print(table(others))
    numbers = [r for r in rows if r.get("program") is not None]
    if numbers:
        print(numbers_table(numbers))
    if write_json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"budget_s": args.budget, "clock": args.clock, "threads": torch.get_num_threads(),
                                    "torch": torch.__version__, "results": rows}, indent=1) + "\n")
        print(f"\nwrote {path}")
    if args.markdown:
        how = [f"at most {args.budget:g} s of training per model, {torch.get_num_threads()} torch threads; evaluation "
               f"outside the budget"]
        if others:
            how += ["dates and lm: steps fitted to 90% of the budget from a timed probe, wall clock"]
        if numbers:
            how += [f"numbers: the budget is max_time with no step count (warm-up and decay planned from it), "
                    f"{args.clock} clock; the same training pairs and test pairs for every program"]
        command = command_line(None if argv is None else [__file__, *argv])
        tables = [table(others)] if others else []
        tables += [numbers_table(numbers)] if numbers else []
        section = results_section("What the applications reach in a fixed time", command, "\n\n".join(tables),
                                  notes=how + args.note)
        print(f"wrote the 'applications' section of {write_section(args.markdown, 'applications', section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
