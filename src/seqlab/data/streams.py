"""Token streams of corpora of any size: a plain-text file read in pieces, its vocabulary
counted in one pass, its ids stored in the smallest integer type that holds the vocabulary.

A language model's split is one stream of ids, each document (unit) followed by ``<eos>``.
Held as Python strings and int64 ids, a corpus costs about 18 bytes per character; here it
costs one byte per character while the vocabulary has at most 256 symbols, two up to 32,767,
four beyond (:func:`id_dtype`), and the text itself is never held whole:

1. **count** (one pass over the file): cut it into units, send each to its split
   (:func:`seqlab.data.split_of`, as for every dataset), count the symbols of the training
   units and the tokens of each split; remember each unit's split (one byte per unit);
2. the vocabulary from the counts (:meth:`Vocab.from_counts`, the same as :meth:`Vocab.build`
   would give for the same units);
3. **encode** (a second pass): write each unit's ids into its split's preallocated array.

The units are those :meth:`seqlab.apps.LMApp.read_file` gives: blank-line separated paragraphs
when the file has at least :data:`MIN_PARAGRAPHS`, else non-blank lines. A unit longer than
``max_line`` characters is refused with its line number, so memory stays bounded whatever the
file holds. Batchers turn one window at a time into int64 (:class:`BPTTBatcher`,
:class:`WindowSampler`), never a whole split.
"""
from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .base import SPLITS, DataError, split_of
from .files import PathLike, iter_text
from .vocab import EOS, UNK, Vocab

MIN_PARAGRAPHS = 20  # a file with fewer blank-line separated paragraphs is cut into lines
_CODE = {s: i for i, s in enumerate(SPLITS)}
_NONE = 255  # a unit beyond its split's size limit


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type torch can index with that holds ids ``0 .. vocab_size - 1``."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 15:
        return np.dtype(np.int16)  # torch has no general uint16
    return np.dtype(np.int32)


def _paragraph_units(path: PathLike) -> bool:
    """Whether ``path`` has at least MIN_PARAGRAPHS non-blank paragraphs (what ``text.split("\n\n")``
    would give), reading until it knows and holding only one piece: the open paragraph is kept as
    a flag, not as text, since a file without blank lines is one paragraph as long as the file."""
    count, open_nonblank, held = 0, False, ""
    for piece in iter_text(path):
        parts = (held + piece).split("\n\n")
        last = parts.pop()
        for i, p in enumerate(parts):
            count += bool(p.strip()) or (i == 0 and open_nonblank)
        open_nonblank = bool(last.strip()) or (not parts and open_nonblank)
        held = "\n" if last.endswith("\n") else ""  # a separator may straddle two pieces
        if count >= MIN_PARAGRAPHS:
            return True
    return count + open_nonblank >= MIN_PARAGRAPHS


def iter_units(path: PathLike, *, max_line: int) -> Iterator[str]:
    """The units of a plain-text file (see the module docstring), one piece of the file at a time."""
    paragraphs = _paragraph_units(path)
    sep = "\n\n" if paragraphs else "\n"
    carry, line = "", 1  # the line each unit starts on, for messages
    for piece in iter_text(path):
        parts = (carry + piece).split(sep)
        carry = parts.pop()
        for p in parts:
            unit = p.strip("\n") if paragraphs else p
            if len(unit) > max_line:
                _too_long(path, line, len(unit), max_line, paragraphs)
            if unit.strip():
                yield unit
            line += p.count("\n") + 2 if paragraphs else 1
        if len(carry) > max_line:
            _too_long(path, line, len(carry), max_line, paragraphs, at_least=True)
    unit = carry.strip("\n") if paragraphs else carry
    if len(unit) > max_line:
        _too_long(path, line, len(unit), max_line, paragraphs)
    if unit.strip():
        yield unit


def _too_long(path, line: int, n: int, limit: int, paragraphs: bool, at_least: bool = False) -> None:
    what = "a paragraph" if paragraphs else "a line"
    raise DataError(f"{path}:{line}: {what} of {'more than ' if at_least else ''}{n:,} characters, longer than "
                    f"max_line={limit:,}; expected shorter units (or raise max_line)")


@dataclass
class _Counted:
    """What the counting pass learns: symbols of training units, tokens and units per split, and
    the split code of every unit in file order."""

    symbols: Counter = field(default_factory=Counter)
    tokens: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    units: dict = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    codes: array = field(default_factory=lambda: array("B"))


