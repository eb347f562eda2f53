"""Turning examples into batches, with a position that can be saved and restored exactly.

* :func:`pad_collate`: variable-length id sequences -> padded (B, L) LongTensor + lengths.
* :class:`BatchIterator`: seeded shuffled mini-batches over a list of examples.
* :class:`BPTTBatcher`: one long token stream -> (B, T+1) windows for truncated BPTT.
* :class:`WindowSampler`: one long token stream -> (B, T+1) independent windows in a random order.

The iterators keep their whole state in a few ints (``state_dict()`` is JSON, so it goes
into a checkpoint's ``extra``). The shuffle order of an epoch is a pure function of
``(seed, epoch)`` rather than the running state of an RNG, which is why no RNG state needs
saving: a restored iterator recomputes the same permutation and carries on from ``position``.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator, Sequence, Union

import torch

from .base import DataError
from .vocab import PAD


def pad_collate(seqs: Sequence[Union[Sequence[int], torch.Tensor]], pad_id: int = PAD
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id sequences on the right; returns ``padded`` (B, L_max) int64 and ``lengths`` (B,) int64.

    Batch-first, since that is what seqlab's models take; ``lengths`` is what their
    ``lengths=`` argument and a loss mask want.

    >>> padded, lengths = pad_collate([[5, 6, 7], [8]])
    >>> padded.tolist(), lengths.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1])
    """
    if len(seqs) == 0:
        raise DataError("pad_collate needs at least one sequence, got an empty batch")
    tensors = []
    for i, s in enumerate(seqs):
        t = s if isinstance(s, torch.Tensor) else torch.as_tensor(list(s), dtype=torch.long)
        if t.dim() != 1:
            raise DataError(f"pad_collate expects 1-D sequences, sequence {i} is {t.dim()}-D")
        tensors.append(t.long())
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)
    padded = torch.full((len(tensors), int(lengths.max())), pad_id, dtype=torch.long)
    for i, t in enumerate(tensors):
        padded[i, : len(t)] = t
    return padded, lengths


class BatchIterator:
    """Mini-batches (lists of examples) over ``data``, reshuffled every epoch.

    One ``iter()`` runs the rest of the current epoch; when it completes, ``epoch`` goes up by
    one and ``position`` back to 0. ``position`` counts the examples already handed out this
    epoch and is advanced *before* a batch is yielded, so a ``state_dict()`` taken after using
    a batch resumes with the next one.

    >>> it = BatchIterator(list("abcdefg"), 3, seed=1)
    >>> first = next(iter(it)); state = it.state_dict()
    >>> again = BatchIterator(list("abcdefg"), 3, seed=1); again.load_state_dict(state)
    >>> list(again) == list(it)
    True
    """

    def __init__(self, data: Sequence[Any], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise DataError("BatchIterator needs at least one example, got none")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches in a whole epoch."""
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """The example indices of ``epoch`` in the order they are served."""
        idx = list(range(len(self.data)))
        if self.shuffle:
            # A string seed is hashed with SHA-512 by random.seed, so it is stable across runs
            # and Python versions, unlike hash() of a tuple.
            random.Random(f"seqlab.BatchIterator/{self.seed}/{epoch}").shuffle(idx)
        return idx

    def __iter__(self) -> Iterator[list[Any]]:
        order = self.order(self.epoch)
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        while self.position < stop:
            take = order[self.position: self.position + self.batch_size]
            self.position += len(take)
            yield [self.data[i] for i in take]
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": len(self.data)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        _check_state(state, ("epoch", "position", "seed", "size"), "BatchIterator")
        if state["size"] != len(self.data):
            raise DataError(f"BatchIterator state is for {state['size']} examples, this data has {len(self.data)}")
        if not 0 <= state["position"] <= len(self.data):
            raise DataError(f"BatchIterator position must be in 0..{len(self.data)}, got {state['position']}")
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]


class BPTTBatcher:
    """Windows for truncated back-propagation through time over one token stream.

    The stream of N ids is cut into ``batch_size`` contiguous rows of L = N // B tokens (the
    last N mod B tokens are dropped), and each epoch walks along them in windows of shape
    (B, T+1) that overlap by one column::

        rows   (B, L)
        window rows[:, p : p + T + 1]    x = window[:, :-1], y = window[:, 1:]
        next   p + T

    so row b of one window continues row b of the previous window, and a model may carry
    its hidden state across windows (detached). The last window of an epoch may be shorter
    (at least 2 columns). ``position`` is the start column of the next window; 0 means a new
    epoch begins, which is where a trainer resets the hidden state.

    A tensor stream keeps its integer dtype (a corpus may be stored in one byte per token);
    each window comes out as int64, so only one window is ever widened.
    """

    def __init__(self, ids: Union[torch.Tensor, Sequence[int]], batch_size: int, bptt: int):
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
            ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise DataError(f"BPTTBatcher expects a 1-D id stream, got shape {tuple(ids.shape)}")
        if batch_size < 1 or bptt < 1:
            raise DataError(f"batch_size and bptt must be >= 1, got {batch_size} and {bptt}")
        L = ids.numel() // batch_size
        if L < 2:
            raise DataError(f"{ids.numel()} tokens are too few for {batch_size} rows of at least 2 tokens")
        self.rows = ids[: batch_size * L].view(batch_size, L)  # (B, L)
        self.batch_size = batch_size
        self.bptt = bptt
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Windows in a whole epoch."""
        return math.ceil((self.rows.shape[1] - 1) / self.bptt)

    def __iter__(self) -> Iterator[torch.Tensor]:
        L = self.rows.shape[1]
        while self.position < L - 1:
            p = self.position
            self.position = p + self.bptt
            yield self.rows[:, p: p + self.bptt + 1].long()  # (B, <=T+1), int64
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "batch_size": self.batch_size,
                "row_length": int(self.rows.shape[1])}

    def load_state_dict(self, state: dict[str, int]) -> None:
        _check_state(state, ("epoch", "position", "batch_size", "row_length"), "BPTTBatcher")
        mine = (self.batch_size, int(self.rows.shape[1]))
        if (state["batch_size"], state["row_length"]) != mine:
            raise DataError(f"BPTTBatcher state is for {state['batch_size']} rows of {state['row_length']} tokens, "
                            f"this stream gives {mine[0]} rows of {mine[1]}")
        # bptt may change on resume: position is a column, not a window count.
        self.epoch, self.position = state["epoch"], state["position"]


