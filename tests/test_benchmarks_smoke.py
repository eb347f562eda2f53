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
