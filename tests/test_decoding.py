"""Decoding strategies against hand-computed cases on a tiny Markov chain."""
import math

import pytest
import torch

from seqlab.decoding import beam_search, filter_logits, greedy, length_penalty, sample

EOS = 3
# P(next | previous) for tokens 0..3 (3 = eos); rows are the previous token.
P = torch.tensor([
    [0.00, 0.50, 0.40, 0.10],  # from 0 (the start token): greedy takes 1
    [0.00, 0.35, 0.34, 0.31],  # from 1: no good way to end
    [0.00, 0.05, 0.05, 0.90],  # from 2: ends at once, so 0 -> 2 -> eos (0.36) beats anything through 1
    [0.00, 0.00, 0.00, 1.00],
])


def step(tokens, state):
    """Markov chain: logits depend on the previous token only; state counts steps (and is reordered)."""
    return P[tokens].log(), state + 1


def reorder(state, index):
    return state[index]


def test_greedy_follows_argmax_and_pads_after_eos():
    out = greedy(step, torch.zeros(2), torch.tensor([0, 2]), max_len=4, eos=EOS)
    # row 0: 1 (0.5), then 1 (0.35), 1, 1; row 1: eos, then padded with eos; stops at max_len
    assert out.tolist() == [[1, 1, 1, 1], [EOS, EOS, EOS, EOS]]
    out = greedy(step, torch.zeros(1), torch.tensor([2]), max_len=5, eos=EOS)
    assert out.tolist() == [[EOS]]  # every row finished: stops early


def test_beam_finds_the_better_sequence_greedy_misses():
    hyps = beam_search(step, reorder, torch.zeros(1), torch.tensor([0]), eos=EOS, beam_size=2, max_len=4)
    best = hyps[0][0]
    assert best.tokens == [2, EOS]
    assert best.logprob == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)


def test_beam_one_equals_greedy():
    torch.manual_seed(0)
    W = torch.randn(6, 6)

    def rand_step(tokens, state):
        return W[tokens] + state.unsqueeze(-1) * 0.01 * W[(tokens + 1) % 6], state + 1

    start = torch.tensor([0, 1, 2, 4])
    g = greedy(rand_step, torch.zeros(4), start, max_len=7, eos=5)
    hyps = beam_search(rand_step, reorder, torch.zeros(4), start, eos=5, beam_size=1, max_len=7)
    for row, h in zip(g.tolist(), hyps):
        want = row[: row.index(5) + 1] if 5 in row else row
        assert h[0].tokens == want


def test_length_penalty_formula_and_effect():
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    hyps = beam_search(step, reorder, torch.zeros(1), torch.tensor([0]), eos=EOS, beam_size=3, max_len=3,
                       alpha=1.0, n_best=3)[0]
    for h in hyps:
        assert h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens), 1.0))
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75, 0.5 + 0.3 reaches it
    kept = ~torch.isinf(filter_logits(logits, top_p=0.1))
    assert kept.tolist() == [[True, False, False, False]]  # the most probable always stays
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError, match="temperature should be > 0"):
        filter_logits(logits, temperature=0)
    with pytest.raises(ValueError, match="top_p should be in"):
        filter_logits(logits, top_p=1.5)


def test_sampling_is_seeded_and_respects_top_k():
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = sample(step, torch.zeros(8), torch.zeros(8, dtype=torch.long), max_len=6, eos=EOS, generator=g1)
    b = sample(step, torch.zeros(8), torch.zeros(8, dtype=torch.long), max_len=6, eos=EOS, generator=g2)
    assert torch.equal(a, b)
    c = sample(step, torch.zeros(64), torch.zeros(64, dtype=torch.long), max_len=1, top_k=1)
    assert (c == 1).all()  # top_k=1 is greedy


def test_bad_start_tokens():
    with pytest.raises(ValueError, match="1D LongTensor"):
        greedy(step, None, torch.zeros(2, 2, dtype=torch.long), max_len=3)
    with pytest.raises(ValueError, match="beam_size should be >= 1"):
        beam_search(step, reorder, torch.zeros(1), torch.tensor([0]), eos=EOS, beam_size=0, max_len=3)
