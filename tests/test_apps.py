"""The applications layer: settings, the user's files, batching, masked losses, evaluation.

Models here are tiny and untrained; what is checked is the glue (shapes, masks, splits,
resumable positions), not how well anything learns (tests/test_cli.py trains).
"""
import json

import pytest
import torch

from seqlab.apps import (APPS, ClassifyApp, ConfigError, DataOptions, GenerateApp, GenerateOptions, LMApp, LMOptions,
                         Seq2SeqApp, Seq2SeqOptions, TagApp, TagOptions, parse_overrides, parse_value,
                         read_config_file, setting_keys)
from seqlab.apps.base import DERIVED_MODEL_KEYS, prepare_out, split_settings
from seqlab.data import EOS, PAD, SOS, DataError, split_of
from seqlab.models import ModelConfig, build_model

TINY = dict(embed_dim=8, hidden_size=8, num_layers=1, dropout=0.0)


def _model(app, arch="gru", **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_dict({"kind": app.kind, "arch": arch, **app.model_sizes(), **TINY, **kw})).eval()


# ----------------------------------------------------------------------------
# Settings


def test_parse_value_reads_toml_and_bare_words():
    assert parse_value("lr", "3e-4") == pytest.approx(3e-4)
    assert parse_value("bidirectional", "true") is True
    assert parse_value("zoneout", "0.1") == pytest.approx(0.1)
    assert parse_value("max_steps", "200") == 200 and isinstance(parse_value("max_steps", "200"), int)
    assert parse_value("attention", "bahdanau") == "bahdanau"  # no quotes needed for a plain word
    assert parse_value("attention", '"luong-dot"') == "luong-dot"
    with pytest.raises(ConfigError, match="expected a TOML value"):
        parse_value("lr", "3e-4 oops")


def test_parse_overrides_needs_key_equals_value():
    assert parse_overrides(["lr=3e-4", "hidden-size=64"]) == {"lr": pytest.approx(3e-4), "hidden_size": 64}
    with pytest.raises(ConfigError, match="expected a setting as key=value, got '=3'"):
        parse_overrides(["=3"])


