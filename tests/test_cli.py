"""The `seqlab` command: train every kind on tiny settings, run its inference command on the
result, resume, read the user's own files, and turn every kind of bad input into one line on
stderr with exit status 2.

Training and most checks run in-process through ``main(argv)`` (one torch import for the whole
file); a few run as real subprocesses to check the exit status and that no traceback leaks.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_one_line_error, run
from seqlab.cli import main
from seqlab.train.checkpoint import best_checkpoint, latest_checkpoint, load_checkpoint

TINY = ["--arch", "gru", "--max-steps", "20", "--batch-size", "16", "--lr", "5e-3", "--hidden-size", "32",
        "--num-layers", "1", "embed_dim=16", "warmup_steps=2", "eval_every=10", "log_every=5", "--quiet"]
SIZES = {  # (data settings of each kind's default task)
    "lm": ["n_train=2", "n_valid=1", "n_test=1", "bptt=32"],
    "classify": ["n_train=300", "n_valid=30", "n_test=20"],
    "tag": ["n_train=200", "n_valid=20", "n_test=20"],
    "seq2seq": ["n_train=200", "n_valid=20", "n_test=20", "attention=bahdanau"],
    "generate": ["n_train=200", "n_valid=20", "n_test=20", "n_samples=10"],
}
# How far the training loss must fall between steps 5 and 20 (langid's 16 classes learn slowest).
FALL = {"lm": 0.9, "classify": 0.98, "tag": 0.9, "seq2seq": 0.9, "generate": 0.9}
INFER = {  # the inference command of each kind and what its output must look like
    "lm": (["sample", "{dir}", "--prompt", "def ", "--length", "20", "--seed", "1"], 1),
    "classify": (["classify", "{dir}", "vingt-trois", "Deutschland"], 2),
    "tag": (["tag", "{dir}", "John Smith flew to Paris ."], 1),
    "seq2seq": (["translate", "{dir}", "3 March 1999", "1999-03-03", "--beam", "2"], 2),
    "generate": (["generate", "{dir}", "--condition", "en_US", "--n", "3"], 3),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run of every kind (trained once for the whole file)."""
    root = tmp_path_factory.mktemp("runs")
    dirs = {}
    for kind in SIZES:
        d = root / kind
        assert main(["train", kind, *TINY, *SIZES[kind], "--out", str(d)]) == 0
        dirs[kind] = d
    return dirs


def _trainer_state(run_dir):
    return load_checkpoint(run_dir).state["extra"]["trainer"]


@pytest.mark.parametrize("kind", list(SIZES))
def test_train_writes_a_checkpoint_and_the_loss_falls(kind, runs):
    ckpt = load_checkpoint(runs[kind])
    assert ckpt.step == 20 and ckpt.config["kind"] == kind
    assert ckpt.config["model"]["hidden_size"] == 32 and ckpt.config["train"]["lr"] == 5e-3
    log = ckpt.state["extra"]["trainer"]["log"]
    assert [e["step"] for e in log] == [5, 10, 15, 20]
    assert log[-1]["loss"] < FALL[kind] * log[0]["loss"], [e["loss"] for e in log]
    metrics = json.loads((runs[kind] / "metrics.json").read_text())
    assert metrics["step"] == 20 and metrics["parameters"] > 0


@pytest.mark.parametrize("kind", list(SIZES))
def test_inference_command_runs_on_the_run(kind, runs, capsys):
    argv, n_lines = INFER[kind]
    code, out, err = run([a.format(dir=runs[kind]) for a in argv], capsys)
    assert code == 0, err
    lines = out.rstrip("\n").split("\n")
    assert len(lines) == n_lines, out
    if kind == "lm":
        assert lines[0].startswith("def ")
        assert run([a.format(dir=runs[kind]) for a in argv], capsys)[1] == out  # same seed, same text
    if kind == "classify":
        assert all(len(line.split("\t")) == 3 and line.endswith(t) for line, t in zip(lines, argv[2:]))
    if kind == "tag":
        assert [p.rsplit("/", 1)[0] for p in lines[0].split()] == "John Smith flew to Paris .".split()


