"""Language-model training as GPT models are trained, and schedules that follow a time budget.

* WindowSampler: an epoch covers the stream once, resumes exactly, and never reaches beyond it;
  the lm app's independent windows come from the training stream only.
* The transformer lm's loss on a fixed batch is the hand-computed causal loss.
* Scoring during training samples segments spread over the whole split.
* max_steps = 0 with max_time: the plan (horizon) is fixed from the step time, saved, and a
  killed-and-resumed run ends with the weights of an uninterrupted one; runs end within the budget.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.apps import train_run
from seqlab.apps.lm import LMApp, LMOptions
from seqlab.data import UNK, DataError, WindowSampler
from seqlab.models import ModelConfig, build_model
from seqlab.models.lm import next_token_nll
from seqlab.train import TrainConfig, Trainer, load_checkpoint

from seqlab.data import BatchIterator
from test_train_loop import DATA, Interrupt, assert_same, interrupting, lm_eval, lm_loss, make_model, weights


# ----------------------------------------------------------------------------- WindowSampler


@pytest.mark.parametrize("n, bptt, batch", [(50, 4, 3), (97, 7, 5), (23, 11, 1)])
def test_an_epoch_of_windows_covers_the_stream_once(n, bptt, batch):
    ids = torch.arange(n, dtype=torch.int32)  # a compact dtype, as large corpora are stored
    s = WindowSampler(ids, batch, bptt, seed=3)
    for epoch in range(3):
        phase, starts = s.plan(epoch)
        targets = []
        for w in s:
            assert w.dtype == torch.int64 and w.dim() == 2 and w.size(0) <= batch and w.size(1) == bptt + 1
            for row in w.tolist():
                assert row == list(range(row[0], row[0] + bptt + 1))  # a contiguous slice of the stream
                targets += row[1:]  # what the window trains on
        # every token after the phase is a target exactly once, up to the last whole window
        assert sorted(targets) == list(range(phase + 1, phase + 1 + len(starts) * bptt))
        assert max(targets) <= n - 1 and n - 1 - max(targets) < bptt
    phases = {s.plan(e)[0] for e in range(20)}
    assert len(phases) > 1  # the cuts move between epochs


def test_window_sampler_resumes_on_the_next_batch():
    ids = torch.arange(200)
    a = WindowSampler(ids, 4, 6, seed=1)
    it = iter(a)
    for _ in range(5):
        next(it)
    state = a.state_dict()
    b = WindowSampler(ids, 4, 6, seed=1)
    b.load_state_dict(state)
    rest_a = [w.tolist() for w in it]
    assert rest_a == [w.tolist() for w in b]
    with pytest.raises(DataError, match="windows of 6"):
        WindowSampler(ids[:100], 4, 6).load_state_dict(state)
    with pytest.raises(DataError, match="too few"):
        WindowSampler(torch.arange(10), 2, 6)


def _files(tmp_path):
    train = tmp_path / "train.txt"
    valid = tmp_path / "valid.txt"
    train.write_text("\n\n".join(f"abc line {i} cab bac" for i in range(80)) + "\n")
    valid.write_text("\n\n".join(f"XYZ QRS {i}" for i in range(30)) + "\n")  # X, Y, Z, Q, R, S only here
    return train, valid


def test_lm_independent_windows_come_from_the_training_stream_only(tmp_path):
    train, valid = _files(tmp_path)
    app = LMApp(LMOptions(data=str(train), valid=str(valid), bptt=8))
    app.build()
    app.model_config = ModelConfig(kind="lm", arch="transformer", vocab_size=len(app.vocab), nhead=2,
                                   hidden_size=8, embed_dim=8, num_layers=1, max_len=16)
    stream = app.stream("train").tolist()
    text = ",".join(map(str, stream))
    for (w,) in app.batches(4, seed=0):
        for row in w.tolist():
            assert UNK not in row  # validation's characters map to <unk>: none reaches training
            assert ",".join(map(str, row)) in text
    assert UNK in app.stream("validation").tolist()
    # the recurrent archs carry their state over BPTT rows, unless told otherwise
    app.model_config = ModelConfig(kind="lm", arch="gru", vocab_size=len(app.vocab))
    assert app.batches(4, seed=0).__class__.__name__ == "_Windows"
    app.options.carry_state = False
    assert app.batches(4, seed=0).__class__.__name__ == "_IndependentWindows"


# ----------------------------------------------------------------------------- the transformer's loss


def test_transformer_lm_loss_is_the_hand_computed_causal_loss():
    torch.manual_seed(0)
    V, T = 13, 9
    model = build_model(ModelConfig(kind="lm", arch="transformer", vocab_size=V, embed_dim=16, hidden_size=16,
                                    num_layers=2, nhead=2, max_len=32, dropout=0.0)).double().eval()
    window = torch.randint(1, V, (3, T + 1))
    loss, count, _ = next_token_nll(model, window)
    # By hand: position t's prediction from the prefix x_0..x_t alone, scored against x_{t+1}.
    hand = 0.0
    for t in range(T):
        logits, _ = model(window[:, : t + 1])  # (B, t+1, V)
        hand += F.cross_entropy(logits[:, -1], window[:, t + 1], reduction="sum").item()
    assert count == 3 * T
    assert loss.item() == pytest.approx(hand, rel=1e-10)
    # and a later token changes no earlier prediction
    x = window[:, :-1]
    later = x.clone()
    later[:, -1] = (later[:, -1] % (V - 1)) + 1
    a, _ = model(x)
    c, _ = model(later)
    assert torch.equal(a[:, :-1], c[:, :-1]) and not torch.equal(a[:, -1], c[:, -1])


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_partial_scores_sample_the_whole_split(tmp_path, monkeypatch, arch):
    train, valid = _files(tmp_path)
    app = LMApp(LMOptions(data=str(train), valid=str(valid), bptt=8, eval_rows=4, eval_tokens=40))
    app.build()
    kw = {"nhead": 2, "max_len": 16} if arch == "transformer" else {}
    model = build_model(ModelConfig(kind="lm", arch=arch, vocab_size=len(app.vocab), embed_dim=8, hidden_size=8,
                                    num_layers=1, **kw))
    ids = app.stream("validation")
    seen = []
    import seqlab.apps.lm as lm_module
    real = lm_module.next_token_nll

    def recording(m, window, state=None, last=None, cache=None):
        seen.append((window.clone(), state is not None, last))
        return real(m, window, state, last=last, cache=cache)

    monkeypatch.setattr(lm_module, "next_token_nll", recording)
    part = app.evaluate(model, "validation", during_training=True)
    assert part["tokens"] == 4 * 9  # 4 segments of 10 tokens (40 asked for), 9 targets each
    # the segments are the first window, then the tokens each later window adds: all but its first
    # (carried state: windows overlap by one column), or the targets it scores (sliding windows)
    rows = torch.cat([seen[0][0]] + [w[:, -last:] if last else w[:, 1:] for w, _, last in seen[1:]],
                     dim=1).tolist()  # (4, 10)
    text = ",".join(map(str, ids.tolist()))
    assert all(",".join(map(str, r)) in text for r in rows)
    assert text.startswith(",".join(map(str, rows[0])))  # the first segment starts where the split starts
    assert text.endswith(",".join(map(str, rows[-1])))  # the last one ends where it ends
    assert [carried for _, carried, _ in seen][1:] == [arch != "transformer"] * (len(seen) - 1)
    seen.clear()
    whole = app.evaluate(model, "validation")
    assert ids.numel() - 4 < whole["tokens"] + 4 <= ids.numel()  # every segment's first token has no target
    assert math.isfinite(whole["loss"])


def _score_two_segments(app, model):
    """app.score over the first 41 tokens of the validation split, scored as two segments of 20 (19
    targets each): (summed NLL, the segments (2, 20))."""
    ids = app.stream("validation")[:41]
    total, count = app.score(model, ids)
    assert count == 2 * 19
    return total, ids[:40].view(2, 20).long()


def _window_scoring(j, T, stride):
    """(start, end) of the sliding window that scores target j (1-based in its segment of 20): the
    first window while j <= T, else the one that ends at the first multiple of the stride that
    reaches it (the last one ending at the segment's end)."""
    end = j if j <= T else min(19, T + stride * math.ceil((j - T) / stride))
    return max(0, end - T), end


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_sliding_windows_score_each_token_once_with_the_context_they_promise(tmp_path, stride):
    train, valid = _files(tmp_path)
    T = 8
    app = LMApp(LMOptions(data=str(train), valid=str(valid), bptt=T, eval_rows=2, eval_stride=stride))
    app.build()
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="lm", arch="transformer", vocab_size=len(app.vocab), embed_dim=8,
                                    hidden_size=8, num_layers=1, nhead=2, max_len=16)).eval()
    total, segments = _score_two_segments(app, model)
    hand = 0.0
    with torch.no_grad():
        for seg in segments:
            for j in range(1, 20):
                start, end = _window_scoring(j, T, stride)
                logits, _ = model(seg[start:end].view(1, -1))  # (1, end - start, V)
                hand += F.cross_entropy(logits[0, j - 1 - start], seg[j]).item()
                assert j - 1 - start >= min(j - 1, T - stride)  # the context the docstring promises
    assert total == pytest.approx(hand, rel=1e-5)


