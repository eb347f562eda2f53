"""seqlab.train.loop and .schedule: exact resume, interruption, divergence, early stopping, schedule."""
import json
import math
import random
import time

import pytest
import torch
from torch import nn

import seqlab.nn as snn
from seqlab.data import BatchIterator, BPTTBatcher, pad_collate
from seqlab.train import (DivergenceError, TrainConfig, Trainer, WarmupDecay, WarmupDecayLR, best_checkpoint,
                          latest_checkpoint, load_checkpoint)
from seqlab.train.loop import native_bf16, resolve_precision

V = 11
N = 4  # checkpoint interval; runs are 2N steps


class TinyLM(nn.Module):
    """Embedding -> seqlab GRU -> dropout -> linear: small, but with dropout so RNG restore matters."""

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.embed = nn.Embedding(V, 6, padding_idx=0)
        self.rnn = snn.GRU(6, 8, batch_first=True, backend="fused")  # torch ops only: no C++ build in these tests
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(8, V)

    def forward(self, tokens):
        h, _ = self.rnn(self.embed(tokens))  # (B, T, H)
        return self.out(self.drop(h))  # (B, T, V)


def make_model(seed=0, dropout=0.3):
    torch.manual_seed(seed)
    return TinyLM(dropout)


def make_data(n=23, seed=5):
    rng = random.Random(seed)
    return [[rng.randrange(1, V) for _ in range(rng.randrange(3, 8))] for _ in range(n)]


DATA = make_data()
VALID = make_data(6, seed=9)


def lm_loss(model, batch):
    """Next-token cross entropy summed over real (non-padding) targets."""
    padded, _ = pad_collate(batch)  # (B, L)
    x, y = padded[:, :-1], padded[:, 1:]
    logits = model(x)  # (B, L-1, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=0, reduction="sum")
    return loss, int((y != 0).sum())


def lm_eval(model):
    loss, count = lm_loss(model, VALID)
    return {"loss": float(loss) / count}


def make_trainer(tmp, model=None, *, loss_fn=lm_loss, evaluate=lm_eval, batches=None, monitor="loss", mode="min",
                 stop_when=None, **cfg):
    base = dict(max_steps=2 * N, lr=1e-2, warmup_steps=2, checkpoint_every=N, eval_every=3, log_every=1,
                seed=3)
    base.update(cfg)
    return Trainer(model if model is not None else make_model(), TrainConfig(**base),
                   batches=batches if batches is not None else BatchIterator(DATA, 5, shuffle=True, seed=1),
                   loss_fn=loss_fn, evaluate=evaluate, run_dir=tmp, config={"model_class": "TinyLM", "V": V},
                   extra=lambda: {"vocab": {"size": V}}, monitor=monitor, mode=mode, progress=False,
                   stop_when=stop_when)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b, atol=1e-7):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), k


def untimed(entries):
    return [{k: v for k, v in e.items() if k != "train_time"} for e in entries]


class Interrupt(Exception):
    pass


