"""Runs that never lose work, and bad input that never shows a traceback.

* a table of bad inputs to every command: exit status 2, one line on stderr, no traceback;
* ``--force`` keeps the old run when the new one fails any check;
* one writer per run directory (a second gets exit 2 naming the first's pid);
* SIGINT / SIGTERM save a checkpoint and exit 130 / 143, and the resumed run ends with the
  weights of an uninterrupted one;
* ``--resume`` without ``latest`` finds the newest whole checkpoint and clears stale temporaries;
* a full disk mid-run is one line, and the last checkpoint survives;
* ``eval --json`` is strict JSON; warnings for prompt symbols and labels training never shows.
"""
import hashlib
import json
import math
import os
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import assert_one_line_error, run, seqlab_process
from seqlab.train.checkpoint import RunLock, latest_checkpoint, load_checkpoint

TINY = ["--arch", "gru", "--batch-size", "8", "--hidden-size", "8", "--num-layers", "1", "embed_dim=4",
        "warmup_steps=1", "eval_every=2", "log_every=1", "--quiet"]
LM = ["bptt=8", "eval_tokens=64", "eval_rows=2"]
LABELS = ("de", "en", "fr")


def _write_data(root):
    words = [f"{w}{i}" for i in range(40) for w in ("haus", "house", "maison")]
    (root / "cls.tsv").write_text("".join(f"{w}\t{LABELS[i % 3]}\n" for i, w in enumerate(words)), encoding="utf-8")
    (root / "lm.txt").write_text("".join(f"the line {i} says {'ab' * (i % 5)} hello\n" for i in range(80)),
                                 encoding="utf-8")
    (root / "tag.tsv").write_text("John flew\tB-PER O\nMary ran\tB-PER O\n", encoding="utf-8")
    (root / "long.tsv").write_text("a\tde\n" + "x" * 20_000 + "\ten\n", encoding="utf-8")
    (root / "cols.tsv").write_text("one\ttwo\tthree\n", encoding="utf-8")
    (root / "bad.txt").write_bytes(b"ok\n\xff\n")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / "data.csv").write_text("a,b\n", encoding="utf-8")
    (root / "bad.toml").write_text("lr = = 1\n", encoding="utf-8")
    (root / "a_file").write_text("not a directory\n", encoding="utf-8")
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("the user's\n", encoding="utf-8")
    (root / "emptydir").mkdir()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data files and one tiny trained lm run and classify run, for the whole file."""
    root = tmp_path_factory.mktemp("safety")
    _write_data(root)
    paths = {k: root / k for k in ("cls.tsv", "lm.txt", "tag.tsv", "long.tsv", "cols.tsv", "bad.txt", "empty.txt",
                                   "data.csv", "bad.toml", "a_file", "other", "emptydir")}
    for kind, data, extra in (("lm", paths["lm.txt"], LM), ("classify", paths["cls.tsv"], [])):
        out = root / f"run_{kind}"
        assert run(["train", kind, "--data", data, *TINY, "--max-steps", "4", "checkpoint_every=2", *extra,
                    "--out", out], _NoCapture()
                   )[0] == 0
        paths[kind] = out
    paths["root"] = root
    return paths


class _NoCapture:
    def readouterr(self):
        return "", ""


def _fmt(argv, env, tmp_path):
    names = {k.replace(".", "_"): v for k, v in env.items()}
    return [str(a).format(tmp=tmp_path, **names) for a in argv]


T = ["train", "lm", "--data", "{lm_txt}", *TINY, *LM, "--max-steps", "2", "--out", "{tmp}/new"]
C = ["train", "classify", "--data", "{cls_tsv}", *TINY, "--max-steps", "2", "--out", "{tmp}/new"]
BIG = "18446744073709551616"
CASES = [
    # train: settings, checked before any data is read
    (T + ["--seed", BIG], "TrainConfig.seed"),
    (T + ["seed=-1"], "TrainConfig.seed"),
    (T + [f"data_seed={BIG}"], "data_seed must be in"),
    (T + ["--max-steps", "-1"], "max_steps"),
    (T + ["lr=0"], "TrainConfig.lr"),
    (T + ["lr=nan"], "TrainConfig.lr"),
    (T + ["lr=inf"], "TrainConfig.lr"),
    (T + ["--batch-size", "0"], "batch_size"),
    (T + ["clock=moon"], "TrainConfig.clock"),
    (T + ["decay=bogus"], "TrainConfig.decay"),
    (T + ["min_lr_ratio=2"], "min_lr_ratio"),
    (T + ["max_time=inf"], "max_time"),
    (T + ["max_time=-1"], "max_time"),
    (T + ["--max-steps", "0"], "max_time > 0"),
    (T + ["clip_norm=-1"], "clip_norm"),
    (T + ["keep_checkpoints=0"], "keep_checkpoints"),
    (T + ["tensorboard=3"], "tensorboard"),
    (T + ["dropout=1.5"], "dropout"),
    (T + ["--hidden-size", "0"], "hidden_size"),
    (T + ["--num-layers", "0"], "num_layers"),
    (T + ["embed_dim=-3"], "embed_dim"),
    (T + ["vocab_size=10"], "vocab_size is set by the data"),
    (T + ["kind=tag"], "kind is set by the command"),
    (T + ["unknown_key=1"], "unknown setting 'unknown_key'"),
    (T + ["model.bogus=1"], "unknown setting 'bogus' in [model]"),
    (T + ["foo.bar=1"], "a group must be model, train or data"),
    (T + ["bptt=0"], "bptt must be >= 1"),
    (T + ["eval_rows=0"], "eval_rows must be >= 1"),
    (T + ["eval_tokens=-1"], "eval_tokens must be >= 0"),
    (T + ["level=byte"], "level must be 'char' or 'word'"),
    (T + ["min_freq=0"], "min_freq must be >= 1"),
    (T + ["max_vocab=0"], "max_vocab must be >= 1"),
    (T + ["max_line=0"], "max_line must be >= 1"),
    (T + ["n_train=0"], "n_train must be >= 1"),
    (T + ["lr=[1, 2]"], "TrainConfig.lr"),
    (T + ["bidirectional=maybe"], "bidirectional"),
    (T + ["zoneout=0.1", "--arch", "transformer"], "zoneout"),
    (T + ["--arch", "transformer", "bptt=64", "max_len=32"], "max_len >= bptt"),
    (T + ["arch=lstm"], "disagree"),
    (T + ["--resume", "--force"], "give --resume or --force, not both"),
    (["train", "lm", *TINY, "--task", "dates", "--out", "{tmp}/new"], "is a seq2seq task"),
    (["train", "lm", *TINY, "--task", "nope", "--out", "{tmp}/new"], "unknown task 'nope'"),
    (["train", "lm", *TINY, "--task", "stdlib", "--valid", "{lm_txt}", "--out", "{tmp}/new"],
     "--valid goes with --data"),
    (["train", "lm", *TINY, "--task", "stdlib", "--data", "{lm_txt}", "--out", "{tmp}/new"], "give --task or --data"),
    (["train", "lm", "--data", "{lm_txt}", "--quiet", "--out", "{tmp}/new"], "--arch is required"),
    (["train", "lm", "--data", "{lm_txt}", "--arch", "lstmm", "--out", "{tmp}/new"], "invalid choice: 'lstmm'"),
    (["train", "bogus", "--arch", "gru", "--out", "{tmp}/new"], "invalid choice: 'bogus'"),
    (T + ["stray"], "unrecognized argument 'stray'"),
    (T + ["--no-such-flag"], "unrecognized argument '--no-such-flag'"),
    (T + ["--config", "{tmp}/missing.toml"], "no such config file"),
    (T + ["--config", "{bad_toml}"], "invalid TOML"),
    (T + ["--config", "{empty_txt}"], "config file is empty"),
    # train: the output location, checked before the data is read
    (T[:-1] + ["{a_file}"], "is a file, expected a directory"),
    (T[:-1] + ["{a_file}/sub"], "cannot be created"),
    (T[:-1] + ["{other}"], "is not empty and holds no run"),
    (T[:-1] + ["{lm}"], "already holds a run"),
    (T[:-1] + ["{emptydir}", "--resume"], "holds no run to resume"),
    (["train", "classify", *TINY, "--resume", "--out", "{lm}"], "holds a lm run"),
    (["train", "lm", *TINY, "--arch", "lstm", "--resume", "--out", "{lm}"], "only training settings may change"),
    # train: data files
    (["train", "lm", *TINY, "--data", "{tmp}/missing.txt", "--out", "{tmp}/new"], "missing.txt: no such file"),
    (["train", "lm", *TINY, "--data", "{emptydir}", "--out", "{tmp}/new"], "is a directory, expected a file"),
    (["train", "lm", *TINY, "--data", "{empty_txt}", "--out", "{tmp}/new"], "file is empty"),
    (["train", "lm", *TINY, "--data", "{bad_txt}", "--out", "{tmp}/new"], "not valid UTF-8 at byte offset 3"),
    (["train", "lm", *TINY, *LM, "--data", "{lm_txt}", "max_line=10", "--out", "{tmp}/new"], "lm.txt:1: a line of"),
    (["train", "classify", *TINY, "--data", "{data_csv}", "--out", "{tmp}/new"], "cannot tell the file format"),
    (["train", "classify", *TINY, "--data", "{lm_txt}", "--out", "{tmp}/new"], "a plain-text file holds lm data"),
    (["train", "classify", *TINY, "--data", "{cols_tsv}", "--out", "{tmp}/new"], "expected 2 tab-separated columns"),
    (["train", "classify", *TINY, "--data", "{long_tsv}", "--out", "{tmp}/new"], "long.tsv:2: a line of 20,003"),
    (C + ["--valid", "{tag_tsv}"], "label(s) appears in the training data"),
    (C + ["--valid", "{tmp}/missing.tsv"], "missing.tsv: no such file"),
    (C + ["--test", "{lm_txt}"], "a plain-text file holds lm data"),
    # inference commands
    (["sample", "{lm}", "--seed", BIG], "--seed must be in [0, 2**32)"),
    (["sample", "{lm}", "--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["sample", "{lm}", "--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["sample", "{lm}", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["sample", "{lm}", "--temperature", "0"], "--temperature must be > 0"),
    (["sample", "{lm}", "--top-k", "0"], "--top-k must be >= 1"),
    (["sample", "{lm}", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["sample", "{lm}", "--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["sample", "{lm}", "--length", "0"], "--length must be >= 1"),
    (["sample", "{lm}", "--length", "x"], "invalid int value: 'x'"),
    (["sample", "{classify}"], "holds a classify model"),
    (["sample", "{tmp}/missing"], "no such directory"),
    (["sample", "{a_file}"], "names no checkpoint folder"),
    (["generate", "{lm}", "--condition", "x", "--seed", BIG], "--seed must be in [0, 2**32)"),
    (["generate", "{classify}", "--condition", "x"], "holds a classify model"),
    (["translate", "{lm}", "hello"], "holds a lm model"),
    (["tag", "{classify}", "hello"], "holds a classify model"),
    (["classify", "{lm}", "hello"], "holds a lm model"),
    (["eval", "{lm}", "--beam", "2"], "--beam is for seq2seq runs"),
    (["eval", "{emptydir}"], "holds no checkpoint"),
    (["eval", "{lm}", "--split", "dev"], "invalid choice: 'dev'"),
    (["compare", "--threads", "0", "--out", "{tmp}/cmp"], "--threads must be >= 1, got 0"),
    (["compare", "--out", "{a_file}"], "is a file, expected a results directory"),
    (["explain", "{lm}", "--text", "hello", "--out", "{a_file}"], "exists; give --force to overwrite it"),
    (["explain", "{lm}", "--text", "hello", "--out", "{emptydir}"], "is a directory, expected an HTML file name"),
    (["explain", "{lm}"], "expected --text TEXT or --text-file FILE"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input_is_one_line_with_status_2(env, tmp_path, capsys, argv, fragment):
    before = {p: sorted(os.listdir(p)) for p in (env["lm"], env["other"], env["emptydir"])}
    code, out, err = run(_fmt(argv, env, tmp_path), capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").glob("ckpt-*"))
    # nothing the user had was changed by a failing command
    assert {p: sorted(os.listdir(p)) for p in before} == before


def test_the_table_is_large():
    assert len(CASES) >= 60


# ----------------------------------------------------------------------------
# Damaged state: the checksum covers state.json and its vocabulary


def _rewrite_state(ckpt, edit, *, fix_manifest):
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    if fix_manifest:  # a deliberate edit: the checksum now agrees, the content must still be checked
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["sha256"]["state.json"] = hashlib.sha256((ckpt / "state.json").read_bytes()).hexdigest()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit,fix,fragment", [
    (lambda s: s.update(config="x"), False, "expected 'config' to be a JSON object"),
    (lambda s: s.update(config="x"), True, "expected 'config' to be a JSON object"),
    (lambda s: s["extra"]["vocab"]["text"]["itos"].pop(), False, "state.json: corrupted or truncated"),
    (lambda s: s["extra"]["vocab"]["text"]["itos"].pop(), True, "its vocabulary gives vocab_size="),
])
def test_damaged_state_is_found_when_loaded(env, tmp_path, capsys, edit, fix, fragment):
    copy = tmp_path / "run"
    shutil.copytree(env["lm"], copy)
    _rewrite_state(latest_checkpoint(copy), edit, fix_manifest=fix)
    code, _, err = run(["eval", copy], capsys)
    assert_one_line_error(code, err, fragment)


# ----------------------------------------------------------------------------
# --force keeps the old run until the new one is sure to start


def _weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


@pytest.mark.parametrize("bad", [["--valid", "{tmp}/typo.txt"], ["--seed", BIG], ["--data", "{empty_txt}"],
                                 ["max_line=10"], ["--arch", "transformer", "bptt=64", "max_len=32"]])
def test_force_keeps_the_old_run_when_the_new_one_fails(env, tmp_path, capsys, bad):
    copy = tmp_path / "run"
    shutil.copytree(env["lm"], copy)
    files = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    before = _weights(copy)
    argv = ["train", "lm", "--data", "{lm_txt}", *TINY, *LM, "--max-steps", "2", *bad, "--force", "--out", str(copy)]
    code, _, err = run(_fmt(argv, env, tmp_path), capsys)
    assert_one_line_error(code, err)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == files
    after = _weights(copy)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_force_replaces_the_run_once_the_new_one_starts(env, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(env["lm"], copy)
    (copy / ".ckpt-00000009-stale").mkdir()
    code, out, err = run(["train", "lm", "--data", env["lm.txt"], *TINY, *LM, "--max-steps", "1", "--force",
                          "--out", copy], capsys)
    assert code == 0, err
    assert sorted(p.name for p in copy.glob("ckpt-*")) == ["ckpt-00000001"]
    assert not (copy / ".ckpt-00000009-stale").exists()


# ----------------------------------------------------------------------------
# Resume without 'latest'; stale temporaries


def test_resume_without_latest_uses_the_newest_whole_checkpoint(env, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(env["classify"], copy)
    (copy / "latest").unlink()
    newest = sorted(copy.glob("ckpt-*"))[-1]
    (copy / ".ckpt-00000099-abc").mkdir()
    (copy / ".latest.x1y2.tmp").write_text("ckpt-00000099\n")
    code, out, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "6", "--resume",
                          "--out", copy], capsys)
    assert code == 0, err
    assert "stopped at step 6" in out
    assert "warning: --resume" in err and "'latest' is missing; resuming from ckpt-00000004" in err
    assert not (copy / ".ckpt-00000099-abc").exists() and not (copy / ".latest.x1y2.tmp").exists()
    assert load_checkpoint(copy).step == 6 and newest.name == "ckpt-00000004"


def test_resume_skips_a_damaged_newest_checkpoint(env, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(env["classify"], copy)
    (copy / "latest").unlink()
    newest = sorted(copy.glob("ckpt-*"))[-1]
    (newest / "model.safetensors").write_bytes(b"x")
    code, out, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "6", "--resume",
                          "--out", copy], capsys)
    assert code == 0, err  # ckpt-00000002 was whole: resumed from there, past the damaged one
    assert "resuming from ckpt-00000002" in err
    assert "stopped at step 6" in out and load_checkpoint(copy).step == 6


# ----------------------------------------------------------------------------
# One writer per run directory


def test_a_second_writer_gets_status_2_naming_the_holder(env, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(env["classify"], copy)
    lock = RunLock(copy).acquire()  # another open file description: flock refuses it like another process
    try:
        for extra in (["--resume"], ["--force"]):
            code, _, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "6", *extra,
                                "--out", copy], capsys)
            assert_one_line_error(code, err, f"pid {os.getpid()}", "is writing this run")
        assert load_checkpoint(copy).step == 4  # untouched
    finally:
        lock.release()


def _wait_for(predicate, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.returncode} {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


SLOW = ["train", "classify", *TINY, "--max-steps", "100000", "checkpoint_every=1", "eval_every=0"]


def test_two_writers_on_one_run_and_sigterm(env, tmp_path, capsys):
    out = tmp_path / "run"
    proc = seqlab_process(*SLOW, "--data", env["cls.tsv"], "--out", out)
    try:
        _wait_for(lambda: latest_checkpoint(out) is not None, proc)
        code, _, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "3", "--force",
                            "--out", out], capsys)
        assert_one_line_error(code, err, f"pid {proc.pid}")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    step = load_checkpoint(out).step
    assert f"interrupted at step {step}: saved; --resume to continue" in stderr
    assert json.loads((out / "metrics.json").read_text())["stopped"] == "interrupted"


def test_sigint_saves_and_the_resumed_run_equals_an_uninterrupted_one(env, tmp_path, capsys):
    total = 60
    common = ["--data", env["cls.tsv"], *TINY, "--max-steps", str(total), "eval_every=0", "warmup_steps=5"]
    out = tmp_path / "interrupted"
    proc = seqlab_process("train", "classify", *common, "checkpoint_every=1", "--out", out)
    try:
        _wait_for(lambda: latest_checkpoint(out) is not None, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    if proc.returncode == 0:  # pragma: no cover - the machine ran all steps before the signal landed
        pytest.skip("the run finished before SIGINT arrived")
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    stopped = load_checkpoint(out).step
    assert 0 < stopped < total
    assert f"interrupted at step {stopped}: saved; --resume to continue" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "interrupted" and metrics["step"] == stopped

    code, _, err = run(["train", "classify", *common, "checkpoint_every=1", "--resume", "--out", out], capsys)
    assert code == 0, err
    whole = tmp_path / "whole"
    code, _, err = run(["train", "classify", *common, "checkpoint_every=1", "--out", whole], capsys)
    assert code == 0, err
    a, b = _weights(out), _weights(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------
# A full disk mid-run; divergence


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(env, tmp_path, capsys, monkeypatch):
    import errno

    from seqlab.train import checkpoint as ck

    out = tmp_path / "run"
    real = ck.save_file
    calls = {"n": 0}

    def save_file(tensors, path):
        calls["n"] += 1
        if calls["n"] > 4:  # the third checkpoint (two files each) finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(tensors, path)

    monkeypatch.setattr(ck, "save_file", save_file)
    code, _, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "10",
                        "checkpoint_every=1", "eval_every=0", "keep_best=false", "--out", out], capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert load_checkpoint(out).step == 2
    assert not list(out.glob(".ckpt-*"))


def test_divergence_is_one_line(env, tmp_path, capsys):
    code, _, err = run(["train", "classify", "--data", env["cls.tsv"], *TINY, "--max-steps", "30", "lr=1e30",
                        "clip_norm=0", "warmup_steps=0", "eval_every=0", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "became", "Lower lr or clip_norm")


# ----------------------------------------------------------------------------
# Strict JSON and warnings


def test_eval_json_is_strict(env, capsys, monkeypatch):
    from seqlab.apps import LMApp

    real = LMApp.evaluate
    monkeypatch.setattr(LMApp, "evaluate", lambda self, *a, **k: {**real(self, *a, **k), "perplexity": math.inf,
                                                                   "odd": math.nan})
    code, out, err = run(["eval", env["lm"], "--json"], capsys)
    assert code == 0, err

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    doc = json.loads(out, parse_constant=refuse)
    assert doc["metrics"]["perplexity"] is None and doc["metrics"]["odd"] is None
    assert math.isfinite(doc["metrics"]["loss"])


def test_prompt_symbols_outside_the_vocabulary_are_a_warning(env, capsys):
    code, out, err = run(["sample", env["lm"], "--prompt", "the Ωψ", "--length", "3"], capsys)
    assert code == 0, err
    assert out.startswith("the Ωψ")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "'Ω'" in lines[0] and "<unk>" in lines[0], err


def test_labels_training_never_shows_are_a_warning(env, tmp_path, capsys):
    valid = tmp_path / "valid.tsv"
    valid.write_text("haus1\tde\nhaus2\tnl\n", encoding="utf-8")
    test = tmp_path / "test.tsv"
    test.write_text("haus3\tde\nhaus4\tpl\n", encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run(["train", "classify", "--data", env["cls.tsv"], "--valid", valid, "--test", test, *TINY,
                        "--max-steps", "2", "--out", out], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert any("valid.tsv" in w and "'nl'" in w for w in warnings), err
    assert any("test.tsv" in w and "'pl'" in w for w in warnings), err
    code, _, err = run(["eval", out, "--split", "test"], capsys)
    assert_one_line_error(code, err, "test.tsv", "unknown label 'pl'")


def test_a_second_sigint_exits_at_once_and_leaves_a_loadable_run(env, tmp_path):
    out = tmp_path / "run"
    proc = seqlab_process(*SLOW, "--data", env["cls.tsv"], "--out", out)
    try:
        _wait_for(lambda: latest_checkpoint(out) is not None, proc)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    load_checkpoint(out)  # whatever the second signal cut short, the newest checkpoint is whole
