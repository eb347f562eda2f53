"""Datasets generated offline from installed packages, behind one call::

    load_task(name, split, n=None, seed=0) -> list of examples

=========  ==========  =====================================================================
name       kind        example
=========  ==========  =====================================================================
stdlib     lm          a document of the standard library's documentation (see corpus.py)
dates      seq2seq     ("samedi 1 février 2003", "2003-02-01"): babel, 17 locales, 8 formats
numbers    seq2seq     ("forty-two", "quarante-deux"): num2words English -> French
langid     classify    ("quatre mille sept cent onze", "fr"): number words and CLDR names, 16 languages
ner        tag         (["Ann", "Lee", "joined", ...], ["B-PER", "I-PER", "O", ...]): faker in templates
names      generate    ("fr_FR", "Paulette Fournier"): faker person names per locale
=========  ==========  =====================================================================

How a split stays apart from the others: each item has a key (the date, the integer, the text,
the sentence, the locale and name) and belongs to the split :func:`split_of` gives that key.
A generator draws candidates from a ``random.Random`` seeded by (task, split, seed) and keeps
those whose key falls in the requested split, so train, validation and test never share an
item whatever ``n`` and ``seed`` are, and the same arguments give the same list. Items are
drawn with replacement, so a split may repeat an item (mostly in the small key spaces of
``langid``'s CLDR names).

What comes out depends on the versions of babel, num2words and faker (pinned in
constraints.txt), since their data is the data.
"""
from __future__ import annotations

import datetime
import functools
import random
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from babel import Locale
from babel.dates import format_date
from faker import Faker
from num2words import num2words

from .base import KINDS, DataError, check_split, split_of
from .corpus import load_stdlib_docs

# A draw returns the item's key and a function that renders the example. Rendering waits until
# the key is known to be in the split, because rendering (babel, num2words) costs far more
# than hashing a key, and 90% of candidates are rejected for validation and test.
Draw = Callable[[random.Random], tuple[str, Callable[[], Any]]]


@dataclass(frozen=True)
class Task:
    """A named dataset: its kind (one of :data:`KINDS`), default sizes and generator."""

    name: str
    kind: str
    description: str
    make: Callable[[str, Optional[int], int], list]  # (split, n, seed) -> examples
    # Default n per split: large enough to train the small models of `seqlab compare` on a CPU.
    sizes: dict[str, Optional[int]] = field(
        default_factory=lambda: {"train": 10_000, "validation": 1_000, "test": 1_000})

    @property
    def fields(self) -> tuple[str, ...]:
        return KINDS[self.kind]


def load_task(name: str, split: str, n: Optional[int] = None, seed: int = 0) -> list:
    """``n`` examples (default: the task's size for ``split``) of task ``name`` from ``split``.

    >>> load_task("numbers", "train", n=1, seed=0)
    [('sixty-four thousand, nine hundred and fifty-nine', 'soixante-quatre mille neuf cent cinquante-neuf')]
    >>> load_task("dates", "validation", n=2, seed=0)
    [('8 okt. 1972', '1972-10-08'), ('Aug 19, 1998', '1998-08-19')]
    """
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    task = TASKS[name]
    check_split(split)
    if n is None:
        n = task.sizes[split]  # None for 'stdlib': all documents
    elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"n must be a non-negative int or None, got {n!r}")
    return task.make(split, n, seed)


def _sample(name: str, split: str, n: int, seed: int, draw: Draw) -> list:
    """``n`` examples from ``draw`` whose keys lie in ``split`` (see the module docstring)."""
    rng = random.Random(f"seqlab.tasks/{name}/{split}/{seed}")  # str seeds hash with SHA-512: stable
    out: list = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1_000 + 100 * n:  # a split holds ~10% of keys, so this only trips on a bug
            raise DataError(f"task {name!r}: found {len(out)} of {n} {split} examples in {tries - 1} draws")
        key, render = draw(rng)
        if split_of(f"{name}:{key}") == split:
            out.append(render())
    return out


def plain_spaces(text: str) -> str:
    """Every Unicode space (no-break, narrow no-break as in CLDR's French and Russian dates...)
    as an ordinary space, so word-level tokenising splits where a reader sees a space."""
    return "".join(" " if unicodedata.category(c) == "Zs" else c for c in text)


