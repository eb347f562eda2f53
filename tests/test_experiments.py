"""seqlab.experiments: task losses against their baselines, parameter matching, gradient flow against
the closed form, a tiny compare grid (every file and section), resume, the claims logic, explain."""
import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.data import COPY_BLANK, Vocab, adding_baseline, copy_memory_baseline
from seqlab.experiments import gradflow
from seqlab.experiments.cli import add_compare_parser, add_explain_parser
from seqlab.experiments.compare import CompareConfig, config_from_args, run_compare
from seqlab.experiments.explain import ExplainError, activations, load_lm_run, render_page, write_page
from seqlab.experiments.report import claims
from seqlab.experiments import tasks
from seqlab.experiments.tasks import (ARCHS, MemoryBatches, MemoryConfig, MemoryModel, build_memory_model,
                                      count_parameters, evaluate, is_solved, make_batch, matched_width, task_loss,
                                      train_memory)

# ----------------------------------------------------------------------------
# Tasks: the model-facing batches and losses


def test_copy_batch_is_one_hot_of_the_generator_by_hand():
    x, y = make_batch("copy", 2, 3, seed=0)
    assert x.shape == (2, 23, 10) and x.dtype == torch.float32 and y.shape == (2, 23)
    sym = x.argmax(-1)  # (2, 23)
    for row_x, row_y in zip(sym.tolist(), y.tolist()):
        s = row_x[:10]
        assert row_x == s + [0, 0, 9] + [0] * 10
        assert row_y == [0] * 13 + s
    assert torch.equal(x.sum(-1), torch.ones(2, 23))  # exactly one hot


def test_copy_loss_of_the_memoryless_strategy_is_the_baseline():
    T = 17
    x, y = make_batch("copy", 500, T, seed=1)
    logits = torch.full((500, T + 20, 10), -1e9)
    logits[:, : T + 10, COPY_BLANK] = 0.0   # blank with certainty until the recall phase
    logits[:, T + 10:, 1:9] = 0.0           # then uniform over the 8 symbols
    assert task_loss("copy", logits, y).item() == pytest.approx(copy_memory_baseline(T), rel=1e-5)
    assert copy_memory_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))
    # the recall phase scored by evaluate(): a perfect model gets accuracy 1 and counts as solved
    perfect = F.one_hot(y, 10).float() * 50
    model = MemoryModel("rnn", 10, 10, 4)
    model.forward = lambda _x: perfect  # a stand-in with the perfect outputs
    m = evaluate(model, "copy", x, y)
    assert m["accuracy"] == 1.0 and is_solved("copy", m)
    assert not is_solved("copy", {"accuracy": 0.989})


def test_adding_loss_reads_the_last_step_and_predicting_one_is_the_baseline():
    x, y = make_batch("adding", 4000, 9, seed=2)
    out = torch.ones(4000, 9, 1)
    out[:, :-1] = 123.0  # anything before the last step must not count
    assert task_loss("adding", out, y).item() == pytest.approx((y - 1).pow(2).mean().item(), rel=1e-6)
    assert task_loss("adding", out, y).item() == pytest.approx(adding_baseline(), abs=0.015)  # 1/6 within 5 sd
    assert is_solved("adding", {"mse": 0.01}) and not is_solved("adding", {"mse": 0.0101})


@pytest.mark.parametrize("arch", ARCHS)
def test_matched_width_is_the_closest_parameter_count(arch):
    target = 3001  # prime: no width lands on it by accident
    w = matched_width(arch, "copy", target)
    step = 4 if arch == "transformer" else 1

    def params(width):
        return count_parameters(MemoryModel(arch, 10, 10, width))

    assert w % step == 0
    for other in (w - step, w + step):
        if other >= step:
            assert abs(params(w) - target) <= abs(params(other) - target)
    model = build_memory_model(MemoryConfig("copy", arch, 5, target_params=target))
    assert model(make_batch("copy", 2, 5, seed=0)[0]).shape == (2, 25, 10)


