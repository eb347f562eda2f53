"""The recurrent benchmark runs end to end (--quick), prints its table and writes valid JSON.

Timings are not asserted: they depend on the machine. What is asserted is
that every seqlab path the benchmark measures actually ran.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_recurrent_benchmark_quick(tmp_path):
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recurrent.py"), "--quick", "--threads", "1",
         "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cell | seqlab backend |" in proc.stdout
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    assert {r["cell"] for r in rows} == {"rnn", "gru", "lstm", "lstm+layer_norm", "lstm+recurrent_dropout",
                                         "lstm+zoneout"}
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


def test_applications_numbers_smoke(tmp_path, monkeypatch, capsys):
    """--what numbers end to end on a tiny budget and a small test split: a seqlab model and the
    tutorial peer train on the same pairs, are scored on the same test pairs, and the table and
    JSON carry what the brief asks for (exact match, BLEU, CER, greedy and beam, tokens/s)."""
    import importlib.util
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