# ----------------------------------------------------------------------------
# dates: babel-rendered date -> ISO 8601

DATE_LOCALES = ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES", "it_IT", "pt_BR", "nl_NL", "sv_SE",
                "pl_PL", "ru_RU", "ja_JP", "tr_TR", "fi_FI", "cs_CZ", "da_DK", "hu_HU")
DATE_FORMATS = ("short", "medium", "long", "full", "d MMMM y", "EEEE d MMMM y", "MMM d, y", "dd.MM.y")
# en_US 'short' (M/d/yy) is the only month-first numeric format: "2/1/03" would be 1 Feb in
# es_ES and 2 Jan in en_US, and the source does not name its locale. Every other pair was
# checked over the whole date range to never render two dates the same.
_DATE_EXCLUDED = {("en_US", "short")}
_DATE_STYLES = tuple((loc, fmt) for loc in DATE_LOCALES for fmt in DATE_FORMATS if (loc, fmt) not in _DATE_EXCLUDED)
# 100 years, so that the two-digit years of some short formats name one year each.
DATE_FIRST, DATE_LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _draw_date(rng: random.Random):
    day = datetime.date.fromordinal(rng.randint(DATE_FIRST.toordinal(), DATE_LAST.toordinal()))

    def render():
        loc, fmt = rng.choice(_DATE_STYLES)
        return plain_spaces(format_date(day, fmt, locale=loc)), day.isoformat()
    return day.isoformat(), render


# ----------------------------------------------------------------------------
# numbers: English number words -> French number words

NUMBER_MAX = 999_999


def _draw_number(rng: random.Random):
    # Digit count first, so "seven" is as likely as "seven hundred thousand and three".
    digits = rng.randint(1, len(str(NUMBER_MAX)))
    value = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
    return str(value), lambda: (num2words(value, lang="en"), num2words(value, lang="fr"))


# ----------------------------------------------------------------------------
# langid: short texts -> language code

LANGID_LANGUAGES = ("cs", "da", "de", "en", "es", "fi", "fr", "hu", "id", "it", "nl", "pl", "pt", "ro", "sv", "tr")


@functools.lru_cache(maxsize=None)
def _cldr_names() -> dict[str, tuple[str, ...]]:
    """Territory and language names of CLDR per language, without those that two of the
    languages share ("Argentina", "Chile"...), whose label would be a coin toss."""
    names = {lang: {plain_spaces(s) for s in (*Locale.parse(lang).territories.values(),
                                              *Locale.parse(lang).languages.values())}
             for lang in LANGID_LANGUAGES}
    seen: dict[str, int] = {}
    for group in names.values():
        for s in group:
            seen[s] = seen.get(s, 0) + 1
    return {lang: tuple(sorted(s for s in group if seen[s] == 1)) for lang, group in names.items()}


def _draw_langid(rng: random.Random):
    lang = rng.choice(LANGID_LANGUAGES)
    if rng.random() < 0.5:
        # From 10 up: one-word numbers are where languages coincide ("nove" is Italian and Portuguese).
        digits = rng.randint(2, 6)
        text = num2words(rng.randint(10 ** (digits - 1), 10 ** digits - 1), lang=lang)
    else:
        text = rng.choice(_cldr_names()[lang])
    text = plain_spaces(text)
    return text, lambda: (text, lang)


# ----------------------------------------------------------------------------
# ner: template sentences filled by faker, BIO tags per whitespace token

NER_TEMPLATES = (
    "{PER} was born in {LOC} on {DATE} .",
    "{PER} joined {ORG} on {DATE} .",
    "On {DATE} , {ORG} opened an office in {LOC} .",
    "{ORG} hired {PER} as a consultant .",
    "{PER} and {PER} met in {LOC} last year .",
    "The meeting in {LOC} was moved to {DATE} .",
    "{PER} works for {ORG} in {LOC} .",
    "According to {PER} , {ORG} will leave {LOC} by {DATE} .",
    "{ORG} was founded in {LOC} .",
    "{PER} flew from {LOC} to {LOC} on {DATE} .",
    "Shares of {ORG} rose sharply after {DATE} .",
    "Nobody expected the weather to change so quickly .",
    "I spoke to {PER} about the new contract .",
    "The report from {ORG} arrived on {DATE} .",
)
NER_TAGS = ("B-DATE", "B-LOC", "B-ORG", "B-PER", "I-DATE", "I-LOC", "I-ORG", "I-PER", "O")
_NER_DATE_FORMATS = ("MMMM d, y", "d MMMM y", "y-MM-dd", "MMM d, y", "MMMM y")