def _cached_nll(h, logits, y, N, theta, lam):
    """-log p(y_t) of one segment under the continuous cache, position by position: the equations of
    seqlab.models.ContinuousCache, written as a loop. h (n, F), logits (n, V), y (n,)."""
    total = 0.0
    for t in range(len(y)):
        p = logits[t].softmax(-1)[y[t]].item()
        if t > 0:
            past = range(max(0, t - N), t)
            w = torch.stack([theta * h[t] @ h[i] for i in past]).softmax(0)
            p = (1 - lam) * p + lam * sum(w[k].item() for k, i in enumerate(past) if y[i] == y[t])
        total -= math.log(p)
    return total


@pytest.mark.parametrize("arch", ["gru", "lstm", "transformer"])
def test_a_continuous_cache_scores_what_its_equations_say(tmp_path, arch):
    train, valid = _files(tmp_path)
    T, N, theta, lam = 4, 6, 0.7, 0.3  # windows shorter than the memory, the memory shorter than a segment
    app = LMApp(LMOptions(data=str(train), valid=str(valid), bptt=T, eval_rows=2, eval_stride=3, cache_size=N,
                          cache_theta=theta, cache_lambda=lam))
    app.build()
    torch.manual_seed(0)
    kw = {"nhead": 2, "max_len": 16} if arch == "transformer" else {}
    model = build_model(ModelConfig(kind="lm", arch=arch, vocab_size=len(app.vocab), embed_dim=8, hidden_size=8,
                                    num_layers=1, **kw)).eval()
    total, segments = _score_two_segments(app, model)
    hand = 0.0
    with torch.no_grad():
        for seg in segments:
            if arch == "transformer":  # h_t from the sliding window that scores target j
                hs, ls = [], []
                for j in range(1, 20):
                    start, end = _window_scoring(j, T, 3)
                    h, _ = model.features(seg[start:end].view(1, -1))  # (1, end - start, F)
                    hs.append(h[0, j - 1 - start])
                    ls.append(model.logits(h[0, j - 1 - start]))
                h, logits = torch.stack(hs), torch.stack(ls)  # (19, F), (19, V)
            else:  # one pass over the segment: the state the windows carry
                h, _ = model.features(seg[:-1].view(1, -1))  # (1, 19, F)
                h, logits = h[0], model.logits(h[0])  # (19, F), (19, V)
            hand += _cached_nll(h, logits, seg[1:].tolist(), N, theta, lam)
    assert total == pytest.approx(hand, rel=1e-5)
    app.options.cache_size = 0
    alone, _ = _score_two_segments(app, model)
    assert total != pytest.approx(alone, rel=1e-3)  # the cache did change the score
    app.options.cache_size, app.options.cache_lambda = N, 0.0
    assert _score_two_segments(app, model)[0] == pytest.approx(alone, rel=1e-6)  # at weight 0, the model alone


