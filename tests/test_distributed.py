"""seqlab.train.distributed and the trainer under DDP.

The DDP test launches THIS file under ``torchrun`` with two gloo processes on the CPU
(``python -m torch.distributed.run --nproc_per_node 2 tests/test_distributed.py OUT``)
and compares with one process trained on the same global batches in the test itself.
"""
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import seqlab.nn as snn
from seqlab.data import BatchIterator, pad_collate
from seqlab.train import TrainConfig, Trainer, load_checkpoint
from seqlab.train import distributed as D

V = 9
GLOBAL_BATCH = 7  # odd, so the two ranks get 3 and 4 rows: the mean must use the global count
STEPS = 6


def data():
    rng = random.Random(2)
    return [[rng.randrange(1, V) for _ in range(rng.randrange(3, 9))] for _ in range(23)]  # batches 7,7,7,2


class Tiny(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(V, 5, padding_idx=0)
        self.rnn = snn.GRU(5, 7, batch_first=True, backend="fused")  # torch ops only: no C++ build in the workers
        self.out = nn.Linear(7, V)

    def forward(self, tokens):
        h, _ = self.rnn(self.embed(tokens))  # (B, T, H)
        return self.out(self.drop(h))  # (B, T, V)


def loss_fn(model, batch):
    padded, _ = pad_collate(batch)  # (B, L)
    x, y = padded[:, :-1], padded[:, 1:]
    logits = model(x)  # (B, L-1, V)
    v = model.out.out_features  # under DDP: reaches the wrapped module's attribute
    loss = nn.functional.cross_entropy(logits.reshape(-1, v), y.reshape(-1), ignore_index=0, reduction="sum")
    return loss, int((y != 0).sum())


class TinyWithUnused(Tiny):
    """A parameter that no loss reaches: DDP needs find_unused_parameters=True for it."""

    def __init__(self, dropout=0.0):
        super().__init__(dropout)
        self.spare = nn.Linear(7, 3)


def trainer(run_dir, evaluate, loss=loss_fn, dropout=0.0, stop_when=None, model_cls=Tiny, **cfg):
    torch.manual_seed(0)
    model = model_cls(dropout)
    base = dict(max_steps=STEPS, batch_size=GLOBAL_BATCH, lr=2e-2, warmup_steps=1, eval_every=3,
                checkpoint_every=3, log_every=1)
    base.update(cfg)
    return Trainer(model, TrainConfig(**base), batches=BatchIterator(data(), GLOBAL_BATCH, seed=4), loss_fn=loss,
                   evaluate=evaluate, run_dir=run_dir, config={"model_class": "Tiny"}, progress=False,
                   stop_when=stop_when)


def worker(out: Path) -> None:
    """Run by each torchrun process."""
    torch.set_num_threads(1)
    rank, world = D.setup()
    import seqlab.train.loop as loop
    saves, evals = [], []
    real_save = loop.save_checkpoint

    def spy_save(*args, **kwargs):
        saves.append([rank, kwargs.get("best", False)])
        return real_save(*args, **kwargs)
    loop.save_checkpoint = spy_save

    def evaluate(model):
        evals.append(rank)
        return {"loss": float(loss_fn(model, data()[:5])[0])}
    tr = trainer(out / "run", evaluate)
    result = tr.fit()
    scores = iter([5.0, 4.0, 4.5, 4.2, 3.0, 2.0])  # only rank 0 can see these
    stop = trainer(out / "stop", lambda m: {"loss": next(scores)}, eval_every=1, patience=2, max_steps=20).fit()
    goals = iter([5.0, 4.0, 3.0, 2.0])  # rank 0's goal (loss < 3.5) is reached at the 3rd evaluation
    goal = trainer(out / "goal", lambda m: {"loss": next(goals)}, eval_every=1, max_steps=20,
                   stop_when=lambda m: m["loss"] < 3.5).fit()
    # Resume under DDP, with dropout: every rank's RNG must come back, not only rank 0's.
    whole = trainer(out / "drop-a", None, dropout=0.5)
    whole.fit()
    calls = [0]

    def crashing(model, batch):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt  # on both ranks at once, before any collective of that step
        return loss_fn(model, batch)
    try:
        trainer(out / "drop-b", None, loss=crashing, dropout=0.5).fit()
    except KeyboardInterrupt:
        pass
    resumed = trainer(out / "drop-b", None, dropout=0.5)
    resumed.fit(resume=True)
    same_after_resume = all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                             resumed.model.state_dict().values()))
    unused = trainer(out / "unused", None, model_cls=TinyWithUnused, find_unused_parameters=True, max_steps=3,
                     checkpoint_every=0)
    unused_steps = unused.fit()["step"]
    torch.manual_seed(0)  # trainer()'s seed: the same initial weights
    spare_untouched = torch.equal(unused.model.spare.weight, TinyWithUnused().spare.weight)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "is_main": D.is_main(), "saves": saves, "evals": evals, "result": result,
        "weights": {k: v.flatten().tolist() for k, v in tr.model.state_dict().items()},
        "stop": {"step": stop["step"], "stopped": stop["stopped"], "best": stop["best"]},
        "goal": {"step": goal["step"], "stopped": goal["stopped"]},
        "same_after_resume": same_after_resume, "resumed_from": calls[0] - 1,
        "unused": [unused_steps, spare_untouched]}))
    D.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The single-process reference trains meanwhile.
    torch.manual_seed(0)
    single = trainer(tmp_path / "single", lambda m: {"loss": float(loss_fn(m, data()[:5])[0])})
    ref = single.fit()
    try:
        output, _ = proc.communicate(timeout=120)  # a rank that disagreed on stopping would hang here
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("torchrun workers hung: " + (proc.communicate()[0] or "")[-3000:])
    assert proc.returncode == 0, output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["is_main"] for r in ranks] == [True, False]
    # Only rank 0 evaluates and writes checkpoints (steps 3, 6 in the first run; 3, 4 in the second;
    # 3 in the goal run; 3, 6 | 3 | 6 in the dropout runs; 3 in the unused-parameter run), and the
    # best ones: the first run's loss falls (steps 3, 6), the second improves at its 1st and 2nd
    # evaluation, the goal run at all 3.
    assert ranks[0]["evals"] == [0, 0] and ranks[1]["evals"] == []
    assert [best for _, best in ranks[0]["saves"]].count(False) == 10 and ranks[1]["saves"] == []
    assert [best for _, best in ranks[0]["saves"]].count(True) == 7
    assert load_checkpoint(tmp_path / "stop" / "best", model_class="Tiny").step == 2
    # An interrupted DDP run resumes to the same weights as an uninterrupted one, on each rank.
    assert [(r["same_after_resume"], r["resumed_from"]) for r in ranks] == [(True, 4), (True, 4)]
    # find_unused_parameters=True: a model with a parameter no loss reaches trains under DDP
    # (without it DDP stops at the second step), and the unused parameter stays as it was.
    assert [r["unused"] for r in ranks] == [[3, True], [3, True]]
    # Every rank agrees on the early stop that only rank 0 could decide.
    for r in ranks:
        assert r["stop"] == {"step": 4, "stopped": "early_stop", "best": 4.0}
        assert r["goal"] == {"step": 3, "stopped": "goal"}  # and on the goal
    # Same weights as one process: on both ranks, and in rank 0's checkpoint.
    ck = load_checkpoint(tmp_path / "run", model_class="Tiny")
    assert ck.step == STEPS and len(ck.state["extra"]["trainer"]["rank_rng"]) == 2
    want = single.model.state_dict()
    for name, w in want.items():
        assert torch.allclose(ck.model_state[name], w, rtol=0, atol=1e-6), name
        for r in ranks:
            assert torch.allclose(torch.tensor(r["weights"][name]), w.flatten(), rtol=0, atol=1e-6), name
    assert not torch.allclose(want["out.weight"], Tiny().out.weight, atol=1e-3)  # the run moved the weights
    # The logged loss is the global one, and the gradient (norm, before clipping) the same as one
    # process's: this catches a wrong scale, to which Adam's updates are almost blind.
    for r in ranks:
        for key in ("loss", "grad_norm"):
            assert [round(e[key], 5) for e in r["result"]["log"]] == [round(e[key], 5) for e in ref["log"]], key
        assert [h["step"] for h in r["result"]["history"]] == [3, 6]


