"""The compare report and the explain page rendered in a real headless browser.

Debian's chromium, driven by its own ``--headless --dump-dom`` (the DOM after the page's scripts
ran) with console messages on stderr (``--enable-logging=stderr --v=0``, lines holding
``:CONSOLE``). Skipped, saying so, only where no chromium can be found (set-up:
``apt-get install -y chromium``).
"""
import json
import re
import shutil
import subprocess

import pytest
import torch

from seqlab.data import Vocab
from seqlab.experiments.compare import CompareConfig, run_compare
from seqlab.experiments.explain import write_page

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless browser found (install Debian's chromium: "
                                                        "apt-get install -y chromium)")


def render(page, tmp_path) -> tuple[str, list[str]]:
    """The DOM after load and scripts, and the page's console lines."""
    profile = tmp_path / "chromium-profile"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_compare_report_renders_with_its_plots(tmp_path):
    out = tmp_path / "compare"
    cfg = CompareConfig(archs=("rnn", "gru"), sections=("adding", "gradflow", "gates", "speed"), adding_T=(10,),
                        budget=0.3, gradflow_T=10, gradflow_sigmas=(0.5, 3.0), speed_lengths=(32,), speed_batch=2,
                        speed_repeats=1)
    run_compare(cfg, out, progress=False)
    dom, console = render(out / "report.html", tmp_path)
    assert console == [], console
    m = re.search(r'<body[^>]*data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom)
    assert m, "the page's load script did not run"
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total == 4 and loaded == total  # memory_adding, gradflow, gates, speed: all decoded, non-zero size
    assert "The claims against the measurements" in dom and "<table>" in dom


def test_explain_page_paints_every_character(tmp_path):
    from seqlab.models import ModelConfig, build_model

    text = "for i in range(3):\n    print(i)  # <ok> & done"
    vocab = Vocab.build([text], "char")
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="lm", arch="lstm", vocab_size=len(vocab), embed_dim=6, hidden_size=5,
                                    num_layers=2, dropout=0.0)).eval()
    page = write_page(model, vocab, text, tmp_path / "explain.html", layer=1, quantity="f", unit=2)
    dom, console = render(page, tmp_path)
    assert console == [], console
    assert f'data-painted="{len(text)}"' in dom
    colours = re.findall(r'<span title="f\[2\] = [-0-9.e]+" style="background-color: rgb\((\d+), (\d+), (\d+)\);">',
                         dom)
    assert len(colours) == len(text)
    # gates in [0, 1] are painted white-to-green: red and blue equal, green full
    assert all(r == b and g == "255" for r, g, b in colours)
    data = json.loads(re.search(r'<script type="application/json" id="explain-data">(.*?)</script>', dom, re.S)
                      .group(1))
    assert data["initial"] == {"layer": 1, "quantity": "f", "unit": 2}
    assert 'layer 1, f, unit 2' in dom  # the status line the script wrote
