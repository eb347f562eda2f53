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
