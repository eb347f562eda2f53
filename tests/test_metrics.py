"""seqlab.train.metrics against hand-computed values (and sacrebleu for BLEU)."""
import math

import pytest
import torch

from seqlab.train import metrics as M


def test_perplexity_and_bits_per_char():
    assert M.perplexity(0.0) == 1.0
    assert math.isclose(M.perplexity(math.log(50)), 50.0)
    assert M.perplexity(1e6) == math.inf  # a diverged model, not an OverflowError
    assert math.isclose(M.bits_per_char(math.log(2) * 1.5), 1.5)
    assert math.isclose(M.bits_per_char(math.log(256)), 8.0)  # uniform over bytes


def test_accuracy_lists_and_tensors():
    assert M.accuracy([1, 2, 3], [1, 0, 3]) == 2 / 3
    assert M.accuracy(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [0, 0]])) == 0.5
    assert M.accuracy(["en", "de"], ["en", "fr"]) == 0.5


def test_macro_f1_by_hand():
    pred = [0, 0, 1, 2, 2, 2]
    gold = [0, 1, 1, 1, 2, 2]
    # F1 = 2TP / (2TP + FP + FN). class 0: TP 1 FP 1 FN 0 -> 2/3; class 1: TP 1 FP 0 FN 2 -> 2/4;
    # class 2: TP 2 FP 1 FN 0 -> 4/5
    assert math.isclose(M.macro_f1(pred, gold), (2 / 3 + 0.5 + 0.8) / 3)
    # Classes 3 and 4 occur in neither: skipped, not counted as 0.
    assert math.isclose(M.macro_f1(pred, gold, num_classes=5), (2 / 3 + 0.5 + 0.8) / 3)
    # A class only predicted (never gold) counts with F1 0.
    assert math.isclose(M.macro_f1([0, 3], [0, 0]), (2 / 3 + 0.0) / 2)
    assert M.macro_f1(torch.tensor([1, 1]), torch.tensor([1, 1])) == 1.0
    with pytest.raises(ValueError, match=r"expected labels in 0..2, got \[5\]"):
        M.macro_f1([0, 5], [0, 1], num_classes=3)


def test_token_accuracy_ignores_padding():
    pred = torch.tensor([[4, 5, 6, 7], [4, 9, 0, 0]])
    gold = torch.tensor([[4, 5, 0, 7], [4, 5, 0, 0]])
    mask = gold != 0  # padding positions predicted "right" must not count
    assert M.token_accuracy(pred, gold, mask) == 4 / 5
    assert M.token_accuracy(pred, gold, torch.ones_like(mask)) == 6 / 8
    with pytest.raises(ValueError, match="expected at least one unmasked position"):
        M.token_accuracy(pred, gold, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"of one shape, got \(2, 4\), \(2, 4\) and \(2, 3\)"):
        M.token_accuracy(pred, gold, mask[:, :3])


def test_bio_spans_follow_conlleval():
    assert M.bio_spans(["O", "B-PER", "I-PER", "O"]) == {("PER", 1, 3)}
    assert M.bio_spans(["I-LOC", "I-LOC"]) == {("LOC", 0, 2)}  # I- without B- starts a span
    assert M.bio_spans(["B-LOC", "I-PER"]) == {("LOC", 0, 1), ("PER", 1, 2)}  # type change: new span
    assert M.bio_spans(["B-LOC", "B-LOC"]) == {("LOC", 0, 1), ("LOC", 1, 2)}
    assert M.bio_spans(["O", "O"]) == set()
    with pytest.raises(ValueError, match="expected a tag 'O', 'B-TYPE' or 'I-TYPE', got 'PER' at position 1"):
        M.bio_spans(["O", "PER"])


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]
    # gold spans: PER(0,2) LOC(3,4) | ORG(0,1); pred: PER(0,2) ORG(3,4) | ORG(0,2)
    # correct 1 (PER); P = 1/3, R = 1/3 -> F1 = 2*1/(3+3)
    assert math.isclose(M.entity_f1(pred, gold), 1 / 3)
    assert M.entity_f1(gold, gold) == 1.0
    assert M.entity_f1([["I-PER", "I-PER"]], [["B-PER", "I-PER"]]) == 1.0  # the same span under conlleval
    assert M.entity_f1([["O"]], [["O"]]) == 0.0  # no spans at all: 0, as conlleval reports
    with pytest.raises(ValueError, match="sentence 0: expected 2 predicted tags"):
        M.entity_f1([["O"]], [["O", "O"]])


