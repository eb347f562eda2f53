"""Bahdanau and Luong attention against a per-position loop of their equations; masking; gradcheck."""

import pytest
import torch
from torch.autograd import gradcheck

from seqlab.nn.attention import padding_mask
from seqlab.nn.seq2seq_attention import BahdanauAttention, LuongAttention

B, S, T, DQ, DK, A = 3, 6, 4, 5, 7, 3  # DQ != DK: the general and additive scores map between them
LENGTHS = torch.tensor([6, 4, 1])


def modules(dtype=torch.float32, batch_first=False):
    torch.manual_seed(0)
    return {
        "bahdanau": BahdanauAttention(DQ, DK, A, batch_first=batch_first).to(dtype),
        "luong_general": LuongAttention(DQ, DK, score="general", batch_first=batch_first).to(dtype),
        "luong_dot": LuongAttention(DK, score="dot", batch_first=batch_first).to(dtype),
    }


def loop_reference(name, attn, s, h, lengths):
    """The equations one (batch, step, source position) at a time, over the real positions only.

    s (B, T, Dq), h (B, S, Dk) -> context (B, T, Dk), weights (B, T, S).
    """
    Bn, Tn, _ = s.shape
    context = torch.zeros(Bn, Tn, h.size(-1), dtype=s.dtype)
    weights = torch.zeros(Bn, Tn, h.size(1), dtype=s.dtype)
    for b in range(Bn):
        for t in range(Tn):
            e = []
            for j in range(int(lengths[b])):
                if name == "bahdanau":  # v^T tanh(W s + U h + b)
                    W, U, bias, v = attn.query_proj.weight, attn.key_proj.weight, attn.key_proj.bias, attn.v.weight[0]
                    e.append(v @ torch.tanh(W @ s[b, t] + U @ h[b, j] + bias))
                elif name == "luong_general":  # s^T W_a h
                    e.append(s[b, t] @ (attn.linear.weight @ h[b, j]))
                else:  # s^T h
                    e.append(s[b, t] @ h[b, j])
            alpha = torch.softmax(torch.stack(e), 0)
            weights[b, t, : len(e)] = alpha
            context[b, t] = (alpha.unsqueeze(1) * h[b, : len(e)]).sum(0)
    return context, weights


@pytest.mark.parametrize("name", ["bahdanau", "luong_general", "luong_dot"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_loop_of_the_equations(name, batch_first):
    attn = modules(batch_first=batch_first)[name]
    dq = DK if name == "luong_dot" else DQ
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(B, T, dq, generator=gen)
    h = torch.randn(B, S, DK, generator=gen)
    mask = padding_mask(LENGTHS, S)
    ref_c, ref_w = loop_reference(name, attn, s, h, LENGTHS)
    keys = h if batch_first else h.transpose(0, 1)  # (S, B, Dk) for an RNN encoder's output
    query = s if batch_first else s.transpose(0, 1)
    c, w = attn(query, keys, key_padding_mask=mask)  # all T decoder steps at once
    torch.testing.assert_close(c if batch_first else c.transpose(0, 1), ref_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    # one step at a time, with the keys projected once
    projected = attn.project_keys(keys)
    for t in range(T):
        c_t, w_t = attn(s[:, t], keys, key_padding_mask=mask, projected_keys=projected)  # (B, Dk), (B, S)
        torch.testing.assert_close(c_t, ref_c[:, t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w_t, ref_w[:, t], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["bahdanau", "luong_general", "luong_dot"])
def test_masked_positions_get_exactly_zero_and_weights_sum_to_one(name):
    attn = modules()[name]
    dq = DK if name == "luong_dot" else DQ
    gen = torch.Generator().manual_seed(1)
    h = 30 * torch.randn(S, B, DK, generator=gen)  # large scores: masking must not rely on them being small
    v = torch.randn(S, B, 2, generator=gen)  # values other than the keys
    mask = padding_mask(LENGTHS, S)
    q = torch.randn(B, dq, generator=gen)
    c, w = attn(q, h, values=v, key_padding_mask=mask)
    assert c.shape == (B, 2) and w.shape == (B, S)
    assert torch.all(w[mask] == 0.0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B))
    assert w[2, 0].item() == 1.0  # a source of length one takes all the weight
    # padded values do not leak into the context even when they are huge
    v_poisoned = v.clone()
    v_poisoned.transpose(0, 1)[mask] = 1e9  # (B, S, 2)[mask]
    c_poisoned, _ = attn(q, h, values=v_poisoned, key_padding_mask=mask)
    torch.testing.assert_close(c_poisoned, c)

def test_fully_padded_row_gives_zero_context_not_nan():
    attn = BahdanauAttention(DQ, DK, A)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1] = True
    h = torch.randn(S, B, DK, requires_grad=True)
    c, w = attn(torch.randn(B, DQ), h, key_padding_mask=mask)
    assert torch.all(w[1] == 0) and torch.all(c[1] == 0)
    c.sum().backward()
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("name", ["bahdanau", "luong_general", "luong_dot"])
def test_gradcheck(name):
    attn = modules(torch.float64, batch_first=True)[name]
    dq = DK if name == "luong_dot" else DQ
    s = torch.randn(2, 2, dq, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, DK, dtype=torch.float64, requires_grad=True)
    mask = padding_mask(torch.tensor([3, 2]), 3)
    assert gradcheck(lambda s, h: attn(s, h, key_padding_mask=mask), (s, h))
    names = [n for n, _ in attn.named_parameters()]
    if names:
        assert gradcheck(lambda *ps: torch.func.functional_call(attn, dict(zip(names, ps)), (s.detach(), h.detach()),
                                                                {"key_padding_mask": mask}),
                         tuple(attn.parameters()))


def test_parameters_and_bad_arguments():
    attn = BahdanauAttention(DQ, DK, A)
    assert {n: tuple(p.shape) for n, p in attn.named_parameters()} == {
        "query_proj.weight": (A, DQ), "key_proj.weight": (A, DK), "key_proj.bias": (A,), "v.weight": (1, A)}
    assert not list(LuongAttention(DK, score="dot").parameters())
    with pytest.raises(ValueError, match="dot score needs query_size == key_size, got 5 and 7"):
        LuongAttention(DQ, DK, score="dot")
    with pytest.raises(ValueError, match="score should be 'dot' or 'general', got 'concat'"):
        LuongAttention(DQ, DK, score="concat")
    h = torch.randn(S, B, DK)
    with pytest.raises(ValueError, match=r"expected query with 5 features \(query_size\), got 7"):
        attn(torch.randn(B, DK), h)
    with pytest.raises(ValueError, match=r"expected keys with 7 features \(key_size\), got 5"):
        attn(torch.randn(B, DQ), torch.randn(S, B, DQ))
    with pytest.raises(ValueError, match="same batch size, got 2 and 3"):
        attn(torch.randn(2, DQ), h)
    with pytest.raises(ValueError, match=r"key_padding_mask \(B, S\) = \(3, 6\), got \(6, 3\)"):
        attn(torch.randn(B, DQ), h, key_padding_mask=torch.zeros(S, B, dtype=torch.bool))
    with pytest.raises(TypeError, match="should be bool"):
        attn(torch.randn(B, DQ), h, key_padding_mask=torch.zeros(B, S))
    torch.testing.assert_close(attn(torch.randn(B, DQ), h)[1].sum(-1), torch.ones(B))  # no mask: plain softmax
