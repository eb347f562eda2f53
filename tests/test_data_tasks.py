"""Generated tasks: one API, the shapes their kind promises, fixed seeds, and disjoint splits."""
import datetime
import doctest
import importlib
import random

import pytest
from babel.dates import format_date
from num2words import num2words

from seqlab.data import KINDS, SPLITS, TASKS, DataError, load_task, split_of
from seqlab.data import tasks as tasks_mod

GENERATED = [name for name, t in TASKS.items() if t.kind != "lm"]
N = 150  # per split: enough for disjointness to be tested, small enough for CI


@pytest.fixture(scope="module")
def samples():
    return {(name, split): load_task(name, split, n=N, seed=0) for name in GENERATED for split in SPLITS}


def _key(name, example):
    """The item an example stands for (what decides its split)."""
    if name == "dates":
        return example[1]
    if name == "ner":
        return " ".join(example[0])
    if name == "names":
        return f"{example[0]}\t{example[1]}"
    return example[0]  # numbers: the English words name the integer; langid: the text


def test_registry_kinds():
    assert {t.kind for t in TASKS.values()} == set(KINDS)
    for name, t in TASKS.items():
        assert t.name == name and t.fields == KINDS[t.kind] and t.description


@pytest.mark.parametrize("name", GENERATED)
def test_examples_have_their_kinds_shape(samples, name):
    kind = TASKS[name].kind
    for split in SPLITS:
        examples = samples[name, split]
        assert len(examples) == N
        for ex in examples:
            assert isinstance(ex, tuple) and len(ex) == len(KINDS[kind])
            if kind == "tag":
                tokens, tags = ex
                assert len(tokens) == len(tags) > 0 and all(t and t.split() == [t] for t in tokens)
            else:
                assert all(isinstance(s, str) and s.strip() for s in ex)


@pytest.mark.parametrize("name", GENERATED)
def test_splits_are_disjoint_by_construction(samples, name):
    keys = {split: {_key(name, ex) for ex in samples[name, split]} for split in SPLITS}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    if name == "numbers":  # the key is the integer: recover those below 10**4 from their words
        integer = {num2words(n, lang="en"): str(n) for n in range(10_000)}
        keys = {split: {integer[k] for k in keys[split] if k in integer} for split in SPLITS}
        assert all(len(keys[split]) > N // 3 for split in SPLITS)
    for split in SPLITS:  # not luck: every key hashes into its own split
        assert all(split_of(f"{name}:{k}") == split for k in keys[split])


@pytest.mark.parametrize("name", GENERATED)
def test_fixed_seed_gives_identical_data(samples, name):
    assert load_task(name, "validation", n=N, seed=0) == samples[name, "validation"]
    assert load_task(name, "validation", n=20, seed=1) != samples[name, "validation"][:20]
    assert load_task(name, "train", n=20, seed=0) == samples[name, "train"][:20]  # n only cuts the list


def test_dates_are_babel_renderings_of_the_target(samples):
    for source, target in samples["dates", "train"][:60]:
        day = datetime.date.fromisoformat(target)
        assert tasks_mod.DATE_FIRST <= day <= tasks_mod.DATE_LAST
        renderings = {tasks_mod.plain_spaces(format_date(day, fmt, locale=loc)) for loc, fmt in tasks_mod._DATE_STYLES}
        assert source in renderings
    scripts = {("cjk" if any("\u3000" <= c <= "\u9fff" for c in s) else
                "cyrillic" if any("\u0400" <= c <= "\u04ff" for c in s) else "latin")
               for s, _ in samples["dates", "train"]}
    assert scripts == {"cjk", "cyrillic", "latin"}


def test_date_sources_name_one_date():
    # Over random days in every style, no rendering may stand for two different days.
    rng = random.Random(0)
    lo, hi = tasks_mod.DATE_FIRST.toordinal(), tasks_mod.DATE_LAST.toordinal()
    days = [datetime.date.fromordinal(rng.randint(lo, hi)) for _ in range(150)]
    # 1 Feb and 2 Jan 2003: "1/2/03" is one in es_ES and the other in en_US's short format,
    # which is why that style is left out; this would catch it coming back.
    days += [datetime.date(2003, 1, 2), datetime.date(2003, 2, 1)]
    seen = {}
    for day in days:
        for loc, fmt in tasks_mod._DATE_STYLES:
            s = format_date(day, fmt, locale=loc)
            assert seen.setdefault(s, day) == day, (s, loc, fmt, seen[s], day)


def test_numbers_by_hand(samples):
    assert (num2words(71, lang="en"), num2words(71, lang="fr")) == ("seventy-one", "soixante et onze")
    words = {num2words(n, lang="en"): num2words(n, lang="fr") for n in range(100)}
    small = [(s, t) for s, t in samples["numbers", "train"] if s in words]
    assert small and all(words[s] == t for s, t in small)


def test_langid_labels_and_unambiguous_names(samples):
    labels = {lab for split in SPLITS for _, lab in samples["langid", split]}
    assert labels <= set(tasks_mod.LANGID_LANGUAGES) and len(labels) >= 12
    names = tasks_mod._cldr_names()
    owners = {}
    for lang, group in names.items():
        for s in group:
            owners.setdefault(s, []).append(lang)
    assert all(len(v) == 1 for v in owners.values())
    assert "Argentina" not in owners  # shared by several languages, so dropped


def test_ner_tags_are_valid_bio(samples):
    for tokens, tags in samples["ner", "train"]:
        assert set(tags) <= set(tasks_mod.NER_TAGS)
        for prev, tag in zip(["O"] + tags, tags):
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:] and prev != "O"
    seen = {t for _, tags in samples["ner", "train"] for t in tags}
    assert {"B-PER", "I-PER", "B-LOC", "B-ORG", "B-DATE", "O"} <= seen


def test_ner_by_hand():
    rng = random.Random(4)
    key, render = tasks_mod._draw_ner(rng)
    tokens, tags = render()
    assert key == " ".join(tokens)
    for tok, tag in zip(tokens, tags):
        if tag == "O":
            assert any(tok in t.split() for t in tasks_mod.NER_TEMPLATES)


def test_names_conditions_are_locales(samples):
    locales = {c for split in SPLITS for c, _ in samples["names", split]}
    assert locales <= set(tasks_mod.NAME_LOCALES) and len(locales) >= 10


def test_stdlib_task_gives_documents():
    docs = load_task("stdlib", "validation", n=3)
    assert len(docs) == 3 and all(isinstance(d, str) and d for d in docs)


def test_load_task_errors():
    with pytest.raises(DataError, match=r"unknown task 'poems'; expected one of \['dates'"):
        load_task("poems", "train")
    with pytest.raises(DataError, match=r"split must be one of \('train', 'validation', 'test'\), got 'dev'"):
        load_task("dates", "dev")
    with pytest.raises(DataError, match="n must be a non-negative int or None, got -1"):
        load_task("dates", "train", n=-1)
    assert load_task("dates", "test", n=0) == []


@pytest.mark.parametrize("module", ["base", "vocab", "corpus", "tasks", "synthetic", "files", "batching"])
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"seqlab.data.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
