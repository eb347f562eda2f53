"""seqlab's Transformer against torch.nn in the same process, and cached against uncached generation.

    python benchmarks/transformer.py            # the full run (minutes on a CPU)
    python benchmarks/transformer.py --quick    # a smoke run: small batch, few repeats, 128 tokens
    python benchmarks/transformer.py --markdown # also into benchmarks/RESULTS.md
    python benchmarks/transformer.py --precision bf16-mixed --markdown  # training steps under autocast

1. Training step (forward, backward, SGD update) of a 4-layer encoder,
   d_model 256, 4 heads, feed-forward 1024 (the usual 4 x d_model), batch 32,
   sequence 128 and 512, dropout 0.1, batch_first, same initial weights.
   Reports the median step time of each, tokens/s and the ratio
   seqlab / torch.nn (target <= 1.05).
2. Generation of 512 tokens (greedy, batch 1) from a 2-layer decoder-only
   model (embedding + sinusoidal positions + causal stack + head): torch.nn
   and seqlab recomputing the whole prefix at every token, and seqlab with a
   ``TransformerCache``. Reports tokens/s and the speed-up of the cache over
   recomputation (target >= 5x).

With ``--precision bf16-mixed`` both training steps run their forward pass under
``torch.autocast`` in bfloat16 (as ``TrainConfig.precision`` does) and part 2 is skipped.

Each measurement warms up first, synchronises the device, and takes the
median of repeats; the two implementations alternate repeat by repeat so
that drift in a shared machine's load hits both alike.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

try:
    import seqlab  # noqa: F401
except ImportError:  # run from a checkout without installing: python benchmarks/transformer.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _results import add_markdown_arguments, command_line, results_section, write_section  # noqa: E402
from seqlab.nn.attention import TransformerCache  # noqa: E402
from seqlab.nn.positional import SinusoidalPositionalEncoding  # noqa: E402
from seqlab.nn.transformer import Transformer, TransformerEncoder, TransformerEncoderLayer  # noqa: E402


@dataclass
class Config:
    d_model: int = 256
    nhead: int = 4
    dim_feedforward: int = 1024  # 4 x d_model, as in Vaswani et al.
    train_layers: int = 4
    batch: int = 32
    seq_lens: tuple[int, ...] = (128, 512)
    warmup: int = 2
    repeats: int = 7
    gen_layers: int = 2
    vocab: int = 1000
    gen_tokens: int = 512
    gen_repeats: int = 3


QUICK = Config(batch=8, warmup=1, repeats=3, gen_tokens=128, gen_repeats=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_pair(fa, fb, warmup: int, repeats: int, device) -> tuple[float, float]:
    """Median seconds of fa and fb, alternating them so both see the same machine."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(fa, device))
        tb.append(timed(fb, device))
    return statistics.median(ta), statistics.median(tb)


# ----------------------------------------------------------------------------
# 1. training step


def encoder_pair(cfg: Config, device) -> tuple[nn.Module, nn.Module]:
    kw = dict(dim_feedforward=cfg.dim_feedforward, dropout=0.1, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's note on its nested-tensor inference path
        ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(cfg.d_model, cfg.nhead, **kw), cfg.train_layers,
                                    enable_nested_tensor=False)
    mine = TransformerEncoder(TransformerEncoderLayer(cfg.d_model, cfg.nhead, **kw), cfg.train_layers)
    mine.load_state_dict(ref.state_dict())
    return ref.to(device).train(), mine.to(device).train()


def train_step_fn(model: nn.Module, x: torch.Tensor, pad: torch.Tensor, bf16: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, src_key_padding_mask=pad)  # (B, T, E)
        out.float().pow(2).mean().backward()
        opt.step()

    return step


def bench_training(cfg: Config, device, bf16: bool = False) -> list[tuple]:
    rows = []
    for T in cfg.seq_lens:
        torch.manual_seed(0)
        ref, mine = encoder_pair(cfg, device)
        x = torch.randn(cfg.batch, T, cfg.d_model, device=device)
        lengths = torch.randint(T // 2, T + 1, (cfg.batch,), device=device)
        pad = torch.arange(T, device=device)[None] >= lengths[:, None]  # (B, T), True = padding
        t_ref, t_mine = median_pair(train_step_fn(ref, x, pad, bf16), train_step_fn(mine, x, pad, bf16),
                                    cfg.warmup, cfg.repeats, device)
        tokens = cfg.batch * T
        rows.append((T, t_ref * 1e3, t_mine * 1e3, tokens / t_ref, tokens / t_mine, t_mine / t_ref))
    return rows


# ----------------------------------------------------------------------------
# 2. generation


class DecoderOnlyLM(nn.Module):
    """Embedding + positions + causal stack + head: a benchmark model, not seqlab's language model."""

    def __init__(self, cfg: Config, stack: nn.Module):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = SinusoidalPositionalEncoding(cfg.d_model, batch_first=True)
        self.stack = stack
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens: torch.Tensor, cache: TransformerCache | None = None) -> torch.Tensor:
        offset = 0 if cache is None else cache.length
        x = self.pos(self.embed(tokens), offset=offset)  # (B, T, E)
        if cache is None:
            mask = Transformer.generate_square_subsequent_mask(tokens.size(1), device=tokens.device)
            return self.head(self.stack(x, mask=mask, is_causal=True))  # (B, T, V)
        return self.head(self.stack(x, is_causal=True, cache=cache))  # (B, T_new, V)


