"""Padding, seeded batches and BPTT windows, and exact resumption from a JSON state."""
import json

import pytest
import torch

from seqlab.data import BatchIterator, BPTTBatcher, DataError, pad_collate


def test_pad_collate_by_hand():
    padded, lengths = pad_collate([[5, 6, 7], torch.tensor([8]), []], pad_id=0)
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    assert padded.dtype == lengths.dtype == torch.long
    assert pad_collate([[1, 2]], pad_id=9)[0].tolist() == [[1, 2]]
    assert pad_collate([[1], [1, 2]], pad_id=9)[0].tolist() == [[1, 9], [1, 2]]


def test_pad_collate_refuses_empty_batches_and_2d_sequences():
    with pytest.raises(DataError, match="at least one sequence"):
        pad_collate([])
    with pytest.raises(DataError, match="sequence 1 is 2-D"):
        pad_collate([[1], torch.zeros(2, 2)])


def _drain(it, epochs):
    return [b for _ in range(epochs) for b in it]


def test_batch_iterator_serves_each_example_once_per_epoch():
    data = list(range(23))
    it = BatchIterator(data, 5, seed=0)
    assert len(it) == 5
    e0, e1 = list(it), list(it)
    assert [len(b) for b in e0] == [5, 5, 5, 5, 3]
    assert sorted(x for b in e0 for x in b) == data == sorted(x for b in e1 for x in b)
    assert e0 != e1 and it.epoch == 2 and it.position == 0
    assert _drain(BatchIterator(data, 5, seed=0), 2) == e0 + e1  # same seed, same batches
    assert _drain(BatchIterator(data, 5, seed=1), 1) != e0


def test_batch_iterator_without_shuffle_and_drop_last():
    it = BatchIterator(list("abcdefg"), 3, shuffle=False, drop_last=True)
    assert len(it) == 2 and list(it) == [["a", "b", "c"], ["d", "e", "f"]]


def test_batch_iterator_state_taken_after_a_batch_resumes_with_the_next():
    data = list(range(23))
    reference = _drain(BatchIterator(data, 5, seed=7), 3)
    for used in range(0, 9):
        it = BatchIterator(data, 5, seed=7)
        got = []
        while len(got) < used:
            got.extend(_take(it, used - len(got)))
        state = json.loads(json.dumps(it.state_dict()))
        resumed = BatchIterator(data, 5, seed=0)  # the seed comes from the state
        resumed.load_state_dict(state)
        rest = []
        while len(got) + len(rest) < len(reference):
            rest.extend(list(resumed))
        assert got + rest == reference, used


def _take(it, k):
    """Up to k batches of it's current epoch, leaving its state right after the last one."""
    out = []
    for b in it:
        out.append(b)
        if len(out) == k:
            break
    return out


def test_batch_iterator_state_is_checked():
    it = BatchIterator(list(range(10)), 3)
    with pytest.raises(DataError, match="state is for 11 examples, this data has 10"):
        it.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "size": 11})
    with pytest.raises(DataError, match="must be a dict of ints"):
        it.load_state_dict({"epoch": 0})
    with pytest.raises(DataError, match="batch_size must be >= 1, got 0"):
        BatchIterator([1], 0)


def test_bptt_windows_are_contiguous_per_row():
    stream = torch.arange(103)
    b = BPTTBatcher(stream, batch_size=4, bptt=6)  # rows of 25, the last 3 tokens dropped
    assert b.rows.tolist() == torch.arange(100).view(4, 25).tolist()
    windows = list(b)
    assert len(windows) == len(b) == 4  # starts 0, 6, 12, 18
    assert [w.shape[1] for w in windows] == [7, 7, 7, 7]
    for prev, nxt in zip(windows, windows[1:]):
        assert torch.equal(prev[:, -1], nxt[:, 0])  # the target of one window feeds the next
    inputs = torch.cat([w[:, :-1] for w in windows], 1)
    assert torch.equal(inputs, b.rows[:, :24])
    x, y = windows[0][:, :-1], windows[0][:, 1:]
    assert torch.equal(y, x + 1)  # targets are the next token
    assert b.epoch == 1 and b.position == 0


def test_bptt_last_window_may_be_short():
    b = BPTTBatcher(list(range(20)), batch_size=2, bptt=4)  # rows of 10: starts 0, 4, 8
    assert [w.shape for w in b] == [(2, 5), (2, 5), (2, 2)]


def test_bptt_resumes_exactly_and_accepts_a_new_bptt():
    stream = torch.arange(500)
    ref = [w.clone() for _ in range(2) for w in BPTTBatcher(stream, 3, 7)]
    b = BPTTBatcher(stream, 3, 7)
    got = _take(b, 5)
    resumed = BPTTBatcher(stream, 3, 7)
    resumed.load_state_dict(json.loads(json.dumps(b.state_dict())))
    got += list(resumed) + list(resumed)
    assert len(got) == len(ref) and all(torch.equal(p, q) for p, q in zip(got, ref))
    other = BPTTBatcher(stream, 3, 10)
    other.load_state_dict(b.state_dict())
    assert torch.equal(next(iter(other))[:, 0], ref[5][:, 0])  # same column, longer window


def test_bptt_bad_inputs():
    with pytest.raises(DataError, match="3 tokens are too few for 2 rows"):
        BPTTBatcher([1, 2, 3], 2, 4)
    with pytest.raises(DataError, match="expects a 1-D id stream, got shape \\(2, 2\\)"):
        BPTTBatcher(torch.zeros(2, 2), 1, 4)
    b = BPTTBatcher(list(range(40)), 2, 4)
    with pytest.raises(DataError, match="state is for 4 rows of 10 tokens, this stream gives 2 rows of 20"):
        b.load_state_dict({"epoch": 0, "position": 0, "batch_size": 4, "row_length": 10})