def _count(path: PathLike, level: str, *, split: Optional[str], key: str, limits: dict, max_line: int,
           count_symbols: bool) -> _Counted:
    """Pass 1. ``split``: every unit goes there (a --valid / --test file); None: by hash of the unit."""
    c = _Counted()
    char_counts = np.zeros(0, dtype=np.int64)
    batch: list[str] = []  # training units waiting to be counted together (C speed for chars)

    def flush() -> None:
        nonlocal char_counts
        if not batch:
            return
        if level == "char":
            codes = np.frombuffer("".join(batch).encode("utf-32-le"), dtype=np.uint32)
            bins = np.bincount(codes)
            if bins.size > char_counts.size:
                bins[: char_counts.size] += char_counts
                char_counts = bins
            else:
                char_counts[: bins.size] += bins
        else:
            for u in batch:
                c.symbols.update(u.split())
        batch.clear()

    # The hash key is the one every lm example has: f"{key}:{json.dumps(unit, ensure_ascii=False)}";
    # encode_basestring is what json.dumps does to a str, without its per-call set-up.
    prefix, quote = f"{key}:", encode_basestring
    append, units, tokens, char_level = c.codes.append, c.units, c.tokens, level == "char"
    for unit in iter_units(path, max_line=max_line):
        s = split if split is not None else split_of(prefix + quote(unit))
        limit = limits.get(s)
        if limit is not None and units[s] >= limit:
            append(_NONE)
            continue
        append(_CODE[s])
        units[s] += 1
        tokens[s] += (len(unit) if char_level else len(unit.split())) + 1  # + <eos>
        if count_symbols and s == "train":
            batch.append(unit)
            if len(batch) >= 4096:
                flush()
    flush()
    if level == "char":
        for cp in np.flatnonzero(char_counts):
            c.symbols[chr(cp)] = int(char_counts[cp])
    return c


class _Encoder:
    """Units -> ids with one vocabulary: a code-point table at char level, a dict at word level."""

    def __init__(self, vocab: Vocab, dtype: np.dtype):
        self.vocab, self.dtype = vocab, dtype
        if vocab.level == "char":
            self.table = np.full(0x110000, UNK, dtype=dtype)
            for sym, i in vocab.stoi.items():
                if len(sym) == 1:
                    self.table[ord(sym)] = i

    def encode_many(self, units: list[str]) -> np.ndarray:
        """The ids of ``units``, each followed by <eos>, as one array."""
        if self.vocab.level == "char":
            joined = "\x00".join(units) + "\x00"
            if joined.count("\x00") == len(units):  # the separator is unambiguous: one table lookup for all
                codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
                ids = self.table[codes]
                ids[codes == 0] = EOS
                return ids
        return np.concatenate([np.asarray(self.vocab.encode(u, eos=True), dtype=self.dtype) for u in units])


def text_streams(path: PathLike, vocab: Optional[Vocab] = None, *, level: str = "char", min_freq: int = 1,
                 max_size: Optional[int] = None, split: Optional[str] = None, key: str = "lm",
                 limits: Optional[dict] = None, max_line: int = 10_000_000
                 ) -> tuple[Vocab, dict[str, torch.Tensor]]:
    """The vocabulary and the id streams of the splits of a plain-text file, in two passes.

    ``vocab``: use this one (a resumed or loaded run) instead of building one from the training
    units. ``split``: every unit belongs to it (a --valid / --test file); else units go to
    train / validation / test by hash of ``key:unit``. ``limits``: at most that many units per
    split (the first ones). Returns 1-D tensors in :func:`id_dtype` of the vocabulary, one per
    split that has units.
    """
    limits = limits or {}
    counted = _count(path, level if vocab is None else vocab.level, split=split, key=key, limits=limits,
                     max_line=max_line, count_symbols=vocab is None)
    if vocab is None:
        if counted.units["train"] == 0:
            raise DataError(f"{path}: no train examples; expected at least one")
        vocab = Vocab.from_counts(counted.symbols, level, min_freq=min_freq, max_size=max_size)
    dtype = id_dtype(len(vocab))
    encoder = _Encoder(vocab, dtype)
    out = {s: np.empty(n, dtype=dtype) for s, n in counted.tokens.items() if n}
    filled = dict.fromkeys(out, 0)
    pending: dict[str, list[str]] = {s: [] for s in out}
    pending_chars = 0

    def flush() -> None:
        for s, units in pending.items():
            if units:
                ids = encoder.encode_many(units)
                out[s][filled[s]: filled[s] + ids.size] = ids
                filled[s] += ids.size
                units.clear()

    codes = counted.codes
    for i, unit in enumerate(iter_units(path, max_line=max_line)):
        code = codes[i]
        if code == _NONE:
            continue
        pending[SPLITS[code]].append(unit)
        pending_chars += len(unit)
        if pending_chars >= 1 << 22:
            flush()
            pending_chars = 0
    flush()
    for s in out:
        if filled[s] != out[s].size:  # pragma: no cover - the file changed between the passes
            raise DataError(f"{path}: changed while being read ({filled[s]} of {out[s].size} {s} tokens)")
    return vocab, {s: torch.from_numpy(a) for s, a in out.items()}


def encode_stream(docs: list[str], vocab: Vocab) -> torch.Tensor:
    """The ids of ``docs`` (documents held in memory), each followed by <eos>, in :func:`id_dtype`."""
    dtype = id_dtype(len(vocab))
    if not docs:
        return torch.from_numpy(np.empty(0, dtype=dtype))
    return torch.from_numpy(_Encoder(vocab, dtype).encode_many(list(docs)))


def is_plain_text(path: PathLike, format: Optional[str]) -> bool:
    """Whether the lm reads ``path`` as plain text (by ``format``, else by its suffix)."""
    if format is not None:
        return format.lower() == "text"
    return Path(path).suffix.lower() in (".txt", ".text")
