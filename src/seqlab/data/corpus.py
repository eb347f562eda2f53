"""A language-model corpus that every Python installation already holds: its own documentation.

Documents:

* ``topic:NAME``: the help topics of ``pydoc_data.topics`` (the text ``help('for')`` shows);
* ``module:DOTTED.NAME``: one per standard-library source file, its module docstring followed
  by the docstring of every class and function in it, each under its qualified name.

Nothing is imported to get them: every file, ``pydoc_data/topics.py`` included, is read as
source with ``ast.parse`` and its docstrings taken with ``ast.get_docstring`` (importing would
run module code: ``antigravity`` opens a browser, ``this`` prints, ``tkinter`` needs Tk).
Tests, IDLE, ``site-packages`` and bundled wheels are skipped.

Each document goes to train/validation/test by a hash of its name (:func:`split_of`), and
documents are ordered by name inside a split, so the corpus does not depend on file-system
order. On CPython 3.11 it is about 2.3 MB of text. It does depend on the Python version,
since that is where the text comes from.
"""
from __future__ import annotations

import ast
import functools
import os
import re
import sysconfig
import unicodedata
from typing import Iterable, NamedTuple, Optional

from .base import SPLITS, DataError, check_split, split_of

# Directory names under the stdlib that hold no documentation worth learning from, or code
# that is not the standard library's own (site-packages).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages",
                        "__pycache__", "ensurepip", "turtledemo", "lib-dynload"})
DOC_SEPARATOR = "\n\n"  # between documents when a split is joined into one string


class Document(NamedTuple):
    key: str    # 'topic:NAME' or 'module:DOTTED.NAME'; decides the split
    text: str   # normalised
    split: str


class Splits(NamedTuple):
    train: str
    validation: str
    test: str


def normalize_text(text: str) -> str:
    """NFC, tabs expanded, control and format characters (other than newline) dropped, trailing spaces
    stripped, runs of blank lines collapsed to one, no leading or trailing blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).expandtabs(4)
    text = "".join(c for c in text if c == "\n" or unicodedata.category(c)[0] != "C")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


@functools.lru_cache(maxsize=None)
def stdlib_documents() -> tuple[Document, ...]:
    """All documents of the corpus, sorted by key (cached: built once per process, ~3 s)."""
    root = sysconfig.get_paths()["stdlib"]
    docs = [*_topic_documents(root), *_module_documents(root, _stdlib_sources(root))]
    docs.sort(key=lambda d: d.key)
    if not docs:
        raise DataError(f"found no documentation under the standard library at {root}")
    return tuple(docs)


def load_stdlib_docs(split: str, n: Optional[int] = None) -> list[str]:
    """The texts of the documents of ``split``, in key order; the first ``n`` if given."""
    check_split(split)
    texts = [d.text for d in stdlib_documents() if d.split == split]
    return texts if n is None else texts[:n]


@functools.lru_cache(maxsize=None)
def stdlib_corpus() -> Splits:
    """The corpus as three strings, documents joined by a blank line (cached)."""
    return Splits(*(join_documents(load_stdlib_docs(s)) for s in SPLITS))


def join_documents(texts: Iterable[str]) -> str:
    """Documents as one LM stream: separated by a blank line, ending with a newline."""
    return DOC_SEPARATOR.join(texts) + "\n"


# ----------------------------------------------------------------------------
# Reading the sources


def _stdlib_sources(root: str) -> list[tuple[str, str]]:
    """(dotted module name, path) of the .py files of the stdlib worth reading, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        rel = os.path.relpath(dirpath, root)
        package = [] if rel == "." else rel.split(os.sep)
        for f in filenames:
            # _sysconfigdata_* describes this machine's build, not Python; pydoc_data is read as topics.
            if not f.endswith(".py") or f.startswith("_sysconfigdata") or package == ["pydoc_data"]:
                continue
            parts = package + ([] if f == "__init__.py" else [f[:-3]])
            out.append((".".join(parts), os.path.join(dirpath, f)))
    return sorted(out)


def _module_documents(root: str, sources: Iterable[tuple[str, str]]) -> list[Document]:
    docs = []
    for name, path in sources:
        try:
            with open(path, "rb") as fh:
                tree = ast.parse(fh.read(), filename=path)
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. Python 2 grammar samples of lib2to3: not the docs we want
        parts = []
        module_doc = ast.get_docstring(tree)
        if module_doc:
            parts.append(f"{name}\n{module_doc}")
        for qualname, node in _definitions(tree):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(f"{name}.{qualname}\n{doc}")
        if parts:
            key = f"module:{name}"
            docs.append(Document(key, normalize_text("\n\n".join(parts)), split_of(f"stdlib:{key}")))
    return docs


def _definitions(tree: ast.AST, prefix: str = "") -> Iterable[tuple[str, ast.AST]]:
    """(qualified name, node) of classes and functions, in source order, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = prefix + node.name
            yield qualname, node
            yield from _definitions(node, qualname + ".")
        elif isinstance(node, (ast.If, ast.Try)):  # definitions under `if sys.platform...`, `try: import`
            yield from _definitions(node, prefix)


def _topic_documents(root: str) -> list[Document]:
    """pydoc_data.topics read as a literal, not imported."""
    path = os.path.join(root, "pydoc_data", "topics.py")
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return []  # some distributions strip pydoc_data; the module docstrings still make a corpus
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            break
    else:
        return []
    return [Document(f"topic:{k}", normalize_text(v), split_of(f"stdlib:topic:{k}"))
            for k, v in sorted(topics.items()) if isinstance(v, str) and v.strip()]
