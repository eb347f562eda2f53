r"""Language modelling: predict the next token of a text stream; sample text from a prompt.

The documents of a split are one stream of ids, each document followed by ``<eos>``::

    stream = doc_1 <eos> doc_2 <eos> ...

so ``<eos>`` doubles as the document boundary, and sampling without a prompt starts from it
("the start of a document"). A stream is stored in the smallest integer type that holds the
vocabulary (one byte per token up to 256 symbols) and widened to int64 one window at a time; a
plain-text ``--data`` / ``--valid`` / ``--test`` file is streamed from disk in two passes
(:mod:`seqlab.data.streams`), so a corpus of gigabytes is never held as Python strings. The loss is the mean negative log-likelihood per token,

.. math::
    \mathcal{L} = -\frac{1}{N}\sum_{t=1}^{N} \log p(x_t \mid x_{<t}), \qquad
    \mathrm{ppl} = e^{\mathcal{L}}, \qquad \mathrm{bpc} = \mathcal{L} / \ln 2

(bits per character at char level; per word at word level, reported as ``bits_per_token``).

Two ways to cut the stream into training windows of ``bptt`` tokens (``carry_state``):

* **carried** (the recurrent archs' default): truncated back-propagation through time over
  :class:`seqlab.data.BPTTBatcher` windows (B, bptt+1). Row b of one window continues row b of the
  previous one and the model's state is carried across windows, detached. The state restarts from
  zero at the start of every epoch and in the window after every checkpoint the trainer writes
  (every ``checkpoint_every`` steps), so a checkpoint never needs it and a resumed run ends with
  the same weights as an uninterrupted one.
* **independent** (the transformer's default): :class:`seqlab.data.WindowSampler` windows, cut at
  a random phase each epoch and served in a random order, each from an empty context, as GPT
  models are trained: every position of a window predicts its next token, so a window of T tokens
  gives T targets, and no step recomputes context it does not train on.

Scoring a split (:meth:`LMApp.score`) runs ``eval_rows`` segments of it in parallel, in windows of
``bptt`` tokens, carrying the state across windows exactly when training carried it. Otherwise
each window starts from an empty context and the windows slide by ``eval_stride`` tokens (half a
window by default), each scoring only the tokens no earlier window scored: every token is scored
once, and all but the first window's see at least ``bptt - eval_stride`` tokens of context, as
they do when the model generates (``eval_stride = bptt``: non-overlapping windows, where the first
tokens of every window are predicted from almost nothing). The whole split is scored by
``seqlab eval``; during training ``eval_tokens`` of it are, in segments spread evenly over the
split, so that the figure estimates the whole split's score rather than that of its beginning.
With ``cache_size = N > 0`` (the default for every arch) each segment is scored with a
:class:`seqlab.models.ContinuousCache` of its last N hidden states: a token's probability is the
model's mixed with a vote of the states that preceded the same token before. It trains nothing and
reads only tokens already scored; ``cache_size = 0`` scores the model alone.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from seqlab.data import EOS, BPTTBatcher, DataError, DataWarning, Vocab, WindowSampler, read_examples
from seqlab.data.streams import encode_stream, is_plain_text, text_streams
from seqlab.decoding import sample as sample_tokens
from seqlab.models.lm import ContinuousCache, next_token_nll

from .base import App, ConfigError, DataOptions, unwrap


@dataclass
class LMOptions(DataOptions):
    bptt: int = 128             # tokens per training window (the transformer's context when trained)
    # carry the (detached) state from one window to the next (BPTT rows), or train on independent
    # windows; None = carry for the recurrent archs, independent windows for the transformer
    carry_state: Optional[bool] = None
    eval_tokens: int = 50_000   # validation tokens scored during training, spread over the split (0 = all)
    eval_rows: int = 16         # parallel rows (segments) when scoring a split
    # independent windows only: new tokens scored per window when scoring a split; each window
    # holds bptt tokens, so every scored token but the first window's sees at least bptt - stride
    # of context. None = bptt // 2; bptt = non-overlapping windows. Carried state ignores it.
    eval_stride: Optional[int] = None
    # scoring with a continuous cache (seqlab.models.ContinuousCache): the last cache_size hidden
    # states of each row vote for the token that followed them, weight cache_lambda against the
    # model, sharpness cache_theta. 0 = the model alone. Applies to every scoring of a split.
    # (theta and lambda: see LM_DEFAULTS' comment for how they were chosen)
    cache_size: int = 0
    cache_theta: float = 0.3
    cache_lambda: float = 0.2
    # a text's units (paragraphs or lines) are cut into windows, so only memory bounds them
    max_line: int = 10_000_000

    def validate(self) -> None:
        super().validate()
        for name in ("bptt", "eval_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_tokens < 0:
            raise ConfigError(f"eval_tokens must be >= 0, got {self.eval_tokens}")
        if self.cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0 (0 = no cache), got {self.cache_size}")
        if not (math.isfinite(self.cache_theta) and self.cache_theta > 0):
            raise ConfigError(f"cache_theta must be finite and > 0, got {self.cache_theta}")
        if not 0.0 <= self.cache_lambda < 1.0:
            raise ConfigError(f"cache_lambda must be in [0, 1), got {self.cache_lambda}")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.bptt:
            raise ConfigError(f"eval_stride must be in [1, bptt={self.bptt}] (or null for bptt // 2), "
                              f"got {self.eval_stride}")

    @property
    def stride(self) -> int:
        """New tokens scored per window when windows are independent (see eval_stride)."""
        return self.eval_stride if self.eval_stride is not None else max(1, self.bptt // 2)


class _Windows(BPTTBatcher):
    """BPTT windows as 1-tuples (the trainer shards tuples by rows), remembering whether the
    window just handed out starts an epoch, and how many windows were handed out in all (saved
    with the data position), which is where the carried state is reset."""

    starts_epoch = True
    served = 0

    def __iter__(self):
        for window in super().__iter__():
            # The parent advanced position past this window before yielding it.
            self.starts_epoch = self.position == self.bptt
            self.served += 1
            yield (window,)  # (B, <=bptt+1)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "served": self.served}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.served = int(state.get("served", 0))  # checkpoints from before this field: 0


class _IndependentWindows(WindowSampler):
    """WindowSampler's windows as 1-tuples (the trainer shards tuples by rows)."""

    def __iter__(self):
        for window in super().__iter__():
            yield (window,)  # (B, <=bptt+1)