def test_memory_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown MemoryConfig keys"):
        MemoryConfig.from_dict({"task": "copy", "arch": "rnn", "T": 5, "budjet": 1})
    with pytest.raises(ValueError, match="arch should be one of"):
        MemoryConfig("copy", "cnn", 5)
    with pytest.raises(ValueError, match="T should be >= 2, got 1"):
        MemoryConfig("copy", "rnn", 1)


# ----------------------------------------------------------------------------
# Training a cell (through seqlab.train.Trainer)


def test_memory_batches_resume_the_same_stream():
    a = MemoryBatches("copy", 3, 4, seed=7)
    it = iter(a)
    first = next(it)
    assert torch.equal(first[0], make_batch("copy", 3, 4, seed=7)[0])  # the generator's first draw
    state = json.loads(json.dumps(a.state_dict()))  # JSON, as in a checkpoint
    expect = [next(it) for _ in range(2)]
    b = MemoryBatches("copy", 3, 4, seed=99)
    b.load_state_dict(state)
    got = [next(iter(b)) for _ in range(2)]
    for (x, y), (x2, y2) in zip(expect, got):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="expected a dict holding 'generator'"):
        b.load_state_dict({"position": 3})


def test_train_memory_record_and_ticks(tmp_path):
    ticks = []
    cfg = MemoryConfig("adding", "gru", 5, target_params=300, budget=0.3, eval_every=4, stop_when_solved=False)
    res = train_memory(cfg, run_dir=tmp_path, tick=ticks.append)
    rec = res.record
    assert rec["stopped"] == "max_time" and rec["train_time"] >= 0.3 and rec["steps"] >= 1
    h = rec["history"]
    assert h[0]["step"] == 0 and h[0]["time"] == 0.0 and h[-1]["step"] == rec["steps"]
    assert [x["step"] for x in h[1:-1]] == list(range(4, rec["steps"], 4))
    assert rec["final"] == {k: h[-1][k] for k in ("loss", "mse")}
    assert rec["best"]["loss"] == min(x["loss"] for x in h)
    assert sum(ticks) == pytest.approx(rec["train_time"], abs=1e-3)
    assert rec["params"] == count_parameters(res.model) and rec["config"] == cfg.to_dict()
    # one checkpoint, at the end, that build_memory_model can read back
    from seqlab.train import load_checkpoint

    ckpt = load_checkpoint(tmp_path, model_class="MemoryModel")
    assert ckpt.step == rec["steps"] and len(list(tmp_path.glob("ckpt-*"))) == 1
    again = build_memory_model(MemoryConfig.from_dict(ckpt.config["memory"]))
    again.load_state_dict(ckpt.model_state)
    x, _ = make_batch("adding", 2, 5, seed=1)
    assert torch.equal(again(x), res.model(x))


def test_train_memory_stops_when_solved(monkeypatch):
    monkeypatch.setattr(tasks, "is_solved", lambda task, m: True)  # every evaluation counts as solved
    rec = train_memory(MemoryConfig("copy", "rnn", 3, target_params=300, budget=30.0, eval_every=3)).record
    assert rec["stopped"] == "goal" and rec["steps"] == 3 and rec["solved"]
    assert rec["solved_at"] == {"step": 3, "time": rec["train_time"]}  # the first trained evaluation
    assert len(rec["history"]) == 2  # step 0 and the evaluation that reached the goal


# ----------------------------------------------------------------------------
# Gradient flow