@functools.lru_cache(maxsize=None)
def _faker(locale: str) -> Faker:
    # Built once (~30 ms each); every user re-seeds it first, so sharing it changes nothing.
    return Faker(locale)


@functools.lru_cache(maxsize=None)
def _ner_pools() -> dict[str, tuple[str, ...]]:
    """Entity strings drawn once from faker with a fixed seed; sentences pick from these.

    Faker's weighted draws cost ~60 us each and 9 of 10 candidate sentences of validation
    and test are rejected, so drawing every entity afresh made those splits 10x slower.
    A few thousand of each keeps the variety that matters for tagging.
    """
    fake = _faker("en_US")
    fake.seed_instance("seqlab.tasks/ner/pools")
    return {"first": tuple(fake.first_name() for _ in range(3000)),
            "last": tuple(fake.last_name() for _ in range(3000)),
            "LOC": tuple(plain_spaces(fake.city()) for _ in range(2000)),
            "ORG": tuple(plain_spaces(fake.company()) for _ in range(2000))}


def _entity(kind: str, rng: random.Random) -> str:
    pools = _ner_pools()
    if kind == "PER":
        return f"{rng.choice(pools['first'])} {rng.choice(pools['last'])}"
    if kind == "DATE":
        day = datetime.date.fromordinal(rng.randint(DATE_FIRST.toordinal(), DATE_LAST.toordinal()))
        return format_date(day, rng.choice(_NER_DATE_FORMATS), locale="en_US")
    return rng.choice(pools[kind])


def _draw_ner(rng: random.Random):
    tokens: list[str] = []
    tags: list[str] = []
    for word in rng.choice(NER_TEMPLATES).split():
        if word.startswith("{") and word.endswith("}"):
            kind = word[1:-1]
            span = plain_spaces(_entity(kind, rng)).split()
            tokens += span
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return " ".join(tokens), lambda: (tokens, tags)


# ----------------------------------------------------------------------------
# names: locale -> person name

NAME_LOCALES = ("cs_CZ", "de_DE", "en_US", "es_ES", "fi_FI", "fr_FR", "it_IT", "nl_NL", "pl_PL", "pt_BR",
                "sv_SE", "tr_TR")


def _make_names(split: str, n: int, seed: int) -> list:
    fakes = {}
    for loc in NAME_LOCALES:
        fakes[loc] = _faker(loc)
        fakes[loc].seed_instance(f"seqlab.tasks/names/{split}/{seed}/{loc}")

    def draw(rng: random.Random):
        loc = rng.choice(NAME_LOCALES)
        name = plain_spaces(fakes[loc].name())
        return f"{loc}\t{name}", lambda: (loc, name)
    return _sample("names", split, n, seed, draw)


# ----------------------------------------------------------------------------


def _sampled(name: str, draw: Draw) -> Callable[[str, int, int], list]:
    return lambda split, n, seed: _sample(name, split, n, seed, draw)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("stdlib", "lm", "Python standard library documentation: pydoc topics and docstrings, one document each "
         "(n caps the number of documents; seed is unused, the documents are fixed)",
         lambda split, n, seed: load_stdlib_docs(split, n),
         sizes={"train": None, "validation": None, "test": None}),
    Task("dates", "seq2seq", "a date as babel renders it in one of 17 locales and 8 formats -> YYYY-MM-DD",
         _sampled("dates", _draw_date)),
    Task("numbers", "seq2seq", f"an integer 0..{NUMBER_MAX} in English words -> in French words (num2words)",
         _sampled("numbers", _draw_number)),
    Task("langid", "classify", "number words or a CLDR territory/language name -> its language code (16 languages)",
         _sampled("langid", _draw_langid)),
    Task("ner", "tag", "an English template sentence with faker names, cities, companies and dates -> BIO tags",
         _sampled("ner", _draw_ner)),
    Task("names", "generate", "a faker locale (12) -> a person name of that locale", _make_names),
)}