# What a fresh `seqlab train lm --arch A` trains, under the user's own settings: about 1M
# parameters at char level, settings measured against the peers of benchmarks/peers.py on 2 CPU
# cores with budgets of minutes. Batches are small because in minutes the number of updates, not
# the tokens per update, limits the loss. The transformer trains with Muon (seqlab.train.optim)
# and dropout: Muon fits the training text in far fewer steps than AdamW, and without dropout the
# transformer then over-fits within ten minutes; the recurrent models gained nothing from Muon
# at these budgets, so they keep AdamW. The transformer's attention weights are not dropped:
# that keeps its attention on the fused kernel, 12% more tokens/s, at no cost in loss. It trains
# in bf16-mixed precision where the machine multiplies bfloat16 in hardware (precision "auto":
# AMX or AVX-512 BF16 CPUs, CUDA), which on such a CPU gives it about 1.4x the tokens/s of
# float32; the recurrent models stay float32, as their compiled CPU loop is. The LSTM is a
# LayerNorm LSTM (Ba et al. 2016): it fits the text in far fewer steps than the plain cell and,
# with weight decay and dropout to hold that back, ends about 3% lower in ten minutes at 8%
# fewer tokens/s. Part of its dropout is on W_hh (weight_drop, DropConnect as in AWD-LSTM): 0.35
# there with 0.25 elsewhere ended about 0.8% below 0.35 elsewhere alone, in two side-by-side runs.
# Every arch is scored with a continuous cache of its last 2000 hidden states (ContinuousCache):
# technical text repeats its names within a few thousand characters, and on the stdlib docs the
# cache lowered the validation loss by about a quarter for every arch. Its theta and lambda were
# chosen on the last 55k characters of the training text, not on validation: theta 0.3 (1 and 3
# scored worse there for the GRU, the RNN and the transformer), but 1 for the LayerNorm LSTM (0.3
# and 0.5 scored worse), lambda 0.2 (0.1 and 0.3 scored worse for the LSTM).
LM_DEFAULTS: dict[str, dict] = {
    "rnn": {"embed_dim": 128, "hidden_size": 512, "num_layers": 2, "dropout": 0.1, "lr": 2e-3},
    "lstm": {"embed_dim": 256, "hidden_size": 256, "num_layers": 2, "dropout": 0.25, "weight_drop": 0.35,
             "layer_norm": True, "lr": 3e-3, "weight_decay": 0.1, "cache_theta": 1.0},
    "gru": {"embed_dim": 288, "hidden_size": 288, "num_layers": 2, "dropout": 0.2, "lr": 3e-3},
    "mingru": {"embed_dim": 256, "hidden_size": 384, "num_layers": 3, "dropout": 0.1, "lr": 3e-3},
    "minlstm": {"embed_dim": 256, "hidden_size": 320, "num_layers": 3, "dropout": 0.1, "lr": 3e-3},
    "transformer": {"embed_dim": 144, "hidden_size": 144, "num_layers": 4, "nhead": 4, "max_len": 256,
                    "dropout": 0.1, "attention_dropout": 0.0, "lr": 4e-3, "weight_decay": 0.1, "optimizer": "muon",
                    "precision": "auto"},
}
LM_COMMON_DEFAULTS = {"batch_size": 16, "bptt": 128, "cache_size": 2000}