@pytest.mark.parametrize("kind", list(SIZES))
def test_eval_json_parses(kind, runs, capsys):
    code, out, err = run(["eval", runs[kind], "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == kind and result["step"] == 20 and result["split"] == "test"
    assert result["metrics"]["loss"] > 0
    code, out, _ = run(["eval", runs[kind], "--split", "validation"], capsys)
    assert code == 0 and out.splitlines()[1].startswith("| metric")


@pytest.mark.parametrize("kind", ["lm", "classify"])
def test_the_best_checkpoint_is_kept_and_every_command_takes_it(kind, runs, capsys):
    """eval_every=10 over 20 steps: two evaluations; RUN/best names the better one."""
    from seqlab.apps import APPS

    history = _trainer_state(runs[kind])["history"]
    scores = [h[APPS[kind].monitor] for h in history]
    best = min(scores) if APPS[kind].mode == "min" else max(scores)
    best_step = history[scores.index(best)]["step"]  # the first of equal scores: only a strict gain replaces it
    metrics = json.loads((runs[kind] / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == str(runs[kind] / f"best-{best_step:08d}")
    code, out, err = run(["eval", runs[kind] / "best", "--json", "--split", "validation"], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == best_step
    argv, n_lines = INFER[kind]
    code, out, err = run([a.format(dir=runs[kind] / "best") for a in argv], capsys)
    assert code == 0 and len(out.rstrip("\n").split("\n")) == n_lines, err


def test_eval_seq2seq_uses_the_whole_split(runs, capsys):
    code, out, _ = run(["eval", runs["seq2seq"], "--json", "--split", "validation", "--beam", "2"], capsys)
    assert code == 0 and json.loads(out)["metrics"]["examples"] == 20


def test_eval_scores_a_language_model_with_and_without_its_cache(runs, capsys):
    d = runs["lm"]
    scores = {}
    for extra in ([], ["--cache", "0"], ["--cache", "5", "--cache-theta", "0.5", "--cache-lambda", "0.4"]):
        code, out, err = run(["eval", d, "--json", "--split", "validation", *extra], capsys)
        assert code == 0, err
        result = json.loads(out)
        scores[" ".join(extra)] = result["metrics"]["loss"]
        cache = "continuous cache of the last" in result["scoring"]
        assert cache == (extra != ["--cache", "0"]), result["scoring"]
    assert "theta=0.5, lambda=0.4" in result["scoring"]
    assert len(set(scores.values())) == 3, scores  # the run's cache (its default 2000), none, and another
    code, _, err = run(["eval", d, "--cache-lambda", "1"], capsys)
    assert code == 2 and "cache_lambda must be in [0, 1), got 1.0" in err
    code, _, err = run(["eval", runs["classify"], "--cache", "10"], capsys)
    assert code == 2 and "are for lm runs, got a classify run" in err


def test_resume_continues_the_step_count(tmp_path, capsys):
    d = tmp_path / "r"
    args = ["train", "classify", *TINY, *SIZES["classify"], "--out", d]
    assert run([*args, "--max-steps", "10"], capsys)[0] == 0
    assert load_checkpoint(d).step == 10
    code, out, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    state = _trainer_state(d)
    assert state["step"] == 20 and [e["step"] for e in state["log"]] == [5, 10, 15, 20]
    best_line = [line for line in out.splitlines() if line.startswith("best validation score")]
    assert best_line == [f"best validation score {state['best']:.4g}: {d / 'best'} "
                         f"({load_checkpoint(d / 'best').path.name})"], out
    # What the model is cannot change on resume; how long it trains can.
    code, _, err = run([*args, "--resume", "--max-steps", "30", "dropout=0.3"], capsys)
    assert_one_line_error(code, err, "only training settings may change", "dropout=0.3")
    assert load_checkpoint(d).step == 20


def test_out_holding_a_run_needs_resume_or_force(runs, tmp_path, capsys):
    d = tmp_path / "again"
    args = ["train", "classify", *TINY, "--max-steps", "2", *SIZES["classify"], "--out", d]
    assert run(args, capsys)[0] == 0
    before = latest_checkpoint(d)
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "already holds a run", "--resume", "--force")
    assert latest_checkpoint(d) == before
    code, _, err = run([*args, "--force", "--max-steps", "3"], capsys)
    assert code == 0, err
    assert load_checkpoint(d).step == 3 and not (d / "ckpt-00000002").exists()


def test_config_file_and_flags_take_priority_in_order(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nmax_steps = 3\nlr = 1e-3\n[model]\nhidden_size = 16\n")
    d = tmp_path / "run"
    args = ["train", "classify", "--arch", "lstm", "--config", cfg, "lr=4e-3", "--max-steps", "2",
            "embed_dim=8", "num_layers=1", "n_train=40", "n_valid=10", "--quiet", "--out", d]
    assert run(args, capsys)[0] == 0
    config = load_checkpoint(d).config
    assert config["train"]["max_steps"] == 2 and config["train"]["lr"] == 4e-3  # flag > key=value > file
    assert config["model"]["hidden_size"] == 16 and config["model"]["arch"] == "lstm"


# ----------------------------------------------------------------------------
# The user's own files


def test_user_tsv_and_jsonl_files_train_classify(tmp_path, capsys):
    words = ["un", "deux", "trois", "quatre", "one", "two", "three", "four"]
    rows = [(f"{w}{'s' * (i % 3)}", "fr" if k < 4 else "en") for i in range(20) for k, w in enumerate(words)]
    tsv, jsonl = tmp_path / "d.tsv", tmp_path / "d.jsonl"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    for f in (tsv, jsonl):
        d = tmp_path / f.suffix[1:]
        code, _, err = run(["train", "classify", "--data", f, *TINY, "--max-steps", "10", "--out", d], capsys)
        assert code == 0, err
        assert load_checkpoint(d).config["data"]["data"] == str(f.resolve())
        code, out, err = run(["classify", d, "deux"], capsys)
        assert code == 0 and out.split("\t")[0] in ("fr", "en")
    # The same file read two ways gives the same split, vocabulary and so the same model.
    a, b = load_checkpoint(tmp_path / "tsv"), load_checkpoint(tmp_path / "jsonl")
    assert a.state["extra"]["vocab"] == b.state["extra"]["vocab"]
    code, out, err = run(["eval", tmp_path / "tsv", "--json", "--split", "validation"], capsys)
    assert code == 0 and json.loads(out)["metrics"]["examples"] > 0


def test_user_jsonl_trains_tag(tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    names, places = ["Ann", "Bob", "Cy", "Dee"], ["Oslo", "Rome", "Lima"]
    with f.open("w") as fh:
        for i in range(80):
            toks = [names[i % 4], "went", "to", places[i % 3], "on", f"day{i}"]
            fh.write(json.dumps({"tokens": toks, "tags": ["B-PER", "O", "O", "B-LOC", "O", "O"]}) + "\n")
    d = tmp_path / "run"
    code, _, err = run(["train", "tag", "--data", f, *TINY, "--max-steps", "10", "--out", d], capsys)
    assert code == 0, err
    code, out, _ = run(["tag", d, "Bob went to Rome"], capsys)
    assert code == 0 and out.split()[0].startswith("Bob/")


def test_user_plain_text_trains_lm(tmp_path, capsys):
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(f"the cat sat on mat number {i}." for i in range(200)) + "\n", encoding="utf-8")
    d = tmp_path / "run"
    code, _, err = run(["train", "lm", "--data", f, *TINY, "bptt=16", "--out", d], capsys)
    assert code == 0, err
    log = _trainer_state(d)["log"]
    assert log[-1]["loss"] < log[0]["loss"]
    code, out, _ = run(["sample", d, "--prompt", "the ", "--length", "10", "--top-k", "5"], capsys)
    assert code == 0 and out.startswith("the ")


# ----------------------------------------------------------------------------
# Bad input: one line on stderr, status 2, no traceback


@pytest.mark.parametrize("content,fragments", [
    (None, ["missing.tsv", "no such file"]),
    (b"", ["file is empty"]),
    (b"abc\tx\nd\xffe\ty\n", ["not valid UTF-8 at byte offset 7", "line 2"]),
    (b"abc\tx\nonly one column\n", ["bad.tsv:2", "expected 2 tab-separated columns", "got 1"]),
])
def test_bad_data_files(tmp_path, capsys, content, fragments):
    f = tmp_path / ("missing.tsv" if content is None else "bad.tsv")
    if content is not None:
        f.write_bytes(content)
    code, _, err = run(["train", "classify", "--data", f, *TINY, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()


def test_malformed_jsonl_names_the_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    code, _, err = run(["train", "classify", "--data", f, *TINY, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "bad.jsonl:2", "invalid JSON")
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    code, _, err = run(["train", "classify", "--data", f, *TINY, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "bad.jsonl:2", "expected a JSON object with keys 'text' and 'label'",
                          "missing 'label'")


@pytest.mark.parametrize("argv,fragments", [
    (["train", "lm", "--task", "nope"], ["unknown task 'nope'", "expected one of"]),
    (["train", "lm", "--task", "dates"], ["task 'dates' is a seq2seq task, expected a lm task"]),
    (["train", "lm", "hiden_size=3"], ["unknown setting 'hiden_size'", "hidden_size"]),
    (["train", "lm", "vocab_size=3"], ["vocab_size is set by the data"]),
    (["train", "lm", "dropout=2"], ["dropout", "expected a probability", "got 2"]),
    (["train", "lm", "lr=fast"], ["TrainConfig.lr", "expected a finite number", "'fast'"]),
    (["train", "lm", "bptt=0"], ["bptt must be >= 1, got 0"]),
    (["train", "lm", "stray"], ["unrecognized argument 'stray'", "key=value"]),
    (["train", "tag", "level=char"], ["level must be 'word', got 'char'"]),
])
def test_bad_settings(tmp_path, capsys, argv, fragments):
    code, _, err = run([*argv, "--arch", "gru", "--quiet", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nlearning_rate = 1\n")
    code, _, err = run(["train", "lm", "--arch", "gru", "--config", cfg, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "unknown setting 'learning_rate' in [train]", "lr")


def test_directory_without_a_checkpoint(tmp_path, capsys):
    code, _, err = run(["eval", tmp_path], capsys)
    assert_one_line_error(code, err, str(tmp_path), "holds no checkpoint")
    code, _, err = run(["sample", tmp_path / "nope"], capsys)
    assert_one_line_error(code, err, "no such directory")
    code, _, err = run(["train", "classify", *TINY, "--resume", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "holds no run to resume")


def test_resume_of_a_run_stopped_before_its_first_checkpoint(runs, tmp_path, capsys):
    """Killed after the first evaluation wrote best-* but before the first ckpt-*: --resume says
    why it cannot continue and what is kept; --force starts again; the best weights still load."""
    d = tmp_path / "killed"
    shutil.copytree(runs["classify"], d)
    (d / "latest").unlink()
    for p in d.glob("ckpt-*"):
        shutil.rmtree(p)
    assert best_checkpoint(d) is not None and latest_checkpoint(d) is None
    args = ["train", "classify", *TINY, "--max-steps", "2", *SIZES["classify"], "--out", d]
    code, _, err = run([*args, "--resume"], capsys)
    assert_one_line_error(code, err, "stopped before its first checkpoint", str(d / "best"), "--force")
    code, _, err = run(["eval", d / "best"], capsys)
    assert code == 0, err
    code, _, err = run([*args, "--force"], capsys)
    assert code == 0, err
    assert latest_checkpoint(d) is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "state"])
def test_damaged_checkpoint(runs, tmp_path, capsys, damage):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(runs["classify"], d)
    ckpt = latest_checkpoint(d)
    if damage == "state":
        p = ckpt / "state.json"
        p.write_text(p.read_text()[:100])
        fragments = ["state.json", "corrupted"]
    else:
        p = ckpt / "model.safetensors"
        data = bytearray(p.read_bytes())
        p.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
        fragments = ["model.safetensors", "corrupted or truncated"]
    code, _, err = run(["classify", d, "hello"], capsys)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize("argv,fragments", [
    (["translate", "{lm}", "x"], ["holds a lm model", "`seqlab translate` needs a seq2seq model"]),
    (["sample", "{classify}"], ["holds a classify model", "needs a lm model"]),
    (["classify", "{tag}", "x"], ["holds a tag model", "needs a classify model"]),
    (["tag", "{seq2seq}", "x"], ["holds a seq2seq model", "needs a tag model"]),
    (["generate", "{classify}", "--condition", "x"], ["needs a generate model"]),
    (["generate", "{generate}", "--condition", "xx"], ["unknown label 'xx'", "expected one of 12", "en_US"]),
    (["sample", "{lm}", "--temperature", "0"], ["--temperature must be > 0, got 0.0"]),
    (["translate", "{seq2seq}", "x", "--beam", "0"], ["--beam must be >= 1, got 0"]),
    (["eval", "{classify}", "--beam", "2"], ["--beam is for seq2seq runs"]),
])
def test_wrong_kind_and_bad_inference_input(runs, capsys, argv, fragments):
    code, _, err = run([a.format(**runs) for a in argv], capsys)
    assert_one_line_error(code, err, *fragments)


# ----------------------------------------------------------------------------
# Real processes: exit status and no traceback


def _seqlab(*args, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "seqlab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("case", ["arch", "data", "kind", "label"])
def test_subprocess_errors_are_one_line_with_status_2(runs, tmp_path, case):
    if case == "arch":
        p = _seqlab("train", "lm", "--arch", "lstmm", "--out", tmp_path / "r")
        fragments = ["invalid choice: 'lstmm'", "'lstm'"]
    elif case == "data":
        f = tmp_path / "bad.tsv"
        f.write_bytes(b"\xff\xfe")
        p = _seqlab("train", "classify", "--data", f, "--arch", "gru", "--out", tmp_path / "r")
        fragments = ["bad.tsv", "not valid UTF-8 at byte offset 0"]
    elif case == "kind":
        p = _seqlab("translate", runs["lm"], "hello")
        fragments = ["holds a lm model"]
    else:
        p = _seqlab("generate", runs["generate"], "--condition", "xx")
        fragments = ["unknown label 'xx'"]
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), p.stderr


def test_console_script_info():
    exe = Path(sys.executable).with_name("seqlab")
    if not exe.exists():
        pytest.skip("the seqlab console script is not installed next to this python")
    p = subprocess.run([str(exe), "info"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("seqlab ")


def test_torchrun_trains_data_parallel(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    d = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "seqlab.cli", "train",
                        "classify", *TINY, "--max-steps", "4", "n_train=64", "n_valid=8", "--out", str(d)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    state = _trainer_state(d)
    assert state["step"] == 4 and state["world_size"] == 2
    assert p.stdout.count("stopped at step 4") == 1  # only rank 0 reports


def test_train_help_lists_every_setting_key():
    from seqlab.apps import APPS, setting_keys
    from seqlab.apps.base import DERIVED_MODEL_KEYS
    from seqlab.cli import build_parser

    epilog = build_parser()._subparsers._group_actions[0].choices["train"].epilog
    given_as_flags = {"arch", "task", "data", "valid", "test"}
    for kind in APPS:
        keys = [k for group in setting_keys(kind) for k in group]
        missing = [k for k in keys if k not in epilog and k not in DERIVED_MODEL_KEYS and k not in given_as_flags]
        assert not missing, (kind, missing)


def test_lm_resume_with_carried_state_equals_uninterrupted(tmp_path, capsys):
    # the LM carries its hidden state across windows; it restarts where checkpoints fall, so a
    # run stopped at a checkpoint and resumed ends with exactly the weights of an uninterrupted one
    from safetensors.torch import load_file

    # a constant rate after warm-up, so stopping at 5 of 12 steps does not change the schedule
    # and batch 2 of a 2-document stream, so an epoch spans many windows (the state is carried)
    args = ["train", "lm", *TINY, *SIZES["lm"], "checkpoint_every=5", "decay=constant", "--batch-size", "2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run([*args, "--max-steps", "12", "--out", whole], capsys)[0] == 0
    assert run([*args, "--max-steps", "5", "--out", part], capsys)[0] == 0
    code, _, err = run([*args, "--max-steps", "12", "--out", part, "--resume"], capsys)
    assert code == 0, err
    a = load_file(str(latest_checkpoint(whole) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(part) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["explain", "--help"]])
def test_help_does_not_import_torch(argv):
    """`seqlab --help` answers without importing torch (a 3 s import): the parser is torch-free."""
    code = ("import sys\nfrom seqlab.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("torch not imported"), proc.stdout[-500:]
