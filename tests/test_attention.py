"""lib.attention: parity with PyTorch and d2l, masking properties, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import with_weights

from lib.attention import (
    KERNELS,
    AdditiveAttention,
    DotProductAttention,
    NadarayaWatson,
    attend,
    causal_mask,
    dot_product_scores,
    masked_softmax,
    nadaraya_watson,
    padding_mask,
    scaled_dot_product_attention,
)
from lib.checks import check_causal


def qkv(B=3, H=4, Tq=5, Tk=7, Dk=8, Dv=6, dtype=torch.float32):
    return (
        torch.randn(B, H, Tq, Dk, dtype=dtype),
        torch.randn(B, H, Tk, Dk, dtype=dtype),
        torch.randn(B, H, Tk, Dv, dtype=dtype),
    )


# ---------------------------------------------------------------- masks


def test_causal_mask_pattern():
    m = causal_mask(4)
    assert m.dtype == torch.bool
    assert torch.equal(m, torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_causal_mask_with_cache_offset():
    m = causal_mask(2, 5)  # the last two of five positions
    assert torch.equal(m, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))


@pytest.mark.parametrize("args", [(0,), (3, 2)])
def test_causal_mask_errors(args):
    with pytest.raises(ValueError, match="causal_mask"):
        causal_mask(*args)


def test_padding_mask_shapes_and_values():
    vl = torch.tensor([2, 4])
    m = padding_mask(vl, 5)
    assert m.shape == (2, 1, 1, 5)
    assert m[0, 0, 0].tolist() == [True, True, False, False, False]
    assert padding_mask(vl, 5, ndim=3).shape == (2, 1, 5)
    vl2 = torch.tensor([[1, 2, 3], [3, 3, 0]])
    m2 = padding_mask(vl2, 4)
    assert m2.shape == (2, 1, 3, 4)
    assert m2[1, 0, 2].tolist() == [False] * 4


def test_padding_mask_errors():
    with pytest.raises(ValueError, match=r"valid_lens must have shape \(B,\) or \(B, Tq\)"):
        padding_mask(torch.ones(2, 2, 2), 3)
    with pytest.raises(ValueError, match="ndim"):
        padding_mask(torch.tensor([1]), 3, ndim=2)


# ---------------------------------------------------------------- masked softmax


@pytest.mark.parametrize("shape_vl", [((2, 4, 6), (2,)), ((2, 4, 6), (2, 4))])
def test_masked_softmax_matches_d2l(shape_vl, d2l):
    shape, vl_shape = shape_vl
    x = torch.randn(*shape)
    vl = torch.randint(1, shape[-1] + 1, vl_shape)  # d2l differs only for valid_len 0
    torch.testing.assert_close(masked_softmax(x, valid_lens=vl), d2l.masked_softmax(x, vl))


def test_masked_softmax_without_mask_is_softmax():
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(masked_softmax(x), F.softmax(x, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_rows_are_zero_not_nan(dtype):
    x = torch.randn(2, 3, 4, 6).to(dtype)
    mask = torch.rand(2, 1, 4, 6) > 0.5
    mask[0, 0, 1] = False  # a row with nothing to attend
    w = masked_softmax(x, mask=mask)
    assert not torch.isnan(w).any()
    assert torch.all(w[0, :, 1] == 0)
    assert torch.all(w[~mask.expand_as(w)] == 0)
    rows = mask.expand_as(w).any(-1)
    torch.testing.assert_close(w.float().sum(-1)[rows], torch.ones(int(rows.sum())), atol=1e-2, rtol=0)


def test_masked_softmax_combines_mask_and_valid_lens():
    x = torch.randn(2, 3, 5)
    vl = torch.tensor([4, 2])
    mask = causal_mask(3, 5)  # (Tq, Tk)
    w = masked_softmax(x, mask=mask, valid_lens=vl)
    expected = mask & padding_mask(vl, 5, ndim=3)
    assert torch.all((w > 0) == expected)


def test_masked_softmax_errors():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="mask must be boolean"):
        masked_softmax(x, mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\) does not broadcast to the scores' shape \(2, 3, 5\)"):
        masked_softmax(x, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid_lens has 3 rows but the scores' batch size is 2"):
        masked_softmax(x, valid_lens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="bias must be a float tensor"):
        masked_softmax(x, bias=torch.ones(3, 5, dtype=torch.long))


# ---------------------------------------------------------------- scaled dot-product attention


def _torch_sdpa(q, k, v, mask=None, bias=None):
    if bias is not None:
        attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    else:
        attn_mask = mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


@pytest.mark.parametrize("kind", ["none", "padding", "causal", "random", "bias", "bias+causal"])
def test_sdpa_matches_torch(kind):
    q, k, v = qkv(Tq=6, Tk=6)
    mask = bias = None
    if kind == "padding":
        mask = padding_mask(torch.tensor([6, 3, 1]), 6)
    elif kind == "causal":
        mask = causal_mask(6)
    elif kind == "random":
        mask = torch.rand(3, 4, 6, 6) > 0.3
        mask[..., 0] = True  # PyTorch gives NaN for empty rows; keep every row non-empty here
    elif kind.startswith("bias"):
        bias = torch.randn(4, 6, 6)
        mask = causal_mask(6) if "causal" in kind else None
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    torch.testing.assert_close(out, _torch_sdpa(q, k, v, mask, bias), atol=1e-5, rtol=1e-4)
    assert w.shape == (3, 4, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 6))


@pytest.mark.parametrize("with_bias", [False, True])
def test_fast_path_matches_explicit_path(with_bias):
    q, k, v = qkv()
    mask = torch.rand(3, 1, 5, 7) > 0.4
    mask[1, 0, 2] = False  # an empty row: both paths must give zeros
    bias = torch.randn(4, 5, 7) if with_bias else None
    slow, w = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    fast, none = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, fast=True)
    assert none is None
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    assert torch.all(slow[1, :, 2] == 0) and torch.all(fast[1, :, 2] == 0)


def test_sdpa_scale_and_weights_definition():
    q, k, v = qkv(B=1, H=1)
    out, w = scaled_dot_product_attention(q, k, v, scale=0.5)
    torch.testing.assert_close(w, F.softmax(q @ k.transpose(-2, -1) * 0.5, -1))
    torch.testing.assert_close(out, w @ v)


def test_sdpa_dropout_only_when_asked():
    q, k, v = qkv()
    a, _ = scaled_dot_product_attention(q, k, v)
    b, _ = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(a, b)
    c, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 5))  # weights are pre-dropout


def test_sdpa_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv())
    out, _ = scaled_dot_product_attention(q, k, v, mask=causal_mask(5, 7))
    out.square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_sdpa_causal_leak_property():
    def attend(x, mask):
        return scaled_dot_product_attention(x, x, x, mask=mask)[0]

    x = torch.randn(2, 6, 4)
    check_causal(lambda x: attend(x, causal_mask(6)), x)
    with pytest.raises(AssertionError, match="not causal"):
        check_causal(lambda x: attend(x, None), x)


def test_sdpa_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="queries and keys must share their feature size Dk: q has 8, k has 3"):
        scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="keys and values must be equally many"):
        scaled_dot_product_attention(q, k, v[..., :2, :])
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5, dtype=torch.bool), fast=True)
    with pytest.raises(ValueError, match="no value term"):
        scaled_dot_product_attention(q, k, v, fast=True, value_term=lambda w: torch.zeros(()))


def test_dot_product_scores_are_scaled_q_kT():
    q, k, _ = qkv()
    torch.testing.assert_close(dot_product_scores(q, k), q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    torch.testing.assert_close(dot_product_scores(q, k, 0.25), q @ k.transpose(-2, -1) * 0.25)


def test_sdpa_value_term_sees_the_dropped_weights_and_adds_to_the_output():
    q, k, v = qkv()
    extra = torch.randn(q.shape[:-1] + (v.shape[-1],))  # (B, H, Tq, Dv)
    seen = []

    def value_term(attn):
        seen.append(attn)
        return extra

    torch.manual_seed(1)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.3, value_term=value_term)
    torch.manual_seed(1)
    ref_out, ref_w = attend(dot_product_scores(q, k), v, dropout_p=0.3)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out + extra)
    torch.testing.assert_close(seen[0] @ v + extra, out)


# ---------------------------------------------------------------- scoring modules vs d2l


def test_additive_attention_matches_d2l(d2l):
    B, Tq, Tk, dq, dk, dv, h = 2, 3, 10, 20, 2, 4, 8
    queries, keys = torch.randn(B, Tq, dq), torch.randn(B, Tk, dk)
    values = torch.randn(B, Tk, dv)
    vl = torch.tensor([2, 6])
    ref = d2l.AdditiveAttention(h, dropout=0.0)
    ref.eval()
    ref(queries, keys, values, vl)  # materialise the lazy layers
    ours = AdditiveAttention(d_query=dq, d_key=dk, d_hidden=h).eval()
    with torch.no_grad():
        ours.W_q.weight.copy_(ref.W_q.weight)
        ours.W_k.weight.copy_(ref.W_k.weight)
        ours.w_v.weight.copy_(ref.w_v.weight)
    out, w = with_weights(ours, queries, keys, values, valid_lens=vl)
    torch.testing.assert_close(out, ref(queries, keys, values, vl))
    torch.testing.assert_close(w, ref.attention_weights)


def test_dot_product_attention_matches_d2l(d2l):
    queries, keys, values = torch.randn(2, 3, 5), torch.randn(2, 7, 5), torch.randn(2, 7, 4)
    vl = torch.tensor([3, 7])
    ref = d2l.DotProductAttention(dropout=0.0).eval()
    out, w = with_weights(DotProductAttention().eval(), queries, keys, values, valid_lens=vl)
    torch.testing.assert_close(out, ref(queries, keys, values, vl))
    torch.testing.assert_close(w, ref.attention_weights)


def test_keras_style_attention_has_one_parameter_and_scales_scores():
    layer = DotProductAttention(scaled=False, use_scale=True)
    assert sum(p.numel() for p in layer.parameters()) == 1
    queries, keys, values = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    with torch.no_grad():
        layer.scale.fill_(0.7)
    _, w = with_weights(layer, queries, keys, values)
    torch.testing.assert_close(w, F.softmax(0.7 * queries @ keys.transpose(1, 2), -1))
    assert sum(p.numel() for p in DotProductAttention().parameters()) == 0


def test_additive_attention_shape_errors():
    att = AdditiveAttention(4, 3, 8)
    with pytest.raises(ValueError, match=r"expected d_query=4 and d_key=3"):
        att(torch.randn(2, 3, 5), torch.randn(2, 6, 3), torch.randn(2, 6, 2))
    with pytest.raises(ValueError, match="AdditiveAttention expects"):
        att(torch.randn(3, 4), torch.randn(2, 6, 3), torch.randn(2, 6, 2))


# ---------------------------------------------------------------- Nadaraya-Watson


def test_nadaraya_watson_gaussian_is_softmax_of_negative_squared_distance():
    x_train = torch.sort(torch.rand(50) * 5).values
    y_train = torch.sin(x_train)
    x = torch.linspace(0, 5, 11)
    out, w = nadaraya_watson(x, x_train, y_train, "gaussian", bandwidth=0.5)
    expected_w = F.softmax(-((x[:, None] - x_train[None]) / 0.5) ** 2 / 2, dim=-1)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(out, expected_w @ y_train)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_nadaraya_watson_kernels_give_weighted_averages(kernel):
    keys = torch.linspace(-2, 2, 9)
    values = torch.randn(9, 3)
    out, w = nadaraya_watson(torch.tensor([0.0, 0.3]), keys, values, kernel, bandwidth=1.0)
    assert out.shape == (2, 3) and w.shape == (2, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert torch.all(w >= 0)


def test_nadaraya_watson_unreachable_query_gets_zero_weights():
    out, w = nadaraya_watson(torch.tensor([10.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), "boxcar")
    assert torch.all(w == 0) and out.item() == 0


def test_nadaraya_watson_errors():
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        nadaraya_watson(torch.zeros(1), torch.zeros(2), torch.zeros(2), bandwidth=0)
    with pytest.raises(ValueError, match="unknown kernel 'cosine'"):
        nadaraya_watson(torch.zeros(1), torch.zeros(2), torch.zeros(2), "cosine")


def test_parametric_nadaraya_watson_learns_and_masks():
    model = NadarayaWatson(w=1.0)
    x = torch.rand(30) * 5
    y = torch.sin(x)
    mask = ~torch.eye(30, dtype=torch.bool)  # a point may not look at itself
    out, w = with_weights(model, x, x, y, mask=mask)
    assert out.shape == (30,) and w.shape == (30, 30)
    assert torch.all(torch.diagonal(w, dim1=-2, dim2=-1) == 0)
    out.sub(y).square().mean().backward()
    assert model.w.grad is not None and model.w.grad.abs() > 0
    assert math.isfinite(out.sum().item())
    # batched queries with their own keys: (B, Tq) against (B, Tk)
    out_b = model(torch.rand(4, 3), torch.rand(4, 5), torch.rand(4, 5))
    assert out_b.shape == (4, 3)


def test_kv_cache_appends_in_place_without_changing_what_it_returned():
    """Outside autograd the cache writes into a buffer that doubles when full: each step's view holds exactly
    the keys appended so far, later appends do not change earlier views, and reorder starts afresh."""
    from torch import nn

    from lib.attention import KVCache

    layer, cache = nn.Identity(), KVCache()
    torch.manual_seed(0)
    chunks = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, 3, 1, 9, 1)]
    views, capacities = [], []
    with torch.no_grad():
        for i, c in enumerate(chunks):
            k, v = cache.append(layer, c, -c)
            want = torch.cat(chunks[: i + 1], dim=-2)
            assert torch.equal(k, want) and torch.equal(v, -want) and cache.length(layer) == want.shape[-2]
            views.append((k, want))
            if layer in cache._buffers:
                capacities.append(cache._buffers[layer][0].shape[-2])
    assert all(torch.equal(k, want) for k, want in views)  # nothing returned earlier was overwritten
    assert capacities == [10, 10, 10, 20, 20, 40]  # lengths 6 7 10 11 20 21: doubled when full, not per step
    with pytest.raises(ValueError, match="differ in"):
        cache.append(layer, torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4))
    cache.reorder(torch.tensor([1, 1]))
    k, _ = cache.append(layer, chunks[0][:, :, :1], chunks[0][:, :, :1])
    full = torch.cat(chunks, dim=-2)
    assert torch.equal(k, torch.cat([full[[1, 1]], chunks[0][:, :, :1]], dim=-2))


def test_kv_cache_appends_differentiably_when_keys_need_gradients():
    from torch import nn

    from lib.attention import KVCache

    layer, cache = nn.Identity(), KVCache()
    a, b = torch.randn(1, 2, 3, 4, requires_grad=True), torch.randn(1, 2, 1, 4, requires_grad=True)
    cache.append(layer, a, a)
    k, v = cache.append(layer, b, b)
    (k.sum() + 2 * v.sum()).backward()
    assert torch.equal(a.grad, torch.full_like(a, 3.0)) and torch.equal(b.grad, torch.full_like(b, 3.0))
