#!/usr/bin/env python3
"""Set-up and entry points for a fresh checkout.

    python3 tasks.py main   # create/reuse .venv, install pinned deps, run the main job
    python3 tasks.py test   # create/reuse .venv, install pinned deps, run the test suite

Only the standard library is used here, so this runs on a bare Python 3.11+.
The virtual environment lives in .venv/ at the repository root; it is
(re)installed only when pyproject.toml or constraints.txt changed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".seqlab-install-stamp"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"seqlab needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"[tasks] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    print("[tasks] installing seqlab and its pinned dependencies into .venv", flush=True)
    subprocess.run(
        [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(want)


def ensure_extension() -> None:
    """Build (or load from its cache) the compiled CPU recurrence once, before anything uses it.

    Otherwise the first recurrent layer to run pays the build (15-30 s), inside a test or a
    training run. A failed build is not fatal: seqlab warns and uses the fused Python path.
    """
    code = ("import time; t = time.time(); from seqlab.kernels import compiled; ok = compiled.available(); "
            "print(f'[tasks] compiled CPU loop: ' + ('ready' if ok else 'unavailable (' + compiled.build_error() + "
            "'), using the fused path') + f' ({time.time() - t:.1f} s)', flush=True)")
    subprocess.call([str(PY), "-c", code], cwd=ROOT)


def ensure_browser() -> None:
    """Debian's chromium renders the reports in the browser tests; install it where missing.

    Best effort: without root or apt-get (or offline) the browser tests skip and say why.
    """
    if shutil.which("chromium") or shutil.which("chromium-browser") or os.name == "nt":
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("[tasks] chromium not found and apt-get unavailable: the browser tests will skip", flush=True)
        return
    print("[tasks] installing Debian's chromium for the report browser tests", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env,
                       stdout=subprocess.DEVNULL, timeout=900, check=False)
        if not shutil.which("chromium"):  # stale package lists: refresh once and retry
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, timeout=600, check=False)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env,
                           stdout=subprocess.DEVNULL, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"[tasks] could not install chromium ({e}): the browser tests will skip", flush=True)


def main_job(args: list[str]) -> int:
    # The main job: `seqlab compare`, the quick profile (about 10 minutes on 2 cores) into runs/compare.
    return subprocess.call([str(BIN / "seqlab"), "compare", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    ensure_browser()
    # Two workers for the two cores CI has; -x is left out so one failure shows all.
    cmd = [str(PY), "-m", "pytest", "-n", "2", *args]
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 5:
        print("[tasks] pytest collected no tests: the suite is missing or broken", file=sys.stderr)
        return 1
    return rc


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("main", "test"):
        sys.exit("usage: python3 tasks.py {main|test} [extra args passed through]")
    ensure_env()
    ensure_extension()
    job = {"main": main_job, "test": test}[sys.argv[1]]
    sys.exit(job(sys.argv[2:]))


if __name__ == "__main__":
    main()
