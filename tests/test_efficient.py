"""Tests of lib.efficient: tiled attention with an online softmax equals the explicit attention and SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lib.attention import causal_mask, padding_mask, scaled_dot_product_attention
from lib.efficient import (
    online_softmax_finish,
    online_softmax_init,
    online_softmax_lse,
    online_softmax_update,
    tiled_attention,
    tiled_attention_backward,
)
from lib.memory import attention_matrix_bytes, measure_peak_bytes


@pytest.mark.parametrize("B,H,Tq,Tk,Dk,Dv", [(2, 3, 17, 17, 8, 8), (1, 1, 1, 1, 4, 4), (3, 2, 5, 41, 16, 7),
                                            (2, 4, 64, 64, 32, 32), (1, 2, 33, 9, 3, 5)])
@pytest.mark.parametrize("block_size", [1, 4, 7, 16, 128])
def test_equals_torch_sdpa(B, H, Tq, Tk, Dk, Dv, block_size):
    g = torch.Generator().manual_seed(B * 1000 + Tq * 10 + block_size)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for T, D in ((Tq, Dk), (Tk, Dk), (Tk, Dv)))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(tiled_attention(q, k, v, block_size=block_size), expected, atol=1e-5, rtol=1e-5)
    for qb in (1, 5, Tq):
        got = tiled_attention(q, k, v, block_size=block_size, query_block_size=qb)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (9, 9), (16, 16), (5, 12), (31, 31)])
@pytest.mark.parametrize("block_size,query_block_size", [(1, None), (3, 2), (8, 8), (64, 5)])
def test_causal_equals_torch(Tq, Tk, block_size, query_block_size):
    g = torch.Generator().manual_seed(Tq + Tk)
    q, k, v = torch.randn(2, 2, Tq, 8, generator=g), torch.randn(2, 2, Tk, 8, generator=g), torch.randn(2, 2, Tk, 6, generator=g)
    got = tiled_attention(q, k, v, causal=True, block_size=block_size, query_block_size=query_block_size)
    explicit, _ = scaled_dot_product_attention(q, k, v, mask=causal_mask(Tq, Tk))
    torch.testing.assert_close(got, explicit, atol=1e-5, rtol=1e-5)
    if Tq == Tk:
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)


def test_causal_does_not_leak():
    """The gradient of output t with respect to key/value t+1 is zero."""
    q, k, v = (torch.randn(1, 2, 10, 4, requires_grad=True) for _ in range(3))
    out = tiled_attention(q, k, v, causal=True, block_size=3)
    out[..., 4, :].sum().backward()
    assert k.grad[..., 5:, :].abs().max() == 0 and v.grad[..., 5:, :].abs().max() == 0
    assert v.grad[..., :5, :].abs().max() > 0


@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
def test_masks_and_fully_masked_rows(block_size):
    g = torch.Generator().manual_seed(5)
    B, H, T = 3, 2, 11
    q, k, v = (torch.randn(B, H, T, 8, generator=g) for _ in range(3))
    pad = padding_mask(torch.tensor([11, 4, 0]), T)  # (B, 1, 1, T): the third sequence sees nothing
    explicit, _ = scaled_dot_product_attention(q, k, v, mask=pad)
    got = tiled_attention(q, k, v, mask=pad, block_size=block_size)
    torch.testing.assert_close(got, explicit, atol=1e-5, rtol=1e-5)
    assert not got.isnan().any() and got[2].abs().max() == 0  # all masked: zeros, not NaN
    # keys 4..10 masked for sequence 1: with block_size 4 the blocks [4, 8) and [8, 11) are fully masked
    torch.testing.assert_close(got[1], F.scaled_dot_product_attention(q[1:2, :, :, :], k[1:2, :, :4], v[1:2, :, :4])[0],
                               atol=1e-5, rtol=1e-5)
    # a full (B, H, Tq, Tk) mask with random holes and empty rows, combined with causal
    full = torch.rand(B, H, T, T, generator=g) > 0.6
    full[0, 1, 3] = False
    explicit, _ = scaled_dot_product_attention(q, k, v, mask=full & causal_mask(T))
    got = tiled_attention(q, k, v, mask=full, causal=True, block_size=block_size, query_block_size=4)
    torch.testing.assert_close(got, explicit, atol=1e-5, rtol=1e-5)
    assert got[0, 1, 3].abs().max() == 0


def test_bias_and_scale():
    g = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(2, 3, 7, 4, generator=g), torch.randn(2, 3, 13, 4, generator=g), torch.randn(2, 3, 13, 5, generator=g)
    bias = torch.randn(3, 7, 13, generator=g)
    mask = torch.rand(7, 13, generator=g) > 0.3
    explicit, _ = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, scale=0.7)
    torch.testing.assert_close(tiled_attention(q, k, v, mask=mask, bias=bias, scale=0.7, block_size=5), explicit,
                               atol=1e-5, rtol=1e-5)


def test_dtypes_and_batch_broadcast():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(1, 4, 9, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 9, 8, generator=g, dtype=torch.float64)
    got = tiled_attention(q, k, v, block_size=2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k.expand_as(q), v.expand_as(q)))
    h = tiled_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_size=4)
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.double(), got, atol=3e-2, rtol=3e-2)
    three_d = tiled_attention(q[0], k[0], v[0], block_size=3)  # (H, T, D): any leading axes
    torch.testing.assert_close(three_d, got[0])


def test_online_update_one_block_at_a_time():
    """Folding random blocks, some fully masked, reproduces softmax(s) @ v of the whole row."""
    g = torch.Generator().manual_seed(8)
    s = torch.randn(4, 3, 20, generator=g) * 5  # large scores: the running max matters
    v = torch.randn(4, 20, 6, generator=g)
    mask = torch.rand(4, 3, 20, generator=g) > 0.4
    mask[..., 5:10] = False  # a fully masked block of 5
    mask[1, 2] = False  # a fully masked row
    state = online_softmax_init(s, v)
    for j in range(0, 20, 5):
        state = online_softmax_update(state, s[..., j : j + 5], v[..., j : j + 5, :], mask[..., j : j + 5])
    weights = torch.softmax(s.masked_fill(~mask, -math.inf), dim=-1).nan_to_num(0.0)
    torch.testing.assert_close(online_softmax_finish(state), weights @ v, atol=1e-5, rtol=1e-5)
    m, l, _ = state
    torch.testing.assert_close(l.squeeze(-1)[mask.any(-1)],
                               torch.exp(s - m).masked_fill(~mask, 0).sum(-1)[mask.any(-1)])
    assert torch.isinf(m[1, 2]).all() and l[1, 2].item() == 0


def test_errors():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="Dk"):
        tiled_attention(q, torch.randn(1, 2, 4, 7), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="Tk"):
        tiled_attention(q, q, torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="block_size"):
        tiled_attention(q, q, q, block_size=0)
    with pytest.raises(ValueError, match="query_block_size"):
        tiled_attention(q, q, q, query_block_size=-1)
    with pytest.raises(ValueError, match="boolean"):
        tiled_attention(q, q, q, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="broadcast"):
        tiled_attention(q, q, q, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Tk >= Tq"):
        tiled_attention(q, q[..., :2, :], q[..., :2, :], causal=True)
    with pytest.raises(ValueError, match="at least 2-D"):
        tiled_attention(torch.randn(8), q, q)


def test_extra_memory_linear_vs_quadratic():
    """Doubling T doubles the tiled path's extra memory and quadruples the explicit path's (at large T)."""
    B, H, D, bs = 1, 2, 16, 32
    peaks = {"explicit": [], "tiled": []}
    Ts = (256, 512, 1024)
    for T in Ts:
        q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
        with torch.no_grad():
            peaks["explicit"].append(measure_peak_bytes(lambda q=q, k=k, v=v: scaled_dot_product_attention(q, k, v)))
            peaks["tiled"].append(measure_peak_bytes(
                lambda q=q, k=k, v=v: tiled_attention(q, k, v, block_size=bs, query_block_size=bs)))
    for i, T in enumerate(Ts):
        assert peaks["explicit"][i] >= 2 * attention_matrix_bytes(B, H, T)  # scores and weights
    assert peaks["tiled"][-1] < attention_matrix_bytes(B, H, Ts[-1]) / 8
    assert 3.5 < peaks["explicit"][2] / peaks["explicit"][1] < 4.5
    assert 1.7 < peaks["tiled"][2] / peaks["tiled"][1] < 2.3


def _forward_with_lse(q, k, v, mask, block):
    """The tiled forward pass, keeping what FlashAttention's backward needs: out and lse."""
    scale = 1 / math.sqrt(q.shape[-1])
    state = online_softmax_init(q, v)
    for j in range(0, k.shape[-2], block):
        m = None if mask is None else mask[..., j : j + block]
        state = online_softmax_update(state, q @ k[..., j : j + block, :].transpose(-2, -1) * scale,
                                      v[..., j : j + block, :], m)
    return online_softmax_finish(state), online_softmax_lse(state)


