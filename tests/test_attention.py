"""MultiheadAttention against torch.nn with copied weights, the reference kernel, the key/value cache, checks."""
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from seqlab.nn.attention import (KVCache, MultiheadAttention, attention_reference, canonical_mask, causal_mask,
                                 padding_mask)

ATOL = 1e-5
E, NH, L, S, B = 8, 2, 4, 5, 3
KDIM, VDIM = 6, 7  # differ from E and from each other: the separate-weights path


def pair(**kwargs):
    """A torch.nn and a seqlab MultiheadAttention with the same weights."""
    ref = torch.nn.MultiheadAttention(E, NH, **kwargs)
    mine = MultiheadAttention(E, NH, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def make_mask(kind, shape, gen):
    """None, 'bool' (True = not allowed; column 0 always allowed so no row is empty) or 'float'."""
    if kind is None:
        return None
    if kind == "bool":
        m = torch.rand(shape, generator=gen) > 0.6
        m[..., 0] = False
        return m
    return torch.randn(shape, generator=gen)


def run(module, q, k, v, **kwargs):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's deprecation warning for mixed mask types
        out, w = module(q, k if k is not None else q, v if v is not None else q, **kwargs)
    return out, w, (q, k, v)


def compare(ref, mine, q, k, v, self_attention, **kwargs):
    gen = torch.Generator().manual_seed(1)
    if self_attention:  # one tensor for all three: exercises the packed projection
        q1 = q.detach().clone().requires_grad_()
        q2 = q.detach().clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o1, w1 = ref(q1, q1, q1, **kwargs)
        o2, w2 = mine(q2, q2, q2, **kwargs)
        ins1, ins2 = (q1,), (q2,)
    else:
        o1, w1, ins1 = run(ref, q, k, v, **kwargs)
        o2, w2, ins2 = run(mine, q, k, v, **kwargs)
    torch.testing.assert_close(o2, o1, atol=ATOL, rtol=1e-4)
    if w1 is None:
        assert w2 is None
    else:
        torch.testing.assert_close(w2, w1, atol=ATOL, rtol=1e-4)
    grad = torch.randn(o1.shape, generator=gen)
    loss1 = (o1 * grad).sum() + (0 if w1 is None else (w1 * w1).sum())
    loss2 = (o2 * grad).sum() + (0 if w2 is None else (w2 * w2).sum())
    loss1.backward()
    loss2.backward()
    for a, b in zip(ins1, ins2):
        torch.testing.assert_close(b.grad, a.grad, atol=ATOL, rtol=1e-4)
    p1, p2 = dict(ref.named_parameters()), dict(mine.named_parameters())
    assert p1.keys() == p2.keys()
    for name in p1:
        torch.testing.assert_close(p2[name].grad, p1[name].grad, atol=ATOL, rtol=1e-4, msg=name)


MASKS = [None, ("bool", 2), ("float", 2), ("bool", 3), ("float", 3)]
WEIGHTS = [(False, True), (True, True), (True, False)]  # (need_weights, average_attn_weights)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kvdim", [False, True], ids=["same_dims", "kdim_vdim"])
def test_matches_torch_over_flags(batch_first, kvdim):
    gen = torch.Generator().manual_seed(0)
    for bias, bias_kv, zero_attn in itertools.product([True, False], repeat=3):
        kwargs = dict(bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn, batch_first=batch_first)
        if kvdim:
            kwargs.update(kdim=KDIM, vdim=VDIM)
        torch.manual_seed(len(str(kwargs)))
        ref, mine = pair(**kwargs)
        for am, kpm, (need, avg) in itertools.product(MASKS, [None, "bool", "float"], WEIGHTS):
            self_attention = not kvdim
            s = L if self_attention else S
            lay = (lambda t, n, f: torch.randn((B, t, f) if batch_first else (t, B, f), generator=gen))
            q = lay(L, B, E)
            k = None if self_attention else lay(s, B, KDIM)
            v = None if self_attention else lay(s, B, VDIM)
            attn_mask = None if am is None else make_mask(am[0], (L, s) if am[1] == 2 else (B * NH, L, s), gen)
            key_padding_mask = make_mask(kpm, (B, s), gen)
            compare(ref, mine, q, k, v, self_attention, key_padding_mask=key_padding_mask, need_weights=need,
                    attn_mask=attn_mask, average_attn_weights=avg)


@pytest.mark.parametrize("batch_first", [False, True])
def test_is_causal_hint_matches_torch(batch_first):
    ref, mine = pair(batch_first=batch_first)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((B, L, E) if batch_first else (L, B, E), generator=gen)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L)
    for kpm, (need, avg) in itertools.product([None, "bool"], WEIGHTS):
        compare(ref, mine, x, None, None, True, attn_mask=causal, is_causal=True, need_weights=need,
                average_attn_weights=avg, key_padding_mask=make_mask(kpm, (B, L), gen))
    # the hint is trusted when nothing needs the mask (torch's rule): the kernel masks causally
    out_hint, _ = mine(x, x, x, attn_mask=torch.zeros(L, L), is_causal=True, need_weights=False)
    out_mask, _ = mine(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(out_hint, out_mask)


def test_is_causal_needs_attn_mask():
    mha = MultiheadAttention(E, NH)
    x = torch.randn(L, B, E)
    with pytest.raises(RuntimeError, match="needs attn_mask"):
        mha(x, x, x, is_causal=True)


@pytest.mark.parametrize("kvdim", [False, True])
def test_unbatched_matches_torch(kvdim):
    kwargs = dict(kdim=KDIM, vdim=VDIM) if kvdim else {}
    ref, mine = pair(**kwargs)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(L, E, generator=gen)
    k = torch.randn(S, KDIM if kvdim else E, generator=gen)
    v = torch.randn(S, VDIM if kvdim else E, generator=gen)
    for am, kpm, (need, avg) in itertools.product([None, ("bool", 2), ("float", 3)], [None, "bool"], WEIGHTS):
        attn_mask = None if am is None else make_mask(am[0], (L, S) if am[1] == 2 else (NH, L, S), gen)
        compare(ref, mine, q, k, v, False, attn_mask=attn_mask, key_padding_mask=make_mask(kpm, (S,), gen),
                need_weights=need, average_attn_weights=avg)


def test_non_contiguous_inputs():
    ref, mine = pair(batch_first=True)
    x = torch.randn(L, B, E).transpose(0, 1)  # (B, L, E), not contiguous
    assert not x.is_contiguous()
    compare(ref, mine, x, x, x, False, need_weights=False)


@pytest.mark.parametrize("kvdim", [False, True])
def test_state_dict_loads_both_ways(kvdim):
    kwargs = dict(kdim=KDIM, vdim=VDIM, add_bias_kv=True) if kvdim else dict(bias=False)
    mine = MultiheadAttention(E, NH, **kwargs)
    ref = torch.nn.MultiheadAttention(E, NH, **kwargs)
    ref.load_state_dict(mine.state_dict())  # strict: same names and shapes
    for (n1, p1), (n2, p2) in zip(mine.state_dict().items(), ref.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert (mine.in_proj_weight is None) == kvdim and (mine.q_proj_weight is None) != kvdim


def test_initialisation_follows_torch():
    mha = MultiheadAttention(E, NH)
    assert torch.all(mha.in_proj_bias == 0) and torch.all(mha.out_proj.bias == 0)
    bound = (6 / (E + 3 * E)) ** 0.5  # xavier-uniform over the stacked (3E, E) weight, as torch.nn
    assert mha.in_proj_weight.abs().max() <= bound


def test_sdpa_path_equals_reference_kernel():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, NH, n, 4, generator=gen) for n in (L, S, S))
    mask = canonical_mask(make_mask("bool", (L, S), gen), "m", torch.float32)
    for m, causal in [(None, False), (mask, False), (None, True)]:
        ref, w = attention_reference(q, k, v, m, is_causal=causal)
        fast = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
        torch.testing.assert_close(fast, ref, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, NH, L))


