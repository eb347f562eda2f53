"""seqlab.nn.dropout: torch's inverted dropout with masks from the compiled library's counter-based generator."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from seqlab.kernels import compiled
from seqlab.nn import Dropout, MultiheadAttention
from seqlab.nn import dropout as dropout_module
from seqlab.nn.dropout import dropout


@pytest.fixture(autouse=True)
def _needs_extension():
    if not compiled.available():
        pytest.skip(f"the compiled extension is not available: {compiled.build_error()}")


def test_values_are_zero_or_the_inverse_keep_rate_and_gradients_follow_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75, atol=0, rtol=1e-6)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(dx, torch.where(kept, g / 0.75, torch.zeros_like(g)), atol=0, rtol=1e-6)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 1 << 21  # two of the kernel's 2^20-value blocks, each with its own key
    kept = (dropout(torch.ones(n), p) != 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma, (kept, 1 - p)


def test_masks_are_uncorrelated_across_positions_and_calls():
    torch.manual_seed(0)
    m = torch.stack([dropout(torch.ones(2048), 0.5) != 0 for _ in range(400)]).double()  # (calls, positions)
    per_position = m.mean(0)  # each position kept in about half of the calls
    assert (per_position - 0.5).abs().max() < 5 * math.sqrt(0.25 / 400) + 0.01
    centred = m - m.mean()
    for a, b in ((centred[:, :-1], centred[:, 1:]), (centred[:-1], centred[1:])):  # neighbours, successive calls
        corr = (a * b).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 5 / math.sqrt(a.numel()), corr


def test_the_seed_comes_from_torch_generator():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), a)
    assert not torch.equal(a, b)


def test_the_same_mask_for_any_number_of_threads():
    x = torch.ones(3 << 20)  # three blocks: parallel_for can split them
    before = torch.get_num_threads()
    try:
        torch.manual_seed(1)
        one = dropout(x, 0.3)
        torch.set_num_threads(2)
        torch.manual_seed(1)
        two = dropout(x, 0.3)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_shapes_dtypes_noncontiguous_and_inplace():
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(6, 4, 5, dtype=dtype).transpose(0, 2)  # non-contiguous (5, 4, 6)
        torch.manual_seed(0)
        y = dropout(x, 0.4)
        assert y.shape == x.shape and y.dtype == dtype
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] / 0.6)
        z = x.clone()
        torch.manual_seed(0)
        out = dropout(z, 0.4, inplace=True)
        assert out.data_ptr() == z.data_ptr()
        torch.testing.assert_close(z, y)


def test_bfloat16_products_are_formed_in_float32_and_rounded_once():
    x = torch.randn(64, 33).bfloat16().transpose(0, 1).requires_grad_()  # non-contiguous (33, 64)
    torch.manual_seed(0)
    y = dropout(x, 0.25)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    torch.manual_seed(0)
    kept = dropout(torch.ones(x.shape), 0.25) != 0  # the mask a float32 input gets from the same seed
    assert torch.equal(y != 0, kept & (x != 0))
    scale = torch.tensor(1 / 0.75, dtype=torch.float32)  # 1 / P(keep) as the kernel holds it
    zero = torch.zeros((), dtype=torch.bfloat16)
    want = torch.where(kept, (x.detach().float() * scale).bfloat16(), zero)
    assert torch.equal(y, want)  # x m formed in float32, rounded once (not x times a rounded 1/q)
    g = torch.randn(x.shape).bfloat16()
    (dx,) = torch.autograd.grad(y, x, g)
    assert dx.dtype == torch.bfloat16 and torch.equal(dx, torch.where(kept, (g.float() * scale).bfloat16(), zero))
    z = x.detach().clone()
    torch.manual_seed(0)
    assert dropout(z, 0.25, inplace=True).data_ptr() == z.data_ptr() and torch.equal(z, want)


def test_non_finite_inputs_propagate_as_in_torch():
    x = torch.tensor([float("nan"), float("inf"), -float("inf")] * 200)
    y = dropout(x, 0.5)
    dropped = ~torch.isnan(y) & ~torch.isinf(y)
    assert not dropped.any()  # x · 0 is NaN for NaN and inf, as torch's x * mask gives
    ref = F.dropout(x, 0.5)
    assert (torch.isnan(ref) | torch.isinf(ref)).all()
    b = dropout(x.bfloat16(), 0.5)
    assert torch.isnan(b[0::3]).all() and (torch.isnan(b[1::3]) | torch.isinf(b[1::3])).all()


def test_double_backward_follows_the_mask():
    x = torch.randn(8, 9, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.3)
    g = torch.randn_like(y, requires_grad=True)
    (dx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (dg,) = torch.autograd.grad(dx.sum(), g)
    torch.testing.assert_close(dg, torch.where(y != 0, 1 / 0.7, 0.0).to(torch.float64))


def test_identity_in_eval_or_at_p_zero_and_torch_elsewhere():
    x = torch.randn(4, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))  # torch's own at p = 1
    h = torch.randn(4, 4, dtype=torch.float16)  # a dtype the library has no loop for: torch's dropout
    torch.manual_seed(0)
    want = F.dropout(h, 0.5)
    torch.manual_seed(0)
    assert torch.equal(dropout(h, 0.5), want)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_the_op_refuses_a_probability_out_of_range():
    with pytest.raises(RuntimeError, match=r"expected 0 <= p < 1, got p = 1.5"):
        torch.ops.seqlab_compiled.dropout_apply(torch.empty(3), 1.5, 0)
    with pytest.raises(RuntimeError, match=r"expected a float32, float64 or bfloat16 tensor, got Half"):
        torch.ops.seqlab_compiled.dropout_apply(torch.empty(3, dtype=torch.float16), 0.5, 0)


def test_without_the_library_it_is_torch_dropout(monkeypatch):
    monkeypatch.setattr(compiled, "available", lambda: False)
    x = torch.randn(8, 8)
    torch.manual_seed(0)
    want = F.dropout(x, 0.3)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.3), want)


def test_gradcheck_float64():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(t):
        torch.manual_seed(7)  # the same mask at every evaluation gradcheck makes
        return dropout(t, 0.3)

    assert gradcheck(f, (x,))


def test_module_is_torch_dropout_with_seqlab_masks():
    d = Dropout(0.3)
    assert isinstance(d, torch.nn.Dropout)
    assert repr(d) == repr(torch.nn.Dropout(0.3))
    assert d.state_dict() == {}
    x = torch.randn(10, 10)
    torch.manual_seed(2)
    y = d(x)
    torch.manual_seed(2)
    assert torch.equal(y, dropout(x, 0.3))
    assert torch.equal(d.eval()(x), x)


def test_package_exports_the_module_not_the_function():
    # seqlab.nn.dropout stays the module (the function is seqlab.nn.dropout.dropout)
    assert dropout_module.dropout is dropout


def test_attention_dropout_on_the_cpu_draws_seqlab_masks():
    torch.manual_seed(0)
    mha = MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = torch.randn(3, 6, 8)
    torch.manual_seed(5)
    out, _ = mha(x, x, x, need_weights=False)
    torch.manual_seed(5)
    out_w, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, out_w)  # the same masks with and without the weights returned
    assert (w == 0).any()


def test_a_traced_module_draws_new_masks_each_call():
    # the library's seed would be a constant in a trace: torch.jit.trace records torch's dropout instead
    traced = torch.jit.trace(Dropout(0.5).train(), torch.ones(64), check_trace=False)
    assert not torch.equal(traced(torch.ones(64)), traced(torch.ones(64)))