def interrupting(after_calls):
    """lm_loss that raises on its (after_calls + 1)-th call, as a crash would."""
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        if calls[0] > after_calls:
            raise Interrupt(f"killed at step {calls[0]}")
        return lm_loss(model, batch)
    return loss_fn


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The uninterrupted reference run: 2N steps."""
    tmp = tmp_path_factory.mktemp("a")
    tr = make_trainer(tmp)
    result = tr.fit()
    return weights(tr.model), result, tmp


def test_uninterrupted_run_trains_and_checkpoints(run_a):
    w, result, tmp = run_a
    assert result["step"] == 2 * N and result["stopped"] == "max_steps"
    assert [h["step"] for h in result["history"]] == [3, 6, 8]  # every eval_every, and at the end
    assert result["metrics"]["loss"] == result["history"][-1]["loss"]
    assert not any(torch.equal(w[k], make_model().state_dict()[k]) for k in w)  # it did train
    ck = load_checkpoint(tmp, model_class="TinyLM")
    assert ck.step == 2 * N and ck.config["V"] == V
    assert ck.state["extra"]["vocab"] == {"size": V}
    ts = ck.state["extra"]["trainer"]
    # 8 batches of an epoch of 5 (4 of 5 examples, then 3): epoch 1 has served 3 batches = 15 examples.
    assert ts["data"] == {"epoch": 1, "position": 15, "seed": 1, "size": len(DATA)}
    assert ts["train_config"]["max_steps"] == 2 * N and ts["metrics"] == result["metrics"]
    assert_same(ck.model_state, w, atol=0)
    assert sorted(p.name for p in tmp.glob("ckpt-*")) == ["ckpt-00000004", "ckpt-00000008"]


@pytest.mark.parametrize("killed_after", [N, N + 2])
def test_resume_after_interruption_ends_with_the_same_weights(run_a, tmp_path, killed_after):
    w_a, result_a, _ = run_a
    with pytest.raises(Interrupt):
        make_trainer(tmp_path, loss_fn=interrupting(killed_after)).fit()
    ck = load_checkpoint(tmp_path, model_class="TinyLM")  # the latest checkpoint is whole and loadable
    assert ck.step == N
    # A new process: a differently initialised model, a fresh iterator; resume restores everything.
    tr = make_trainer(tmp_path, model=make_model(seed=123))
    result = tr.fit(resume=True)
    assert result["step"] == 2 * N
    assert_same(weights(tr.model), w_a, atol=0)  # bitwise on the CPU
    assert untimed(result["history"]) == untimed(result_a["history"])  # train_time is a clock, not a result
    assert [e["loss"] for e in result["log"]] == [e["loss"] for e in result_a["log"]]


def test_resume_with_a_bptt_stream(tmp_path):
    """BPTTBatcher's column position resumes too (windows of a stream, the language-model case)."""
    stream = [t for seq in DATA for t in seq]

    def bptt_loss(model, window):
        x, y = window[:, :-1], window[:, 1:]  # (B, T) each
        logits = model(x)  # (B, T, V)
        return nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum"), y.numel()

    def run(run_dir, loss_fn, resume=False, seed=0):
        tr = make_trainer(run_dir, model=make_model(seed), loss_fn=loss_fn, evaluate=None, max_steps=9,
                          checkpoint_every=3, batches=BPTTBatcher(stream, 4, 5))
        return tr, tr.fit(resume=resume)
    full, _ = run(tmp_path / "a", bptt_loss)
    calls = [0]

    def crashing(model, window):
        calls[0] += 1
        if calls[0] == 5:
            raise Interrupt
        return bptt_loss(model, window)
    with pytest.raises(Interrupt):
        run(tmp_path / "b", crashing)
    resumed, result = run(tmp_path / "b", bptt_loss, resume=True, seed=1)
    assert result["step"] == 9 and resumed.batches.epoch == 1  # 30 tokens a row, windows of 5: 6 per epoch
    assert_same(weights(resumed.model), weights(full.model), atol=0)


def test_the_resume_test_can_fail(run_a, tmp_path):
    """Another dropout stream (seed) gives other weights, so equality above is not automatic."""
    tr = make_trainer(tmp_path, seed=4)
    tr.fit()
    assert not torch.allclose(weights(tr.model)["out.weight"], run_a[0]["out.weight"], atol=1e-4)


def test_max_time_stops_cleanly_and_resume_completes(run_a, tmp_path):
    result = make_trainer(tmp_path, max_time=1e-9).fit()
    assert result["stopped"] == "max_time" and result["step"] == 1
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001"
    assert result["history"][-1]["step"] == 1  # evaluated at the stop
    tr = make_trainer(tmp_path, model=make_model(seed=7))
    assert tr.fit(resume=True)["stopped"] == "max_steps"
    assert_same(weights(tr.model), run_a[0], atol=0)


def sleepy(fn, seconds):
    def wrapped(*args):
        time.sleep(seconds)
        return fn(*args)
    return wrapped


def test_max_time_counts_training_time_only(tmp_path):
    """Slow evaluations and checkpoints (0.15 s each, every 2nd step) do not eat a 0.2 s training budget
    of 0.02 s steps: a wall-clock budget would stop at step 2."""
    pause = 0.15
    tr = make_trainer(tmp_path, loss_fn=sleepy(lm_loss, 0.02), evaluate=sleepy(lm_eval, pause), max_steps=1000,
                      eval_every=2, checkpoint_every=2, max_time=0.2)
    tr.extra_fn = sleepy(tr.extra_fn, pause)
    start = time.perf_counter()
    result = tr.fit()
    wall = time.perf_counter() - start
    assert result["stopped"] == "max_time" and result["step"] >= 4
    assert result["train_time"] >= 0.2 and result["history"][-1]["train_time"] == result["train_time"]
    # One evaluation and one checkpoint every 2nd step and at the stop: none of them on the clock.
    assert result["train_time"] + 2 * pause * len(result["history"]) <= wall
    times = [h["train_time"] for h in result["history"]]
    assert times == sorted(times) and len(set(times)) == len(times) and times[0] >= 0.04


