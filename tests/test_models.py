"""seqlab.models: shapes, overfitting, step == forward, padding-awareness, decoding and the config.

Every model with every arch, at tiny sizes. Equivalences are checked at
atol 1e-5 with dropout 0 in eval mode.
"""
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from seqlab.decoding import beam_search, greedy
from seqlab.models import (ARCHS, KINDS, Classifier, ConditionalGenerator, LanguageModel, ModelConfig, Seq2Seq,
                           Tagger, build_model, count_parameters)
import seqlab.nn as snn
from seqlab.nn import TransformerCache

PAD, SOS, EOS = 0, 2, 3
V, V_TGT, C = 13, 11, 3
B, T = 3, 6
RECURRENT = [a for a in ARCHS if a != "transformer"]
ATTENTIONS = ["none", "bahdanau", "luong-dot", "luong-general"]


def config(kind, arch, **kw):
    base = dict(kind=kind, arch=arch, vocab_size=V, tgt_vocab_size=V_TGT if kind == "seq2seq" else 0,
                num_classes=C if kind in ("classify", "tag", "generate") else 0, embed_dim=8, hidden_size=12,
                num_layers=2, dropout=0.0, nhead=2, dim_feedforward=16)
    if arch != "transformer":
        base.pop("nhead"), base.pop("dim_feedforward")
    base.update(kw)
    return ModelConfig(**base)


def model_for(kind, arch, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(config(kind, arch, **kw))


def tokens(b=B, t=T, vocab=V, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (b, t), generator=g)  # no specials inside


def batch(kind):
    """A fixed tiny batch and the loss of the model on it (mean over units)."""
    x = tokens()
    lengths = torch.tensor([T, T - 2, 2])
    if kind == "lm":
        return lambda m: F.cross_entropy(m(x[:, :-1])[0].reshape(-1, V), x[:, 1:].reshape(-1))
    if kind == "classify":
        y = torch.tensor([0, 2, 1])
        return lambda m: F.cross_entropy(m(x, lengths), y)
    if kind == "tag":
        y = tokens(vocab=C + 4, seed=2) - 4
        mask = torch.arange(T) < lengths.unsqueeze(1)  # (B, T)
        return lambda m: F.cross_entropy(m(x, lengths)[mask], y[mask])
    tgt = tokens(t=4, vocab=V_TGT, seed=3)
    tgt_in = torch.cat([torch.full((B, 1), SOS), tgt], 1)  # (B, 5)
    tgt_out = torch.cat([tgt, torch.full((B, 1), EOS)], 1)
    if kind == "seq2seq":
        return lambda m: F.cross_entropy(m(x, lengths, tgt_in).reshape(-1, V_TGT), tgt_out.reshape(-1))
    tgt = tokens(t=4, seed=3)
    tgt_in = torch.cat([torch.full((B, 1), SOS), tgt], 1)
    tgt_out = torch.cat([tgt, torch.full((B, 1), EOS)], 1)
    cond = torch.tensor([0, 2, 1])
    return lambda m: F.cross_entropy(m(cond, tgt_in).reshape(-1, V), tgt_out.reshape(-1))


CASES = [(k, a, "none") for k, a in itertools.product(KINDS, ARCHS)] + \
        [("seq2seq", a, att) for a, att in itertools.product(RECURRENT, ATTENTIONS[1:])]


# ----------------------------------------------------------------------------
# Every model, every arch: shapes and a few steps that fit a tiny batch


@pytest.mark.parametrize("kind,arch,attention", CASES)
def test_forward_shapes_and_overfit(kind, arch, attention):
    m = model_for(kind, arch, attention=attention)
    assert m.kind == kind and m.config.arch == arch
    x, lengths = tokens(), torch.tensor([T, 4, 1])
    if kind == "lm":
        logits, state = m(x)
        assert logits.shape == (B, T, V)
    elif kind == "classify":
        assert m(x, lengths).shape == (B, C)
    elif kind == "tag":
        assert m(x, lengths).shape == (B, T, C)
    elif kind == "seq2seq":
        assert m(x, lengths, tokens(t=5, vocab=V_TGT)).shape == (B, 5, V_TGT)
    else:
        assert m(torch.tensor([0, 1, 2]), tokens(t=5)).shape == (B, 5, V)

    loss_fn = batch(kind)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-2, weight_decay=0.0)
    with torch.no_grad():
        first = float(loss_fn(m))
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(m)
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(loss_fn(m))
    assert last < 0.6 * first, (first, last)


