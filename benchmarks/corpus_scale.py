"""How `seqlab train lm --data FILE` scales with the corpus: start-up time, peak resident memory
per character of corpus, and training tokens/s, for generated texts of given sizes.

Each size runs in a fresh process (so its peak RSS is its own) through the same ``train_run``
that ``seqlab train lm`` calls: the text is streamed twice (count, then encode) into ids of one
byte per character while the vocabulary fits in 256 symbols. Figures:

* start-up: seconds from calling ``train_run`` to the first training step (reading, splitting,
  vocabulary, encoding, model), i.e. wall time minus the trainer's training clock, the final
  evaluation and the checkpoint;
* bytes/char: (peak RSS during the run - RSS of the same process before reading the data) divided
  by the characters of the corpus; the ids themselves are 1 byte per character;
* tokens/s: the trainer's own figure over its steps (a small GRU; the data path, not the model, is
  what this benchmark is about).

The texts are written to a temporary folder (``--dir``, default /tmp) and deleted afterwards::

    python benchmarks/corpus_scale.py --sizes-mb 100 1000            # about 5 minutes on 2 cores
    python benchmarks/corpus_scale.py --sizes-mb 100 1000 --markdown # also into benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import add_markdown_arguments, command_line, results_section, write_section

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be has or also "
         "first new one two three after who their had its but not they have been other into all more some "
         "when city time year state world river school team house music film album game party war").split()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A text of about ``megabytes`` MB: lines of 40-120 characters of words, digits, punctuation and a
    few accented letters (a vocabulary of about 80 symbols), written 16 MB at a time; returns its characters."""
    rng = random.Random(seed)
    lines = []
    for i in range(200_000):
        n = rng.randint(6, 20)
        words = [rng.choice(WORDS) if rng.random() < 0.9 else str(rng.randint(0, 9999)) for _ in range(n)]
        if rng.random() < 0.05:
            words.append(rng.choice(("café", "naïve", "Zürich", "São")))
        lines.append(" ".join(words).capitalize() + rng.choice((".", ",", ";", ":", "!", "?")))
    block = "\n".join(lines) + "\n"
    target, chars = int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        k = 0
        while f.tell() < target:
            # rotate the block so that repeated lines do not all land in one split of the hash
            shift = (k * 7919) % len(lines)
            piece = "\n".join(lines[shift:] + lines[:shift]) + "\n" if k else block
            f.write(piece)
            chars += len(piece)
            k += 1
    return chars


CHILD = r"""
import json, resource, sys, time
import torch
from seqlab.apps import train_run
torch.set_num_threads(int(sys.argv[4]))
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
base = rss_mb()
t0 = time.perf_counter()
result = train_run("lm", arch="gru", data=sys.argv[1], out=sys.argv[2], progress=False,
                   settings={"max_steps": int(sys.argv[3]), "hidden_size": 128, "embed_dim": 64, "num_layers": 1,
                             "batch_size": 32, "bptt": 128, "eval_every": 0, "eval_tokens": 20000,
                             "tensorboard": False, "log_every": 5, "keep_best": False, "warmup_steps": 2})
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tok = [e["tokens_per_s"] for e in result["log"]]
print(json.dumps({"wall": wall, "train_time": result["train_time"], "base_mb": base, "peak_mb": peak,
                  "tokens_per_s": sorted(tok)[len(tok) // 2] if tok else None, "steps": result["step"]}))
"""


def measure(path: Path, chars: int, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqlab-corpus-run-") as out:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), os.path.join(out, "run"), str(steps),
                               str(threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the training process failed ({proc.returncode}): {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["process_wall"] = time.perf_counter() - t0
    r["chars"] = chars
    r["startup"] = r["wall"] - r["train_time"]
    r["bytes_per_char"] = (r["peak_mb"] - r["base_mb"]) * 2 ** 20 / chars
    return r


def table(rows: list[dict]) -> str:
    lines = ["| corpus | characters | start-up (s) | peak RSS (MB) | RSS before data (MB) | bytes/char | tokens/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mb']:g} MB | {r['chars']:,} | {r['startup']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['base_mb']:.0f} | {r['bytes_per_char']:.2f} | {r['tokens_per_s'] or 0:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 1000])
    p.add_argument("--steps", type=int, default=20, help="training steps per size (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default 1)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the generated texts go (deleted after)")
    add_markdown_arguments(p)
    args = p.parse_args(argv)
    rows = []
    for mb in args.sizes_mb:
        fd, name = tempfile.mkstemp(prefix=f"seqlab-corpus-{mb:g}mb-", suffix=".txt", dir=args.dir)
        os.close(fd)
        path = Path(name)
        try:
            t0 = time.perf_counter()
            chars = write_corpus(path, mb)
            print(f"{mb:g} MB: wrote {chars:,} characters in {time.perf_counter() - t0:.0f} s; training ...",
                  file=sys.stderr, flush=True)
            r = measure(path, chars, args.steps, args.threads)
        finally:
            path.unlink(missing_ok=True)
        r["mb"] = mb
        rows.append(r)
        print(f"{mb:g} MB: start-up {r['startup']:.0f} s, peak RSS {r['peak_mb']:.0f} MB "
              f"({r['bytes_per_char']:.2f} bytes/char above the {r['base_mb']:.0f} MB before the data), "
              f"{r['tokens_per_s'] or 0:,.0f} tokens/s", file=sys.stderr, flush=True)
    out = table(rows)
    print(out)
    if args.markdown:
        how = [f"`train_run('lm', arch='gru', data=FILE)` in a fresh process per size, {args.steps} steps, "
               f"{args.threads} torch thread(s); generated text of lines of 40-120 characters (about 80 symbols)",
               "start-up: wall time minus the training clock (reading, splitting, vocabulary, encoding, model, "
               "final evaluation, checkpoint); bytes/char: peak RSS above the process's RSS before the data, "
               "per character of corpus"]
        command = command_line(None if argv is None else [__file__, *argv])
        section = results_section("Corpus scale: `seqlab train lm --data FILE`", command, out, notes=how + args.note)
        print(f"\nwrote the 'corpus_scale' section of {write_section(args.markdown, 'corpus_scale', section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