@torch.no_grad()
def generate(model: DecoderOnlyLM, prompt: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
    tokens = prompt  # (B, T0)
    cache = TransformerCache() if use_cache else None
    new = prompt
    for _ in range(n):
        logits = model(new, cache=cache)[:, -1] if use_cache else model(tokens)[:, -1]  # (B, V)
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        tokens = torch.cat([tokens, nxt], 1)
        new = nxt
    return tokens


def bench_generation(cfg: Config, device) -> list[tuple]:
    torch.manual_seed(0)
    kw = dict(dim_feedforward=cfg.dim_feedforward, dropout=0.0, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(cfg.d_model, cfg.nhead, **kw), cfg.gen_layers,
                                          enable_nested_tensor=False)
    mine_stack = TransformerEncoder(TransformerEncoderLayer(cfg.d_model, cfg.nhead, **kw), cfg.gen_layers)
    mine_stack.load_state_dict(ref_stack.state_dict())
    mine = DecoderOnlyLM(cfg, mine_stack).to(device).eval()
    ref = copy.deepcopy(mine)
    ref.stack = ref_stack.to(device).eval()
    prompt = torch.randint(0, cfg.vocab, (1, 1), device=device)

    # The three must agree before their speeds mean anything.
    short = min(32, cfg.gen_tokens)
    a, b, c = (generate(ref, prompt, short, False), generate(mine, prompt, short, False),
               generate(mine, prompt, short, True))
    if not (torch.equal(a, b) and torch.equal(b, c)):
        raise RuntimeError("torch.nn, seqlab and cached seqlab generated different tokens")

    n = cfg.gen_tokens
    runs = {"torch.nn, recompute prefix": lambda: generate(ref, prompt, n, False),
            "seqlab, recompute prefix": lambda: generate(mine, prompt, n, False),
            "seqlab, KV cache": lambda: generate(mine, prompt, n, True)}
    times = {k: [] for k in runs}
    generate(mine, prompt, 8, True)  # warm-up
    generate(ref, prompt, 8, False)
    for _ in range(cfg.gen_repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    base = statistics.median(times["seqlab, recompute prefix"])
    return [(name, n / statistics.median(t), base / statistics.median(t)) for name, t in times.items()]


def training_table(rows: list[tuple]) -> str:
    lines = ["| seq | torch.nn ms | seqlab ms | torch.nn tok/s | seqlab tok/s | seqlab / torch.nn |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {T} | {ms_ref:.1f} | {ms_mine:.1f} | {tps_ref:,.0f} | {tps_mine:,.0f} | {ratio:.3f} |"
              for T, ms_ref, ms_mine, tps_ref, tps_mine, ratio in rows]
    return "\n".join(lines)


def generation_table(rows: list[tuple]) -> str:
    lines = ["| generation | tokens/s | x recompute |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {tps:,.1f} | {speedup:.2f} |" for name, tps, speedup in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats, 128 tokens: a smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 32, --quick 8)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None, help="training lengths (default 128 512)")
    parser.add_argument("--gen-tokens", type=int, default=None, help="tokens generated (default 512, --quick 128)")
    parser.add_argument("--precision", choices=("float32", "bf16-mixed"), default="float32",
                        help="bf16-mixed: both training steps under torch.autocast in bfloat16 (no generation part)")
    add_markdown_arguments(parser)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    given = {"batch": args.batch, "gen_tokens": args.gen_tokens,
             "seq_lens": tuple(args.seq_lens) if args.seq_lens else None}
    for name, value in given.items():
        if value is not None and min(value if isinstance(value, tuple) else (value,)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}"
          f"{', --quick' if args.quick else ''}")

    bf16 = args.precision == "bf16-mixed"
    train_how = (f"Training step: {cfg.train_layers}-layer encoder, d_model {cfg.d_model}, {cfg.nhead} heads, "
                 f"ff {cfg.dim_feedforward}, batch {cfg.batch}, dropout 0.1, padded to random lengths"
                 f"{', both forward passes under torch.autocast in bfloat16' if bf16 else ''}; median of "
                 f"{cfg.repeats} after {cfg.warmup} warm-up; target seqlab / torch.nn <= 1.05")
    print(f"\n{train_how}")
    train = training_table(bench_training(cfg, device, bf16))
    print(train)
    tables, notes = [train], [train_how]
    if not bf16:  # generation is measured in float32 only
        gen_how = (f"Generation: {cfg.gen_tokens} tokens, {cfg.gen_layers}-layer decoder-only, batch 1, greedy; "
                   f"median of {cfg.gen_repeats}; target: the cache >= 5x recomputing the prefix")
        print(f"\n{gen_how}")
        gen = generation_table(bench_generation(cfg, device))
        print(gen)
        tables.append(gen)
        notes.append(gen_how)
    if args.markdown:
        command = command_line(None if argv is None else [__file__, *argv])
        title = f"The Transformer against torch.nn{', bf16-mixed' if bf16 else ''} ({device.type})"
        section = results_section(title, command, *tables, notes=[f"device {device}", *notes, *args.note])
        key = "transformer" + ("-bf16" if bf16 else "") + ("" if device.type == "cpu" else f"-{device.type}")
        print(f"\nwrote the '{key}' section of {write_section(args.markdown, key, section)}")


if __name__ == "__main__":
    main()