# ----------------------------------------------------------------------------
# Step-by-step decoding equals the teacher-forced forward


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_step_and_chunks_equal_forward(arch):
    m = model_for("lm", arch).eval()
    x = tokens(t=7)
    with torch.no_grad():
        full, _ = m(x)  # (B, 7, V)
        # two chunks with the state carried (and detached) across the boundary
        a, state = m(x[:, :4])
        state = m.detach_state(state)
        b, _ = m(x[:, 4:], state)
        torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=0)
        # step by step from init_state
        s, steps = m.init_state(B), []
        for t in range(7):
            logits, s = m.step(x[:, t], s)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
        # stepping on from the state a forward over a prompt returned
        _, state = m(x[:, :4])
        steps = []
        for t in range(4, 7):
            logits, state = m.step(x[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", RECURRENT)
def test_lm_detach_state_cuts_the_graph(arch):
    m = model_for("lm", arch)
    _, state = m(tokens())
    leaves = state if isinstance(state, tuple) else (state,)
    assert all(s.requires_grad for s in leaves)
    detached = m.detach_state(state)
    detached = detached if isinstance(detached, tuple) else (detached,)
    assert not any(s.requires_grad for s in detached)
    for s, d in zip(leaves, detached):
        assert torch.equal(s, d)


def test_transformer_lm_window_is_bounded_and_chunks_too_long_fail():
    m = model_for("lm", "transformer", max_len=5).eval()
    with torch.no_grad():
        _, state = m(tokens(t=3))
        assert state.shape == (B, 3)
        _, state = m(tokens(t=4), state)
        assert state.shape == (B, 4)  # max_len - 1
        # the window plus the chunk is cut to max_len positions: same as the last max_len tokens alone
        x = tokens(t=8, seed=5)
        _, state = m(x[:, :5])
        logits, _ = m(x[:, 5:], state)
        ref, _ = m(x[:, 3:])
        torch.testing.assert_close(logits, ref[:, 2:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_len=5"):
        m(tokens(t=6))


@pytest.mark.parametrize("arch,attention", [(a, att) for a, att in itertools.product(RECURRENT, ATTENTIONS)]
                         + [("transformer", "none")])
def test_seq2seq_step_equals_forward(arch, attention):
    m = model_for("seq2seq", arch, attention=attention).eval()
    src, lengths = tokens(), torch.tensor([T, 3, 1])
    tgt_in = torch.cat([torch.full((B, 1), SOS), tokens(t=4, vocab=V_TGT)], 1)
    with torch.no_grad():
        full = m(src, lengths, tgt_in)  # (B, 5, V_TGT)
        state, steps = m.encode(src, lengths), []
        for t in range(tgt_in.size(1)):
            logits, state = m.step(tgt_in[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
        # padding of the source is invisible: the short example alone gives the same logits
        alone = m(src[2:, :1], lengths[2:], tgt_in[2:])
        torch.testing.assert_close(alone, full[2:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", RECURRENT)
def test_seq2seq_teacher_forcing_zero_feeds_own_argmax(arch):
    m = model_for("seq2seq", arch, attention="luong-general").eval()
    src, lengths = tokens(), torch.tensor([T, 3, 1])
    tgt_in = torch.cat([torch.full((B, 1), SOS), tokens(t=4, vocab=V_TGT, seed=4)], 1)
    with torch.no_grad():
        free = m(src, lengths, tgt_in, teacher_forcing=0.0)  # the gold inputs after <sos> are not read
        out = greedy(m.step, m.encode(src, lengths), torch.full((B,), SOS), max_len=5)
        assert torch.equal(free.argmax(-1), out)
        forced = m(src, lengths, tgt_in, teacher_forcing=1.0)
        assert (out[:, :-1] != tgt_in[:, 1:]).any()  # the model's guesses differ from the gold inputs...
        assert not torch.allclose(forced[:, 1:], free[:, 1:])  # ...so forcing changes the logits


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_step_equals_forward(arch):
    m = model_for("generate", arch).eval()
    cond = torch.tensor([2, 0, 1])
    tgt_in = torch.cat([torch.full((B, 1), SOS), tokens(t=4)], 1)
    with torch.no_grad():
        full = m(cond, tgt_in)
        state, steps = m.start(cond), []
        for t in range(tgt_in.size(1)):
            logits, state = m.step(tgt_in[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
        # the condition matters
        other = m(torch.tensor([1, 1, 1]), tgt_in)
        assert not torch.allclose(other[0], full[0])


# ----------------------------------------------------------------------------
# Padding-awareness: a padded batch gives each example what it gets alone


def _padded_batch():
    x = tokens(b=4, t=7, seed=7)
    lengths = torch.tensor([5, 7, 1, 3])
    return x, lengths  # the positions past each length hold real tokens: they must be ignored


@pytest.mark.parametrize("arch,pooling,bidirectional",
                         list(itertools.product(ARCHS, ["last", "mean", "attention"], [None]))
                         + [(a, "last", False) for a in ARCHS])
def test_classifier_is_padding_aware(arch, pooling, bidirectional):
    m = model_for("classify", arch, pooling=pooling, bidirectional=bidirectional).eval()
    x, lengths = _padded_batch()
    with torch.no_grad():
        batched = m(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = m(x[i:i + 1, :n], lengths[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,bidirectional", list(itertools.product(ARCHS, [None, False])))
def test_tagger_is_padding_aware(arch, bidirectional):
    m = model_for("tag", arch, bidirectional=bidirectional).eval()
    assert (m.encoder.bidirectional is True) == (bidirectional is None)  # bidirectional by default
    x, lengths = _padded_batch()
    with torch.no_grad():
        batched = m(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = m(x[i:i + 1, :n], lengths[i:i + 1])
            torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=0)


def test_bidirectional_last_pooling_uses_both_ends():
    # the reverse direction's final state sees the first token: changing it changes the logits
    m = model_for("classify", "gru").eval()
    x, lengths = tokens(), torch.full((B,), T)
    y = x.clone()
    y[:, 0] = (y[:, 0] - 3) % (V - 4) + 4
    with torch.no_grad():
        assert not torch.allclose(m(x, lengths), m(y, lengths))


# ----------------------------------------------------------------------------
# Decoding through step / reorder; beam 1 == greedy; beam scores rescored by forward


def _decoder(kind, arch, attention="none"):
    m = model_for(kind, arch, attention=attention, seed=3).eval()
    if kind == "lm":
        state = m.init_state(2)

        def score(tokens):  # log p of each token given <sos> and the ones before
            x = torch.tensor([[SOS] + tokens])
            return m(x[:, :-1])[0].log_softmax(-1)[0].gather(1, x[0, 1:, None]).sum()
    elif kind == "seq2seq":
        src, lengths = tokens(b=2), torch.tensor([T, 2])
        state = m.encode(src, lengths)

        def score(tokens, row=0):
            x = torch.tensor([[SOS] + tokens])
            return m(src[row:row + 1, :lengths[row]], lengths[row:row + 1], x[:, :-1]).log_softmax(-1)[0] \
                .gather(1, x[0, 1:, None]).sum()
    else:
        cond = torch.tensor([1, 2])
        state = m.start(cond)

        def score(tokens, row=0):
            x = torch.tensor([[SOS] + tokens])
            return m(cond[row:row + 1], x[:, :-1]).log_softmax(-1)[0].gather(1, x[0, 1:, None]).sum()
    return m, state, score


DECODERS = [(k, a, "none") for k, a in itertools.product(["lm", "seq2seq", "generate"], ARCHS)] + \
           [("seq2seq", "gru", att) for att in ATTENTIONS[1:]] + [("seq2seq", "lstm", "bahdanau")]


@pytest.mark.parametrize("kind,arch,attention", DECODERS)
def test_greedy_and_beam_search_through_step_and_reorder(kind, arch, attention):
    start = torch.full((2,), SOS)
    with torch.no_grad():
        m, state, score = _decoder(kind, arch, attention)
        g = greedy(m.step, state, start, max_len=6, eos=EOS)
        assert g.shape[0] == 2 and 1 <= g.shape[1] <= 6
        _, state, _ = _decoder(kind, arch, attention)
        hyps = beam_search(m.step, m.reorder, state, start, eos=EOS, beam_size=1, max_len=6)
        for row, h in zip(g.tolist(), hyps):
            want = row[: row.index(EOS) + 1] if EOS in row else row
            assert h[0].tokens == want
        # a wider beam: every hypothesis's log-probability is what the teacher-forced model gives it,
        # which holds only if reorder followed the beams correctly
        _, state, _ = _decoder(kind, arch, attention)
        hyps = beam_search(m.step, m.reorder, state, start, eos=EOS, beam_size=3, max_len=5, n_best=3)
        assert len(hyps[0]) == 3
        for h in hyps[0]:
            assert float(score(h.tokens)) == pytest.approx(h.logprob, abs=1e-4)


# ----------------------------------------------------------------------------
# Weight tying


@pytest.mark.parametrize("kind", ["lm", "generate"])
def test_weight_tying_shares_the_embedding(kind):
    tied = model_for(kind, "lstm", embed_dim=12)
    untied = model_for(kind, "lstm", embed_dim=12, tie_weights=False)
    # untied: a Linear(12, V) (weight + bias); tied: a bias only
    assert count_parameters(untied) - count_parameters(tied) == 12 * V
    emb = tied.encoder.embedding if kind == "lm" else tied.decoder.embedding
    names = [n for n, _ in tied.named_parameters()]
    assert sum("embedding.weight" in n for n in names) == 1  # one copy in parameters() and the state dict
    assert sum("embedding.weight" in k for k in tied.state_dict()) == 1
    x = tokens()
    if kind == "lm":
        before = tied(x)[0]
        with torch.no_grad():
            emb.weight[5] += 1.0
        after = tied(x)[0]
    else:
        cond, x = torch.tensor([0, 1, 2]), tokens()
        before = tied(cond, x)
        with torch.no_grad():
            emb.weight[5] += 1.0
        after = tied(cond, x)
    # every position's logit for token 5 moves, also where token 5 is not an input
    assert ((after - before)[..., 5].abs() > 1e-6).all()
    # project-then-tie when the stack's size differs from the embedding's
    proj = model_for(kind, "gru", embed_dim=8)
    assert proj.output.tied and proj.output.proj.weight.shape == (8, 12)


# ----------------------------------------------------------------------------
# ModelConfig


def test_config_unknown_key_names_it():
    with pytest.raises(ValueError, match="hiden_size") as e:
        ModelConfig.from_dict({"kind": "lm", "arch": "gru", "vocab_size": 10, "hiden_size": 5})
    assert "hidden_size" in str(e.value)  # the known keys are listed


@pytest.mark.parametrize("key,value,expected", [
    ("kind", "translate", "expected one of"),
    ("arch", "lstn", "expected one of"),
    ("vocab_size", 0, "vocab_size: expected an int >= 1, got 0"),
    ("hidden_size", 7.0, "hidden_size: expected an int"),
    ("num_layers", True, "num_layers: expected an int"),
    ("dropout", 1.0, "dropout: expected a probability in [0, 1), got 1.0"),
    ("pooling", "max", "pooling: expected one of"),
    ("attention", "luong", "attention: expected one of"),
    ("bidirectional", "yes", "bidirectional: expected true, false or null"),
    ("tie_weights", 1, "tie_weights: expected true or false"),
])
def test_config_bad_values(key, value, expected):
    d = {"kind": "classify", "arch": "gru", "vocab_size": 10, "num_classes": 2, key: value}
    with pytest.raises(ValueError) as e:
        ModelConfig.from_dict(d)
    assert expected in str(e.value) and "got" in str(e.value)


@pytest.mark.parametrize("kw,message", [
    (dict(arch="transformer", zoneout=0.1), "zoneout=0.1 is not an option of arch 'transformer'"),
    (dict(arch="gru", forget_bias=1.0), "forget_bias=1.0 is not an option of arch 'gru'"),
    (dict(arch="mingru", layer_norm=True), "layer_norm=True is not an option of arch 'mingru'"),
    (dict(arch="minlstm", recurrent_dropout=0.2), "recurrent_dropout"),
    (dict(arch="lstm", nhead=8), "nhead=8 is not an option of arch 'lstm'"),
    (dict(arch="transformer", hidden_size=10, nhead=4), "divisible by nhead"),
    (dict(kind="classify"), "needs num_classes"),
    (dict(bidirectional=True), "cannot look ahead"),
    (dict(pooling="mean"), "pooling is an option of kind 'classify'"),
    (dict(kind="seq2seq", arch="transformer", attention="bahdanau"), "always attends"),
])
def test_config_rejects_options_the_model_does_not_have(kw, message):
    d = {"kind": "lm", "arch": "gru", "vocab_size": 10}
    d.update(kw)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        ModelConfig(**d)


def test_config_accepts_the_options_each_layer_has_and_passes_them():
    m = build_model(config("lm", "lstm", layer_norm=True, recurrent_dropout=0.1, weight_drop=0.2, zoneout=0.1,
                           forget_bias=1.0))
    rnn = m.encoder.rnn
    assert rnn.layer_norm and rnn.recurrent_dropout == 0.1 and rnn.weight_drop == 0.2 and rnn.zoneout == (0.1, 0.0)
    H = 12
    assert torch.all(rnn.bias_ih_l0[H:2 * H] == 1.0)
    m = build_model(config("tag", "rnn", layer_norm=True, zoneout=0.2))
    assert m.encoder.rnn.layer_norm and m.encoder.rnn.zoneout == (0.2, 0.0)


def test_config_round_trip_and_kind_defaults():
    cfg = config("seq2seq", "lstm", attention="bahdanau", forget_bias=1.0, zoneout=0.1)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    assert set(d) >= {"kind", "arch", "vocab_size", "tgt_vocab_size", "num_classes", "max_len", "tie_weights"}
    assert cfg.is_bidirectional and config("tag", "gru").is_bidirectional
    assert not config("lm", "gru").is_bidirectional and not config("generate", "gru").is_bidirectional
    assert not config("classify", "gru", bidirectional=False).is_bidirectional
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_dict({"kind": "lm", "arch": "gru"})


def test_build_model_classes_and_dict():
    want = {"lm": LanguageModel, "classify": Classifier, "tag": Tagger, "seq2seq": Seq2Seq,
            "generate": ConditionalGenerator}
    for kind, cls in want.items():
        m = build_model(config(kind, "gru").to_dict())
        assert type(m) is cls and cls.kind == kind and isinstance(m.config, ModelConfig)
        assert count_parameters(m) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="expected a config of kind 'lm'"):
        LanguageModel(config("tag", "gru"))


def test_inputs_are_checked():
    m = model_for("classify", "gru")
    with pytest.raises(ValueError, match="lengths: expected values in"):
        m(tokens(), torch.tensor([T + 1, 2, 2]))
    with pytest.raises(ValueError, match="LongTensor"):
        m(tokens().float(), torch.tensor([T, 2, 2]))
    s = model_for("seq2seq", "gru")
    with pytest.raises(ValueError, match="teacher_forcing"):
        s(tokens(), torch.tensor([T, 2, 2]), tokens(), teacher_forcing=1.5)
    g = model_for("generate", "gru")
    with pytest.raises(ValueError, match="condition ids in"):
        g.start(torch.tensor([0, C]))
    lm = model_for("lm", "transformer")
    assert isinstance(lm.init_state(2), TransformerCache)


def test_transformer_bias_and_activation_options():
    cfg = dict(kind="lm", arch="transformer", vocab_size=11, embed_dim=8, hidden_size=8, num_layers=2, nhead=2,
               max_len=16, dropout=0.0)
    torch.manual_seed(0)
    plain = LanguageModel(ModelConfig(**cfg))
    lean = LanguageModel(ModelConfig(**cfg, bias=False, activation="gelu"))
    stack_biases = [n for n, _ in lean.named_parameters() if n.startswith("encoder.") and n.endswith("bias")]
    assert stack_biases == [] and any(n.endswith("bias") for n, _ in plain.named_parameters()
                                      if n.startswith("encoder."))
    layer = lean.encoder.stack.layers[0]
    x = torch.randn(2, 5, 8)
    # the feed-forward block applies GELU: linear2(gelu(linear1(x))) on a pre-normed input
    assert torch.allclose(layer._ff_block(x), layer.linear2(F.gelu(layer.linear1(x))), atol=1e-6)
    tokens = torch.randint(1, 11, (2, 6))
    assert lean(tokens)[0].shape == (2, 6, 11)
    back = ModelConfig.from_dict(json.loads(json.dumps(ModelConfig(**cfg, bias=False, activation="gelu").to_dict())))
    assert back.bias is False and back.activation == "gelu"
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(**cfg, activation="tanh")
    with pytest.raises(ValueError, match="bias=False is not an option of arch 'lstm'"):
        ModelConfig(kind="lm", arch="lstm", vocab_size=11, bias=False)


def test_seq2seq_transformer_takes_bias_and_activation():
    """The encoder-decoder Transformer builds what the config asks, as the LM's stack does."""
    cfg = dict(kind="seq2seq", arch="transformer", vocab_size=11, tgt_vocab_size=13, embed_dim=6, hidden_size=8,
               num_layers=2, nhead=2, max_len=16, dropout=0.0)
    plain = Seq2Seq(ModelConfig(**cfg))
    lean = Seq2Seq(ModelConfig(**cfg, bias=False, activation="gelu"))
    assert any(n.endswith("bias") for n, _ in plain.transformer.named_parameters())
    assert [n for n, _ in lean.transformer.named_parameters() if n.endswith("bias")] == []
    assert lean.in_proj.bias is None and plain.in_proj.bias is not None
    x = torch.randn(2, 5, 8)
    for layer in (*lean.transformer.encoder.layers, *lean.transformer.decoder.layers):
        torch.testing.assert_close(layer._ff_block(x), layer.linear2(F.gelu(layer.linear1(x))))
    for layer in plain.transformer.encoder.layers:
        torch.testing.assert_close(layer._ff_block(x), layer.linear2(F.relu(layer.linear1(x))))


def test_attention_dropout_sets_the_attention_rate_only():
    def lm(**kw):
        cfg = dict(kind="lm", arch="transformer", vocab_size=13, embed_dim=8, hidden_size=8, num_layers=2, nhead=2,
                   max_len=16, dropout=0.3)
        return build_model(ModelConfig.from_dict({**cfg, **kw}))

    default, split = lm(), lm(attention_dropout=0.0)
    rates = [(m.dropout, type(m).__name__) for m in split.modules() if isinstance(m, snn.MultiheadAttention)]
    assert rates and all(r == 0.0 for r, _ in rates)
    assert all(m.dropout == 0.3 for m in default.modules() if isinstance(m, snn.MultiheadAttention))
    assert all(m.p == 0.3 for m in split.modules() if isinstance(m, torch.nn.Dropout))  # the others keep theirs
    assert split.state_dict().keys() == default.state_dict().keys()
    s2s = build_model(ModelConfig.from_dict(dict(kind="seq2seq", arch="transformer", vocab_size=13, embed_dim=8,
                                                 hidden_size=8, num_layers=1, nhead=2, dropout=0.3,
                                                 attention_dropout=0.1)))
    attn = [m.dropout for m in s2s.modules() if isinstance(m, snn.MultiheadAttention)]
    assert len(attn) == 3 and set(attn) == {0.1}  # encoder self, decoder self and cross attention
    with pytest.raises(ValueError, match="attention_dropout"):
        ModelConfig.from_dict(dict(kind="lm", arch="lstm", vocab_size=13, attention_dropout=0.1))
    with pytest.raises(ValueError, match="attention_dropout: expected a probability"):
        ModelConfig.from_dict(dict(kind="lm", arch="transformer", vocab_size=13, attention_dropout=1.5))