def test_config_file_flat_and_tables(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lr = 1e-3\n[model]\nhidden_size = 64\n[data]\nn_train = 7\n')
    assert read_config_file(str(p)) == {"lr": 1e-3, "model.hidden_size": 64, "data.n_train": 7}
    p.write_text("[optim]\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[optim\]"):
        read_config_file(str(p))
    p.write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_config_file(str(p))
    p.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_config_file(str(p))
    with pytest.raises(ConfigError, match="no such config file"):
        read_config_file(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("kind", list(APPS))
def test_setting_keys_are_unique_across_groups(kind):
    # A key in two groups would be routed to the first silently: forbid it by construction.
    model, train, data = setting_keys(kind)
    assert not (set(model) & set(train)) and not (set(model) & set(data)) and not (set(train) & set(data))


def test_split_settings_routes_and_rejects():
    keys = setting_keys("seq2seq")
    m, t, d = split_settings({"lr": 1e-3, "attention": "bahdanau", "n_train": 5, "model.dropout": 0.2}, *keys)
    assert m == {"attention": "bahdanau", "dropout": 0.2} and t == {"lr": 1e-3} and d == {"n_train": 5}
    with pytest.raises(ConfigError, match="unknown setting 'hiden_size'; expected one of: .*hidden_size"):
        split_settings({"hiden_size": 3}, *keys)
    with pytest.raises(ConfigError, match=r"unknown setting 'lr' in \[model\]"):
        split_settings({"model.lr": 3}, *keys)
    for key in DERIVED_MODEL_KEYS:
        with pytest.raises(ConfigError, match=f"{key} is set by"):
            split_settings({key: 3}, *keys)


def test_options_reject_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown data option 'bptt'"):
        DataOptions.from_dict({"bptt": 3})  # an lm option is unknown to the other kinds
    assert LMOptions.from_dict({"bptt": 3}).bptt == 3
    with pytest.raises(ConfigError, match="n_train must be int, got '3'"):
        DataOptions.from_dict({"n_train": "3"})
    with pytest.raises(ConfigError, match="level must be 'char' or 'word', got 'byte'"):
        DataOptions.from_dict({"level": "byte"})
    with pytest.raises(ConfigError, match="level must be 'word'"):
        TagOptions.from_dict({"level": "char"})
    with pytest.raises(ConfigError, match=r"teacher_forcing must be in \[0, 1\], got 1.5"):
        Seq2SeqOptions.from_dict({"teacher_forcing": 1.5})


def test_task_of_another_kind_is_refused():
    with pytest.raises(DataError, match="task 'dates' is a seq2seq task, expected a lm task"):
        LMApp(LMOptions(task="dates"))
    with pytest.raises(DataError, match="unknown task 'nope'"):
        ClassifyApp(DataOptions(task="nope"))


def test_prepare_out_never_overwrites_without_force(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt-00000001").mkdir(parents=True)
    (run / "latest").write_text("ckpt-00000001\n")
    (run / "best-00000001").mkdir()
    (run / "best").write_text("best-00000001\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"old curve")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run; give --resume .* or --force"):
        prepare_out(run, force=False)
    prepare_out(run, force=True, check_only=True)
    assert (run / "latest").exists()
    prepare_out(run, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only what a run wrote, old curves too
    with pytest.raises(ConfigError, match="is not empty and holds no run"):
        prepare_out(run, force=False)


# ----------------------------------------------------------------------------
# The user's files


def _classify_tsv(path, n=60):
    lines = ["text\tlabel"] + [f"{'ab' * (i % 5 + 1)}{i}\t{'even' if i % 2 == 0 else 'odd'}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_user_file_hash_split_is_disjoint_and_deterministic(tmp_path):
    f = tmp_path / "d.tsv"
    _classify_tsv(f)
    app = ClassifyApp(DataOptions(data=str(f)))
    parts = {s: app.examples(s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in parts.values()) == 60
    for s, ex in parts.items():
        assert all(split_of(f"classify:{json.dumps(list(e))}") == s for e in ex)
    again = ClassifyApp(DataOptions(data=str(f)))
    assert again.examples("validation") == parts["validation"]


def test_user_valid_file_replaces_the_hash_split(tmp_path):
    f, v = tmp_path / "d.jsonl", tmp_path / "v.jsonl"
    f.write_text("".join(json.dumps({"text": f"x{i}", "label": "a"}) + "\n" for i in range(30)))
    v.write_text(json.dumps({"text": "only", "label": "b"}) + "\n")
    app = ClassifyApp(DataOptions(data=str(f), valid=str(v)))
    assert app.examples("validation") == [("only", "b")]
    assert len(app.examples("train")) + len(ClassifyApp(DataOptions(data=str(f))).examples("validation")) <= 30
    app.build()
    assert app.labels.names == ("a", "b")  # a label seen only in validation still gets an output


def test_empty_split_of_a_small_file_says_what_to_do(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("one\ta\n")
    app = ClassifyApp(DataOptions(data=str(f)))
    with pytest.raises(DataError, match="no validation examples; expected at least one"):
        app.examples("validation") if split_of('classify:["one", "a"]') != "validation" else app.examples("test")


def test_lm_plain_text_is_cut_into_paragraphs_or_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(f"line {i}" for i in range(50)) + "\n")
    app = LMApp(LMOptions(data=str(f)))
    assert app.read_file(str(f)) == [f"line {i}" for i in range(50)]
    f.write_text("\n\n".join(f"para {i}\nsecond line" for i in range(25)))
    assert app.read_file(str(f))[3] == "para 3\nsecond line"


# ----------------------------------------------------------------------------
# Batches, masked losses and evaluation


@pytest.fixture(scope="module")
def classify_app():
    app = ClassifyApp(DataOptions(task="langid", n_train=40, n_valid=12, n_test=5))
    app.build()
    return app


@pytest.fixture(scope="module")
def tag_app():
    app = TagApp(TagOptions(task="ner", n_train=40, n_valid=10, n_test=5))
    app.build()
    return app


@pytest.fixture(scope="module")
def seq2seq_app():
    app = Seq2SeqApp(Seq2SeqOptions(task="dates", n_train=40, n_valid=10, n_test=5))
    app.build()
    return app


@pytest.fixture(scope="module")
def generate_app():
    app = GenerateApp(GenerateOptions(task="names", n_train=40, n_valid=10, n_test=5, n_samples=7))
    app.build()
    return app


def _sum_of_singles(app, model, items):
    """loss_fn of each example alone (no padding at all), summed."""
    total, count = 0.0, 0
    for item in items:
        with torch.no_grad():
            loss, n = app.loss_fn(model, app.collate([item]))
        total, count = total + float(loss), count + int(n)
    return total, count


@pytest.mark.parametrize("name", ["classify_app", "tag_app", "seq2seq_app", "generate_app"])
def test_padding_is_masked_out_of_the_loss(name, request):
    app = request.getfixturevalue(name)
    model = _model(app)
    items = app.encoded("train")[:6]
    lengths = {len(it[0] if name != "generate_app" else it[1]) for it in items}
    assert len(lengths) > 1  # the batch really is padded
    with torch.no_grad():
        loss, count = app.loss_fn(model, app.collate(items))
    want_loss, want_count = _sum_of_singles(app, model, items)
    assert int(count) == want_count
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)


def test_collated_seq2seq_batch_layout(seq2seq_app):
    items = seq2seq_app.encoded("train")[:3]
    src, src_lengths, tgt_in, tgt_out = seq2seq_app.collate(items)
    assert src.shape[0] == 3 and src_lengths.tolist() == [len(s) for s, _ in items]
    for b, (_, t) in enumerate(items):
        assert tgt_in[b, : len(t) + 1].tolist() == [SOS] + t
        assert tgt_out[b, : len(t) + 1].tolist() == t + [EOS]
        assert (tgt_out[b, len(t) + 1:] == PAD).all()


def test_batches_resume_on_the_next_batch(classify_app):
    a = classify_app.batches(8, seed=3)
    it = iter(a)
    next(it)
    state = a.state_dict()
    want = next(it)
    b = classify_app.batches(8, seed=3)
    b.load_state_dict(json.loads(json.dumps(state)))
    got = next(iter(b))
    assert all(torch.equal(x, y) for x, y in zip(got, want))


@pytest.mark.parametrize("name,keys", [
    ("classify_app", {"loss", "accuracy", "macro_f1"}),
    ("tag_app", {"loss", "token_accuracy", "entity_f1"}),
    ("seq2seq_app", {"loss", "exact_match", "char_error_rate", "bleu"}),
    ("generate_app", {"loss", "perplexity", "eos_fraction"}),
])
def test_evaluate_reports_the_kinds_metrics(name, keys, request):
    app = request.getfixturevalue(name)
    model = _model(app)
    metrics = app.evaluate(model, "validation")
    assert keys <= set(metrics)
    assert metrics["loss"] > 0 and all(isinstance(v, float) for v in metrics.values())


def test_seq2seq_eval_subset_during_training_only(seq2seq_app):
    model = _model(seq2seq_app)
    seq2seq_app.options.eval_examples = 4
    try:
        assert seq2seq_app.evaluate(model, "validation", during_training=True)["examples"] == 4
        assert seq2seq_app.evaluate(model, "validation")["examples"] == 10
    finally:
        seq2seq_app.options.eval_examples = 200


def test_seq2seq_greedy_equals_beam_of_one_and_beam_decodes(seq2seq_app):
    model = _model(seq2seq_app, attention="bahdanau")
    texts = [s for s, _ in seq2seq_app.examples("test")]
    greedy = seq2seq_app.translate(model, texts, beam=1)
    assert len(greedy) == len(texts) and all(isinstance(t, str) for t in greedy)
    ids = [seq2seq_app.encode_source(t) for t in texts]
    from seqlab.decoding import beam_search
    from seqlab.data import pad_collate
    src, lengths = pad_collate(ids)
    hyps = beam_search(model.step, model.reorder, model.encode(src, lengths), torch.full((len(ids),), SOS),
                       eos=EOS, beam_size=1, max_len=seq2seq_app.decode_len)
    assert [seq2seq_app.tgt_vocab.decode(h[0].tokens) for h in hyps] == greedy
    assert len(seq2seq_app.translate(model, texts, beam=3)) == len(texts)


def test_generate_unknown_condition_names_the_known_ones(generate_app):
    model = _model(generate_app)
    with pytest.raises(DataError, match="unknown label 'xx'; expected one of 12"):
        generate_app.generate(model, "xx")
    assert len(generate_app.generate(model, "en_US", 3)) == 3


def test_tag_gives_one_tag_per_word(tag_app):
    model = _model(tag_app)
    out = tag_app.tag(model, ["Ann Lee went to Oslo .", "Hi"])
    assert [w for w, _ in out[0]] == ["Ann", "Lee", "went", "to", "Oslo", "."] and len(out[1]) == 1
    assert all(t in tag_app.tags for pairs in out for _, t in pairs)
    with pytest.raises(ConfigError, match="at least one word"):
        tag_app.tag(model, ["   "])


def test_lm_windows_reset_the_state_at_each_epoch(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(f"abc line {i} xyz" for i in range(40)) + "\n")
    app = LMApp(LMOptions(data=str(f), bptt=8))
    app.build()
    model = _model(app).train()
    windows = app.batches(2, seed=0)
    starts = []
    for epoch in range(2):
        for batch in windows:
            starts.append(windows.starts_epoch)
            app.loss_fn(model, batch)
            assert app._state is not None  # carried to the next window
    per_epoch = len(windows)
    assert starts == ([True] + [False] * (per_epoch - 1)) * 2
    stream = app.stream("train")
    assert stream.tolist().count(EOS) == len(app.examples("train"))  # one <eos> after each document


def test_lm_scores_a_split_and_samples(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(f"abc line {i} xyz" for i in range(60)) + "\n")
    app = LMApp(LMOptions(data=str(f), bptt=8))
    app.build()
    for arch in ("gru", "transformer"):
        kw = {"nhead": 2, "max_len": 64} if arch == "transformer" else {}
        model = _model(app, arch, **kw)
        m = app.evaluate(model, "validation")
        assert m["bits_per_char"] == pytest.approx(m["loss"] / 0.6931471805599453)
        text = app.sample(model, "abc", length=10, seed=1)
        assert text.startswith("abc") and text == app.sample(model, "abc", length=10, seed=1)
    with pytest.raises(ConfigError, match="must be at most the transformer's 63 positions"):
        app.sample(model, "abc", length=100)


ARCHS = ["rnn", "lstm", "gru", "transformer", "mingru", "minlstm"]


@pytest.fixture(scope="module")
def lm_app(tmp_path_factory):
    f = tmp_path_factory.mktemp("lm") / "t.txt"
    f.write_text("\n".join(f"abc line {i} xyz" for i in range(60)) + "\n")
    app = LMApp(LMOptions(data=str(f), bptt=8))
    app.build()
    return app


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["lm_app", "classify_app", "tag_app", "seq2seq_app", "generate_app"])
def test_every_arch_trains_evaluates_and_infers(name, arch, request):
    """The glue holds for every sequence stack: a backward pass, evaluate, and inference."""
    app = request.getfixturevalue(name)
    model = _model(app, arch, **({"nhead": 2, "max_len": 64} if arch == "transformer" else {})).train()
    loss, n = app.loss_fn(model, next(iter(app.batches(4, seed=0))))
    (loss / n).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert app.evaluate(model, "validation")["loss"] > 0
    if app.kind == "lm":
        out = [app.sample(model, "ab", length=5)]
    elif app.kind == "classify":
        out = [label for label, _ in app.classify(model, ["abc", "de"])]
    elif app.kind == "tag":
        out = [t for _, t in app.tag(model, ["a b c"])[0]]
        assert len(out) == 3
    elif app.kind == "seq2seq":
        out = app.translate(model, ["3 May 1990"], beam=2) + app.translate(model, ["3 May 1990"])
    else:
        out = app.generate(model, app.conditions.names[0], 2)
    assert out and all(isinstance(s, str) for s in out)


def test_the_printed_settings_say_what_precision_auto_runs_as(monkeypatch):
    from seqlab.apps.runs import describe_settings
    from seqlab.train import TrainConfig

    mcfg = ModelConfig.from_dict(dict(kind="lm", arch="transformer", vocab_size=10, embed_dim=8, hidden_size=8,
                                      num_layers=1, nhead=2, max_len=16))
    for native, want in [(True, "bf16-mixed"), (False, "float32")]:
        monkeypatch.setattr("seqlab.train.loop.native_bf16", lambda device: native)
        text = describe_settings("lm", mcfg, TrainConfig(precision="auto"), LMOptions(), 123)
        assert f"(precision=auto: {want} on this CPU)" in text.splitlines()[0] and "precision=auto" in text
    assert "precision=auto:" not in describe_settings("lm", mcfg, TrainConfig(), LMOptions(), 123)