def test_half_precision_attends_in_float32_on_the_cpu():
    torch.manual_seed(0)
    mha = MultiheadAttention(16, 2, batch_first=True)
    q, k, v = (torch.randn(2, 2, 5, 8).bfloat16() for _ in range(3))  # (B, nh, T, hs)
    mask = causal_mask(5, dtype=torch.bfloat16)
    out, _ = mha._attend(q, k, v, mask, False, False)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, want.bfloat16())  # one rounding, at the end
    # under autocast: bfloat16 out, close to the float32 module, and gradients reach every weight
    x = torch.randn(2, 5, 16, requires_grad=True)
    ref, _ = mha(x, x, x, need_weights=False, attn_mask=causal_mask(5), is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = mha(x, x, x, need_weights=False, attn_mask=causal_mask(5), is_causal=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=3e-2)
    got.float().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in mha.parameters())


def test_dropout_acts_in_training_only():
    mha = MultiheadAttention(E, NH, dropout=0.5, batch_first=True)
    x = torch.randn(B, L, E)
    _, w_train = mha(x, x, x, average_attn_weights=False)
    assert (w_train == 0).any()  # some weights dropped, the rest scaled by 2
    mha.eval()
    out1, w1 = mha(x, x, x)
    out2, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(w1.sum(-1), torch.ones(B, L))


