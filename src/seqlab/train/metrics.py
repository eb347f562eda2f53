"""Evaluation metrics, each a plain function of predictions and references.

==================  ====================================================================
function            definition (conventions in each docstring)
==================  ====================================================================
perplexity          exp(mean NLL in nats)
bits_per_char       mean NLL in nats / ln 2
accuracy            fraction of predictions equal to the gold label
macro_f1            unweighted mean of per-class F1 over the classes that occur
token_accuracy      accuracy over the positions a mask keeps (padding excluded)
entity_f1           micro F1 over exact (type, start, end) BIO spans, conlleval rules (seqeval)
exact_match         fraction of hypothesis strings identical to the reference
char_error_rate     sum of character Levenshtein distances (rapidfuzz) / sum of reference lengths
bleu                sacrebleu corpus BLEU (0-100), default 13a tokenisation
==================  ====================================================================

Every function raises ValueError ("expected X, got Y") for empty input or
prediction/reference lists of different lengths, rather than returning a number
that means nothing.
"""
from __future__ import annotations

import math
from typing import Hashable, Optional, Sequence, Union

import torch

Labels = Union[Sequence[Hashable], torch.Tensor]


def _flat(x: Labels) -> list:
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()  # (N,)
    return list(x)


def _pair(pred: Labels, gold: Labels, what: str = "predictions") -> tuple[list, list]:
    p, g = _flat(pred), _flat(gold)
    if len(p) != len(g):
        raise ValueError(f"expected as many {what} as references, got {len(p)} and {len(g)}")
    if not g:
        raise ValueError("expected at least one reference, got none")
    return p, g


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``: the mean negative log-likelihood per token, in nats, as a perplexity.

    Overflows to ``inf`` instead of raising, since a diverged model's perplexity is just large.

    >>> perplexity(0.0), round(perplexity(math.log(7)), 6)
    (1.0, 7.0)
    """
    try:
        return math.exp(float(mean_nll))
    except OverflowError:
        return math.inf


def bits_per_char(mean_nll_nats: float) -> float:
    """Mean NLL per character converted from nats to bits: ``mean_nll / ln 2``.

    >>> bits_per_char(math.log(2))
    1.0
    """
    return float(mean_nll_nats) / math.log(2)


def accuracy(pred: Labels, gold: Labels) -> float:
    """Fraction of positions where ``pred`` equals ``gold`` (lists or tensors, flattened).

    >>> accuracy([1, 2, 3, 4], [1, 2, 0, 0])
    0.5
    """
    p, g = _pair(pred, gold)
    return sum(a == b for a, b in zip(p, g)) / len(g)


def macro_f1(pred: Labels, gold: Labels, num_classes: Optional[int] = None) -> float:
    """Unweighted mean over classes of ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.

    Convention: a class that appears in neither ``pred`` nor ``gold`` is skipped (its F1
    would be 0/0). A class that appears in only one of them counts, with F1 = 0. With
    ``num_classes`` the candidate classes are ``0 .. num_classes-1`` and any other label
    raises; without it they are the labels seen. (scikit-learn's ``f1_score(average="macro")``
    gives the same number when called with ``labels=`` the classes seen.)

    >>> macro_f1([0, 0, 1, 1], [0, 1, 1, 1], num_classes=3)   # class 2 absent: mean of 2/3 and 4/5
    0.7333333333333334
    """
    p, g = _pair(pred, gold)
    classes = sorted(set(p) | set(g), key=repr)
    if num_classes is not None:
        bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < num_classes)]
        if bad:
            raise ValueError(f"expected labels in 0..{num_classes - 1}, got {bad[:5]}")
    f1s = []
    for c in classes:
        tp = sum(a == c and b == c for a, b in zip(p, g))
        fp = sum(a == c and b != c for a, b in zip(p, g))
        fn = sum(a != c and b == c for a, b in zip(p, g))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def token_accuracy(pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> float:
    """Accuracy over the positions where ``mask`` is true (real tokens; padding false).

    ``pred``, ``gold`` and ``mask`` have the same shape, e.g. (B, T).

    >>> token_accuracy(torch.tensor([[1, 2, 9]]), torch.tensor([[1, 3, 0]]), torch.tensor([[1, 1, 0]]))
    0.5
    """
    pred, gold, mask = torch.as_tensor(pred), torch.as_tensor(gold), torch.as_tensor(mask).bool()
    if pred.shape != gold.shape or mask.shape != gold.shape:
        raise ValueError(f"expected pred, gold and mask of one shape, got {tuple(pred.shape)}, "
                         f"{tuple(gold.shape)} and {tuple(mask.shape)}")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("expected at least one unmasked position, got none")
    return int(((pred == gold) & mask).sum()) / n


def _check_bio(tags: Sequence[str], where: str = "") -> list[str]:
    tags = list(tags)
    for i, tag in enumerate(tags):
        if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
            # seqeval would only warn and read the tag's last characters as a type
            raise ValueError(f"{where}expected a tag 'O', 'B-TYPE' or 'I-TYPE', got {tag!r} at position {i}")
    return tags


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entity spans ``(type, start, end_exclusive)`` of one BIO tag sequence, read by seqeval.

    conlleval's rules (seqeval's default mode): ``B-X`` always starts a span; ``I-X`` continues
    the open span only if that span has type X, and otherwise (after ``O``, at the start, or
    after a span of another type) starts a new span; ``O`` closes the open span.

    >>> sorted(bio_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]))
    [('LOC', 3, 5), ('LOC', 5, 6), ('ORG', 6, 7), ('PER', 0, 2)]
    """
    from seqeval.metrics.sequence_labeling import get_entities  # imported here: it loads scikit-learn

    return {(kind, start, end + 1) for kind, start, end in get_entities(_check_bio(tags))}  # seqeval's end is inclusive


