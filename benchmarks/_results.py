"""Measured tables into ``benchmarks/RESULTS.md``, each headed with where, when and how it was measured.

    section = results_section("Recurrent layers against torch.nn", command_line(), table, notes=[...])
    write_section(RESULTS, "recurrent", section)

A figure without its machine, versions, date and command cannot be checked or compared, so
every table a benchmark writes carries them (``machine()``): platform, CPU model, the CPU
flags that decide which product kernels run (AVX2, AVX-512, AMX), logical CPUs, torch and
Python versions, torch's thread count, and the UTC date.

RESULTS.md holds one section per benchmark between two markers::

    <!-- results:recurrent begin -->
    ...
    <!-- results:recurrent end -->

A run replaces its own section in place and leaves the others as they were; a section not yet
in the file is appended. The file is written to a temporary file beside it and renamed over it,
so a run killed half-way never leaves half a file.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch

#: where the scripts write with a bare ``--markdown``
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

#: flags that decide which float32 product kernels MKL and oneDNN pick on x86 (and NEON/SVE on Arm)
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "asimd", "sve")

_KEY = re.compile(r"[a-z0-9][a-z0-9_-]*")

PREAMBLE = """# Benchmark results

Written by the benchmark scripts themselves (`python benchmarks/<script>.py ... --markdown`); each
section is replaced in place by the next run of its script, so edit the scripts, not this file.
Every table is headed with the machine, CPU flags, torch version, date and exact command that
produced it: figures from another machine or torch release will differ.
"""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> Optional[list[str]]:
    """The flags of ``CPU_FLAGS`` this CPU has (None where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    have: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            have.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f in have]


def machine() -> dict:
    """Where and when a figure was measured: everything a reader needs to judge whether it applies."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        # a shared machine's other jobs slow every figure; the load says how busy it was
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line(argv: Optional[list[str]] = None) -> str:
    """The command as typed from the repository root: ``python benchmarks/x.py ARGS``."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    return shlex.join(["python", str(script), *argv[1:]])


def results_section(title: str, command: str, *tables: str, notes: Iterable[str] = (),
                    env: Optional[dict] = None) -> str:
    """A markdown section: ``## title``, the machine and command it was measured with, notes, tables.

    ``tables`` are markdown blocks (a table, or a sentence of results); ``notes`` are bullet lines
    that say how to read them (sizes, the load on the machine). ``env`` defaults to ``machine()``.
    """
    if not title.strip():
        raise ValueError("expected a non-empty title, got an empty one")
    env = machine() if env is None else env
    flags = env.get("cpu_flags")
    flags_text = "unknown" if flags is None else (", ".join(flags) or "none of " + ", ".join(CPU_FLAGS))
    lines = [f"## {title.strip()}", "",
             f"- command: `{command}`",
             f"- date: {env['date']}",
             f"- machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, {env['platform']}",
             f"- CPU flags: {flags_text}",
             f"- load: {_load_text(env)}",
             f"- torch {env['torch']} ({env['torch_threads']} thread{'' if env['torch_threads'] == 1 else 's'}), "
             f"Python {env['python']}"
             + (f", GPU {env['cuda']}" if env.get("cuda") else "")]
    lines += [f"- {n}" for n in notes]
    for t in tables:
        lines += ["", t.strip()]
    return "\n".join(lines) + "\n"


def _load_text(env: dict) -> str:
    load = env.get("load_average")
    if load is None:
        return "unknown"
    return f"{load:.1f} runnable jobs on average over the minute before the table was written"


def _markers(key: str) -> tuple[str, str]:
    if not _KEY.fullmatch(key):
        raise ValueError(f"expected a section key of lower-case letters, digits, '-' and '_', got {key!r}")
    return f"<!-- results:{key} begin -->", f"<!-- results:{key} end -->"


def replace_section(text: str, key: str, markdown: str) -> str:
    """``text`` with the section ``key`` set to ``markdown`` (appended when it is not there yet)."""
    begin, end = _markers(key)
    block = f"{begin}\n{markdown.strip()}\n{end}"
    i, j = text.find(begin), text.find(end)
    if i < 0 and j < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if i < 0 or j < i or text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one {begin!r} followed by one {end!r}, got a broken pair; fix the file by hand")
    return text[:i] + block + text[j + len(end):]


def write_section(path: str | os.PathLike, key: str, markdown: str) -> Path:
    """Put ``markdown`` into the section ``key`` of ``path`` (created with a preamble), atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else PREAMBLE
    new = replace_section(text, key, markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        # mkstemp makes the file private; keep the mode a plain write would give
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add_markdown_arguments(parser) -> None:
    """``--markdown [PATH]``: also write this run's section into RESULTS.md (or PATH); ``--note``."""
    parser.add_argument("--markdown", nargs="?", const=str(RESULTS), default=None, metavar="PATH",
                        help=f"also write this run's tables into {RESULTS.name} (or PATH), replacing this "
                             "benchmark's section there")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a line for the section's header (e.g. what else ran on the machine); repeatable")