class LMApp(App):
    kind = "lm"
    default_task = "stdlib"
    Options = LMOptions
    monitor, mode = "loss", "min"

    @classmethod
    def defaults(cls, arch: str) -> dict:
        return {**LM_COMMON_DEFAULTS, **LM_DEFAULTS.get(arch, {})}

    @classmethod
    def check_model(cls, mcfg, options: LMOptions) -> None:
        if mcfg.arch == "transformer" and options.bptt > mcfg.max_len:
            raise ConfigError(f"bptt={options.bptt} needs a transformer with max_len >= bptt (its positions), "
                              f"got max_len={mcfg.max_len}")

    def __init__(self, options: LMOptions):
        super().__init__(options)
        self.vocab: Optional[Vocab] = None
        self._streams: dict[str, Tensor] = {}
        self._windows: Optional[_Windows] = None
        self._carry = True
        self._state = None

    # -- data -------------------------------------------------------------------------------

    def read_file(self, path: str) -> list:
        """A plain-text file is cut into units for the hash split: paragraphs (blank-line
        separated) when there are at least 20, else lines. A JSONL file gives one document a line."""
        docs = read_examples(path, "lm", format=self.options.format, max_line=self.options.max_line)
        if len(docs) != 1 or (self.options.format or "").lower() == "jsonl" or str(path).lower().endswith(".jsonl"):
            return docs
        text = docs[0]
        paragraphs = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
        if len(paragraphs) >= 20:
            return paragraphs
        return [line for line in text.split("\n") if line.strip()]

    def _streamed(self, split: str) -> Optional[str]:
        """The plain-text file ``split`` is streamed from (never held as strings), or None."""
        o = self.options
        if o.task is not None:
            return None
        path = {"validation": o.valid, "test": o.test}.get(split) or o.data
        return path if is_plain_text(path, o.format) else None

    def _limits(self) -> dict:
        o = self.options
        return {s: n for s, n in (("train", o.n_train), ("validation", o.n_valid), ("test", o.n_test)) if n}

    def _read_streams(self, split: str) -> None:
        """Stream ``split`` (and, for the --data file, its sibling hash splits) into compact ids;
        builds the vocabulary from the training units when there is none yet."""
        o, path = self.options, self._streamed(split)
        own = split != "train" and path != o.data
        vocab, streams = text_streams(path, self.vocab, level=o.level, min_freq=o.min_freq, max_size=o.max_vocab,
                                      split=split if own else None, key=self.kind, limits=self._limits(),
                                      max_line=o.max_line)
        self.vocab = vocab
        for s, ids in streams.items():
            if own and s != split:
                continue
            if not own and s != "train" and self._streamed(s) != o.data:
                continue  # that split comes from its own file
            self._streams.setdefault(s, ids)
        if split not in self._streams:
            flag = "--valid" if split == "validation" else "--test"
            where = path if own else f"{path} (its {split} part by hash split; train with {flag} FILE to name one)"
            raise DataError(f"{where}: no {split} examples; expected at least one")

    def require(self, split: str) -> None:
        self.stream(split)  # a plain-text corpus is streamed, never read as examples (which hold it as strings)

    def build(self) -> None:
        o = self.options
        if self._streamed("train") is not None:
            self.vocab = None
            self._read_streams("train")
            return
        self.vocab = Vocab.build(self.examples("train"), o.level, min_freq=o.min_freq, max_size=o.max_vocab)

    def vocab_dict(self) -> dict:
        return {"text": self.vocab.to_dict()}

    def load_vocab(self, d: dict) -> None:
        self.vocab = Vocab.from_dict(d["text"])

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocab)}

    def stream(self, split: str) -> Tensor:
        """The ids of ``split`` as one stream, ``<eos>`` after each document; (N,) in the smallest
        integer type that holds the vocabulary (seqlab.data.streams.id_dtype)."""
        if split not in self._streams:
            if self._streamed(split) is not None:
                self._read_streams(split)
            else:
                self._streams[split] = encode_stream(self.examples(split), self.vocab)
        return self._streams[split]

    # -- training ---------------------------------------------------------------------------

    def carries(self, arch: Optional[str]) -> bool:
        """Whether training (and scoring) carries the state across windows, for a model of ``arch``."""
        if self.options.carry_state is not None:
            return self.options.carry_state
        return arch != "transformer"

    def batches(self, batch_size: int, seed: int):
        ids = self.stream("train")
        self._carry = self.carries(None if self.model_config is None else self.model_config.arch)
        if not self._carry:
            self._windows = None
            return _IndependentWindows(ids, batch_size, self.options.bptt, seed=seed)
        if ids.numel() // batch_size < 2:
            raise DataError(f"the training text has {ids.numel()} tokens, too few for batch_size {batch_size} "
                            f"(expected at least {2 * batch_size})")
        self._windows = _Windows(ids, batch_size, self.options.bptt)
        return self._windows

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, int]:
        (window,) = batch  # (B, T+1)
        if not self._carry:
            loss, count, _ = next_token_nll(model, window)  # every window from an empty context
            return loss, count
        w = self._windows
        if w is not None and w.starts_epoch:
            self._state = None  # rows wrap to the stream's start: the old state belongs elsewhere
        elif w is not None and self.checkpoint_every > 0 and (w.served - 1) % self.checkpoint_every == 0:
            self._state = None  # the first window after a checkpoint: where a resumed run starts
        loss, count, state = next_token_nll(model, window, self._state)
        self._state = unwrap(model).detach_state(state)
        return loss, count

    @torch.no_grad()
    def score(self, model: nn.Module, ids: Tensor, tokens: int = 0) -> tuple[float, int]:
        """(summed NLL in nats, tokens scored) of a stream, in ``eval_rows`` parallel segments.

        ``tokens = 0``: the whole stream, cut into contiguous segments (the last ``N mod rows``
        tokens left out). ``tokens > 0``: about that many, in segments spread evenly over the
        stream. Each segment is scored in windows of ``bptt`` tokens, carrying the state across
        them when the model was trained carrying it (see the module docstring).
        """
        raw = unwrap(model)
        N, T = ids.numel(), self.options.bptt
        rows = max(1, min(self.options.eval_rows, N // (2 * T)))
        length = N // rows  # tokens per segment
        if tokens:
            length = min(length, max(2, -(-tokens // rows)))
        if length < 2:
            raise DataError(f"a split of {N} tokens is too short to score; expected at least 2")
        if tokens:  # a few short segments: copied, in the stream's compact dtype
            starts = [round(r * (N - length) / max(1, rows - 1)) for r in range(rows)]
            segments = torch.stack([ids[s: s + length] for s in starts])  # rows x (length,) -> (rows, length)
        else:  # the whole split: a view, so scoring a large split copies nothing
            segments = ids[: rows * length].view(rows, length)  # (rows, length)
        o = self.options
        cache = ContinuousCache(o.cache_size, o.cache_theta, o.cache_lambda) if o.cache_size else None
        if not self.carries(raw.config.arch):
            return self._score_sliding(raw, segments, cache)
        total, count, state = 0.0, 0, None
        for p in range(0, length - 1, T):
            window = segments[:, p: p + T + 1].long()  # (rows, <=T+1), int64 one window at a time
            loss, n, state = next_token_nll(raw, window, state, cache=cache)
            state = raw.detach_state(state)
            total += float(loss)
            count += n
        return total, count

    def _score_sliding(self, model: nn.Module, segments: Tensor, cache: Optional[ContinuousCache] = None
                       ) -> tuple[float, int]:
        """(summed NLL, tokens) of (rows, length) segments in windows of bptt tokens, each from an
        empty context, advancing by ``stride``: the first window scores all its targets, every
        later one only the targets no window scored yet (its last ``stride``; the last window ends
        at the segment's end), so each target is scored once and, past the first window, after at
        least bptt - stride tokens of context."""
        T, S, length = self.options.bptt, self.options.stride, segments.size(1)
        total, count, done = 0.0, 0, 0  # done: targets 1..done of each segment are scored
        p = 0
        while done < length - 1:
            p = max(0, min(p, length - 1 - T))  # the last window is a whole one too, ending at the end
            window = segments[:, p: p + T + 1].long()  # (rows, <=T+1): targets p+1 .. p+w
            w = window.size(1) - 1
            loss, n, _ = next_token_nll(model, window, None, last=p + w - done, cache=cache)  # targets after `done`
            total += float(loss)
            count += n
            done, p = p + w, p + S
        return total, count

    def scoring(self, model: nn.Module) -> str:
        o, raw = self.options, unwrap(model)
        if self.carries(raw.config.arch):
            how = "the state carried from window to window"
        elif o.stride == o.bptt:
            how = "non-overlapping windows (the last one ending at the split's end), each from an empty context"
        else:
            how = (f"windows sliding by {o.stride} tokens, each from an empty context and scoring only its "
                   f"last {o.stride} (the first window all), so each token sees at least {o.bptt - o.stride} "
                   f"tokens of context")
        cache = (f", each token's probability mixed with a continuous cache of the last {o.cache_size} hidden states "
                 f"(theta={o.cache_theta:g}, lambda={o.cache_lambda:g})" if o.cache_size else "")
        return (f"scored in {o.eval_rows} parallel segments of the split, in windows of {o.bptt} tokens with {how}"
                f"{cache}; during training {o.eval_tokens or 'all'} tokens of it, in segments spread over it")

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False
                 ) -> dict[str, float]:
        from seqlab.train.metrics import bits_per_char, perplexity

        ids = self.stream(split)
        tokens = self.options.eval_tokens if during_training else 0
        was_training = unwrap(model).training
        unwrap(model).eval()
        try:
            total, count = self.score(model, ids, tokens)
        finally:
            unwrap(model).train(was_training)
        loss = total / count
        bits = "bits_per_char" if self.vocab.level == "char" else "bits_per_token"
        return {"loss": loss, "perplexity": float(perplexity(loss)), bits: float(bits_per_char(loss)),
                "tokens": float(count)}

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, model: nn.Module, prompt: str = "", *, length: int = 200, temperature: float = 1.0,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0) -> str:
        """``prompt`` followed by up to ``length`` sampled tokens (stops at a document's end)."""
        raw = unwrap(model)
        raw.eval()
        ids = [EOS] + self.vocab.encode(prompt)
        unknown = sorted({s for s in self.vocab.tokenize(prompt) if s not in self.vocab})
        if unknown:
            warnings.warn(f"the prompt has {len(unknown)} symbol(s) the model never saw "
                          f"({', '.join(map(repr, unknown[:5]))}{', ...' if len(unknown) > 5 else ''}); "
                          f"they are read as <unk>", DataWarning, stacklevel=2)
        max_len = getattr(raw.config, "max_len", None)
        if raw.config.arch == "transformer" and max_len is not None and len(ids) + length > max_len:
            raise ConfigError(f"prompt ({len(ids) - 1} tokens) + length ({length}) must be at most the "
                              f"transformer's {max_len - 1} positions, got {len(ids) - 1 + length}")
        state = raw.init_state(1)
        for t in ids[:-1]:  # the prompt goes through step() so the state is what step() expects
            _, state = raw.step(torch.tensor([t]), state)
        gen = torch.Generator().manual_seed(seed)
        out = sample_tokens(raw.step, state, torch.tensor([ids[-1]]), max_len=length, eos=EOS,
                            temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)  # (1, L)
        text = self.vocab.decode(out[0].tolist())
        sep = "" if self.vocab.level == "char" or not prompt or not text else " "
        return prompt + sep + text