def test_linear_rnn_gradients_match_the_closed_form():
    """h_t = W h_{t-1} + U x_t, L = sum_s <G_s, h_s>: dL/dh_t = sum_{s>=t} (W^T)^{s-t} G_s."""
    torch.manual_seed(0)
    T, B, H, I = 7, 3, 5, 2
    W = torch.randn(H, H, dtype=torch.float64) * 0.6
    U = torch.randn(H, I, dtype=torch.float64)
    xs = torch.randn(T, B, I, dtype=torch.float64)
    G = torch.randn(T, B, H, dtype=torch.float64)

    def step(x_t, h):
        h = h @ W.T + x_t @ U.T  # (B, H)
        return h, h

    def loss_fn(outs):
        return sum((h * G[s]).sum() for s, h in enumerate(outs))

    got = gradflow.hidden_gradients(step, xs, torch.zeros(B, H, dtype=torch.float64), loss_fn)
    for t in range(T):
        # row form: dL/dh_t (B, H) = sum_s G_s @ W^(s-t)
        expect = sum(G[s] @ torch.linalg.matrix_power(W, s - t) for s in range(t, T))
        assert got[t] == pytest.approx(float(expect.norm() / B ** 0.5), rel=1e-10)
    # loss at the last step only: exactly (W^T)^(T-t) dL/dh_T, a geometric profile for W = a * I
    a = 0.5
    only_last = gradflow.hidden_gradients(lambda x, h: ((h * a + x @ U.T),) * 2, xs,
                                          torch.zeros(B, H, dtype=torch.float64), lambda outs: (outs[-1] * G[0]).sum())
    d = gradflow.by_distance(only_last)
    for k in range(T):
        assert d[k] == pytest.approx(d[0] * a ** k, rel=1e-10)
    assert gradflow.decay_ratio(only_last) == pytest.approx(a ** (T - 1), rel=1e-10)


@pytest.mark.parametrize("arch", ["rnn", "gru", "lstm"])
def test_recurrent_profile_uses_the_total_derivative(arch):
    """The last step's gradient is the head's alone; for the tanh RNN every step follows
    dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) W_hh (the loss reads only the last step)."""
    torch.manual_seed(1)
    model = build_memory_model(MemoryConfig("adding", arch, 6, target_params=300)).double()
    x, y = make_batch("adding", 4, 6, seed=3)
    x, y = x.double(), y.double()
    prof = gradflow.recurrent_profile(model, "adding", x, y)
    assert len(prof) == 6
    h = model.run_body(x)  # (B, L, H)
    h.retain_grad()
    task_loss("adding", model.head(h), y).backward()
    g = h.grad[:, -1]  # (B, H): nothing comes after the last step
    if arch != "lstm":  # the LSTM's state also holds c, whose gradient is counted too
        assert prof[-1] == pytest.approx(float(g.norm() / 2), rel=1e-9)
    if arch == "rnn":
        W = model.body.weight_hh_l0.detach()
        hs = h.detach()
        for t in range(5, 0, -1):
            g = (g * (1 - hs[:, t] ** 2)) @ W
            assert prof[t - 1] == pytest.approx(float(g.norm() / 2), rel=1e-8)


def test_spectral_scaling_shows_decay_below_one():
    torch.manual_seed(0)
    model = build_memory_model(MemoryConfig("adding", "rnn", 30, target_params=2000))
    old = gradflow.scale_spectral_norm(model, 0.5)
    assert old > 0
    assert float(torch.linalg.matrix_norm(model.body.weight_hh_l0.detach(), ord=2)) == pytest.approx(0.5, rel=1e-4)
    prof = gradflow.gradient_profile(model, "adding", 30, batch_size=4)
    assert gradflow.decay_ratio(prof) < 0.5 ** 20  # |tanh'| <= 1, so at least as fast as 0.5^distance
    with pytest.raises(ValueError, match="plain RNN, got arch 'gru'"):
        gradflow.scale_spectral_norm(build_memory_model(MemoryConfig("adding", "gru", 5, target_params=500)), 0.5)


# ----------------------------------------------------------------------------
# The compare grid (tiny), its files and sections, resume


def _tiny(**kw) -> CompareConfig:
    base = dict(archs=("rnn", "lstm"), copy_T=(10,), adding_T=(10,), budget=0.3, lm_budget=0.3,
                speed_lengths=(32, 48), speed_batch=2, lm_params=(8000,), lm_train_chars=20_000,
                lm_valid_chars=600, gradflow_T=10, gradflow_sigmas=(0.5, 3.0), speed_repeats=1)
    base.update(kw)
    return CompareConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    first = run_compare(_tiny(), out, progress=False)
    return out, first


EXPECTED_KEYS = {"copy/rnn/T10", "copy/lstm/T10", "adding/rnn/T10", "adding/lstm/T10", "gradflow/rnn",
                 "gradflow/lstm", "gates/copy/lstm", "gates/adding/lstm", "speed/rnn", "speed/lstm",
                 "lm/rnn/P8000", "lm/lstm/P8000", "ablation/adding/lstm/T10"}


