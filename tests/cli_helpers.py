"""Helpers for tests that drive the `seqlab` command: in-process (one torch import for a whole
file) or as a real process (exit status, signals, no traceback leaking)."""
import os
import subprocess
import sys
from pathlib import Path

from seqlab.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(argv, capsys):
    """(exit status, stdout, stderr) of main(argv) in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


def seqlab_env() -> dict:
    """The environment of a `seqlab` subprocess: this checkout's sources first, one thread."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def seqlab_process(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seqlab.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=seqlab_env(), **kwargs)