# ----------------------------------------------------------------------------
# float64 gradcheck


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "kdim_bias_kv_zero_attn"])
def test_gradcheck(need_weights, extras):
    torch.manual_seed(0)
    kwargs = dict(kdim=3, vdim=5, add_bias_kv=True, add_zero_attn=True) if extras else {}
    mha = MultiheadAttention(4, 2, batch_first=True, dtype=torch.float64, **kwargs)
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 3 if extras else 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 5 if extras else 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True], [False, False], [False, True]])
    kpm = torch.tensor([[False, False], [False, True]])  # every query keeps one key: no empty softmax
    params = tuple(mha.parameters())

    def f(q, k, v, *ps):
        out, w = torch.func.functional_call(mha, dict(zip([n for n, _ in mha.named_parameters()], ps)),
                                            (q, k, v), dict(attn_mask=mask, key_padding_mask=kpm,
                                                            need_weights=need_weights))
        return out if w is None else (out, w)

    assert gradcheck(f, (q, k, v) + params, atol=1e-6)


# ----------------------------------------------------------------------------
# The key/value cache


def test_cached_self_attention_equals_full():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, NH, batch_first=True)
    x = torch.randn(B, 7, E)
    full, _ = mha(x, x, x, attn_mask=causal_mask(7), need_weights=False)
    with torch.no_grad():
        cache = KVCache()
        # a prefix of 3, then one token, then a chunk of 3 with the causal mask aligned to the last key
        parts = [x[:, :3], x[:, 3:4], x[:, 4:]]
        outs = [mha(p, p, p, is_causal=True, cache=cache, need_weights=False)[0] for p in parts]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-4)
    assert len(cache) == 7 and cache.k.shape == (B, NH, 7, E // NH)


def test_cache_under_autograd_matches_and_backpropagates():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, NH, batch_first=True, add_bias_kv=True)
    x = torch.randn(B, 4, E, requires_grad=True)
    full, wf = mha(x, x, x, attn_mask=causal_mask(4))
    cache = KVCache()
    outs, ws = zip(*[mha(x[:, t:t + 1], x[:, t:t + 1], x[:, t:t + 1], cache=cache) for t in range(4)])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ws[-1], wf[:, -1:], atol=ATOL, rtol=1e-4)  # the last step sees every key
    (g_full,) = torch.autograd.grad(full.sum(), x)
    (g_step,) = torch.autograd.grad(torch.cat(outs, 1).sum(), x)
    torch.testing.assert_close(g_step, g_full, atol=ATOL, rtol=1e-4)


def test_static_cache_projects_memory_once():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, NH, kdim=KDIM, vdim=VDIM)
    memory = torch.randn(S, B, KDIM)
    values = torch.randn(S, B, VDIM)
    kpm = padding_mask(torch.tensor([5, 3, 1]))
    cache = KVCache(static=True)
    y = torch.randn(3, B, E)
    expected, _ = mha(y, memory, values, key_padding_mask=kpm)
    got0, _ = mha(y[:1], memory, values, key_padding_mask=kpm, cache=cache)
    # later calls do not read key and value at all
    got1, _ = mha(y[1:], torch.full_like(memory, float("nan")), values * float("nan"), key_padding_mask=kpm,
                  cache=cache)
    torch.testing.assert_close(torch.cat([got0, got1]), expected, atol=ATOL, rtol=1e-4)
    assert len(cache) == S


