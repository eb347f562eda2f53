"""Vocabularies: symbols <-> ids, saved as JSON next to the model (never pickled).

Two kinds live here:

* :class:`Vocab` for text, at character level (``list(text)``) or whitespace-word level
  (``text.split()``). Ids 0..3 are always the specials ``<pad> <unk> <sos> <eos>``, so a model
  can hard-wire ``padding_idx=PAD`` and a decoder can stop at ``EOS`` whatever the data.
* :class:`Labels` for closed sets without specials (class labels, BIO tags, conditions such
  as a locale): an unknown label is an error, not ``<unk>``, because it means the data and
  the model disagree.

>>> v = Vocab.build(["hello", "help"], level="char")
>>> v.itos[:6]
('<pad>', '<unk>', '<sos>', '<eos>', 'l', 'e')
>>> v.encode("hex", eos=True)
[6, 5, 1, 3]
>>> v.decode([6, 5, 1, 3, 0, 0])
'he<unk>'
>>> Vocab.from_dict(v.to_dict()) == v
True
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional, Sequence, Union

from .base import DataError

PAD, UNK, SOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<sos>", "<eos>")
LEVELS = ("char", "word")
VOCAB_FORMAT = "seqlab-vocab-1"
LABELS_FORMAT = "seqlab-labels-1"

Text = Union[str, Sequence[str]]  # a string, or tokens already split


class Vocab:
    """Symbols at ``level`` 'char' or 'word' with ids 0..3 fixed to :data:`SPECIALS`.

    ``symbols`` are the ordinary symbols in id order; they get ids 4, 5, ... .
    """

    def __init__(self, symbols: Iterable[str], level: str = "char"):
        if level not in LEVELS:
            raise DataError(f"vocabulary level must be one of {LEVELS}, got {level!r}")
        self.level = level
        self.itos: tuple[str, ...] = SPECIALS + tuple(symbols)
        self.stoi: dict[str, int] = {}
        for i, s in enumerate(self.itos):
            if not isinstance(s, str) or not s:
                raise DataError(f"vocabulary symbol {i} must be a non-empty string, got {s!r}")
            if s in self.stoi:
                raise DataError(f"vocabulary symbol {s!r} appears twice (ids {self.stoi[s]} and {i})")
            if level == "word" and i >= len(SPECIALS) and s.split() != [s]:
                # A word holding whitespace could never come out of tokenize(), so it is a bug upstream.
                raise DataError(f"word-level symbol {s!r} contains whitespace")
            self.stoi[s] = i

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, texts: Iterable[Text], level: str = "char", *, min_freq: int = 1,
              max_size: Optional[int] = None) -> "Vocab":
        """Count the symbols of ``texts`` and keep those seen at least ``min_freq`` times.

        Order is by falling count, ties broken by the symbol itself, so the same texts give
        the same ids whatever order they come in. ``max_size`` caps the total size, the four
        specials included.
        """
        if level not in LEVELS:
            raise DataError(f"vocabulary level must be one of {LEVELS}, got {level!r}")
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(_tokenize(t, level))
        return cls.from_counts(counts, level, min_freq=min_freq, max_size=max_size)

    @classmethod
    def from_counts(cls, counts: dict[str, int], level: str = "char", *, min_freq: int = 1,
                    max_size: Optional[int] = None) -> "Vocab":
        """The vocabulary :meth:`build` gives for texts whose symbols were counted as ``counts``
        (what a one-pass reader of a corpus too large to hold as strings collects)."""
        if level not in LEVELS:
            raise DataError(f"vocabulary level must be one of {LEVELS}, got {level!r}")
        if min_freq < 1:
            raise DataError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(SPECIALS):
            raise DataError(f"max_size must be >= {len(SPECIALS)} (the specials), got {max_size}")
        counts = dict(counts)
        for s in SPECIALS:  # a literal "<unk>" in the data is text, but it cannot get a second id
            counts.pop(s, None)
        kept = sorted((s for s, c in counts.items() if c >= min_freq), key=lambda s: (-counts[s], s))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls(kept, level)

    # -- use ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.level, self.itos) == (other.level, other.itos)

    def __repr__(self) -> str:
        return f"Vocab(level={self.level!r}, size={len(self)})"

    def tokenize(self, text: str) -> list[str]:
        """``list(text)`` at char level, ``text.split()`` at word level."""
        return _tokenize(text, self.level)

    def encode(self, text: Text, *, sos: bool = False, eos: bool = False) -> list[int]:
        """Ids of ``text`` (a string, or tokens already split); unseen symbols become ``UNK``."""
        get = self.stoi.get
        ids = [get(s, UNK) for s in _tokenize(text, self.level)]
        return ([SOS] if sos else []) + ids + ([EOS] if eos else [])

    def decode_tokens(self, ids: Iterable[int], *, keep_specials: bool = False) -> list[str]:
        """Symbols of ``ids``. Unless ``keep_specials``, stop at the first ``<eos>`` and drop
        ``<pad>`` and ``<sos>`` (what a decoder emits around the answer); ``<unk>`` stays."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise DataError(f"id {i} is outside the vocabulary (size {len(self.itos)})")
            if not keep_specials:
                if i == EOS:
                    break
                if i in (PAD, SOS):
                    continue
            out.append(self.itos[i])
        return out

    def decode(self, ids: Iterable[int], *, keep_specials: bool = False) -> str:
        """The text of ``ids``: symbols joined with '' (char) or ' ' (word); see decode_tokens."""
        return ("" if self.level == "char" else " ").join(self.decode_tokens(ids, keep_specials=keep_specials))

    # -- JSON -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; the specials are written out so the file explains itself."""
        return {"format": VOCAB_FORMAT, "level": self.level, "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: Any) -> "Vocab":
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise DataError(f"expected a vocabulary dict with format {VOCAB_FORMAT!r}, got {got!r}")
        itos = d.get("itos")
        if not isinstance(itos, list) or tuple(itos[: len(SPECIALS)]) != SPECIALS:
            head = itos[: len(SPECIALS)] if isinstance(itos, list) else type(itos).__name__
            raise DataError(f"vocabulary 'itos' must be a list starting with {list(SPECIALS)}, got {head!r}")
        return cls(itos[len(SPECIALS):], d.get("level"))


class Labels:
    """A closed, ordered set of labels (classes, tags, conditions) with ids 0..n-1, no specials.

    >>> tags = Labels.build(["O", "B-PER", "I-PER", "O"])
    >>> tags.names, tags.encode("B-PER"), tags.decode(2)
    (('B-PER', 'I-PER', 'O'), 0, 'O')
    """

    def __init__(self, names: Iterable[str]):
        self.names: tuple[str, ...] = tuple(names)
        self.index: dict[str, int] = {}
        for i, s in enumerate(self.names):
            if not isinstance(s, str) or not s:
                raise DataError(f"label {i} must be a non-empty string, got {s!r}")
            if s in self.index:
                raise DataError(f"label {s!r} appears twice (ids {self.index[s]} and {i})")
            self.index[s] = i
        if not self.names:
            raise DataError("a label set needs at least one label, got none")

    @classmethod
    def build(cls, labels: Iterable[str]) -> "Labels":
        """The distinct ``labels``, sorted, so ids do not depend on the order of the data."""
        return cls(sorted(set(labels)))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: str) -> bool:
        return label in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and self.names == other.names

    def __repr__(self) -> str:
        return f"Labels({list(self.names)!r})"

    def encode(self, label: str) -> int:
        try:
            return self.index[label]
        except KeyError:
            shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
            raise DataError(f"unknown label {label!r}; expected one of {len(self.names)}: {shown}") from None

    def decode(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < len(self.names):
            raise DataError(f"label id {i} is outside 0..{len(self.names) - 1}")
        return self.names[i]

    def to_dict(self) -> dict[str, Any]:
        return {"format": LABELS_FORMAT, "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: Any) -> "Labels":
        if not isinstance(d, dict) or d.get("format") != LABELS_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise DataError(f"expected a label-set dict with format {LABELS_FORMAT!r}, got {got!r}")
        names = d.get("names")
        if not isinstance(names, list):
            raise DataError(f"label-set 'names' must be a list, got {type(names).__name__}")
        return cls(names)


def _tokenize(text: Text, level: str) -> list[str]:
    if not isinstance(text, str):
        return list(text)  # already tokens (e.g. a tagging sentence); used as they are
    return list(text) if level == "char" else text.split()
