"""seqlab's language models against the programs people would otherwise run, at equal training time.

    python benchmarks/peers.py                         # embedded corpus, 600 s each, six models (~65 min)
    python benchmarks/peers.py --budget 120 --models lstm-peer,lstm
    python benchmarks/peers.py --data my.txt --budget 300
    # one process per model on a shared machine (CPU seconds, one thread each), then one table:
    python benchmarks/peers.py --models lstm --clock cpu --threads 1 --json runs/peers-lstm.json
    python benchmarks/peers.py --merge runs/peers-*.json --markdown --readme

**Data.** One text (``--data FILE``, default: the first ``--chars`` characters of the embedded
standard-library documentation corpus) split at 90%: the last 10% is the validation text, the same
for every program. Every program trains at about ``--params`` parameters for ``--budget`` seconds
of training, one after the other in this process on the same threads; each clock pauses while its
program evaluates, so evaluation costs nobody training time.

**Peers**, written here from their published recipes (they share no code with seqlab):

* ``lstm-peer``: pytorch/examples' ``word_language_model`` with characters as tokens. Embedding ->
  2-layer LSTM -> Linear tied to the embedding, dropout 0.2, plain SGD at lr 20 with gradient
  norm clipped to 0.25, bptt 64, batch 16, the hidden state carried (detached) from batch to batch,
  lr / 4 after every epoch whose validation loss did not improve. Scored with the state carried
  through the whole validation text (10 rows), and also with a continuous cache of the size that
  seqlab's recurrent models are scored with by default (its own code below), its theta and lambda
  chosen, as seqlab's defaults were, on the last 55k characters of its training text (the peer's
  hidden states have no LayerNorm, and want another theta than seqlab's LSTM).
* ``gpt-peer``: nanoGPT's ``model.py`` at its README's CPU "baby GPT" settings: 4 layers, 4 heads,
  block 64, batch 12, no dropout, no biases, learned positions, tied output; AdamW (betas 0.9/0.99,
  weight decay 0.1 on matrices), lr 1e-3, 100 warm-up iterations, cosine to 1e-4 at
  ``lr_decay_iters``, then 1e-4 (nanoGPT's ``get_lr``), clip 1.0. The width is set to the parameter
  target (the recipe's 128 gives 0.8M). ``lr_decay_iters`` is fitted to the budget from the step time
  measured over its first iterations, as a user with a time budget would, and it trains until the
  budget is spent (so a machine that speeds up later does not leave the peer idle). Scored on
  non-overlapping 64-character blocks of the validation text (the recipe's way), and also in
  64-character windows sliding by 32, as seqlab scores its transformer.

**seqlab**: ``seqlab train lm --data TRAIN --valid VALID --arch A --max-time BUDGET`` on its own
defaults for that arch (its printed settings, sizes included), then the best checkpoint scored on
the whole validation text as ``seqlab eval RUN/best --split validation`` does: with its continuous
cache (see the README), the recurrent models with the state carried, the transformer in windows
sliding by half their length. Each is also scored without the cache (the transformer in sliding
and in non-overlapping windows), as the peers are. The ratio to the peer is given for each
program's own scoring and for both scored alike: the recurrent models with the state carried, with
and without the cache; the transformer in both kinds of windows, without the cache (gpt-peer has
none).

Reported: validation loss in nats per token (characters; seqlab's stream has one ``<eos>`` token
per paragraph break where the peers see two newlines) at the budget, the curve of validation loss
against training seconds, tokens/s, and each seqlab model's loss over its peer's (the
transformer's peer is gpt-peer, the recurrent models' lstm-peer). Writes ``--json``, a PNG plot
(``--plot``) and, with ``--markdown``, this script's section of ``benchmarks/RESULTS.md`` (and of
the README with ``--readme``). ``--merge`` joins the JSON files of runs made side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

try:
    import seqlab  # noqa: F401
except ImportError:  # run from a checkout without installing: python benchmarks/peers.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402

MODELS = ("lstm-peer", "gpt-peer", "rnn", "lstm", "gru", "transformer")


def _cache_size() -> int:
    from seqlab.apps.lm import LMApp

    return int(LMApp.defaults("lstm").get("cache_size", 0))


# N: the memory of the continuous cache that seqlab's recurrent models are scored with by default;
# lstm-peer is also scored with a cache of that size (its own implementation below), its theta
# and lambda chosen on its own training text as seqlab's were (CACHE_GRID), so that both can be
# compared scored alike
CACHE_N = _cache_size()
CACHE_GRID = {"theta": (0.3, 1.0, 3.0, 10.0), "lambda": (0.1, 0.2, 0.3)}


# ----------------------------------------------------------------------------
# Data


def load_text(path: Optional[str], chars: int) -> str:
    if path is None:
        from seqlab.data.corpus import stdlib_corpus
        return stdlib_corpus().train[:chars]
    return Path(path).read_text(encoding="utf-8")


class CharData:
    """The text's characters as ids (vocabulary from the training part), split at 90%."""

    def __init__(self, text: str, valid_fraction: float = 0.1):
        cut = int(len(text) * (1 - valid_fraction))
        self.train_text, self.valid_text = text[:cut], text[cut:]
        chars = sorted(set(self.train_text))
        self.stoi = {c: i + 1 for i, c in enumerate(chars)}  # 0: a character the training part lacks
        self.vocab_size = len(chars) + 1
        self.train = self.encode(self.train_text)
        self.valid = self.encode(self.valid_text)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.stoi.get(c, 0) for c in text], dtype=torch.long)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