def test_cache_reorder_and_batch_check():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, NH, batch_first=True).eval()
    x = torch.randn(B, 3, E)
    with torch.no_grad():
        cache = KVCache()
        mha(x[:, :2], x[:, :2], x[:, :2], is_causal=True, cache=cache)
        index = torch.tensor([2, 2, 0])
        cache.reorder(index)
        step, _ = mha(x[index, 2:], x[index, 2:], x[index, 2:], cache=cache)
        xr = x[index]
        full, _ = mha(xr, xr, xr, attn_mask=causal_mask(3))
        torch.testing.assert_close(step, full[:, 2:], atol=ATOL, rtol=1e-4)
        with pytest.raises(ValueError, match="cache holds"):
            mha(x[:2, :1], x[:2, :1], x[:2, :1], cache=cache)


def test_cache_buffer_grows_and_copies_only_new_positions():
    cache = KVCache()
    with torch.no_grad():
        chunks = [torch.randn(2, 1, n, 3) for n in (2, 1, 4, 1)]
        for c in chunks:
            k, v = cache.append(c, -c)
    assert cache._k.size(2) >= 8 and len(cache) == 8
    torch.testing.assert_close(k, torch.cat(chunks, 2))
    torch.testing.assert_close(v, -torch.cat(chunks, 2))


# ----------------------------------------------------------------------------
# Masks and argument checks


def test_mask_helpers():
    torch.testing.assert_close(causal_mask(4), torch.nn.Transformer.generate_square_subsequent_mask(4))
    m = causal_mask(2, 4)  # two new tokens after two kept ones
    assert torch.isinf(m).tolist() == [[False, False, False, True], [False, False, False, False]]
    assert padding_mask(torch.tensor([3, 1]), 4).tolist() == [[False, False, False, True], [False, True, True, True]]
    with pytest.raises(ValueError, match="key_len >= query_len"):
        causal_mask(3, 2)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match=r"divisible by num_heads, got embed_dim=7 and num_heads=2"):
        MultiheadAttention(7, 2)
    with pytest.raises(ValueError, match="num_heads must be >= 1, got 0"):
        MultiheadAttention(8, 0)
    mha = MultiheadAttention(E, NH, kdim=KDIM, vdim=VDIM)
    q, k, v = torch.randn(L, B, E), torch.randn(S, B, KDIM), torch.randn(S, B, VDIM)
    with pytest.raises(ValueError, match=r"expected key with 6 features \(kdim\), got 8"):
        mha(q, torch.randn(S, B, E), v)
    with pytest.raises(ValueError, match=r"expected query with 8 features \(embed_dim\), got 7"):
        mha(torch.randn(L, B, 7), k, v)
    with pytest.raises(ValueError, match="same batch size, got 3, 2 and 3"):
        mha(q, k[:, :2], v)
    with pytest.raises(ValueError, match="same sequence length, got 5 and 4"):
        mha(q, k, v[:4])
    with pytest.raises(ValueError, match="batched 3D, got 4D"):
        mha(q.unsqueeze(0), k, v)
    with pytest.raises(ValueError, match=r"2D attn_mask of shape \(L, S\) = \(4, 5\), got \(5, 4\)"):
        mha(q, k, v, attn_mask=torch.zeros(S, L))
    with pytest.raises(ValueError, match=r"\(N\*num_heads, L, S\) = \(6, 4, 5\), got \(3, 4, 5\)"):
        mha(q, k, v, attn_mask=torch.zeros(B, L, S))
    with pytest.raises(TypeError, match="bool .* or floating .* got torch.int64"):
        mha(q, k, v, attn_mask=torch.zeros(L, S, dtype=torch.long))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(N, S\) = \(3, 5\), got \(5, 3\)"):
        mha(q, k, v, key_padding_mask=torch.zeros(S, B, dtype=torch.bool))
    with pytest.raises(TypeError, match="cache should be a KVCache"):
        mha(q, k, v, cache={})
