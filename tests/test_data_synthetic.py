"""Copy memory and the adding problem: hand-checked layouts, seeds, and baselines that match the data."""
import math

import pytest
import torch
import torch.nn.functional as F

from seqlab.data import (COPY_BLANK, COPY_DELIMITER, COPY_VOCAB, DataError, adding_baseline, adding_problem,
                         copy_memory, copy_memory_baseline)


def test_copy_memory_layout_by_hand():
    T = 3
    x, y = copy_memory(4, T, seed=0)
    assert x.shape == y.shape == (4, T + 20) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        s = row_x[:10]
        assert all(1 <= v <= 8 for v in s)
        assert row_x == s + [0, 0] + [9] + [0] * 10          # symbols, T-1 blanks, delimiter, 10 blanks
        assert row_y == [0] * (T + 10) + s                    # blanks, then the symbols back


def test_copy_memory_constants():
    assert (COPY_BLANK, COPY_DELIMITER, COPY_VOCAB) == (0, 9, 10)
    x, _ = copy_memory(64, 1, seed=1)
    assert x[:, 10].eq(COPY_DELIMITER).all()  # T=1: no blank before the delimiter
    assert set(x[:, :10].unique().tolist()) == set(range(1, 9))


def test_seeds_reproduce_and_generators_advance():
    for fn in (copy_memory, adding_problem):
        a, b = fn(8, 12, seed=5), fn(8, 12, seed=5)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        assert not torch.equal(fn(8, 12, seed=6)[0], a[0])
        g = torch.Generator().manual_seed(5)
        first, second = fn(8, 12, seed=g), fn(8, 12, seed=g)
        assert torch.equal(first[0], a[0])  # a Generator seeded 5 gives what seed=5 gives
        assert not torch.equal(second[0], first[0])


def test_copy_memory_baseline_matches_the_memoryless_strategy():
    T = 30
    x, y = copy_memory(2000, T, seed=0)
    # Blank with certainty for the first T+10 steps, uniform over 1..8 for the last 10.
    logp = torch.full((2000, T + 20, COPY_VOCAB), -math.inf)
    logp[:, : T + 10, COPY_BLANK] = 0.0
    logp[:, T + 10:, 1:9] = -math.log(8)
    loss = F.nll_loss(logp.reshape(-1, COPY_VOCAB), y.reshape(-1))
    assert loss.item() == pytest.approx(copy_memory_baseline(T), rel=1e-6)
    assert copy_memory_baseline(T) == pytest.approx(10 * math.log(8) / 50)


@pytest.mark.parametrize("T", [2, 7, 50])
def test_adding_problem_markers_and_target(T):
    x, y = adding_problem(500, T, seed=3)
    assert x.shape == (500, T, 2) and y.shape == (500,) and x.dtype == torch.float32
    values, marker = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(marker.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert marker[:, :half].sum(1).eq(1).all() and marker[:, half:].sum(1).eq(1).all()
    torch.testing.assert_close(y, (values * marker).sum(1))


def test_adding_problem_by_hand():
    x, y = adding_problem(1, 4, seed=0)
    v, m = x[0, :, 0].tolist(), x[0, :, 1].tolist()
    i, j = [k for k in range(4) if m[k] == 1.0]
    assert i in (0, 1) and j in (2, 3)
    assert y.item() == pytest.approx(v[i] + v[j])


def test_adding_baseline_is_the_mse_of_predicting_one():
    assert adding_baseline() == pytest.approx(1 / 6)
    _, y = adding_problem(200_000, 2, seed=0)
    mse = (y - 1.0).pow(2).mean().item()
    assert mse == pytest.approx(adding_baseline(), abs=3e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)  # why 1.0 is the best constant


def test_bad_arguments_say_what_arrived():
    with pytest.raises(DataError, match="needs T >= 2.*got T=1"):
        adding_problem(4, 1)
    with pytest.raises(DataError, match="batch_size must be a positive int, got 0"):
        copy_memory(0, 5)
    with pytest.raises(DataError, match="T must be a positive int, got 0"):
        copy_memory_baseline(0)
    with pytest.raises(DataError, match="seed must be an int or a torch.Generator, got float"):
        copy_memory(2, 5, seed=1.5)