def test_lse_is_the_logsumexp_of_the_masked_scores():
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (5, 13, 13))
    mask = torch.rand(2, 3, 5, 13, generator=g) > 0.5
    mask[0, 1, 2] = False  # a row with nothing to attend: lse = -inf, not NaN
    _, lse = _forward_with_lse(q, k, v, mask, 4)
    s = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(s, dim=-1))
    assert lse[0, 1, 2].item() == -math.inf and not lse.isnan().any()


@pytest.mark.parametrize("B,H,Tq,Tk,Dk,Dv", [(2, 3, 17, 17, 8, 8), (1, 1, 1, 1, 4, 4), (3, 2, 5, 41, 16, 7),
                                            (1, 2, 33, 9, 3, 5)])
@pytest.mark.parametrize("block_size", [1, 4, 7, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_backward_by_recomputation_equals_autograd(B, H, Tq, Tk, Dk, Dv, block_size, masked):
    """dq, dk, dv from out and lse alone equal autograd through the explicit attention (and torch's SDPA)."""
    g = torch.Generator().manual_seed(B * 100 + Tq + block_size)
    q = torch.randn(B, H, Tq, Dk, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, H, Tk, Dk, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, H, Tk, Dv, generator=g, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(B, H, Tq, Dv, generator=g, dtype=torch.float64)
    mask = None
    if masked:
        mask = padding_mask(torch.randint(0, Tk + 1, (B,), generator=g), Tk)  # (B, 1, 1, Tk), some rows empty
        mask = mask & causal_mask(Tq, Tk) if Tk >= Tq else mask
    ref, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    expected = torch.autograd.grad(ref, (q, k, v), dout)
    with torch.no_grad():
        out, lse = _forward_with_lse(q, k, v, mask, block_size)
        torch.testing.assert_close(out, ref)
        got = tiled_attention_backward(q, k, v, out, lse, dout, mask, block_size=block_size)
    for name, a, b in zip("qkv", got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m, n=name: f"d{n}: {m}")
    if not masked:  # torch's own SDPA gives the same gradients
        sdpa = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), dout)
        for a, b in zip(got, sdpa, strict=True):
            torch.testing.assert_close(a, b)


def test_backward_scale_dtype_and_errors():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, 2, 6, 4, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    expected = torch.autograd.grad(ref, (q, k, v), dout)
    with torch.no_grad():
        lse = torch.logsumexp(q @ k.transpose(-2, -1) * 0.3, dim=-1)
        got = tiled_attention_backward(q, k, v, ref, lse, dout, scale=0.3, block_size=4)
        half = tiled_attention_backward(*(t.half() for t in (q, k, v, ref, lse, dout)), scale=0.3, block_size=4)
    for a, b, h in zip(got, expected, half, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert h.dtype == torch.float16
        torch.testing.assert_close(h.float(), b, atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="lse must have shape"):
        tiled_attention_backward(q, k, v, ref, lse[..., None], dout)
    with pytest.raises(ValueError, match="dout must have shape"):
        tiled_attention_backward(q, k, v, ref, lse, dout[..., :3])
    with pytest.raises(ValueError, match="batch axes"):
        tiled_attention_backward(q, k[:, :1], v[:, :1], ref, lse, dout)
    with pytest.raises(ValueError, match="block_size"):
        tiled_attention_backward(q, k, v, ref, lse, dout, block_size=0)