def test_a_continuous_cache_keeps_its_rows_and_refuses_bad_settings():
    from seqlab.models import ContinuousCache

    cache = ContinuousCache(4, 1.0, 0.5)
    h, logits, y = torch.randn(2, 3, 5), torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    first = cache.nll(h, logits, y)
    # the first position has an empty memory: the model alone; the next ones mix
    model_alone = F.cross_entropy(logits[:, 0], y[:, 0], reduction="sum")
    assert torch.isfinite(first) and first != model_alone
    assert cache.keys.shape == (2, 3, 5)
    cache.nll(h, logits, y)
    assert cache.keys.shape == (2, 4, 5) and torch.equal(cache.values, torch.cat([y, y], 1)[:, -4:])
    with pytest.raises(ValueError, match="memory has 2, the window 3"):
        cache.nll(torch.randn(3, 1, 5), torch.randn(3, 1, 7), torch.zeros(3, 1, dtype=torch.long))
    for args, match in (((0, 1.0, 0.1), "size must be an int >= 1"), ((4, 0.0, 0.1), "theta must be"),
                        ((4, 1.0, 1.0), r"lam must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            ContinuousCache(*args)
    for key, value, match in (("cache_size", -1, "cache_size must be >= 0"), ("cache_theta", 0.0, "cache_theta"),
                              ("cache_lambda", 1.0, r"cache_lambda must be in \[0, 1\)")):
        with pytest.raises(Exception, match=match):
            LMOptions(**{key: value}).validate()


def test_eval_stride_out_of_range_is_refused():
    with pytest.raises(Exception, match="eval_stride must be in"):
        LMOptions(bptt=8, eval_stride=9).validate()


# ----------------------------------------------------------------------------- time-budgeted schedule


class FakeClock:
    """A training clock that advances ``tick`` seconds per reading: step times are exact."""

    def __init__(self, tick=0.5):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def budget_trainer(tmp, model=None, loss_fn=lm_loss, **cfg):
    base = dict(max_steps=0, max_time=30.0, lr=1e-2, warmup_steps=4, checkpoint_every=6, eval_every=5, log_every=1,
                seed=3, tensorboard=False)
    base.update(cfg)
    return Trainer(model if model is not None else make_model(), TrainConfig(**base),
                   batches=BatchIterator(DATA, 5, shuffle=True, seed=1), loss_fn=loss_fn, evaluate=lm_eval,
                   run_dir=tmp, config={"model_class": "TinyLM"}, progress=False, clock=FakeClock())


def test_time_budget_fixes_the_horizon_and_resume_is_exact(tmp_path):
    full = budget_trainer(tmp_path / "a")
    result = full.fit()
    plan = result["plan"]
    # one clock reading per step boundary: 0.5 s a step, 30 s -> 60 steps in all, planned at step 20
    assert plan == {"total_steps": 60, "warmup_steps": 4, "step_seconds": 0.5, "budget_end": 30.0}
    assert result["step"] == 60 and result["stopped"] in ("max_steps", "max_time")
    lrs = [e["lr"] for e in result["log"]]
    assert lrs[4] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3, rel=0.01)  # warmed up, then annealed
    # killed after the plan (step 20) and after a checkpoint (step 24), then resumed in a new trainer
    with pytest.raises(Interrupt):
        budget_trainer(tmp_path / "b", loss_fn=interrupting(27)).fit()
    assert load_checkpoint(tmp_path / "b", model_class="TinyLM").state["extra"]["trainer"]["plan"] == plan
    resumed = budget_trainer(tmp_path / "b", model=make_model(seed=99))
    again = resumed.fit(resume=True)
    assert again["plan"] == plan and again["step"] == 60
    assert_same(weights(resumed.model), weights(full.model), atol=0)


def test_the_time_budget_resume_test_can_fail(tmp_path):
    full = budget_trainer(tmp_path / "a")
    full.fit()
    with pytest.raises(Interrupt):
        budget_trainer(tmp_path / "b", loss_fn=interrupting(27)).fit()
    resumed = budget_trainer(tmp_path / "b", model=make_model(seed=99))
    resumed.clock.tick = 0.25  # a resumed run that measured again would plan twice the steps
    resumed.fit(resume=True)
    assert resumed.plan["total_steps"] == 60  # it did not: the saved plan holds
    other = budget_trainer(tmp_path / "c")
    other.clock.tick = 0.25
    other.fit()
    assert other.plan["total_steps"] == 120
    assert not torch.equal(weights(other.model)["out.weight"], weights(full.model)["out.weight"])


class QuickeningClock(FakeClock):
    """FakeClock whose steps take half as long after ``calls`` readings (a machine that gets quieter)."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def __call__(self):
        self.calls -= 1
        if self.calls == 0:
            self.tick /= 2
        return super().__call__()


def test_steps_faster_than_planned_train_at_the_final_rate_until_the_budget(tmp_path):
    full = budget_trainer(tmp_path / "a")
    full.clock = QuickeningClock(calls=60)  # two readings a step: 0.25 s steps from step 30 on
    result = full.fit()
    # planned at step 20 from 0.5 s steps: 60 in all, which would end at 22.25 s; the budget's
    # 30 s hold 29 steps of 0.5 s and 62 of 0.25 s
    assert result["plan"]["total_steps"] == 60
    assert result["stopped"] == "max_time" and result["step"] == 91
    assert result["train_time"] == pytest.approx(30.0)
    lrs = [e["lr"] for e in result["log"]]
    assert len(lrs) == 91 and lrs[60:] == pytest.approx([1e-3] * 31)  # the final rate from step 61 to the end
    # killed in the tail (after the checkpoint of step 84), resumed at the quicker pace: the same weights,
    # so the test can fail (test_the_time_budget_resume_test_can_fail shows weights differ otherwise)
    with pytest.raises(Interrupt):
        killed = budget_trainer(tmp_path / "b", loss_fn=interrupting(88))
        killed.clock = QuickeningClock(calls=60)
        killed.fit()
    resumed = budget_trainer(tmp_path / "b", model=make_model(seed=99))
    resumed.clock.tick = 0.25
    again = resumed.fit(resume=True)
    assert again["step"] == 91 and again["plan"] == result["plan"]
    assert_same(weights(resumed.model), weights(full.model), atol=0)


def test_a_short_budget_shortens_the_warm_up():
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tr = budget_trainer(tmp, warmup_steps=100, max_time=20.0)
        result = tr.fit()
    # 10% of the budget (step 4) is reached before the warm-up ends: planned at step 20 (the minimum),
    # 40 steps in all, warm-up cut to max(20, 40 // 10)
    assert result["plan"]["total_steps"] == 40 and result["plan"]["warmup_steps"] == 20


def test_max_time_runs_end_within_the_budget_plus_one_evaluation(tmp_path):
    train, valid = _files(tmp_path)
    budget = 3.0
    result = train_run("lm", arch="gru", data=str(train), valid=str(valid), out=tmp_path / "run", progress=False,
                       settings={"max_time": budget, "hidden_size": 16, "embed_dim": 16, "num_layers": 1,
                                 "batch_size": 4, "bptt": 16, "eval_every": 25, "checkpoint_every": 0,
                                 "warmup_steps": 10, "tensorboard": True})
    plan = result["plan"]
    assert plan is not None and result["stopped"] in ("max_time", "max_steps")
    # the clock counts training only; the last step may end past the budget
    assert result["train_time"] <= budget + 4 * plan["step_seconds"] + 0.5
    assert result["train_time"] >= 0.5 * budget
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "validation/loss"} <= set(acc.Tags()["scalars"])
