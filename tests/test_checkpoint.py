"""Checkpoints: exact round trips, atomic writes, and clear errors for anything damaged."""
import json
import random

import pytest
from safetensors import safe_open
import torch
from torch import nn

import seqlab.train.checkpoint as ckpt_mod
from seqlab.nn import LSTM
from seqlab.train import (CheckpointError, best_checkpoint, latest_checkpoint, load_checkpoint, restore_training,
                          save_checkpoint)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = LSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _train_steps(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(4, 6, 3)
        loss = model(x).pow(2).mean() + random.random() * 0  # touches Python's RNG too
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def test_resume_equals_uninterrupted(tmp_path):
    model, opt, sched = _setup()
    _train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path, step=3, model=model, config={"model_class": "Tiny"}, optimizer=opt,
                    scheduler=sched, extra={"vocab": ["a", "b"], "position": 17})
    _train_steps(model, opt, sched, 4)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    ck = load_checkpoint(tmp_path, model_class="Tiny")
    model2.load_state_dict(ck.model_state)
    restore_training(ck, optimizer=opt2, scheduler=sched2)
    assert ck.step == 3 and ck.state["extra"] == {"vocab": ["a", "b"], "position": 17}
    _train_steps(model2, opt2, sched2, 4)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    first = save_checkpoint(tmp_path, step=1, model=model, config={"model_class": "Tiny"}, optimizer=opt)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, step=2, model=model, config={"model_class": "Tiny"}, optimizer=opt)
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001", "latest"]  # no half-written folder
    load_checkpoint(tmp_path)


def test_keep_prunes_old_checkpoints(tmp_path):
    model, _, _ = _setup()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, config={"model_class": "Tiny"}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000003"]
    assert latest_checkpoint(tmp_path).name == "ckpt-00000003"


def test_best_checkpoints_have_their_own_pointer_and_pruning(tmp_path):
    model, _, _ = _setup()
    cfg = {"model_class": "Tiny"}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, config=cfg, keep=1)
    save_checkpoint(tmp_path, step=2, model=model, config=cfg, best=True)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_checkpoint(tmp_path, step=4, model=model, config=cfg, keep=1)  # prunes ckpt-*, not best-*
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["best-00000002", "ckpt-00000004"]
    save_checkpoint(tmp_path, step=4, model=model, config=cfg, best=True)  # the newer best replaces the older
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-00000004"]
    assert best_checkpoint(tmp_path).name == "best-00000004" and latest_checkpoint(tmp_path).name == "ckpt-00000004"
    # a pointer file is a valid path to load; the run directory itself still means the newest
    assert load_checkpoint(tmp_path / "best").path.name == "best-00000004"
    assert load_checkpoint(tmp_path / "latest").path.name == "ckpt-00000004"
    assert torch.equal(load_checkpoint(tmp_path / "best").model_state["head.bias"], model.head.bias.detach())
    assert best_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.parametrize("content", [b"best-00000009\n", b"../../etc\n", b"\xff\xfe binary", b""])
def test_a_file_that_names_no_checkpoint_is_a_clear_error(tmp_path, content):
    model, _, _ = _setup()
    save_checkpoint(tmp_path, step=1, model=model, config={"model_class": "Tiny"})
    (tmp_path / "notes.txt").write_bytes(content)
    with pytest.raises(CheckpointError, match="names no checkpoint folder"):
        load_checkpoint(tmp_path / "notes.txt")


def test_damaged_checkpoints_raise_clear_errors(tmp_path):
    model, opt, _ = _setup()
    path = save_checkpoint(tmp_path, step=5, model=model, config={"model_class": "Tiny"}, optimizer=opt)

    with pytest.raises(CheckpointError, match="made by model 'Tiny', expected 'Other'"):
        load_checkpoint(tmp_path, model_class="Other")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "missing")

    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(tmp_path)
    (path / "model.safetensors").write_bytes(data)
    load_checkpoint(tmp_path)

    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(tmp_path)
    (path / "state.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="expected format"):
        load_checkpoint(tmp_path)


def test_no_pickle_anywhere(tmp_path):
    model, opt, sched = _setup()
    _train_steps(model, opt, sched, 1)
    path = save_checkpoint(tmp_path, step=1, model=model, config={"model_class": "Tiny"}, optimizer=opt,
                           scheduler=sched)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors", "state.json",
                                                      "train.safetensors"]
    json.loads((path / "state.json").read_text())
    json.loads((path / "manifest.json").read_text())
    for name in ("model.safetensors", "train.safetensors"):
        with safe_open(str(path / name), framework="pt") as f:  # parses only if it is safetensors
            assert len(list(f.keys())) > 0