read_clock = CLOCK["wall"]  # set by --clock


class Clock:
    """Training seconds: runs between ``start`` and ``stop``; evaluation happens while it is stopped."""

    def __init__(self):
        self.total, self._t0 = 0.0, None

    def start(self):
        self._t0 = read_clock()

    def stop(self):
        self.total += read_clock() - self._t0
        self._t0 = None

    def now(self) -> float:
        return self.total + (read_clock() - self._t0 if self._t0 is not None else 0.0)


# ----------------------------------------------------------------------------
# Peer 1: pytorch/examples word_language_model, characters as tokens


class RNNModel(nn.Module):
    """Encoder (embedding) -> LSTM -> decoder (tied), as in word_language_model's model.py."""

    def __init__(self, ntoken: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, nhid)
        self.rnn = nn.LSTM(nhid, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tied: emsize == nhid
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x, hidden):  # x (T, B)
        emb = self.drop(self.encoder(x))  # (T, B, H)
        out, hidden = self.rnn(emb, hidden)  # (T, B, H)
        return self.decoder(self.drop(out)), hidden  # (T, B, V)


def batchify(ids: torch.Tensor, bsz: int) -> torch.Tensor:
    n = ids.numel() // bsz
    return ids[: n * bsz].view(bsz, n).t().contiguous()  # (N/B, B): column b is a contiguous row of the text


