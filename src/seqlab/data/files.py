"""The user's own data files, read into the same example shapes the generated tasks give.

==========  ============================  ========================================================
kind        TSV columns (tab-separated)   JSONL object per line
==========  ============================  ========================================================
lm          (plain text file instead)     {"text": "..."}: one document per line
seq2seq     source, target                {"source": "...", "target": "..."}
classify    text, label                   {"text": "...", "label": "..."}
tag         tokens, tags (space-sep.)     {"tokens": ["..."], "tags": ["..."]}
generate    condition, text               {"condition": "...", "text": "..."}
==========  ============================  ========================================================

The format comes from the suffix (.tsv, .jsonl, .txt) unless ``format=`` says. Files are UTF-8
(a BOM is allowed). Blank lines are skipped; a first TSV line that is exactly the column names
(``text<TAB>label``) is a header and skipped too. Anything else that is not an example stops
the read with a :class:`DataError` naming the file, the line and what was expected.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from .base import DataError, check_kind

PathLike = Union[str, os.PathLike]
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".txt": "text", ".text": "text"}


def unreadable(path: Path, e: OSError) -> DataError:
    """The one-line error for a file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if isinstance(e, IsADirectoryError):
        return DataError(f"{path}: is a directory, expected a file")
    return DataError(f"{path}: cannot read ({e.strerror})")


def read_text(path: PathLike) -> str:
    """The text of a UTF-8 file, newlines as ``\\n``; a DataError if it is missing, empty or not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise unreadable(path, e) from None
    # A BOM is stripped by hand rather than with 'utf-8-sig' so byte offsets stay file offsets.
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(f"{path}: not valid UTF-8 at byte offset {at} (line {line}, byte 0x{data[at]:02x})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_examples(path: PathLike, kind: str, *, format: Optional[str] = None,
                  max_line: Optional[int] = None) -> list:
    """The examples of a file as ``kind`` wants them (see the module docstring).

    A plain-text file is one ``lm`` document: ``[text]``. ``max_line``: a line of more
    characters is a DataError naming it (one example is one sequence through a network, whose
    memory grows with its length; an lm's plain text is cut into windows and is not limited).
    """
    fields = check_kind(kind)
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    fmt = format if format is not None else FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        got = f"format {format!r}" if format is not None else f"suffix {path.suffix or '(none)'!r}"
        raise DataError(f"{path}: cannot tell the file format from its {got}; expected .tsv, .jsonl or .txt "
                        f"(or format='tsv'|'jsonl'|'text')")
    text = read_text(path)
    if fmt == "text":
        if kind != "lm":
            raise DataError(f"{path}: a plain-text file holds lm data, not {kind!r}; expected a .tsv or .jsonl file")
        return [text]
    if fmt == "tsv" and kind == "lm":
        raise DataError(f"{path}: lm data is a plain-text (.txt) or JSONL file, not TSV")
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if max_line is not None and len(line) > max_line:
            raise DataError(f"{path}:{lineno}: a line of {len(line):,} characters, longer than max_line={max_line:,}"
                            f"; expected shorter examples (or raise max_line)")
        if fmt == "tsv":
            if not out and line.split("\t") == list(fields):
                continue  # header line
            values = _tsv_values(line, fields, kind, f"{path}:{lineno}")
        else:
            values = _jsonl_values(line, fields, kind, f"{path}:{lineno}")
        out.append(values[0] if kind == "lm" else tuple(values))
    return out


def _tsv_values(line: str, fields: tuple[str, ...], kind: str, where: str) -> list:
    cols = line.split("\t")
    if len(cols) != len(fields):
        raise DataError(f"{where}: expected {len(fields)} tab-separated columns ({', '.join(fields)}), got {len(cols)}")
    for name, col in zip(fields, cols):
        if not col.strip():
            raise DataError(f"{where}: column {name!r} is empty")
    if kind == "tag":
        return _check_tags(cols[0].split(), cols[1].split(), where)
    return cols


def _jsonl_values(line: str, fields: tuple[str, ...], kind: str, where: str) -> list:
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    want = " and ".join(repr(f) for f in fields)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with keys {want}, got a {type(obj).__name__}")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise DataError(f"{where}: expected a JSON object with keys {want}, missing {missing[0]!r}")
    values = [obj[f] for f in fields]
    if kind == "tag":
        for name, v in zip(fields, values):
            if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
                raise DataError(f"{where}: {name!r} must be a non-empty list of non-empty strings, got {v!r:.60}")
        return _check_tags(values[0], values[1], where)
    for name, v in zip(fields, values):
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{where}: {name!r} must be a non-empty string, got {v!r:.60}")
    return values


def _check_tags(tokens: list[str], tags: list[str], where: str) -> list:
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; expected one tag per token")
    return [tokens, tags]


CHUNK_BYTES = 1 << 24  # 16 MiB of a file at a time: big enough for C-speed string work, small next to a corpus


def iter_text(path: PathLike, chunk_bytes: Optional[int] = None) -> Iterator[str]:
    """The text of a UTF-8 file in pieces, exactly as :func:`read_text` would give it whole
    (BOM stripped, newlines as ``\\n``, the same errors), holding one piece at a time."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise unreadable(path, e) from None
    chunk_bytes = chunk_bytes or CHUNK_BYTES  # read at call time, so a test can make pieces tiny
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, lines, held, blank, first = 0, 1, "", True, True
    with f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            pending = len(decoder.getstate()[0])  # bytes of a character split across reads
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset + e.start - pending  # e.start counts from the held-back bytes
                line = lines + data.count(b"\n", 0, max(0, at - offset))
                raise DataError(f"{path}: not valid UTF-8 at byte offset {at} (line {line}, byte "
                                f"0x{_byte_at(path, at):02x})") from None
            if offset == 0 or (first and text):
                first = not text  # the BOM is the first character decoded, wherever the reads cut
                text = text[1:] if text.startswith("\ufeff") else text
            offset += len(data)
            lines += data.count(b"\n")
            text = held + text
            held = ""
            if text.endswith("\r") and data:  # a \r\n split across reads stays one newline
                text, held = text[:-1], "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if blank and text.strip():
                blank = False
            if text:
                yield text
            if not data:
                break
    if blank:
        raise DataError(f"{path}: file is empty")


def _byte_at(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        b = f.read(1)
    return b[0] if b else 0