def test_tiny_compare_writes_every_file_and_section(tiny_run):
    out, first = tiny_run
    assert set(first["ran"]) == EXPECTED_KEYS and first["skipped"] == []
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == EXPECTED_KEYS
    for key, rec in results["cells"].items():
        assert "config" in rec and "finished_at" in rec, key
    mem = results["cells"]["copy/lstm/T10"]
    assert mem["config"]["seed"] == 0 and mem["config"]["forget_bias"] == 1.0
    assert results["cells"]["ablation/adding/lstm/T10"]["config"]["forget_bias"] is None
    assert mem["baseline"] == pytest.approx(copy_memory_baseline(10))
    assert results["cells"]["gradflow/rnn"]["trained"] is not None  # read from the saved adding model
    assert set(results["cells"]["gradflow/rnn"]["sigma"]) == {"0.5", "3.0"}
    assert results["profile"]["archs"] == ["rnn", "lstm"]
    md = (out / "report.md").read_text()
    for section in ("## The claims against the measurements", "## Set-up", "## Memory range", "### Copy memory",
                    "### Adding problem", "### Ablation: the LSTM's forget-gate bias", "## Gradient flow",
                    "## Speed and memory", "## Gates",
                    "## Character-level language modelling", "Bai, Kolter & Koltun (2018)"):
        assert section in md, section
    for plot in ("memory_copy", "memory_adding", "gradflow", "speed", "gates", "lm"):
        png = (out / "plots" / f"{plot}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{plot}.png" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page  # self-contained


@pytest.mark.parametrize("eval_every", [0, 3])
def test_lm_cell_curve_is_bpc_against_training_time(eval_every):
    from seqlab.experiments.lm import LMCellConfig, train_lm

    ticks = []
    cfg = LMCellConfig(arch="gru", target_params=3000, context=16, batch_size=4, budget=0.4, eval_every=eval_every,
                       eval_points=4, train_chars=5000, valid_chars=200)
    rec = train_lm(cfg, tick=ticks.append)
    h = rec["history"]
    assert h[0] == {"step": 0, "time": 0.0, "bpc": h[0]["bpc"]} and h[-1]["step"] == rec["steps"]
    assert [x["step"] for x in h] == sorted({x["step"] for x in h})  # one point per evaluation, in order
    assert [x["time"] for x in h] == sorted(x["time"] for x in h) and h[-1]["time"] == rec["train_time"]
    # the budget ends the run, or the schedule fitted to it does, a step or so earlier
    assert rec["train_time"] >= 0.4 if rec["stopped"] == "max_time" else rec["stopped"] == "max_steps"
    # every eval_every steps (3, or chosen from the measured step time for about eval_points), and at the end
    assert rec["eval_every"] == (eval_every or rec["eval_every"]) >= 1
    assert [x["step"] for x in h[1:-1]] == list(range(rec["eval_every"], rec["steps"], rec["eval_every"]))
    assert all(x["bpc"] > 0 and x["train_bpc"] > 0 for x in h[1:])
    assert sum(ticks) == pytest.approx(rec["train_time"], abs=1e-3)
    assert rec["tokens_per_s"] > 0 and set(rec) >= {"config", "model_config", "params", "vocab_size", "best_bpc",
                                                    "final_bpc"}


def test_resume_skips_finished_cells_and_reruns_only_what_changed(tiny_run):
    out, _ = tiny_run
    before = json.loads((out / "results.json").read_text())["cells"]
    again = run_compare(_tiny(), out, progress=False, report=False)
    assert again["ran"] == [] and set(again["skipped"]) == EXPECTED_KEYS
    after = json.loads((out / "results.json").read_text())["cells"]
    assert {k: v["finished_at"] for k, v in after.items()} == {k: v["finished_at"] for k, v in before.items()}
    # an interrupted run: one cell missing from results.json
    data = json.loads((out / "results.json").read_text())
    del data["cells"]["speed/rnn"]
    (out / "results.json").write_text(json.dumps(data))
    third = run_compare(_tiny(), out, progress=False, report=False)
    assert third["ran"] == ["speed/rnn"]
    # a changed setting reruns only the cells it touches
    fourth = run_compare(_tiny(speed_batch=3), out, progress=False, report=False)
    assert sorted(fourth["ran"]) == ["speed/lstm", "speed/rnn"]


def _mem(solved: dict, task: str = "copy") -> dict:
    """Fake memory cells: {arch: {T: solved?}}."""
    cells = {}
    for arch, byT in solved.items():
        for T, ok in byT.items():
            cells[f"{task}/{arch}/T{T}"] = {"solved": ok, "solved_at": {"time": 1.0} if ok else None}
    return cells


def _verdict(cells: dict, which: str) -> dict:
    res = {"profile": {"archs": list(ARCHS), "threads": 1}, "cells": cells}
    return next(c for c in claims(res) if c.claim.startswith(which)).as_dict()


def test_claims_follow_the_numbers():
    short = _mem({"rnn": {10: True, 50: False}, "lstm": {10: True, 50: True}})
    assert _verdict(short, "A plain RNN")["verdict"] == "held"
    assert "rnn 10, lstm 50" in _verdict(short, "A plain RNN")["measured"]
    better = _mem({"rnn": {10: True, 50: True}, "lstm": {10: True, 50: False}})
    assert _verdict(better, "A plain RNN")["verdict"] == "did not hold"
    assert _verdict(better, "LSTM and GRU")["verdict"] == "did not hold"
    # when everyone solved every lag, the grid cannot tell them apart: no verdict either way
    tie = _mem({"rnn": {10: True}, "lstm": {10: True}, "transformer": {10: True}})
    assert _verdict(tie, "A plain RNN")["verdict"] == "not measured"
    assert _verdict(tie, "The Transformer captures")["verdict"] == "not measured"
    tr = _mem({"rnn": {10: True, 50: False}, "transformer": {10: False, 50: False}})
    assert _verdict(tr, "The Transformer captures")["verdict"] == "did not hold"
    assert _verdict({}, "GRU is a simpler")["verdict"] == "not measured"


# ----------------------------------------------------------------------------
# Command line


def _parser():
    p = argparse.ArgumentParser(prog="seqlab")
    sub = p.add_subparsers()
    add_compare_parser(sub)
    add_explain_parser(sub)
    return p


def test_compare_arguments_narrow_the_grid(capsys):
    p = _parser()
    cfg = config_from_args(p.parse_args(["compare", "--archs", "rnn,gru", "--tasks", "copy,speed", "--budget", "7"]))
    assert cfg.archs == ("rnn", "gru") and cfg.sections == ("copy", "speed") and cfg.budget == cfg.lm_budget == 7
    assert cfg.profile == "quick"
    full = config_from_args(p.parse_args(["compare", "--full"]))
    assert full.copy_T == (10, 25, 50, 100, 200, 500, 1000) and full.adding_T == (50, 100, 200, 600)
    with pytest.raises(ValueError, match=r"unknown CompareConfig keys \['budjet'\]"):
        CompareConfig.from_dict({"budjet": 3})
    args = p.parse_args(["compare", "--archs", "rnn,cnn", "--out", "unused"])
    assert args.func(args) == 2
    assert "expected archs from rnn,lstm,gru,transformer, got 'cnn'" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# explain


def _lm(arch: str, text: str, layers: int = 2):
    from seqlab.models import ModelConfig, build_model

    vocab = Vocab.build([text], "char")
    torch.manual_seed(0)
    extra = {"nhead": 1} if arch == "transformer" else {}
    model = build_model(ModelConfig(kind="lm", arch=arch, vocab_size=len(vocab), embed_dim=6, hidden_size=5,
                                    num_layers=layers, dropout=0.0, **extra))
    return model.eval(), vocab


TEXT = "if x < 3:\n    y = 'a&b'"


@pytest.mark.parametrize("arch,quantities", [("lstm", {"i", "f", "g", "o", "c", "h"}), ("gru", {"r", "z", "n", "h"}),
                                             ("rnn", {"h"})])
def test_explain_records_every_layer_unit_and_gate(arch, quantities):
    model, vocab = _lm(arch, TEXT)
    acts = activations(model, vocab, TEXT)
    assert acts["chars"] == list(TEXT) and len(acts["layers"]) == 2
    for layer in acts["layers"]:
        assert set(layer["values"]) == quantities
        for rows in layer["values"].values():
            assert len(rows) == 5 and all(len(r) == len(TEXT) for r in rows)
    # the values are those of the model reading EOS + text: the top layer's h is the stack output
    from seqlab.data import EOS

    with torch.no_grad():
        out, _ = model.encoder(torch.tensor([[EOS] + vocab.encode(TEXT)]))  # (1, T+1, H)
    assert acts["layers"][1]["values"]["h"][2] == pytest.approx(out[0, 1:, 2].tolist(), abs=1e-3)
    page = render_page(acts, layer=1, quantity="h", unit=4)
    assert page.count("<span>") == len(TEXT)
    assert "<span>&amp;</span>" in page and "<span>&lt;</span>" in page  # the text is escaped
    assert "http://" not in page and "https://" not in page


def test_explain_refuses_a_transformer_and_bad_choices():
    model, vocab = _lm("transformer", TEXT, layers=1)
    with pytest.raises(ExplainError, match="a transformer has no recurrent state or gates to show"):
        activations(model, vocab, TEXT)
    model, vocab = _lm("gru", TEXT)
    acts = activations(model, vocab, TEXT)
    with pytest.raises(ExplainError, match=r"expected --gate in \['h', 'n', 'r', 'z'\] for a gru layer, got 'f'"):
        render_page(acts, quantity="f")
    with pytest.raises(ExplainError, match=r"expected --unit in \[0, 4\], got 5"):
        render_page(acts, unit=5)
    with pytest.raises(ExplainError, match="non-empty"):
        activations(model, vocab, "")


def test_explain_command_reads_a_train_lm_run_directory(tmp_path, capsys):
    from seqlab.train.checkpoint import save_checkpoint

    model, vocab = _lm("lstm", TEXT)
    run = tmp_path / "run"
    # the layout of `seqlab train lm` (seqlab.apps): config["model"], extra["vocab"]["text"]
    save_checkpoint(run, step=3, model=model, config={"model_class": "LanguageModel", "kind": "lm",
                                                      "model": model.config.to_dict()},
                    extra={"vocab": {"text": vocab.to_dict()}})
    loaded, v2 = load_lm_run(run)
    assert v2 == vocab and loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    p = _parser()
    args = p.parse_args(["explain", str(run), "--text", "x = 3", "--out", str(tmp_path / "e.html"), "--gate", "f"])
    assert args.func(args) == 0
    assert (tmp_path / "e.html").read_text().count("<span>") == 5
    tmodel, tvocab = _lm("transformer", TEXT, layers=1)
    save_checkpoint(tmp_path / "trun", step=1, model=tmodel, config={"model_class": "LanguageModel", "kind": "lm",
                                                                      "model": tmodel.config.to_dict()},
                    extra={"vocab": {"text": tvocab.to_dict()}})
    args = p.parse_args(["explain", str(tmp_path / "trun"), "--text", "x"])
    assert args.func(args) == 2
    assert "transformer has no recurrent state" in capsys.readouterr().err
    assert write_page(model, vocab, "ab", tmp_path / "w.html").exists()


def test_reference_verdict_does_not_call_noise_at_the_baseline_better():
    from seqlab.experiments.report import _reference_verdict

    # adding T=600, baseline 1/6: 0.173 against the published 0.177 is noise at the baseline
    assert _reference_verdict(0.173, 0.177, 1 / 6).startswith("both at the memoryless baseline")
    assert _reference_verdict(0.0067, 5.3e-5, 1 / 6) == "not better than published"
    # copy T=1000, baseline 10 ln 8 / 1020 = 0.0204: 0.0169 learned something, the published 0.0197 did not
    assert _reference_verdict(0.0169, 0.0197, 0.0204) == "better than published"
    assert _reference_verdict(0.0742, 0.0202, 0.0204).startswith("worse than the memoryless baseline")