def test_history_and_log_carry_train_time_across_resume(tmp_path):
    slow = sleepy(lm_loss, 0.02)  # >= 0.02 s of training per step
    with pytest.raises(Interrupt):
        make_trainer(tmp_path, loss_fn=sleepy(interrupting(N + 2), 0.02)).fit()
    saved = load_checkpoint(tmp_path, model_class="TinyLM").state["extra"]["trainer"]
    assert saved["step"] == N and saved["train_time"] >= 0.02 * N
    result = make_trainer(tmp_path, loss_fn=slow).fit(resume=True)
    times = [h["train_time"] for h in result["history"]]
    assert [h["step"] for h in result["history"]] == [3, 6, 8]
    assert times[0] == saved["history"][0]["train_time"] < saved["train_time"] < times[1] < times[2]
    assert times[2] == result["train_time"] >= saved["train_time"] + 0.02 * N  # cumulative, not since the resume
    logged = [e["train_time"] for e in result["log"]]
    assert len(logged) == 2 * N and logged == sorted(logged) and logged[N - 1] == saved["train_time"]


def test_evaluation_does_not_disturb_the_training_rng(run_a, tmp_path):
    seen = []

    def noisy_eval(model):
        seen.append((model.training, torch.is_grad_enabled()))
        torch.rand(100), random.random()  # e.g. sampling during evaluation
        return lm_eval(model)
    tr = make_trainer(tmp_path, evaluate=noisy_eval, eval_every=1)
    tr.fit()
    assert seen == [(False, False)] * (2 * N)
    assert tr.model.training
    assert_same(weights(tr.model), run_a[0], atol=0)


def test_one_step_is_adamw_on_the_mean_loss(tmp_path):
    """The trainer minimises loss_sum / count (the count the loss_fn returns, padding excluded)."""
    batch = DATA[:5]

    class Fixed:
        def __iter__(self):
            yield batch

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass
    tr = make_trainer(tmp_path, model=make_model(dropout=0.0), batches=Fixed(), evaluate=None, max_steps=1,
                      warmup_steps=0, clip_norm=0.0, weight_decay=0.0)
    ref = make_model(dropout=0.0)
    tr.fit()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    loss, count = lm_loss(ref, batch)
    (loss / count).backward()
    opt.step()
    assert_same(weights(tr.model), weights(ref), atol=1e-7)
    assert math.isclose(tr.log[0]["loss"], float(loss.detach()) / count, rel_tol=1e-6)
    assert tr.log[0]["tokens_per_s"] > 0 and tr.log[0]["lr"] == 1e-2 and tr.log[0]["grad_norm"] > 0


def test_weight_decay_skips_vectors(tmp_path):
    tr = make_trainer(tmp_path, weight_decay=0.5)
    groups = tr.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() == 1 for p in groups[1]["params"])


def test_nan_loss_stops_with_the_step_and_no_checkpoint(tmp_path):
    def loss_fn(model, batch):
        loss, count = lm_loss(model, batch)
        return (loss * math.nan if tr.step == 2 else loss), count  # the 3rd update
    tr = make_trainer(tmp_path, loss_fn=loss_fn, checkpoint_every=1, evaluate=None)
    with pytest.raises(DivergenceError, match="nan at step 3"):
        tr.fit()
    assert latest_checkpoint(tmp_path).name == "ckpt-00000002"
    assert not (tmp_path / "ckpt-00000003").exists()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_inf_gradient_stops(tmp_path):
    def loss_fn(model, batch):
        loss, count = lm_loss(model, batch)
        return loss + 0 * model.out.bias.sum() * (math.inf if tr.step == 1 else 1.0), count
    tr = make_trainer(tmp_path, loss_fn=loss_fn, evaluate=None)
    before = weights(tr.model)
    with pytest.raises(DivergenceError, match="at step 2"):
        tr.fit()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert not torch.equal(before["out.weight"], tr.model.out.weight)  # step 1 did happen