def entity_f1(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> float:
    """Micro F1 of entity spans: a predicted span counts only if type, start and end all match.

    ``F1 = 2 * correct / (n_pred + n_gold)`` summed over the corpus, computed by seqeval's
    ``f1_score`` in its default (conlleval) mode, with spans read as :func:`bio_spans` reads
    them (an ``I-X`` without a ``B-X`` before it starts a span). As in conlleval, when neither
    side has any span the score is 0.0.

    >>> entity_f1([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])   # the span ends differ
    0.0
    >>> entity_f1([["B-PER", "O", "I-LOC"]], [["B-PER", "O", "B-LOC"]])
    1.0
    """
    from seqeval.metrics import f1_score  # imported here: it loads scikit-learn

    if len(pred_tags) != len(gold_tags):
        raise ValueError(f"expected as many predicted sentences as gold ones, got {len(pred_tags)} and "
                         f"{len(gold_tags)}")
    if not gold_tags:
        raise ValueError("expected at least one sentence, got none")
    pred, gold = [], []
    for k, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        if len(p) != len(g):
            raise ValueError(f"sentence {k}: expected {len(g)} predicted tags (one per gold tag), got {len(p)}")
        pred.append(_check_bio(p, f"sentence {k}: "))
        gold.append(_check_bio(g, f"sentence {k}: "))
    # zero_division=0: no spans on a side gives precision (or recall) 0, as conlleval does, without a warning
    return float(f1_score(gold, pred, zero_division=0))


def _strings(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"expected as many hypotheses as references, got {len(hyps)} and {len(refs)}")
    if not refs:
        raise ValueError("expected at least one reference, got none")


def exact_match(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction of hypotheses identical to their reference (no normalisation at all).

    >>> exact_match(["2024-01-05", "1999-12-31"], ["2024-01-05", "1999-12-30"])
    0.5
    """
    _strings(hyps, refs)
    return sum(h == r for h, r in zip(hyps, refs)) / len(refs)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences
    (strings, or lists of hashable tokens), from rapidfuzz's ``Levenshtein.distance``.

    >>> levenshtein("kitten", "sitting")
    3
    """
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def char_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus character error rate: ``sum_i lev(hyp_i, ref_i) / sum_i len(ref_i)``.

    Summed over the corpus before dividing (so long references weigh more), as speech and
    OCR toolkits report it. It can exceed 1 when hypotheses are longer than references.

    >>> char_error_rate(["kitten", "ab"], ["sitting", "ab"])   # 3 edits over 9 characters
    0.3333333333333333
    """
    _strings(hyps, refs)
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("expected references with at least one character in all, got only empty ones")
    return sum(levenshtein(h, r) for h, r in zip(hyps, refs)) / total


def bleu(hyps: Sequence[str], refs: Union[Sequence[str], Sequence[Sequence[str]]]) -> float:
    """Corpus BLEU (0-100) from sacrebleu with its defaults (13a tokenisation, exp smoothing).

    ``refs`` holds one reference string per hypothesis, or a list of references for each.
    """
    import sacrebleu  # imported here: only BLEU needs it, and it is slow to import

    _strings(hyps, refs)
    if all(isinstance(r, str) for r in refs):
        streams = [list(refs)]
    else:
        n = {len(r) for r in refs}
        if len(n) != 1:
            raise ValueError(f"expected the same number of references for every hypothesis, got {sorted(n)}")
        streams = [[r[k] for r in refs] for k in range(n.pop())]  # sacrebleu wants one list per reference set
    return float(sacrebleu.corpus_bleu(list(hyps), streams).score)
