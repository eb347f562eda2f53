"""The user's own files: every kind in TSV and JSONL, and one clear DataError line for each fault."""
import json

import pytest

from seqlab.data import DataError, read_examples, read_text


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return p


def _error(fn, *args, **kw):
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, "a DataError is one line"
    return msg


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_plain_text(tmp_path):
    p = _write(tmp_path, "c.txt", "\ufeffline one\r\nline two\n")
    assert read_text(p) == "line one\nline two\n"
    assert read_examples(p, "lm") == ["line one\nline two\n"]


@pytest.mark.parametrize("kind,tsv,jsonl,expected", [
    ("classify", "hello there\ten\nbonjour\tfr\n",
     [{"text": "hello there", "label": "en"}, {"text": "bonjour", "label": "fr"}],
     [("hello there", "en"), ("bonjour", "fr")]),
    ("seq2seq", "one\tun\ntwo\tdeux\n",
     [{"source": "one", "target": "un"}, {"source": "two", "target": "deux"}],
     [("one", "un"), ("two", "deux")]),
    ("generate", "fr_FR\tJean Dupont\n",
     [{"condition": "fr_FR", "text": "Jean Dupont"}],
     [("fr_FR", "Jean Dupont")]),
    ("tag", "Ann Lee left\tB-PER I-PER O\n",
     [{"tokens": ["Ann", "Lee", "left"], "tags": ["B-PER", "I-PER", "O"]}],
     [(["Ann", "Lee", "left"], ["B-PER", "I-PER", "O"])]),
])
def test_every_kind_in_tsv_and_jsonl(tmp_path, kind, tsv, jsonl, expected):
    assert read_examples(_write(tmp_path, "d.tsv", tsv), kind) == expected
    lines = "\n".join(json.dumps(o, ensure_ascii=False) for o in jsonl) + "\n"
    assert read_examples(_write(tmp_path, "d.jsonl", lines), kind) == expected
    assert read_examples(_write(tmp_path, "d.data", tsv), kind, format="tsv") == expected


def test_jsonl_lm_documents(tmp_path):
    p = _write(tmp_path, "docs.jsonl", '{"text": "first doc"}\n{"text": "second", "id": 7}\n')
    assert read_examples(p, "lm") == ["first doc", "second"]


def test_tsv_header_blank_lines_and_crlf_are_skipped(tmp_path):
    p = _write(tmp_path, "d.tsv", "text\tlabel\r\nhi\ten\r\n\r\n  \nsalut\tfr\r\n")
    assert read_examples(p, "classify") == [("hi", "en"), ("salut", "fr")]


def test_missing_directory_and_empty_files(tmp_path):
    missing = tmp_path / "nope.tsv"
    assert _error(read_examples, missing, "classify") == f"{missing}: no such file"
    assert _error(read_text, tmp_path) == f"{tmp_path}: is a directory, expected a file"
    for content in ("", " \n\n\t\n"):
        p = _write(tmp_path, "empty.txt", content)
        assert _error(read_text, p) == f"{p}: file is empty"


def test_undecodable_bytes_name_the_byte_offset(tmp_path):
    p = _write(tmp_path, "bad.tsv", b"ok\ten\nbad \xff\tfr\n")
    assert _error(read_examples, p, "classify") == f"{p}: not valid UTF-8 at byte offset 10 (line 2, byte 0xff)"
    p = _write(tmp_path, "bom.txt", b"\xef\xbb\xbfab\xc3")  # the offset counts the BOM: it is in the file
    assert _error(read_text, p) == f"{p}: not valid UTF-8 at byte offset 5 (line 1, byte 0xc3)"


def test_malformed_tsv_names_the_line(tmp_path):
    p = _write(tmp_path, "d.tsv", "a\tx\n\nb\tx\textra\n")
    assert _error(read_examples, p, "classify") == f"{p}:3: expected 2 tab-separated columns (text, label), got 3"
    p = _write(tmp_path, "d.tsv", "just text\n")
    assert _error(read_examples, p, "seq2seq") == f"{p}:1: expected 2 tab-separated columns (source, target), got 1"
    p = _write(tmp_path, "d.tsv", "a\tx\n \ty\n")
    assert _error(read_examples, p, "classify") == f"{p}:2: column 'text' is empty"


def test_tokens_tags_length_mismatch(tmp_path):
    p = _write(tmp_path, "t.tsv", "Ann Lee left\tB-PER I-PER O\nAnn left\tB-PER\n")
    assert _error(read_examples, p, "tag") == f"{p}:2: 2 tokens but 1 tags; expected one tag per token"
    p = _write(tmp_path, "t.jsonl", '{"tokens": ["a"], "tags": ["O", "O"]}\n')
    assert _error(read_examples, p, "tag") == f"{p}:1: 1 tokens but 2 tags; expected one tag per token"


def test_malformed_jsonl_names_the_line_and_what_was_expected(tmp_path):
    p = _write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    assert _error(read_examples, p, "classify") == f"{p}:2: invalid JSON (Expecting value at column 24)"
    p = _write(tmp_path, "d.jsonl", '["a", "x"]\n')
    assert _error(read_examples, p, "classify") == (
        f"{p}:1: expected a JSON object with keys 'text' and 'label', got a list")
    p = _write(tmp_path, "d.jsonl", '{"text": "a"}\n')
    assert _error(read_examples, p, "classify") == (
        f"{p}:1: expected a JSON object with keys 'text' and 'label', missing 'label'")
    p = _write(tmp_path, "d.jsonl", '{"text": "a", "label": 3}\n')
    assert _error(read_examples, p, "classify") == f"{p}:1: 'label' must be a non-empty string, got 3"
    p = _write(tmp_path, "d.jsonl", '{"tokens": "a b", "tags": ["O", "O"]}\n')
    assert _error(read_examples, p, "tag") == (
        f"{p}:1: 'tokens' must be a non-empty list of non-empty strings, got 'a b'")


def test_format_and_kind_are_checked(tmp_path):
    p = _write(tmp_path, "d.csv", "a,b\n")
    assert _error(read_examples, p, "classify") == (
        f"{p}: cannot tell the file format from its suffix '.csv'; expected .tsv, .jsonl or .txt "
        "(or format='tsv'|'jsonl'|'text')")
    p = _write(tmp_path, "d.txt", "some text\n")
    assert "a plain-text file holds lm data, not 'tag'" in _error(read_examples, p, "tag")
    assert "kind must be one of" in _error(read_examples, p, "poetry")
    p = _write(tmp_path, "d.tsv", "a\tb\n")
    assert "lm data is a plain-text (.txt) or JSONL file, not TSV" in _error(read_examples, p, "lm")