def test_early_stopping_and_a_finished_run_stays_finished(tmp_path):
    scores = iter([5.0, 4.0, 4.5, 4.2, 3.0])  # best at the 2nd evaluation, then 2 without improvement

    def evaluate(model):
        return {"loss": next(scores), "acc": 0.5}
    tr = make_trainer(tmp_path, evaluate=evaluate, eval_every=1, patience=2, max_steps=20)
    result = tr.fit()
    assert result["stopped"] == "early_stop" and result["step"] == 4
    assert result["best"] == 4.0 and [h["loss"] for h in result["history"]] == [5.0, 4.0, 4.5, 4.2]
    assert latest_checkpoint(tmp_path).name == "ckpt-00000004"
    again = make_trainer(tmp_path, evaluate=evaluate, eval_every=1, patience=2, max_steps=20).fit(resume=True)
    assert again["stopped"] == "early_stop" and again["step"] == 4 and again["best"] == 4.0


def scripted_scores(*scores):
    """An evaluate function that returns ``scores`` in turn, and the weights it saw for each score."""
    it, seen = iter(scores), {}

    def evaluate(model):
        score = next(it)
        seen[score] = weights(model)
        return {"loss": score}
    return evaluate, seen


def test_best_checkpoint_holds_the_weights_of_the_best_evaluation(tmp_path):
    """Early stopping ends patience evaluations past the best; RUN/best keeps the best one's weights,
    replaced on each improvement (one best-* folder on disk)."""
    evaluate, seen = scripted_scores(5.0, 4.0, 4.5, 4.2)
    tr = make_trainer(tmp_path, evaluate=evaluate, eval_every=1, patience=2, max_steps=20, checkpoint_every=0)
    result = tr.fit()
    assert result["stopped"] == "early_stop" and result["step"] == 4
    assert result["best_checkpoint"] == str(tmp_path / "best-00000002")
    assert best_checkpoint(tmp_path).name == "best-00000002"
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-00000002"]  # step 1's was replaced
    for where in (tmp_path / "best", best_checkpoint(tmp_path)):
        ckpt = load_checkpoint(where, model_class="TinyLM")
        assert ckpt.step == 2 and ckpt.state["extra"]["vocab"] == {"size": V}
        assert_same(ckpt.model_state, seen[4.0], atol=0)
    assert not torch.equal(seen[4.0]["out.weight"], weights(tr.model)["out.weight"])  # the last ones differ
    assert load_checkpoint(tmp_path).step == 4  # the run directory still means the newest checkpoint


def test_best_checkpoint_survives_a_resume_and_is_replaced_when_beaten(tmp_path):
    evaluate, seen = scripted_scores(5.0, 4.0, 4.5, 4.2, 3.0, 3.5, 3.9)
    first = make_trainer(tmp_path, evaluate=evaluate, eval_every=1, max_steps=4).fit()
    assert first["best"] == 4.0 and best_checkpoint(tmp_path).name == "best-00000002"
    # the resumed run compares against the saved best score, not against its own first evaluation
    more = make_trainer(tmp_path, evaluate=evaluate, eval_every=1, max_steps=7).fit(resume=True)
    assert more["best"] == 3.0 and best_checkpoint(tmp_path).name == "best-00000005"
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-00000005"]
    assert_same(load_checkpoint(tmp_path / "best").model_state, seen[3.0], atol=0)


def test_keep_best_off_writes_no_best_checkpoint(tmp_path):
    result = make_trainer(tmp_path, eval_every=1, keep_best=False).fit()
    assert result["best_checkpoint"] is None and not list(tmp_path.glob("best*"))


def test_mode_max(tmp_path):
    scores = iter([0.1, 0.3, 0.2])
    tr = make_trainer(tmp_path, evaluate=lambda m: {"acc": next(scores)}, eval_every=1, patience=1, max_steps=9,
                      monitor="acc", mode="max")
    result = tr.fit()
    assert result["stopped"] == "early_stop" and result["step"] == 3 and result["best"] == 0.3