def test_exact_match_and_char_error_rate():
    assert M.exact_match(["a b", "c"], ["a b", "c "]) == 0.5
    assert M.levenshtein("", "abc") == 3 and M.levenshtein("flaw", "lawn") == 2
    # kitten->sitting 3 edits, abc->abc 0, ""->"xy" 2: (3 + 0 + 2) / (7 + 3 + 2)
    assert math.isclose(M.char_error_rate(["kitten", "abc", ""], ["sitting", "abc", "xy"]), 5 / 12)
    assert M.char_error_rate(["abcd"], ["a"]) == 3.0  # insertions can push CER above 1
    with pytest.raises(ValueError, match="expected as many hypotheses as references, got 1 and 2"):
        M.exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one character"):
        M.char_error_rate(["a"], [""])
    with pytest.raises(ValueError, match="at least one reference"):
        M.accuracy([], [])


def test_bleu_matches_sacrebleu():
    import sacrebleu
    hyps = ["the cat sat on the mat", "a quick brown dog jumps", "hello world"]
    refs = ["the cat sat on a mat", "the quick brown fox jumps", "hello world"]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert 0 < expected < 100
    assert M.bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)
    assert M.bleu(refs, refs) == pytest.approx(100.0)
    refs2 = [[r, r.upper()] for r in refs]  # two references each
    assert M.bleu(hyps, refs2) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs, [r.upper() for r in refs]]).score)


# -- the libraries against the hand-written implementations they replaced -------------------------

def _wagner_fischer(a, b) -> int:
    """The textbook dynamic programme: d[i][j] = edits turning a[:i] into b[:j]."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def _hand_bio_spans(tags) -> set:
    """conlleval's chunker written out: I-X continues only an open span of type X."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel closes a span at the end
        prefix, typ = ("O", None) if tag == "O" else (tag[0], tag[2:])
        continues = prefix == "I" and typ == kind
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix != "O" and not continues:
            kind, start = typ, i
    return spans


def _hand_entity_f1(pred_tags, gold_tags) -> float:
    correct = n_pred = n_gold = 0
    for p, g in zip(pred_tags, gold_tags):
        ps, gs = _hand_bio_spans(p), _hand_bio_spans(g)
        correct, n_pred, n_gold = correct + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    return 0.0 if n_pred + n_gold == 0 else 2 * correct / (n_pred + n_gold)


def test_levenshtein_and_cer_equal_wagner_fischer_on_random_strings():
    import random
    rng = random.Random(7)
    hyps, refs = [], []
    for _ in range(300):
        # a small alphabet makes matches, and so every kind of edit, common
        a = "".join(rng.choice("abcé ") for _ in range(rng.randrange(0, 13)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randrange(0, 13)))
        assert M.levenshtein(a, b) == _wagner_fischer(a, b), (a, b)
        hyps.append(a)
        refs.append(b or "x")
    ta, tb = [rng.randrange(4) for _ in range(9)], [rng.randrange(4) for _ in range(7)]  # token lists too
    assert M.levenshtein(ta, tb) == _wagner_fischer(ta, tb)
    expected = sum(_wagner_fischer(h, r) for h, r in zip(hyps, refs)) / sum(len(r) for r in refs)
    assert M.char_error_rate(hyps, refs) == pytest.approx(expected, abs=1e-12)


def test_bio_spans_and_entity_f1_equal_hand_chunker_on_random_tags():
    import random
    rng = random.Random(11)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]  # stray I- and type changes included
    gold_corpus, pred_corpus = [], []
    for _ in range(300):
        n = rng.randrange(1, 10)
        gold = [rng.choice(tags) for _ in range(n)]
        # a prediction that agrees with the gold tag most of the time, so F1 is neither 0 nor 1
        pred = [g if rng.random() < 0.7 else rng.choice(tags) for g in gold]
        assert M.bio_spans(gold) == _hand_bio_spans(gold), gold
        gold_corpus.append(gold)
        pred_corpus.append(pred)
    expected = _hand_entity_f1(pred_corpus, gold_corpus)
    assert 0.2 < expected < 0.95
    assert M.entity_f1(pred_corpus, gold_corpus) == pytest.approx(expected, abs=1e-12)
    for k in range(0, 300, 30):  # and sentence by sentence, where empty sides are common
        assert M.entity_f1(pred_corpus[k:k + 1], gold_corpus[k:k + 1]) == pytest.approx(
            _hand_entity_f1(pred_corpus[k:k + 1], gold_corpus[k:k + 1]), abs=1e-12)