def run_lstm_peer(data: CharData, budget: float, params: int, eval_every: float, seed: int) -> dict:
    torch.manual_seed(seed)
    nhid = _fit_width(lambda h: RNNModel(data.vocab_size, h, 2, 0.2), params, step=8)
    model = RNNModel(data.vocab_size, nhid, 2, 0.2)
    bptt, bsz, lr, clip = 64, 16, 20.0, 0.25
    train = batchify(data.train, bsz)  # (N/16, 16)
    valid = batchify(data.valid, 10)  # (N/10, 10)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total, count, hidden = 0.0, 0, None
        for i in range(0, valid.size(0) - 1, bptt):
            x, y = valid[i:i + bptt], valid[i + 1:i + 1 + bptt]
            x = x[: y.size(0)]
            out, hidden = model(x, hidden)
            total += F.cross_entropy(out.view(-1, out.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
        model.train()
        return total / count

    @torch.no_grad()
    def evaluate_cached(N: int, theta: float, lam: float, valid: torch.Tensor = valid) -> float:
        """As ``evaluate`` (of ``valid``, (n, rows)), each target's probability mixed with a continuous
        cache (Grave et al. 2017) of the last N LSTM outputs h_i of its row and the tokens that
        followed them: p = (1 - lam) p_model + lam sum_i softmax_i(theta h_t . h_i) [x_{i+1} = target]."""
        model.eval()
        total, count, hidden, keys, vals = 0.0, 0, None, None, None
        for i in range(0, valid.size(0) - 1, bptt):
            x, y = valid[i:i + bptt], valid[i + 1:i + 1 + bptt]
            x = x[: y.size(0)]
            out, hidden = model.rnn(model.encoder(x), hidden)  # (T, B, H): eval mode, no dropout
            logp = F.log_softmax(model.decoder(out), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).t()  # (B, T)
            h, y = out.transpose(0, 1), y.t()  # (B, T, H), (B, T)
            M = 0 if keys is None else keys.size(1)
            keys = h if keys is None else torch.cat([keys, h], 1)  # (B, M + T, H)
            vals = y if vals is None else torch.cat([vals, y], 1)  # (B, M + T)
            q = torch.arange(M, M + y.size(1)).unsqueeze(1)  # (T, 1) positions of the targets' inputs
            k = torch.arange(keys.size(1)).unsqueeze(0)  # (1, M + T)
            past = (k < q) & (k >= q - N)  # (T, M + T)
            w = (theta * h @ keys.transpose(1, 2)).masked_fill(~past, -math.inf).softmax(-1).nan_to_num(0.0)
            p_cache = (w * (vals.unsqueeze(1) == y.unsqueeze(2))).sum(-1)  # (B, T)
            mix = torch.where(past.any(1), lam, 0.0)  # (T,): the text's first target has no memory
            total -= torch.logaddexp(torch.log1p(-mix) + logp, torch.log(mix) + torch.log(p_cache)).sum().item()
            count += y.numel()
            keys, vals = keys[:, -N:], vals[:, -N:]
        model.train()
        return total / count

    clock, curve, tokens = Clock(), [(0.0, evaluate())], 0
    best_val, next_eval, done = math.inf, eval_every, False
    model.train()
    clock.start()
    while not done:
        hidden = None
        for i in range(0, train.size(0) - 1, bptt):
            x, y = train[i:i + bptt], train[i + 1:i + 1 + bptt]
            x = x[: y.size(0)]
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = F.cross_entropy(out.view(-1, out.size(-1)), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            tokens += y.numel()
            if clock.now() >= budget:
                done = True
                break
            if clock.now() >= next_eval:
                clock.stop()
                curve.append((clock.total, evaluate()))
                next_eval += eval_every
                clock.start()
        clock.stop()
        val = evaluate()  # the recipe's end-of-epoch validation, which drives the annealing
        curve.append((clock.total, val))
        if val < best_val:
            best_val = val
        else:
            lr /= 4.0
        clock.start()
    clock.stop()
    final = evaluate()
    scorings, settings = {"state": final}, {"bptt": bptt, "batch": bsz, "sgd_lr": 20.0, "final_lr": lr, "clip": clip,
                                            "dropout": 0.2}
    if CACHE_N:  # theta and lambda: the best of the grid on the training text's last 55k characters
        tail = batchify(data.train[-55_000:], 10)  # (5500, 10)
        fit = {(t, lam): evaluate_cached(CACHE_N, t, lam, tail)
               for t in CACHE_GRID["theta"] for lam in CACHE_GRID["lambda"]}
        theta, lam = min(fit, key=fit.get)
        scorings["cache"] = evaluate_cached(CACHE_N, theta, lam)
        settings.update(cache_size=CACHE_N, cache_theta=theta, cache_lambda=lam)
    return {"params": _count(model), "width": nhid, "curve": curve, "final": final, "scorings": scorings,
            "train_s": clock.total, "tokens_per_s": tokens / clock.total, "settings": settings}


# ----------------------------------------------------------------------------
# Peer 2: a nanoGPT-style GPT


class Block(nn.Module):
    def __init__(self, d: int, nhead: int):
        super().__init__()
        self.nhead = nhead
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.nhead, C // self.nhead).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, nhead: int, d: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, nhead) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):  # (B, T)
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))  # (B, T, C)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def run_gpt_peer(data: CharData, budget: float, params: int, eval_every: float, seed: int) -> dict:
    torch.manual_seed(seed)
    block, batch, n_layer, nhead = 64, 12, 4, 4
    d = _fit_width(lambda w: GPT(data.vocab_size, block, n_layer, nhead, w), params, step=nhead * 4)
    model = GPT(data.vocab_size, block, n_layer, nhead, d)
    lr, min_lr, warmup = 1e-3, 1e-4, 100
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)

    def get_batch():
        ix = torch.randint(data.train.numel() - block - 1, (batch,), generator=gen)
        x = torch.stack([data.train[i:i + block] for i in ix.tolist()])  # (B, T)
        y = torch.stack([data.train[i + 1:i + 1 + block] for i in ix.tolist()])
        return x, y

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        n = (data.valid.numel() - 1) // block
        x = data.valid[: n * block].view(n, block)  # (N, T) non-overlapping blocks
        y = data.valid[1: n * block + 1].view(n, block)
        total = 0.0
        for i in range(0, n, 64):
            logits = model(x[i:i + 64])
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[i:i + 64].reshape(-1),
                                     reduction="sum").item()
        model.train()
        return total / y.numel()

    @torch.no_grad()
    def evaluate_sliding() -> float:
        """The validation text in windows of ``block`` sliding by block // 2, each scoring only the
        targets no earlier window scored (the first all; the last window ends at the text's end),
        as seqlab scores its transformer: the same protocol at the peer's own context."""
        model.eval()
        N, T, S = data.valid.numel(), block, block // 2
        starts, new, done, p = [], [], 0, 0
        while done < N - 1:
            p = max(0, min(p, N - 1 - T))
            starts.append(p)
            new.append(p + T - done)
            done, p = p + T, p + S
        total, count = 0.0, 0
        for i in range(0, len(starts), 64):
            ix = starts[i:i + 64]
            x = torch.stack([data.valid[q:q + T] for q in ix])  # (n, T)
            y = torch.stack([data.valid[q + 1:q + T + 1] for q in ix])
            logits = model(x)  # (n, T, V)
            for r, k in enumerate(new[i:i + 64]):
                total += F.cross_entropy(logits[r, -k:], y[r, -k:], reduction="sum").item()
                count += k
        model.train()
        return total / count

    def lr_at(it: int, decay_iters: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / max(1, decay_iters - warmup))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    clock, curve, tokens = Clock(), [(0.0, evaluate())], 0
    decay_iters, it, next_eval, step_times = None, 0, eval_every, []
    model.train()
    clock.start()
    while clock.now() < budget:
        t0 = read_clock()
        for g in opt.param_groups:
            g["lr"] = lr_at(it, decay_iters or 10 ** 9)
        x, y = get_batch()
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        it += 1
        tokens += y.numel()
        step_times.append(read_clock() - t0)
        if decay_iters is None and it == 50:  # fit the cosine to the budget from the measured step time
            per = sorted(step_times[5:])[len(step_times[5:]) // 2]
            decay_iters = it + int((budget - clock.now()) / per)
        if clock.now() >= next_eval:
            clock.stop()
            curve.append((clock.total, evaluate()))
            next_eval += eval_every
            clock.start()
    clock.stop()
    final = evaluate()
    curve.append((clock.total, final))
    scorings = {"blocks": final, "sliding": evaluate_sliding()}
    return {"params": _count(model), "width": d, "curve": curve, "final": final, "scorings": scorings,
            "train_s": clock.total,
            "tokens_per_s": tokens / clock.total, "settings": {"block": block, "batch": batch, "layers": n_layer,
                                                               "heads": nhead, "lr": lr, "iters": it,
                                                               "lr_decay_iters": decay_iters}}


# ----------------------------------------------------------------------------
# seqlab


def run_seqlab(arch: str, train_path: Path, valid_path: Path, budget: float, out: Path, seed: int,
               settings: dict, clock: str) -> dict:
    from seqlab.apps import load_run, train_run
    from seqlab.models import count_parameters

    run_dir = out / f"seqlab-{arch}"
    result = train_run("lm", arch=arch, data=str(train_path), valid=str(valid_path), out=run_dir, force=True,
                       settings={"max_time": float(budget), "seed": seed, "eval_tokens": 0, "clock": clock,
                                 **settings},
                       progress=False)
    if result["stopped"] == "interrupted":  # Ctrl-C / SIGTERM: the trainer saved the run; stop the benchmark too
        sys.exit(f"{arch}: interrupted at step {result['step']} (run saved in {run_dir}); no table written")
    best = load_run(run_dir / "best") if (run_dir / "best").exists() else load_run(run_dir)
    final = best.app.evaluate(best.model, "validation")
    # the scorings the peers share, without seqlab's continuous cache: the transformer's default
    # (sliding windows) and non-overlapping ones, or the recurrent models' carried state
    o, carries = best.app.options, best.app.carries(arch)
    cache, o.cache_size = o.cache_size, 0
    try:
        if carries:
            scorings = {"state": best.app.evaluate(best.model, "validation")["loss"]}
        else:
            stride, o.eval_stride = o.eval_stride, o.bptt
            try:
                scorings = {"blocks": best.app.evaluate(best.model, "validation")["loss"]}
            finally:
                o.eval_stride = stride
            scorings["sliding"] = best.app.evaluate(best.model, "validation")["loss"]
    finally:
        o.cache_size = cache
    if carries and cache == CACHE_N:
        scorings["cache"] = final["loss"]  # as lstm-peer is scored with a cache of the same size
    log = result.get("log") or []
    tok_s = sorted(e["tokens_per_s"] for e in log)[len(log) // 2] if log else float("nan")
    curve = [(h["train_time"], h["loss"]) for h in result["history"]]
    return {"params": count_parameters(best.model), "curve": curve, "final": final["loss"], "scorings": scorings,
            "train_s": result["train_time"], "tokens_per_s": tok_s, "settings": result.get("settings", {}),
            "steps": result["step"], "stopped": result["stopped"]}


# ----------------------------------------------------------------------------


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are listed once


def _fit_width(build: Callable[[int], nn.Module], target: int, step: int) -> int:
    """The multiple of ``step`` (up to 1024) whose model is nearest ``target`` parameters.

    The count grows with the width, so a bisection builds about ten models instead of every width.
    """
    widths = range(step, 1025, step)
    lo, hi = 0, len(widths) - 1
    while lo < hi:  # the first width at or above the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if _count(build(widths[mid])) < target else (lo, mid)
    near = {widths[i] for i in (lo - 1, lo) if i >= 0}
    return min(near, key=lambda w: abs(_count(build(w)) - target))


def at_time(curve: list, t: float) -> float:
    """The curve's last value at or before ``t`` seconds."""
    vals = [v for s, v in curve if s <= t + 1e-9]
    return vals[-1] if vals else float("nan")


def _cached(name: str, r: dict) -> bool:
    """Whether seqlab program ``name`` scored itself (its curve and final loss) with its continuous
    cache: its own protocol without the cache (``state`` or ``sliding``) gave another figure."""
    alone = r.get("scorings", {}).get("state", r.get("scorings", {}).get("sliding"))
    return not name.endswith("-peer") and alone is not None and alone != r["final"]


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        how = ", with its cache" if _cached(name, r) else ""
        ax.plot(xs, ys, marker=".", label=f"{name} ({r['params'] / 1e6:.2f}M, {r['tokens_per_s']:.0f} tok/s{how})",
                linestyle="--" if name.endswith("-peer") else "-")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation loss (nats/char)")
    lo = min(min(v for _, v in r["curve"]) for r in results.values())
    ax.set_ylim(lo - 0.05, min(3.5, max(r["curve"][min(1, len(r["curve"]) - 1)][1] for r in results.values()) + 0.1))
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SCORINGS = {"blocks": "in non-overlapping windows", "sliding": "in windows sliding by half their length",
            "state": "with the state carried, no cache", "cache": "with the state carried and the continuous cache"}
PEER_OF = {"transformer": "gpt-peer"}  # every other seqlab arch is measured against the LSTM loop


def table(results: dict, budget: float) -> str:
    """The markdown table at equal training time; ``vs peer`` is the loss over its peer's at the budget."""
    lines = ["| program | params | tokens/s | val loss at 25% | at 50% | at budget (whole split) | vs peer |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        peer = None if name.endswith("-peer") else results.get(PEER_OF.get(name, "lstm-peer"))
        ratio = f"{r['final'] / peer['final']:.3f}x {PEER_OF.get(name, 'lstm-peer')}" if peer else ""
        both = sorted(set(r.get("scorings", {})) & set((peer or {}).get("scorings", {})))
        ratio += "".join(f"; both {SCORINGS[k]}: {r['scorings'][k] / peer['scorings'][k]:.3f}x" for k in both)
        lines.append(f"| {name} | {r['params']:,} | {r['tokens_per_s']:.0f} | {at_time(r['curve'], budget / 4):.4f} | "
                     f"{at_time(r['curve'], budget / 2):.4f} | **{r['final']:.4f}** | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: the embedded stdlib corpus)")
    p.add_argument("--chars", type=int, default=550_000, help="characters of the embedded corpus (default 550000)")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per program (default 600)")
    p.add_argument("--params", type=int, default=1_000_000, help="parameter target of the peers (default 1M)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--evals", type=int, default=10, help="curve points per program (default 10)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                   help="what the budget counts: wall seconds (default), or this process's CPU seconds, which a "
                        "busy shared machine does not stretch (with --threads 1, the two agree on a quiet one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra seqlab settings for every seqlab model (to try settings; the table is for defaults)")
    p.add_argument("--json", default="runs/peers.json")
    p.add_argument("--plot", default="runs/peers.png")
    p.add_argument("--runs", default=None, help="where seqlab's run directories go (default: a temporary folder)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: join the results of earlier runs (their --json files, e.g. one process per "
                        "model with --clock cpu --threads 1 side by side) into one table, plot and section")
    p.add_argument("--readme", action="store_true",
                   help="with --markdown: also put the section into README.md (between its results:peers markers)")
    add_markdown_arguments(p)
    args = p.parse_args(argv)
    if args.merge:
        return merge(args, argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        p.error(f"--models expects a comma-separated subset of {','.join(MODELS)}, got {args.models!r}")
    if args.budget <= 0:
        p.error(f"--budget must be > 0, got {args.budget}")
    if args.threads:
        torch.set_num_threads(args.threads)
    global read_clock
    read_clock = CLOCK[args.clock]
    from seqlab.apps.base import parse_overrides
    extra = parse_overrides(args.set)

    text = load_text(args.data, args.chars)
    data = CharData(text)
    results: dict = {}
    every = args.budget / args.evals
    with tempfile.TemporaryDirectory(prefix="seqlab-peers-") as tmp:
        out = Path(args.runs) if args.runs else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        train_path, valid_path = out / "train.txt", out / "valid.txt"
        train_path.write_text(data.train_text, encoding="utf-8")
        valid_path.write_text(data.valid_text, encoding="utf-8")
        for name in models:
            t0 = time.perf_counter()
            if name == "lstm-peer":
                r = run_lstm_peer(data, args.budget, args.params, every, args.seed)
            elif name == "gpt-peer":
                r = run_gpt_peer(data, args.budget, args.params, every, args.seed)
            else:
                r = run_seqlab(name, train_path, valid_path, args.budget, out, args.seed, extra, args.clock)
            r["wall_s"] = time.perf_counter() - t0
            results[name] = r
            print(f"{name}: {r['params']:,} params, {r['tokens_per_s']:.0f} tok/s, {r['train_s']:.0f} s -> "
                  f"validation {r['final']:.4f} nats/char", file=sys.stderr, flush=True)
    cpu = platform.processor() or platform.machine()
    header = (f"{len(text):,} characters ({'embedded stdlib corpus' if args.data is None else args.data}), last 10% "
              f"validation; {args.budget:g} training seconds each; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.clock} clock, {cpu}")
    print(header + "\n\n" + table(results, args.budget))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"header": header, "budget_s": args.budget, "threads": torch.get_num_threads(),
                                "results": results}, indent=1) + "\n")
    plot(results, Path(args.plot), header)
    print(f"\nwrote {path} and {args.plot}")
    publish(args, argv, header, results, args.budget)
    return 0


def merge(args: argparse.Namespace, argv: Optional[list]) -> int:
    """One table, plot and section from several earlier runs' JSON files (same data, budget and clock)."""
    results: dict = {}
    headers, budgets = [], set()
    for name in args.merge:
        try:
            d = json.loads(Path(name).read_text())
            headers.append(d["header"])
            budgets.add(float(d["budget_s"]))
            threads = int(d.get("threads", torch.get_num_threads()))
            results.update(d["results"])
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"--merge: expected a JSON file written by peers.py --json, {name!r}: {e}")
    # the header names the data, budget, torch, threads and clock: they must agree
    if len(budgets) != 1 or len(set(headers)) != 1:
        sys.exit(f"--merge: expected runs on the same data and budget, got headers {sorted(set(headers))}")
    budget, header = budgets.pop(), headers[0]
    torch.set_num_threads(threads)  # the section's header reports the threads the runs had
    order = [m for m in MODELS if m in results]
    results = {m: results[m] for m in order}
    print(header + "\n\n" + table(results, budget))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"header": header, "budget_s": budget, "threads": threads, "results": results},
                               indent=1) + "\n")
    plot(results, Path(args.plot), header)
    print(f"\nwrote {path} and {args.plot}")
    publish(args, argv, header, results, budget)
    return 0


def publish(args: argparse.Namespace, argv: Optional[list], header: str, results: dict, budget: float) -> None:
    """``--markdown``: this script's section of RESULTS.md (and of README.md with ``--readme``)."""
    if not args.markdown:
        return
    command = command_line(None if argv is None else [__file__, *argv])
    targets = [Path(args.markdown)]
    if args.readme:
        targets.append(Path(__file__).resolve().parents[1] / "README.md")
    for target in targets:
        plot_link = os.path.relpath(Path(args.plot).resolve(), target.resolve().parent)
        notes = [header,
                 "validation loss in nats per character on the whole validation text: seqlab's best "
                 "checkpoint as `seqlab eval` scores it (with its continuous cache), the peers' model at the end "
                 "of training as its recipe scores it; `vs peer`: the loss over that of its peer (the "
                 "transformer's is gpt-peer, the recurrent models' lstm-peer) at the same training time, as "
                 "each scores itself, then both scored alike",
                 f"curves: [{Path(args.plot).name}]({plot_link})"] + args.note
        section = results_section("Language models against their peers", command, table(results, budget),
                                  notes=notes)
        print(f"wrote the 'peers' section of {write_section(target, 'peers', section)}")


if __name__ == "__main__":
    sys.exit(main())