def test_stop_when_ends_the_run_at_the_goal_and_it_stays_finished(tmp_path):
    scores = iter([0.2, 0.5, 0.97, 0.99, 1.0])
    asked = []

    def goal(metrics):
        asked.append(metrics["acc"])
        return metrics["acc"] >= 0.95
    result = make_trainer(tmp_path, evaluate=lambda m: {"acc": next(scores)}, eval_every=2, max_steps=20,
                          monitor="acc", mode="max", checkpoint_every=0, stop_when=goal).fit()
    assert result["stopped"] == "goal" and result["step"] == 6 and asked == [0.2, 0.5, 0.97]
    assert [h["acc"] for h in result["history"]] == [0.2, 0.5, 0.97]  # no extra final evaluation
    assert latest_checkpoint(tmp_path).name == "ckpt-00000006"  # the end of the run is saved
    again = make_trainer(tmp_path, evaluate=lambda m: {"acc": 0.0}, eval_every=2, max_steps=20, monitor="acc",
                         mode="max").fit(resume=True)
    assert again["stopped"] == "goal" and again["step"] == 6  # a goal reached is not trained past
    # the final evaluation (here at max_steps) makes no decision: the goal is not asked there
    asked.clear()
    done = Trainer(make_model(), TrainConfig(max_steps=3, eval_every=2, log_every=1), batches=BatchIterator(DATA, 5),
                   loss_fn=lm_loss, evaluate=lambda m: {"loss": 1.0}, run_dir=tmp_path / "b",
                   config={"model_class": "TinyLM"}, progress=False,
                   stop_when=lambda m: asked.append(m["loss"]) or False).fit()
    assert done["stopped"] == "max_steps" and asked == [1.0] and len(done["history"]) == 2
    with pytest.raises(ValueError, match="stop_when needs periodic evaluations"):
        Trainer(make_model(), TrainConfig(), batches=BatchIterator(DATA, 2), loss_fn=lm_loss, run_dir=tmp_path,
                config={"model_class": "x"}, stop_when=lambda m: True)


def test_progress_bar_shows_loss_lr_and_tokens_per_second(tmp_path, capsys):
    tr = make_trainer(tmp_path, max_steps=3, evaluate=None)
    tr.progress = True
    tr.fit()
    err = capsys.readouterr().err
    assert "loss=" in err and "lr=" in err and "tok_s=" in err and "3/3" in err


