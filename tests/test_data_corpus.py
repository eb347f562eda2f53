"""The stdlib documentation corpus: present, split by document name, read without importing."""
import hashlib
import os
import subprocess
import sys
import sysconfig

import torch

from seqlab.data import BPTTBatcher, SPLITS, Vocab, split_of, stdlib_corpus, stdlib_documents
from seqlab.data import corpus as corpus_mod
from seqlab.data.corpus import normalize_text

NEVER_IMPORTED = ("tkinter", "turtle", "antigravity", "this", "idlelib", "turtledemo", "curses", "smtpd")


def test_corpus_is_a_few_megabytes_and_every_split_is_useful():
    c = stdlib_corpus()
    assert 1_000_000 < len(c.train) < 6_000_000
    assert len(c.validation) > 50_000 and len(c.test) > 50_000
    assert "assert" in c.train + c.validation + c.test


def test_documents_are_split_by_their_name():
    docs = stdlib_documents()
    keys = [d.key for d in docs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(d.split == split_of(f"stdlib:{d.key}") for d in docs)
    by_split = {s: {d.key for d in docs if d.split == s} for s in SPLITS}
    assert all(by_split[s] for s in SPLITS)
    assert sum(len(v) for v in by_split.values()) == len(docs)  # each document in exactly one split
    c = stdlib_corpus()
    for s in SPLITS:
        assert getattr(c, s) == "\n\n".join(d.text for d in docs if d.split == s) + "\n"


def test_both_sources_are_there_and_skipped_folders_are_not():
    keys = {d.key for d in stdlib_documents()}
    assert {"topic:assert", "topic:for", "module:json", "module:collections", "module:tkinter"} <= keys
    assert not any(k.startswith(("module:test.", "module:idlelib", "module:ensurepip", "module:turtledemo"))
                   or ".tests." in k or "site-packages" in k for k in keys)
    doc = next(d for d in stdlib_documents() if d.key == "module:json")
    assert doc.text.startswith("json\nJSON (JavaScript Object Notation)")
    assert "\njson.dumps\nSerialize ``obj`` to a JSON formatted ``str``." in doc.text


def test_building_imports_none_of_the_modules_it_reads():
    stdlib_corpus()
    assert not [m for m in NEVER_IMPORTED if m in sys.modules]
    # And reading them afresh adds nothing at all to sys.modules.
    root = sysconfig.get_paths()["stdlib"]
    sources = [(n, os.path.join(root, p)) for n, p in
               [("tkinter", "tkinter/__init__.py"), ("antigravity", "antigravity.py"), ("this", "this.py")]]
    before = set(sys.modules)
    docs = corpus_mod._module_documents(root, sources) + corpus_mod._topic_documents(root)
    assert set(sys.modules) == before
    assert {"module:tkinter", "module:antigravity"} <= {d.key for d in docs}


def test_the_same_text_in_a_fresh_process():
    # A fresh interpreter has another hash seed and nothing cached: same bytes, or the split is not stable.
    code = ("import hashlib; from seqlab.data.corpus import stdlib_corpus as c; "
            "print(hashlib.sha256('\\x00'.join(c()).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256("\x00".join(stdlib_corpus()).encode()).hexdigest()


def test_normalize_text_by_hand():
    assert normalize_text("a\r\nb\tc  \n\n\n\nd\x00e\n") == "a\nb   c\n\nde"
    assert normalize_text("Cafe\u0301") == "Caf\u00e9"  # NFC


def test_char_lm_pipeline_on_the_corpus():
    c = stdlib_corpus()
    vocab = Vocab.build([c.train], level="char")
    assert 80 < len(vocab) < 400
    ids = torch.tensor(vocab.encode(c.validation))
    assert (ids == 1).float().mean() < 0.01  # few characters of validation are unseen in train
    windows = BPTTBatcher(ids, batch_size=8, bptt=64)
    first = next(iter(windows))
    assert first.shape == (8, 65)
    assert vocab.decode(first[0]) == c.validation[:65]
