"""The benchmarks run end to end at tiny sizes, print their tables, write valid JSON and their
section of RESULTS.md (``--markdown``), headed with machine, CPU flags, torch, date and command.

Timings are not asserted: they depend on the machine. What is asserted is
that every seqlab path the benchmark measures actually ran.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_recurrent_benchmark_quick(tmp_path):
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "RESULTS.md"
    out_md.write_text("# kept\n\n<!-- results:other begin -->\nanother benchmark's table\n<!-- results:other end -->\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recurrent.py"), "--quick", "--threads", "1",
         "--json", str(out_json), "--markdown", str(out_md)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cell | seqlab backend |" in proc.stdout
    text = out_md.read_text()
    assert text.startswith("# kept") and "another benchmark's table" in _section(text, "other")
    section = _section(text, "recurrent")
    _assert_headed(section, "recurrent.py --quick --threads 1")
    assert "| lstm+zoneout | 4 | 8 | 16 |" in section and "(4, 8, 16)" in section
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    assert {r["cell"] for r in rows} == {"rnn", "gru", "lstm", "lstm+layer_norm", "lstm+recurrent_dropout",
                                         "lstm+weight_drop", "lstm+zoneout"}
    assert {"fused", "reference"} <= {r["impl"] for r in rows if r["cell"] == "lstm+layer_norm"}
    for r in rows:
        assert not r["error"], f"{r['cell']} / {r['impl']}: {r['error']}"
        for key in ("torch_train_ms", "torch_infer_ms", "train_ms", "infer_ms", "train_ratio", "infer_ratio",
                    "train_tokens_per_s", "infer_tokens_per_s"):
            assert r[key] is not None and r[key] > 0, key


def test_recurrent_benchmark_rejects_unknown_cells():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recurrent.py"), "--cells", "lstm,tcn"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and "tcn" in proc.stderr
    proc = _run("recurrent.py", "--sizes", "4,8")
    assert proc.returncode == 2 and "B,T,H" in proc.stderr


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _section(text: str, key: str) -> str:
    """The body of section ``key`` of a RESULTS.md text; fails when the markers are missing."""
    begin, end = f"<!-- results:{key} begin -->", f"<!-- results:{key} end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, text[:2000]
    return text[text.index(begin) + len(begin):text.index(end)]


def _assert_headed(section: str, command_part: str) -> None:
    """Every section says where, when and how it was measured."""
    for field in ("- command: `python benchmarks/", "- date: ", "- machine: ", "- CPU flags: ", "- load: ",
                  "- torch "):
        assert field in section, (field, section)
    assert command_part in section, section
    assert re.search(r"- date: 20\d\d-\d\d-\d\d \d\d:\d\d UTC", section), section


def _results_module():
    spec = importlib.util.spec_from_file_location("_results", ROOT / "benchmarks" / "_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_section_replaces_its_own_section_in_place(tmp_path):
    results = _results_module()
    path = tmp_path / "RESULTS.md"
    env = {**results.machine(), "cpu_flags": ["avx2"], "load_average": 1.25}
    results.write_section(path, "alpha", results.results_section("Alpha", "python benchmarks/a.py", "| a |\n|---|",
                                                                 env=env))
    results.write_section(path, "beta", "## Beta\n\nfirst")
    first = path.read_text()
    assert first.startswith("# Benchmark results")
    assert "- CPU flags: avx2" in _section(first, "alpha") and "1.2 runnable jobs" in _section(first, "alpha")
    results.write_section(path, "alpha", "## Alpha\n\nsecond")
    second = path.read_text()
    assert "second" in _section(second, "alpha") and "| a |" not in second
    assert _section(second, "beta") == _section(first, "beta")
    assert second.index("results:alpha begin") < second.index("results:beta begin")  # replaced where it stood
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_section_refuses_broken_markers_and_keys(tmp_path):
    results = _results_module()
    path = tmp_path / "RESULTS.md"
    path.write_text("# x\n\n<!-- results:alpha begin -->\nno end marker\n")
    with pytest.raises(ValueError, match="broken pair"):
        results.write_section(path, "alpha", "new")
    assert path.read_text() == "# x\n\n<!-- results:alpha begin -->\nno end marker\n"
    with pytest.raises(ValueError, match="section key"):
        results.write_section(path, "Has Space", "new")
    with pytest.raises(ValueError, match="title"):
        results.results_section(" ", "cmd")


def test_minrnn_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = _run("minrnn.py", "--quick", "--threads", "1", "--markdown", str(out), "--note", "a loaded machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(out.read_text(), "minrnn")
    _assert_headed(section, "minrnn.py --quick --threads 1")
    assert "- a loaded machine" in section and "| 64 | MinGRU scan |" in section and "the GRU" in section


def test_dropout_benchmark_writes_its_section(tmp_path):
    from seqlab.kernels import compiled

    if not compiled.available():
        pytest.skip(f"the compiled library is not available: {compiled.build_error()}")
    out = tmp_path / "RESULTS.md"
    proc = _run("dropout.py", "--quick", "--threads", "1", "--markdown", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(out.read_text(), "dropout")
    _assert_headed(section, "dropout.py --quick --threads 1")
    assert re.search(r"\| small \| \(4, 8, 16\) \| 512 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", section), section


def test_transformer_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = _run("transformer.py", "--quick", "--device", "cpu", "--batch", "2", "--seq-lens", "16",
                "--gen-tokens", "8", "--markdown", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(out.read_text(), "transformer")
    _assert_headed(section, "transformer.py --quick")
    assert re.search(r"\| 16 \| [\d.]+ \| [\d.]+ \|", section), section
    assert "| seqlab, KV cache |" in section
    proc = _run("transformer.py", "--quick", "--device", "cpu", "--batch", "2", "--seq-lens", "16",
                "--precision", "bf16-mixed", "--markdown", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(out.read_text(), "transformer-bf16")
    _assert_headed(section, "transformer.py --quick")
    assert "under torch.autocast in bfloat16" in section and re.search(r"\| 16 \| [\d.]+ \| [\d.]+ \|", section)
    assert "KV cache" not in section and "| seqlab, KV cache |" in _section(out.read_text(), "transformer")


def test_applications_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = _run("applications.py", "--what", "dates", "--budget", "1", "--json", str(tmp_path / "a.json"),
                "--markdown", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(out.read_text(), "applications")
    _assert_headed(section, "applications.py --what dates --budget 1")
    assert "| dates gru bahdanau |" in section and "| dates gru none |" in section


def test_applications_numbers_smoke(tmp_path, monkeypatch, capsys):
    """--what numbers end to end on a tiny budget and a small test split: a seqlab model and the
    tutorial peer train on the same pairs, are scored on the same test pairs, and the table and
    JSON carry what the brief asks for (exact match, BLEU, CER, greedy and beam, tokens/s)."""
    import importlib.util
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as for a script: its folder holds _results.py
    spec = importlib.util.spec_from_file_location("applications_bench", ROOT / "benchmarks" / "applications.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "NUMBERS_DATA", {"task": "numbers", "n_train": 300, "n_valid": 20, "n_test": 40})
    out_json = tmp_path / "numbers.json"
    assert bench.main(["--what", "numbers", "--budget", "2", "--clock", "cpu", "--threads", "1",
                       "--numbers-models", "gru-luong", "--numbers-eval-every", "5", "--json", str(out_json), "--runs", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "| program | model | params |" in printed and "| peer | tutorial-peer |" in printed
    assert "validation exact match" in printed and "| 2 s |" in printed
    result = json.loads(out_json.read_text())
    assert result["clock"] == "cpu"
    rows = {r["model"]: r for r in result["results"]}
    assert set(rows) == {"gru-luong", "tutorial-peer"}
    for r in rows.values():
        assert r["steps"] > 0 and r["parameters"] > 0 and r["tokens_per_s"] > 0 and r["pairs_per_s"] > 0
        assert 0.0 < r["train_s"] < 30.0  # counted on the CPU clock: the budget plus at most a step
        assert r["metrics"]["examples"] == 40.0
        assert 0.0 <= r["metrics"]["exact_match"] <= 1.0 and 0.0 <= r["metrics"]["bleu"] <= 100.0
        # the curve: validation scores every 5 steps, on a clock that only moves forward
        steps = [c["step"] for c in r["curve"]]
        assert steps and all(s % 5 == 0 for s in steps if s != r["steps"]) and steps == sorted(steps)
        assert all(0.0 <= c["exact_match"] <= 1.0 for c in r["curve"])
        assert [c["train_time"] for c in r["curve"]] == sorted(c["train_time"] for c in r["curve"])
    # the peer trains until its budget is spent (seqlab may stop a little early, at its planned step count)
    assert rows["tutorial-peer"]["train_s"] >= 2.0 and rows["gru-luong"]["stopped"] in ("max_time", "max_steps")
    assert rows["gru-luong"]["settings"]["n_train"] == 300 and rows["tutorial-peer"]["settings"]["n_train"] == 300
    assert rows["gru-luong"]["beam_metrics"]["examples"] == 40.0 and rows["tutorial-peer"]["beam_metrics"] is None
    assert rows["gru-luong"]["settings"]["clock"] == "cpu" and rows["gru-luong"]["settings"]["max_time"] == 2.0


def test_peers_smoke_and_merge(tmp_path):
    """peers.py trains both peers and a seqlab model on the same split for a tiny budget, then --merge
    joins two such runs into one table, plot and RESULTS.md section with the loss ratio to each peer."""
    small = ["--chars", "20000", "--budget", "1.5", "--clock", "cpu", "--threads", "1", "--evals", "2",
             "--params", "20000"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    proc = _run("peers.py", *small, "--models", "lstm-peer,gpt-peer", "--json", str(first),
                "--plot", str(tmp_path / "a.png"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run("peers.py", *small, "--models", "lstm,transformer", "--set", "hidden_size=16",
                "--set", "embed_dim=16", "--set", "num_layers=1", "--json", str(second),
                "--plot", str(tmp_path / "b.png"), "--runs", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in (first, second):
        for name, r in json.loads(path.read_text())["results"].items():
            assert r["params"] > 0 and r["tokens_per_s"] > 0 and math.isfinite(r["final"]), name
            times = [t for t, _ in r["curve"]]  # a seqlab run this short may score only its best checkpoint
            assert len(times) >= (2 if name.endswith("-peer") else 1) and times == sorted(times), (name, r["curve"])
    md = tmp_path / "RESULTS.md"
    proc = _run("peers.py", "--merge", str(first), str(second), "--json", str(tmp_path / "all.json"),
                "--plot", str(tmp_path / "all.png"), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _section(md.read_text(), "peers")
    _assert_headed(section, "peers.py --merge")
    assert "(1 thread)" in section  # the runs' threads, not the merging process's
    ratios = dict(re.findall(r"^\| (\w[\w-]*) \|.*\| ([0-9.]+x \w+-peer)[^|]* \|$", section, flags=re.M))
    assert set(ratios) == {"lstm", "transformer"}, section
    assert ratios["lstm"].endswith("lstm-peer") and ratios["transformer"].endswith("gpt-peer")
    # the transformer and gpt-peer are also compared under each shared scoring
    shared = r"^\| transformer \|.*; both in non-overlapping windows: [0-9.]+x; both in windows sliding"
    assert re.search(shared, section, flags=re.M), section
    assert (tmp_path / "all.png").stat().st_size > 0
    proc = _run("peers.py", "--merge", str(first), str(tmp_path / "missing.json"))
    assert proc.returncode != 0 and "missing.json" in proc.stderr