# ---------------------------------------------------------------------------- without processes


def test_setup_without_torchrun_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert D.setup() == (0, 1) and D.is_main() and not D.initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.setup() == (0, 1)
    D.cleanup()  # nothing to leave
    t = torch.tensor([1.0, 2.0])
    assert D.all_sum(t) is t and D.broadcast_object({"a": 1}) == {"a": 1} and D.all_gather_object(3) == [3]


def test_setup_rejects_a_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    try:
        D.setup()
    except ValueError as e:
        assert "WORLD_SIZE: expected an integer, got 'two'" in str(e)
    else:
        raise AssertionError("no error")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    try:
        D.setup()
    except ValueError as e:
        assert "expected 0 <= RANK < WORLD_SIZE, got RANK=2 and WORLD_SIZE=2" in str(e)
    else:
        raise AssertionError("no error")


def test_shard_batch_rules():
    x = torch.arange(14).view(7, 2)  # (7, 2)
    parts = [D.shard_batch(x, r, 2) for r in range(2)]
    assert [p.shape[0] for p in parts] == [3, 4] and torch.equal(torch.cat(parts), x)
    examples = [("a", 1), ("b", 2), ("c", 3)]
    assert D.shard_batch(examples, 0, 2) == [("a", 1)] and D.shard_batch(examples, 1, 2) == [("b", 2), ("c", 3)]
    batch = {"src": x, "lengths": torch.arange(7), "name": "dates"}
    got = D.shard_batch(batch, 1, 3)  # rows 2..4
    assert torch.equal(got["src"], x[2:4]) and torch.equal(got["lengths"], torch.tensor([2, 3]))
    assert got["name"] == "dates"
    pair = D.shard_batch([x, x[:, 0]], 0, 2)  # a list of tensors is a structure, like a tuple
    assert torch.equal(pair[0], x[:3]) and torch.equal(pair[1], x[:3, 0])
    assert D.shard_batch(examples, 0, 1) is examples


def test_shard_batch_errors():
    for bad, message in [((torch.zeros(4), torch.zeros(5)), "the same number of rows, got [4, 5]"),
                         ([1], "expected at least 2 rows in every batch to share among 2 processes, got 1")]:
        try:
            D.shard_batch(bad, 0, 2)
        except ValueError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"no error for {bad!r}")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