class WindowSampler:
    """Independent training windows over one token stream, the way GPT models are trained.

    Each epoch cuts the stream, from a random phase ``φ`` in [0, T), into K windows of T+1 tokens
    that overlap by one, and serves them in a random order, ``batch_size`` at a time::

        window k = ids[φ + kT : φ + kT + T + 1]      x = window[:, :-1], y = window[:, 1:]

    so an epoch trains on every token from ``φ`` on exactly once (each window's T positions each
    predict their next token) and no window depends on another: nothing is carried between them.
    The phase moves the cuts between epochs, so every token is, over epochs, seen with every amount
    of context. The last batch of an epoch may hold fewer windows.

    Phase and order are a pure function of ``(seed, epoch)``, so the whole state is two ints
    (``state_dict()`` is JSON) and a restored sampler serves the same windows. The stream may be
    stored in any integer dtype; windows come out as int64.

    >>> s = WindowSampler(torch.arange(20), batch_size=2, bptt=4, seed=0)
    >>> b = next(iter(s)); b.shape, b.dtype
    (torch.Size([2, 5]), torch.int64)
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, *, seed: int = 0):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise DataError(f"WindowSampler expects a 1-D id tensor, got {got}")
        if batch_size < 1 or bptt < 1:
            raise DataError(f"batch_size and bptt must be >= 1, got {batch_size} and {bptt}")
        if ids.numel() < 2 * bptt + 1:
            raise DataError(f"{ids.numel()} tokens are too few for windows of {bptt} tokens: expected at least "
                            f"{2 * bptt + 1}")
        self.ids = ids
        self.batch_size = batch_size
        self.bptt = bptt
        self.seed = seed
        self.epoch = 0
        self.position = 0  # windows already served this epoch

    def plan(self, epoch: int) -> tuple[int, list[int]]:
        """(phase, window starts in serving order) of ``epoch``."""
        rng = random.Random(f"seqlab.WindowSampler/{self.seed}/{epoch}")  # string seeds are stable (SHA-512)
        phase = rng.randrange(self.bptt)
        count = (self.ids.numel() - 1 - phase) // self.bptt
        starts = [phase + k * self.bptt for k in range(count)]
        rng.shuffle(starts)
        return phase, starts

    def __len__(self) -> int:
        """Batches in an epoch (at phase 0; a later phase may have one window fewer)."""
        return math.ceil(((self.ids.numel() - 1) // self.bptt) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        _, starts = self.plan(self.epoch)
        T = self.bptt
        while self.position < len(starts):
            take = starts[self.position: self.position + self.batch_size]
            self.position += len(take)
            yield torch.stack([self.ids[s: s + T + 1] for s in take]).long()  # B x (T+1,) -> (B, T+1)
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "bptt": self.bptt,
                "size": int(self.ids.numel())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        _check_state(state, ("epoch", "position", "seed", "bptt", "size"), "WindowSampler")
        mine = (int(self.ids.numel()), self.bptt)
        if (state["size"], state["bptt"]) != mine:
            raise DataError(f"WindowSampler state is for {state['size']} tokens in windows of {state['bptt']}, "
                            f"this one has {mine[0]} tokens in windows of {mine[1]}")
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]


def _check_state(state: Any, keys: tuple[str, ...], owner: str) -> None:
    if not isinstance(state, dict) or any(not isinstance(state.get(k), int) for k in keys):
        raise DataError(f"{owner} state must be a dict of ints with keys {list(keys)}, got {state!r}")
