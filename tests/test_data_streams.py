"""Streamed corpora: the two-pass reader gives exactly the vocabulary and ids the in-memory path
gives, in the smallest integer type, whatever the file's pieces; long units are refused by line;
batchers and scoring widen one window at a time."""
import json

import numpy as np
import pytest
import torch

from seqlab.data import BPTTBatcher, DataError, Vocab, WindowSampler, split_of
from seqlab.data import files as files_module
from seqlab.data.streams import encode_stream, id_dtype, iter_units, text_streams


def _old_units(text: str) -> list[str]:
    """What LMApp.read_file cut a text into before streaming (the specification)."""
    paragraphs = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) >= 20:
        return paragraphs
    return [line for line in text.split("\n") if line.strip()]


def _old_streams(text: str, level: str = "char", min_freq: int = 1, max_size=None):
    units = _old_units(text.replace("\r\n", "\n"))
    splits = {s: [u for u in units if split_of(f"lm:{json.dumps(u, ensure_ascii=False)}") == s]
              for s in ("train", "validation", "test")}
    vocab = Vocab.build(splits["train"], level, min_freq=min_freq, max_size=max_size)
    ids = {s: [i for u in us for i in vocab.encode(u, eos=True)] for s, us in splits.items() if us}
    return vocab, ids


TEXTS = {
    "lines": "".join(f"line {i} é \U0001F600 {'x' * (i % 7)}\n" for i in range(300)),
    "paragraphs": "".join(f"para {i}\nsecond line {i % 5}\n\n\n" for i in range(60)),
    "crlf": "".join(f"row {i}\r\n" for i in range(200)),
    "nul": "".join(f"a\x00b {i}\n" for i in range(100)),  # the joined encoder's separator inside the text
}


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize("level", ["char", "word"])
def test_streams_equal_the_in_memory_path(tmp_path, monkeypatch, name, chunk, level):
    monkeypatch.setattr(files_module, "CHUNK_BYTES", chunk)
    path = tmp_path / "c.txt"
    path.write_bytes(TEXTS[name].encode("utf-8"))
    vocab, streams = text_streams(path, level=level)
    want_vocab, want = _old_streams(TEXTS[name], level)
    assert vocab == want_vocab
    assert sorted(streams) == sorted(want)
    for s, ids in streams.items():
        assert ids.dtype == torch.uint8  # a small vocabulary: one byte per token
        assert ids.tolist() == want[s], s


def test_given_vocab_limits_and_one_split(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TEXTS["lines"], encoding="utf-8")
    vocab, _ = text_streams(path, min_freq=3, max_size=12)
    assert vocab == _old_streams(TEXTS["lines"], min_freq=3, max_size=12)[0]
    _, only = text_streams(path, vocab, split="validation", limits={"validation": 5})
    units = _old_units(TEXTS["lines"])[:5]
    assert list(only) == ["validation"]
    assert only["validation"].tolist() == [i for u in units for i in vocab.encode(u, eos=True)]


def test_id_dtype_is_the_smallest_that_fits():
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.int16
    assert id_dtype(32768) == np.int16 and id_dtype(32769) == np.int32
    big = Vocab([chr(0x4E00 + i) for i in range(400)], "char")
    assert encode_stream(["\u4e00\u4e01"], big).dtype == torch.int16
    assert encode_stream(["\u4e00\u4e01"], big).tolist() == [4, 5, 3]


def test_a_long_unit_is_refused_with_its_line_and_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "CHUNK_BYTES", 64)  # the long line spans many pieces
    path = tmp_path / "c.txt"
    path.write_text("short\nshort too\n" + "y" * 5000 + "\nend\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.txt:3: a line of more than [\d,]+ characters, longer than max_line=1,000"):
        list(iter_units(path, max_line=1000))
    assert len(list(iter_units(path, max_line=5000))) == 4


def test_batchers_keep_the_stream_dtype_and_widen_one_window():
    ids = torch.arange(200, dtype=torch.int64).to(torch.uint8)
    b = BPTTBatcher(ids, 4, 8)
    assert b.rows.dtype == torch.uint8
    window = next(iter(b))
    assert window.dtype == torch.int64 and window.tolist() == BPTTBatcher(ids.long(), 4, 8).rows[:, :9].tolist()
    w = next(iter(WindowSampler(ids, 2, 8)))
    assert w.dtype == torch.int64


def test_lm_scores_a_compact_stream_as_an_int64_one(tmp_path):
    from seqlab.apps import LMApp, LMOptions
    from seqlab.models import ModelConfig, build_model

    app = LMApp(LMOptions(bptt=8, eval_rows=3))
    app.vocab = Vocab(list("abcdef"), "char")
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="lm", arch="gru", vocab_size=len(app.vocab), embed_dim=4, hidden_size=4,
                                    num_layers=1)).eval()
    ids = torch.randint(4, 10, (100,))
    assert app.score(model, ids.to(torch.uint8)) == app.score(model, ids)
    assert app.score(model, ids.to(torch.uint8), tokens=30) == app.score(model, ids, tokens=30)


@pytest.mark.parametrize("paragraphs", [19, 20])
@pytest.mark.parametrize("chunk", [1, 2, 5, 1 << 20])
def test_paragraphs_or_lines_is_decided_as_in_memory(tmp_path, monkeypatch, paragraphs, chunk):
    monkeypatch.setattr(files_module, "CHUNK_BYTES", chunk)
    text = "".join(f"p{i} a\nb\n" + "\n" * (1 + i % 3) + (" \n\n" if i % 4 == 0 else "") for i in range(paragraphs))
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    assert list(iter_units(path, max_line=1000)) == _old_units(text)
