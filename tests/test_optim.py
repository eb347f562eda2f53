"""seqlab.train.optim: which parameters Muon takes, MuonAdamW as one optimizer, exact resume."""
import copy

import pytest
import torch
from torch import nn

from seqlab.models import build_model
from seqlab.models.config import ModelConfig
from seqlab.train import MuonAdamW, TrainConfig, WarmupDecayLR, build_optimizer, load_checkpoint
from seqlab.train.checkpoint import _optimizer_join, _optimizer_split
from seqlab.train.optim import hidden_matrices

from test_train_loop import N, Interrupt, assert_same, interrupting, make_model, make_trainer, weights


def lm(arch, **kw):
    torch.manual_seed(0)
    base = dict(kind="lm", arch=arch, vocab_size=13, embed_dim=8, hidden_size=8, num_layers=2, dropout=0.0)
    if arch == "transformer":
        base.update(nhead=2, max_len=16)
    return build_model(ModelConfig.from_dict({**base, **kw}))


def test_muon_takes_the_hidden_matrices_only():
    model = lm("lstm", embed_dim=6, tie_weights=False)
    names = {id(p): n for n, p in model.named_parameters()}
    got = sorted(names[id(p)] for p in hidden_matrices(model))
    assert got == sorted(f"encoder.rnn.weight_{k}_l{i}" for k in ("ih", "hh") for i in (0, 1))
    model = lm("transformer")
    got = {names for names in (n for n, p in model.named_parameters() if any(p is q for q in hidden_matrices(model)))}
    assert got and all(n.startswith("encoder.stack.layers.") and n.endswith("weight") for n in got)
    assert any("self_attn.in_proj_weight" in n for n in got) and any("linear2.weight" in n for n in got)
    assert not any("embedding" in n or "norm" in n for n in got)


def test_every_parameter_is_optimised_once():
    model = lm("transformer")
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, MuonAdamW)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(set(seen)) == len(seen)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay[id(p)] == (0.1 if p.dim() == 2 else 0.0) for p in model.parameters())


def test_bad_names_and_models_without_hidden_layers_are_refused():
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        build_optimizer(nn.Linear(2, 2), "sgd", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="found none"):
        build_optimizer(nn.Linear(2, 2), "muon", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="TrainConfig.optimizer"):
        TrainConfig(optimizer="lion")


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 13, (3, 7), generator=g)
        logits, _ = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 13), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_state_dict_round_trips_through_the_checkpoint_format(arch):
    a = lm(arch)
    opt_a = build_optimizer(a, "muon", lr=1e-2, weight_decay=0.1)
    _train(a, opt_a, 3)
    meta, tensors = _optimizer_split(opt_a.state_dict())  # what a checkpoint stores: JSON + tensors
    assert any(k.endswith("momentum_buffer") for k in tensors) and any(k.endswith("exp_avg_sq") for k in tensors)
    b = lm(arch)
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, "muon", lr=1e-2, weight_decay=0.1)
    # cloned, as a file would give them: torch's load_state_dict keeps the very tensors it is given
    opt_b.load_state_dict(_optimizer_join(copy.deepcopy(meta), {k: v.clone() for k, v in tensors.items()}))
    _train(a, opt_a, 2, seed=1)
    _train(b, opt_b, 2, seed=1)
    assert_same(weights(a), weights(b), atol=0)
    fresh = lm(arch)  # the test can fail: without the momenta the weights differ
    fresh.load_state_dict(b.state_dict())
    opt_c = build_optimizer(fresh, "muon", lr=1e-2, weight_decay=0.1)
    _train(fresh, opt_c, 2, seed=1)
    assert any(not torch.equal(u, v) for u, v in zip(weights(fresh).values(), weights(a).values()))


def test_a_state_of_another_shape_is_refused():
    opt = build_optimizer(lm("gru"), "muon", lr=1e-2, weight_decay=0.1)
    sd = build_optimizer(lm("gru"), "adamw", lr=1e-2, weight_decay=0.1).state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({**sd, "param_groups": sd["param_groups"][:1]})


def test_the_schedule_sets_both_optimizers_rates_after_a_reload():
    model = lm("gru")
    opt = build_optimizer(model, "muon", lr=1.0, weight_decay=0.0)
    sched = WarmupDecayLR(opt, warmup_steps=4, total_steps=10)
    _train(model, opt, 1)
    sched.step()
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the inner optimizers get new group dicts
    sched.step()
    rates = {g["lr"] for o in (opt.muon, opt.adamw) for g in o.param_groups}
    assert rates == {3 / 5}  # warm-up: (t + 1) / (W + 1) at t = 2


def test_trainer_resume_with_muon_ends_with_the_same_weights(tmp_path):
    full = make_trainer(tmp_path / "a", optimizer="muon")
    full.fit()
    with pytest.raises(Interrupt):
        make_trainer(tmp_path / "b", optimizer="muon", loss_fn=interrupting(N + 1)).fit()
    assert load_checkpoint(tmp_path / "b", model_class="TinyLM").state["extra"]["trainer"]["train_config"][
        "optimizer"] == "muon"
    resumed = make_trainer(tmp_path / "b", model=make_model(seed=7), optimizer="muon")
    resumed.fit(resume=True)
    assert_same(weights(resumed.model), weights(full.model), atol=0)
    adamw = make_trainer(tmp_path / "c")  # and Muon is not AdamW under another name
    adamw.fit()
    assert any(not torch.equal(u, v) for u, v in zip(weights(adamw.model).values(), weights(full.model).values()))
