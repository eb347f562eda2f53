"""Transformer layers and stacks against torch.nn with copied weights; cached decoding; positional encodings."""
import itertools
import math
import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from seqlab.nn.attention import padding_mask
from seqlab.nn.positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding
from seqlab.nn.transformer import (LayerCache, Transformer, TransformerCache, TransformerDecoder,
                                   TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer)

ATOL = 1e-5
D, NH, FF, B, T, S = 8, 2, 12, 3, 5, 4
ACTIVATIONS = ["relu", "gelu", torch.tanh]


def copied(ref_cls, mine_cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's note that its nested-tensor path is off
        ref = ref_cls(*args, **kwargs)
    mine = mine_cls(*args, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def check_same(ref, mine, inputs, call):
    """call(module, *inputs) on both with fresh leaf inputs; outputs, input and parameter gradients agree."""
    ins1 = [x.detach().clone().requires_grad_() for x in inputs]
    ins2 = [x.detach().clone().requires_grad_() for x in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's notes about its fast paths and mixed mask types
        o1 = call(ref, *ins1)
    o2 = call(mine, *ins2)
    torch.testing.assert_close(o2, o1, atol=ATOL, rtol=1e-4)
    grad = torch.randn(o1.shape, generator=torch.Generator().manual_seed(3))
    (o1 * grad).sum().backward()
    (o2 * grad).sum().backward()
    for a, b in zip(ins1, ins2):
        torch.testing.assert_close(b.grad, a.grad, atol=ATOL, rtol=1e-4)
    p1, p2 = dict(ref.named_parameters()), dict(mine.named_parameters())
    assert p1.keys() == p2.keys()
    for name in p1:
        torch.testing.assert_close(p2[name].grad, p1[name].grad, atol=ATOL, rtol=1e-4, msg=name)


def seq(n, batch_first, gen, batch=B):
    return torch.randn((batch, n, D) if batch_first else (n, batch, D), generator=gen)


def square_mask(kind, n, gen):
    """None, a random bool or float mask, or 'causal' (the float causal mask with the is_causal hint)."""
    if kind is None:
        return None, False
    if kind == "causal":
        return Transformer.generate_square_subsequent_mask(n), True
    if kind == "bool":
        m = torch.rand(n, n, generator=gen) > 0.6
        m.fill_diagonal_(False)
        return m, False
    return torch.randn(n, n, generator=gen), False


def pad_mask(kind, n, gen):
    if kind is None:
        return None
    m = padding_mask(torch.tensor([n, n - 1, 2]), n)  # (B, n)
    return m if kind == "bool" else torch.zeros(B, n).masked_fill(m, -1e4) + 0.1 * torch.randn(B, n, generator=gen)


FLAGS = list(itertools.product([False, True], [False, True], ACTIVATIONS, [True, False]))


def flag_id(f):
    bf, nf, act, bias = f
    return f"bf{int(bf)}-nf{int(nf)}-{getattr(act, '__name__', act)}-bias{int(bias)}"


# ----------------------------------------------------------------------------
# Layers against torch.nn


@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_encoder_layer_matches_torch(flags):
    batch_first, norm_first, activation, bias = flags
    torch.manual_seed(0)
    ref, mine = copied(nn.TransformerEncoderLayer, TransformerEncoderLayer, D, NH, FF, 0.0, activation,
                       batch_first=batch_first, norm_first=norm_first, bias=bias)
    gen = torch.Generator().manual_seed(0)
    for mk, kk in itertools.product([None, "bool", "float", "causal"], [None, "bool", "float"]):
        mask, causal = square_mask(mk, T, gen)
        kpm = pad_mask(kk, T, gen)
        check_same(ref, mine, [seq(T, batch_first, gen)],
                   lambda m, x: m(x, src_mask=mask, src_key_padding_mask=kpm, is_causal=causal))


@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_decoder_layer_matches_torch(flags):
    batch_first, norm_first, activation, bias = flags
    torch.manual_seed(0)
    ref, mine = copied(nn.TransformerDecoderLayer, TransformerDecoderLayer, D, NH, FF, 0.0, activation,
                       batch_first=batch_first, norm_first=norm_first, bias=bias)
    gen = torch.Generator().manual_seed(0)
    cases = [(None, None, None, None), ("causal", None, None, "bool"), ("bool", "bool", "bool", None),
             ("float", "float", "float", "float"), ("causal", "bool", None, "float")]
    for tk, mk, tkk, mkk in cases:
        tgt_mask, causal = square_mask(tk, T, gen)
        memory_mask = None if mk is None else (torch.rand(T, S, generator=gen) > 0.7 if mk == "bool"
                                               else torch.randn(T, S, generator=gen))
        if mk == "bool":
            memory_mask[:, 0] = False
        tkpm, mkpm = pad_mask(tkk, T, gen), pad_mask(mkk, S, gen)
        check_same(ref, mine, [seq(T, batch_first, gen), seq(S, batch_first, gen)],
                   lambda m, y, x: m(y, x, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tkpm,
                                     memory_key_padding_mask=mkpm, tgt_is_causal=causal))


def test_unbatched_layers_match_torch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ref, mine = copied(nn.TransformerEncoderLayer, TransformerEncoderLayer, D, NH, FF, 0.0)
    check_same(ref, mine, [torch.randn(T, D, generator=gen)],
               lambda m, x: m(x, src_key_padding_mask=torch.tensor([False] * (T - 1) + [True])))
    ref, mine = copied(nn.TransformerDecoderLayer, TransformerDecoderLayer, D, NH, FF, 0.0, norm_first=True)
    mask = Transformer.generate_square_subsequent_mask(T)
    check_same(ref, mine, [torch.randn(T, D, generator=gen), torch.randn(S, D, generator=gen)],
               lambda m, y, x: m(y, x, tgt_mask=mask, tgt_is_causal=True))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch(batch_first, norm_first):
    torch.manual_seed(0)
    kwargs = dict(d_model=D, nhead=NH, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FF, dropout=0.0,
                  batch_first=batch_first, norm_first=norm_first)
    ref, mine = copied(nn.Transformer, Transformer, **kwargs)
    gen = torch.Generator().manual_seed(0)
    src_pad = padding_mask(torch.tensor([S, 2, 3]), S)
    for tgt_mask, src_mask, is_causal in [(None, None, None),
                                          (Transformer.generate_square_subsequent_mask(T), None, None),
                                          (Transformer.generate_square_subsequent_mask(T) > -1, None, False),
                                          (None, torch.zeros(S, S), None)]:
        check_same(ref, mine, [seq(S, batch_first, gen), seq(T, batch_first, gen)],
                   lambda m, x, y: m(x, y, src_mask=src_mask, tgt_mask=tgt_mask, src_key_padding_mask=src_pad,
                                     memory_key_padding_mask=src_pad, tgt_is_causal=is_causal))


def test_stacks_with_norm_match_torch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, NH, FF, 0.0, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(D), enable_nested_tensor=False)
    mine = TransformerEncoder(TransformerEncoderLayer(D, NH, FF, 0.0, batch_first=True), 3, norm=nn.LayerNorm(D),
                              enable_nested_tensor=True, mask_check=False)
    mine.load_state_dict(ref.state_dict())
    mask = Transformer.generate_square_subsequent_mask(T)  # detected as causal (is_causal=None)
    check_same(ref, mine, [seq(T, True, gen)], lambda m, x: m(x, mask=mask))
    ref = nn.TransformerDecoder(nn.TransformerDecoderLayer(D, NH, FF, 0.0), 2, norm=nn.LayerNorm(D))
    mine = TransformerDecoder(TransformerDecoderLayer(D, NH, FF, 0.0), 2, norm=nn.LayerNorm(D))
    mine.load_state_dict(ref.state_dict())
    check_same(ref, mine, [seq(T, False, gen), seq(S, False, gen)], lambda m, y, x: m(y, x, tgt_mask=mask))


def test_state_dicts_load_both_ways():
    kwargs = dict(d_model=D, nhead=NH, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=FF, bias=False)
    mine, (ref, _) = Transformer(**kwargs), copied(nn.Transformer, Transformer, **kwargs)
    ref.load_state_dict(mine.state_dict())
    for (n1, p1), (n2, p2) in zip(mine.state_dict().items(), ref.state_dict().items()):
        assert n1 == n2 and p1.shape == p2.shape and torch.equal(p1, p2)


def test_stacks_deep_copy_the_layer_and_accept_custom_parts():
    layer = TransformerEncoderLayer(D, NH, FF)
    enc = TransformerEncoder(layer, 2)
    assert enc.layers[0] is not layer and enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight
    torch.testing.assert_close(enc.layers[0].linear1.weight, enc.layers[1].linear1.weight)
    dec = TransformerDecoder(TransformerDecoderLayer(D, NH, FF), 1)
    model = Transformer(D, NH, custom_encoder=enc, custom_decoder=dec)
    assert model.encoder is enc and model.decoder is dec
    # torch.nn layers stack inside seqlab stacks (no cache is passed to them)
    mixed = TransformerEncoder(nn.TransformerEncoderLayer(D, NH, FF, 0.0), 2)
    assert mixed(torch.randn(T, B, D)).shape == (T, B, D)


def test_square_subsequent_mask_matches_torch():
    torch.testing.assert_close(Transformer.generate_square_subsequent_mask(6, dtype=torch.float64),
                               nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64))


@pytest.mark.parametrize("norm_first", [False, True])
def test_gradcheck_layers(norm_first):
    torch.manual_seed(0)
    kw = dict(dim_feedforward=6, dropout=0.0, batch_first=True, norm_first=norm_first, activation="gelu",
              dtype=torch.float64)
    enc, dec = TransformerEncoderLayer(4, 2, **kw), TransformerDecoderLayer(4, 2, **kw)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    causal = Transformer.generate_square_subsequent_mask(3, dtype=torch.float64)
    kpm = torch.tensor([[False, False], [False, True]])
    assert gradcheck(lambda x: enc(x, src_mask=causal, src_key_padding_mask=kpm[:, [0, 0, 1]]), (x,))
    assert gradcheck(lambda x, m: dec(x, m, tgt_mask=causal, memory_key_padding_mask=kpm), (x, m))
    names = [n for n, _ in dec.named_parameters()]
    assert gradcheck(lambda *ps: torch.func.functional_call(dec, dict(zip(names, ps)), (x.detach(), m.detach())),
                     tuple(dec.parameters()))


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="divisible by num_heads, got embed_dim=7 and num_heads=2"):
        TransformerEncoderLayer(7, 2)
    with pytest.raises(ValueError, match="activation should be 'relu', 'gelu' or a callable, got 'swish'"):
        TransformerDecoderLayer(D, NH, activation="swish")
    with pytest.raises(ValueError, match="num_layers should be an int >= 1, got 0"):
        TransformerEncoder(TransformerEncoderLayer(D, NH), 0)
    model = Transformer(D, NH, 1, 1, FF)
    with pytest.raises(ValueError, match="d_model=8 features, got 8 and 7"):
        model(torch.randn(S, B, D), torch.randn(T, B, 7))
    with pytest.raises(ValueError, match="same batch size, got 3 and 2"):
        model(torch.randn(S, B, D), torch.randn(T, 2, D))
    layer = TransformerEncoderLayer(D, NH, FF)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(L, S\) = \(5, 5\), got \(4, 4\)"):
        layer(torch.randn(T, B, D), src_mask=torch.zeros(S, S))
    with pytest.raises(TypeError, match="got torch.int32"):
        layer(torch.randn(T, B, D), src_key_padding_mask=torch.zeros(B, T, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="needs attn_mask"):
        layer(torch.randn(T, B, D), is_causal=True)
    with pytest.raises(TypeError, match="cache=TransformerCache or None, got LayerCache"):
        TransformerEncoder(layer, 1)(torch.randn(T, B, D), cache=LayerCache())


# ----------------------------------------------------------------------------
# Cached incremental decoding


class TinyLM(nn.Module):
    """Decoder-only test model: embedding + sinusoidal positions + causal stack + head (the real LM comes later)."""

    def __init__(self, vocab=11, d_model=D, nhead=NH, layers=2, norm_first=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = SinusoidalPositionalEncoding(d_model, batch_first=True)
        layer = TransformerEncoderLayer(d_model, nhead, 2 * d_model, 0.0, batch_first=True, norm_first=norm_first)
        self.stack = TransformerEncoder(layer, layers)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens, cache=None):
        """tokens (B, T) -> logits (B, T, V); with a cache, tokens are the new ones only."""
        offset = 0 if cache is None else cache.length
        x = self.pos(self.embed(tokens), offset=offset)  # (B, T, E)
        if cache is None:
            mask = Transformer.generate_square_subsequent_mask(tokens.size(1))
            return self.head(self.stack(x, mask=mask, is_causal=True))
        return self.head(self.stack(x, is_causal=True, cache=cache))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_only_cached_steps_equal_full_recomputation(norm_first):
    torch.manual_seed(0)
    model = TinyLM(norm_first=norm_first).eval()
    tokens = torch.randint(0, 11, (B, 9))
    with torch.no_grad():
        full = model(tokens)  # (B, 9, V)
        cache = TransformerCache()
        prefill = model(tokens[:, :3], cache=cache)  # a prompt of 3
        steps = [model(tokens[:, t:t + 1], cache=cache) for t in range(3, 6)]  # one token at a time
        chunk = model(tokens[:, 6:], cache=cache)  # and a chunk of 3
    torch.testing.assert_close(torch.cat([prefill, *steps, chunk], 1), full, atol=ATOL, rtol=1e-4)
    assert cache.length == 9 and len(cache.layers) == 2


def test_decoder_only_greedy_generation_equals_recomputation_and_beam_reorder():
    torch.manual_seed(0)
    model = TinyLM().eval()
    prompt = torch.randint(0, 11, (B, 2))
    with torch.no_grad():
        seq_full = prompt
        for _ in range(6):  # the slow way: the whole prefix at every step
            nxt = model(seq_full)[:, -1].argmax(-1, keepdim=True)
            seq_full = torch.cat([seq_full, nxt], 1)
        cache = TransformerCache()
        logits = model(prompt, cache=cache)[:, -1]
        seq_cached = prompt
        for _ in range(6):
            nxt = logits.argmax(-1, keepdim=True)
            seq_cached = torch.cat([seq_cached, nxt], 1)
            logits = model(nxt, cache=cache)[:, -1]
        assert torch.equal(seq_cached, seq_full)
        # beam search's reorder: keep rows [2, 0, 0] and continue
        index = torch.tensor([2, 0, 0])
        assert cache.reorder(index) is cache  # usable as seqlab.decoding's reorder(state, index)
        new = torch.tensor([[4], [5], [6]])
        step = model(new, cache=cache)
        torch.testing.assert_close(step, model(torch.cat([seq_full[index], new], 1))[:, -1:], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_decoder_cached_steps_equal_full_with_ragged_sources(batch_first):
    torch.manual_seed(0)
    model = Transformer(D, NH, 2, 2, FF, dropout=0.0, batch_first=batch_first, norm_first=not batch_first).eval()
    lengths = torch.tensor([S + 2, 2, 4])  # sources of different lengths, padded to 6
    src_pad = padding_mask(lengths)
    gen = torch.Generator().manual_seed(0)
    src, tgt = seq(S + 2, batch_first, gen), seq(T, batch_first, gen)
    t_dim = 1 if batch_first else 0
    with torch.no_grad():
        full = model(src, tgt, tgt_mask=Transformer.generate_square_subsequent_mask(T), src_key_padding_mask=src_pad,
                     memory_key_padding_mask=src_pad)
        memory = model.encoder(src, src_key_padding_mask=src_pad)
        cache = TransformerCache()
        outs = [model.decoder(tgt.narrow(t_dim, t, 1), memory, memory_key_padding_mask=src_pad, cache=cache)
                for t in range(T)]
    torch.testing.assert_close(torch.cat(outs, t_dim), full, atol=ATOL, rtol=1e-4)
    cross = cache.layers[0].cross_attn
    assert cross.static and len(cross) == S + 2 and len(cache.layers[0].self_attn) == T
    # each row only depends on its own source: a row decoded alone gives the same
    with torch.no_grad():
        alone = model(src.narrow(1 - t_dim, 1, 1).narrow(t_dim, 0, 2), tgt.narrow(1 - t_dim, 1, 1),
                      tgt_mask=Transformer.generate_square_subsequent_mask(T))
    torch.testing.assert_close(alone, full.narrow(1 - t_dim, 1, 1), atol=ATOL, rtol=1e-4)


def test_cached_decoder_layer_with_padded_prefix():
    """tgt_key_padding_mask covers kept + new positions; left-padded prompts decode like unpadded ones."""
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(D, NH, FF, 0.0, batch_first=True).eval()
    gen = torch.Generator().manual_seed(0)
    y, m = seq(T, True, gen), seq(S, True, gen)
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[1, 0] = True  # row 1's first position is padding
    with torch.no_grad():
        full = layer(y, m, tgt_mask=Transformer.generate_square_subsequent_mask(T), tgt_key_padding_mask=kpm)
        cache = LayerCache()
        first = layer(y[:, :2], m, tgt_key_padding_mask=kpm[:, :2], tgt_is_causal=True, cache=cache)
        rest = [layer(y[:, t:t + 1], m, tgt_key_padding_mask=kpm[:, :t + 1], cache=cache) for t in range(2, T)]
    torch.testing.assert_close(torch.cat([first[:, 1:], *rest], 1), full[:, 1:], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(first[[0, 2], :1], full[[0, 2], :1], atol=ATOL, rtol=1e-4)


# ----------------------------------------------------------------------------
# Positional encodings


def test_sinusoidal_table_follows_the_equation():
    pe = SinusoidalPositionalEncoding(6, batch_first=True)
    out = pe(torch.zeros(1, 4, 6))[0]
    for pos, i in itertools.product(range(4), range(3)):
        angle = pos / 10000 ** (2 * i / 6)
        assert out[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert out[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert "pe" not in pe.state_dict()
    odd = SinusoidalPositionalEncoding(5)(torch.zeros(3, 2, 5))  # (T, B, E): broadcast over the batch
    torch.testing.assert_close(odd[:, 0], odd[:, 1])
    assert odd[2, 0, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-6)  # last column: a sine


def test_positional_offsets_and_limits():
    x = torch.randn(2, 7, 4)
    for pe in (SinusoidalPositionalEncoding(4, max_len=3, batch_first=True),  # grows past max_len
               LearnedPositionalEncoding(4, max_len=7, batch_first=True)):
        whole = pe(x)
        parts = torch.cat([pe(x[:, :5]), pe(x[:, 5:6], offset=5), pe(x[:, 6:], offset=6)], 1)
        torch.testing.assert_close(parts, whole)
    learned = LearnedPositionalEncoding(4, max_len=7, batch_first=True)
    assert learned.weight.shape == (7, 4) and learned.weight.requires_grad
    with pytest.raises(ValueError, match="positions up to 7 were asked for .* max_len=7"):
        learned(x[:, :2], offset=6)
    with pytest.raises(ValueError, match=r"expected 4 features \(d_model\), got 3"):
        learned(torch.randn(2, 3, 3))