def test_resume_without_checkpoint_warns_and_starts_fresh(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint"):
        assert make_trainer(tmp_path, max_steps=2, evaluate=None).fit(resume=True)["step"] == 2


def test_resume_with_more_steps_follows_the_new_schedule(tmp_path):
    make_trainer(tmp_path, max_steps=4, evaluate=None).fit()
    tr = make_trainer(tmp_path, max_steps=6, evaluate=None)
    tr.fit(resume=True)
    assert tr.step == 6
    assert tr.scheduler.schedule.total_steps == 6
    assert math.isclose(tr.scheduler.get_last_lr()[0], 1e-2 * WarmupDecay(2, 6, "cosine", 0.1)(6))


def test_bf16_mixed_runs_the_loss_under_autocast_and_resumes_exactly(tmp_path):
    seen = []

    def recording(loss_fn):
        def wrapped(model, batch):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return loss_fn(model, batch)
        return wrapped

    full = make_trainer(tmp_path / "a", loss_fn=recording(lm_loss), precision="bf16-mixed")
    full.fit()
    assert full.precision == "bf16-mixed" and set(seen) == {(True, torch.bfloat16)} and len(seen) == 2 * N
    assert all(p.dtype == torch.float32 for p in full.model.parameters())  # only the products are bfloat16
    with pytest.raises(Interrupt):
        make_trainer(tmp_path / "b", loss_fn=interrupting(N + 1), precision="bf16-mixed").fit()
    resumed = make_trainer(tmp_path / "b", model=make_model(seed=7), precision="bf16-mixed")
    resumed.fit(resume=True)
    assert_same(weights(resumed.model), weights(full.model), atol=0)
    seen.clear()
    fp32 = make_trainer(tmp_path / "c", loss_fn=recording(lm_loss))
    fp32.fit()
    assert set(seen) == {(False, torch.get_autocast_dtype("cpu"))}
    assert any(not torch.equal(u, v) for u, v in zip(weights(fp32.model).values(), weights(full.model).values()))


def test_auto_precision_is_bf16_mixed_where_the_cpu_multiplies_bfloat16(monkeypatch):
    for amx, avx512_bf16, want in [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "float32")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        assert native_bf16("cpu") is (want == "bf16-mixed")
        assert resolve_precision("auto", "cpu") == want
        assert resolve_precision("float32", "cpu") == "float32" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("auto", "meta") == "float32"
    with pytest.raises(ValueError, match="precision: expected one of"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize("bad, message", [
    ({"max_steps": -1}, "max_steps: expected an int >= 0, got -1"),
    ({"max_steps": 0}, "max_steps: 0 means as many steps as max_time allows, so it needs max_time > 0"),
    ({"lr": -1.0}, "lr: expected a number > 0, got -1.0"),
    ({"decay": "step"}, "decay: expected one of ['cosine', 'linear', 'constant'], got 'step'"),
    ({"min_lr_ratio": 2}, "min_lr_ratio: expected a number in [0, 1], got 2.0"),
    ({"batch_size": 3.5}, "batch_size: expected an int, got 3.5"),
    ({"patience": -1}, "patience: expected a value >= 0, got -1"),
    ({"clip_norm": math.nan}, "clip_norm: expected a finite number, got nan"),
    ({"keep_best": 1}, "keep_best: expected true or false, got 1"),
    ({"warmup": 3}, "unknown key(s) ['warmup']"),
    ({"precision": "fp16"}, "precision: expected one of ['float32', 'bf16-mixed', 'auto'], got 'fp16'"),
])
def test_bad_config_values_say_what_was_expected(bad, message):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(bad)
    assert message in str(e.value)


def test_config_round_trips():
    cfg = TrainConfig(max_steps=7, decay="linear")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bad_trainer_arguments(tmp_path):
    with pytest.raises(ValueError, match="holding 'model_class'"):
        Trainer(make_model(), TrainConfig(), batches=BatchIterator(DATA, 2), loss_fn=lm_loss, run_dir=tmp_path,
                config={})
    with pytest.raises(ValueError, match="mode: expected 'min' or 'max', got 'up'"):
        Trainer(make_model(), TrainConfig(), batches=BatchIterator(DATA, 2), loss_fn=lm_loss, run_dir=tmp_path,
                config={"model_class": "x"}, mode="up")
    with pytest.raises(ValueError, match="patience=2 needs an evaluate function"):
        make_trainer(tmp_path, evaluate=None, patience=2)
    with pytest.raises(ValueError, match=r"loss_fn: expected \(loss_sum scalar tensor, count\), got a tensor"):
        make_trainer(tmp_path, loss_fn=lambda m, b: lm_loss(m, b)[0], evaluate=None).fit()
    with pytest.raises(ValueError, match=r"monitored metric 'loss', got \['acc'\]"):
        make_trainer(tmp_path / "x", evaluate=lambda m: {"acc": 1.0}, eval_every=1).fit()


# ---------------------------------------------------------------------------- schedule


def test_schedule_values_by_hand():
    f = WarmupDecay(warmup_steps=4, total_steps=14, decay="cosine", min_lr_ratio=0.2)
    assert [f(t) for t in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == 1.0
    assert math.isclose(f(9), 0.2 + 0.8 * 0.5)  # halfway: cos(pi/2) = 0
    assert math.isclose(f(14), 0.2) and math.isclose(f(100), 0.2)
    g = WarmupDecay(0, 10, "linear", 0.0)
    assert [g(t) for t in (0, 5, 10, 11)] == [1.0, 0.5, 0.0, 0.0]
    h = WarmupDecay(2, 10, "constant", 0.0)
    assert [h(t) for t in (0, 1, 2, 50)] == [1 / 3, 2 / 3, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_state_round_trips_through_json(decay):
    def opt():
        return torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=0.5)
    o1 = opt()
    s1 = WarmupDecayLR(o1, warmup_steps=3, total_steps=10, decay=decay, min_lr_ratio=0.1)
    for _ in range(5):
        o1.step()
        s1.step()
    o2 = opt()
    s2 = WarmupDecayLR(o2, warmup_steps=0, total_steps=99, decay="constant", min_lr_ratio=1.0)
    o2.load_state_dict(o1.state_dict())
    s2.load_state_dict(json.loads(json.dumps(s1.state_dict())))
    assert s2.schedule.__dict__ == s1.schedule.__dict__
    for _ in range(7):
        for o, s in ((o1, s1), (o2, s2)):
            o.step()
            s.step()
        assert s1.get_last_lr() == s2.get_last_lr() and o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]
    assert math.isclose(s1.get_last_lr()[0], 0.5 * WarmupDecay(3, 10, decay, 0.1)(12))


@pytest.mark.parametrize("args, message", [
    ((-1, 10, "cosine", 0.1), "warmup_steps: expected an int >= 0, got -1"),
    ((0, 0, "cosine", 0.1), "total_steps: expected an int >= 1, got 0"),
    ((0, 10, "exp", 0.1), "decay: expected one of"),
    ((0, 10, "cosine", 1.5), "min_lr_ratio: expected a float in [0, 1], got 1.5"),
])
def test_bad_schedule(args, message):
    with pytest.raises(ValueError) as e:
        WarmupDecay(*args)
    assert message in str(e.value)
