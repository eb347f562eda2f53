"""What every part of seqlab.data shares: the error type, the kinds of example, and the one
rule that keeps train, validation and test apart."""
from __future__ import annotations

import hashlib


class DataError(ValueError):
    """Data that cannot be used as given: a missing, empty, undecodable or malformed file, a bad
    vocabulary dict, an unknown task or split, an impossible size.

    The message is one line naming the file (and line or byte offset) where there is one,
    what was expected and what arrived.
    """


class DataWarning(UserWarning):
    """Data that can be used but probably not as meant: labels that training never shows, prompt
    characters outside the vocabulary. The ``seqlab`` command prints each as one line."""


# The kinds of example and their fields, in tuple order. Generated tasks and the user's own
# files produce the same shapes, so a model never needs to know where its data came from.
KINDS: dict[str, tuple[str, ...]] = {
    "lm": ("text",),                   # str
    "seq2seq": ("source", "target"),   # (str, str)
    "classify": ("text", "label"),     # (str, str)
    "tag": ("tokens", "tags"),         # (list[str], list[str]) of equal length
    "generate": ("condition", "text"),  # (str, str)
}

SPLITS = ("train", "validation", "test")


def split_of(key: str) -> str:
    """The split that ``key`` belongs to: 80% of keys go to 'train', 10% to 'validation',
    10% to 'test'.

    Every dataset names each item by a key (a date, an integer, a text, a document name) and
    sends it where this function says. The split is a pure function of the item, not of a
    seed, of file-system order or of how many items were drawn, so the splits are disjoint
    by construction and stay so when sizes change. BLAKE2b rather than ``hash()``, which
    Python salts per process for strings.

    >>> split_of("dates:2003-02-01") in SPLITS
    True
    """
    bucket = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % 100
    if bucket < 80:
        return "train"
    if bucket < 90:
        return "validation"
    return "test"


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else a DataError."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_kind(kind: str) -> tuple[str, ...]:
    """The fields of ``kind``, or a DataError naming the kinds there are."""
    if kind not in KINDS:
        raise DataError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    return KINDS[kind]
