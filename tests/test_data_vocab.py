"""Vocabularies: fixed specials, deterministic ids, <unk>, and exact JSON round trips."""
import json
import random

import pytest

from seqlab.data import EOS, PAD, SOS, SPECIALS, UNK, DataError, Labels, Vocab


def test_specials_have_fixed_ids():
    assert (PAD, UNK, SOS, EOS) == (0, 1, 2, 3)
    assert SPECIALS == ("<pad>", "<unk>", "<sos>", "<eos>")
    for level in ("char", "word"):
        v = Vocab.build(["a b c"], level=level)
        assert v.itos[:4] == SPECIALS
        assert [v.stoi[s] for s in SPECIALS] == [0, 1, 2, 3]


def test_char_build_orders_by_count_then_symbol():
    v = Vocab.build(["abracadabra"], level="char")
    # a:5, b:2, r:2, c:1, d:1 -> count down, ties alphabetical
    assert v.itos[4:] == ("a", "b", "r", "c", "d")


def test_build_does_not_depend_on_text_order():
    texts = [f"word{i % 7} other{i % 3} x" for i in range(50)]
    shuffled = texts[:]
    random.Random(3).shuffle(shuffled)
    for level in ("char", "word"):
        assert Vocab.build(texts, level=level) == Vocab.build(shuffled, level=level)


def test_min_freq_and_max_size():
    texts = ["the cat", "the dog", "the cat sat"]
    v = Vocab.build(texts, level="word", min_freq=2)
    assert v.itos[4:] == ("the", "cat")
    v = Vocab.build(texts, level="word", max_size=5)  # the 4 specials + 1
    assert v.itos[4:] == ("the",) and len(v) == 5
    with pytest.raises(DataError, match="max_size must be >= 4"):
        Vocab.build(texts, max_size=3)
    with pytest.raises(DataError, match="min_freq must be >= 1, got 0"):
        Vocab.build(texts, min_freq=0)


def test_char_encode_decode_round_trip_and_unk():
    v = Vocab.build(["hello world"], level="char")
    ids = v.encode("hello world", sos=True, eos=True)
    assert ids[0] == SOS and ids[-1] == EOS and UNK not in ids
    assert v.decode(ids) == "hello world"
    assert v.encode("hex") == [v.stoi["h"], v.stoi["e"], UNK]
    assert v.decode(v.encode("hex")) == "he<unk>"


def test_word_level_tokenizes_on_whitespace():
    v = Vocab.build(["the cat  sat\ton the mat"], level="word")
    assert v.tokenize(" the\ncat ") == ["the", "cat"]
    assert v.decode(v.encode("the   cat sat")) == "the cat sat"
    assert v.encode("the dog") == [v.stoi["the"], UNK]


def test_encode_accepts_tokens_already_split():
    v = Vocab.build([["New", "York"], ["York"]], level="word")
    assert v.itos[4:] == ("York", "New")
    assert v.encode(["New", "Jersey"]) == [5, UNK]


def test_decode_stops_at_eos_and_drops_padding_unless_asked():
    v = Vocab.build(["ab"], level="char")
    a, b = v.stoi["a"], v.stoi["b"]
    ids = [SOS, a, b, EOS, a, PAD, PAD]
    assert v.decode(ids) == "ab"
    assert v.decode(ids, keep_specials=True) == "<sos>ab<eos>a<pad><pad>"
    assert v.decode_tokens([a, UNK, b]) == ["a", "<unk>", "b"]
    with pytest.raises(DataError, match="id 99 is outside the vocabulary"):
        v.decode([99])


def test_literal_special_in_text_gets_no_second_id():
    v = Vocab.build(["<unk> is a word here"], level="word")
    assert v.itos.count("<unk>") == 1
    assert v.encode("<unk>") == [UNK]


@pytest.mark.parametrize("level", ["char", "word"])
def test_json_round_trip(level):
    v = Vocab.build(["Grüße aus Köln", "hello world", "€ 5"], level=level)
    w = Vocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert w == v and w.level == level and w.stoi == v.stoi
    text = "Köln hello €"
    assert w.encode(text) == v.encode(text)


def test_from_dict_rejects_what_is_not_a_vocabulary():
    good = Vocab.build(["ab"]).to_dict()
    with pytest.raises(DataError, match="expected a vocabulary dict with format 'seqlab-vocab-1', got 'other'"):
        Vocab.from_dict({**good, "format": "other"})
    with pytest.raises(DataError, match="got 'list'"):
        Vocab.from_dict([1, 2])
    with pytest.raises(DataError, match="must be a list starting with"):
        Vocab.from_dict({**good, "itos": ["a", "<pad>", "<unk>", "<sos>", "<eos>"]})
    with pytest.raises(DataError, match="level must be one of"):
        Vocab.from_dict({**good, "level": "byte"})
    with pytest.raises(DataError, match="'a' appears twice"):
        Vocab.from_dict({**good, "itos": list(SPECIALS) + ["a", "a"]})


def test_word_symbols_cannot_hold_whitespace():
    with pytest.raises(DataError, match="contains whitespace"):
        Vocab(["a b"], level="word")


def test_labels_sorted_closed_and_round_trip():
    tags = Labels.build(["O", "B-PER", "I-PER", "O", "B-LOC"])
    assert tags.names == ("B-LOC", "B-PER", "I-PER", "O")
    assert [tags.encode(t) for t in tags.names] == [0, 1, 2, 3]
    assert tags.decode(3) == "O"
    with pytest.raises(DataError, match=r"unknown label 'B-ORG'; expected one of 4: B-LOC, B-PER, I-PER, O"):
        tags.encode("B-ORG")
    with pytest.raises(DataError, match=r"label id 4 is outside 0..3"):
        tags.decode(4)
    assert Labels.from_dict(json.loads(json.dumps(tags.to_dict()))) == tags
    with pytest.raises(DataError, match="format 'seqlab-labels-1'"):
        Labels.from_dict(Vocab.build(["a"]).to_dict())
    with pytest.raises(DataError, match="at least one label"):
        Labels([])
