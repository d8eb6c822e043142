"""Tests of lib.transformer (encoder side): residuals, EncoderBlock, Encoder (decoder side: test_decoder.py).

Parity with d2l (AddNorm as Residual(norm_first=False), PositionWiseFFN, TransformerEncoderBlock, PositionalEncoding)
and with torch.nn.TransformerEncoderLayer given the same weights; properties
(permutation equivariance, padding invariance, gradient flow); errors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import copy_, randomise_norms_, with_all_weights, with_weights
from torch import nn

from lib.attention import padding_mask
from lib.checks import check_permutation_equivariance
from lib.interop import mha_from_d2l, mha_from_torch
from lib.positional import sinusoidal_table
from lib.transformer import (
    Encoder,
    EncoderBlock,
    EncoderConfig,
    Residual,
)

# ---------------------------------------------------------------------------
# Residual connections
# ---------------------------------------------------------------------------


def test_add_norm_matches_d2l():
    from d2l import torch as d2l

    torch.manual_seed(0)
    ref = d2l.AddNorm(16, 0.0).eval()
    randomise_norms_(ref)
    ours = Residual(16, norm_first=False).eval()  # d2l's AddNorm(x, sublayer(x)) is residual(x, sublayer)
    copy_(ours.norm, ref.ln)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x, lambda _: y), ref(x, y))


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_training_mode_dropout_matches_written_out_reference(norm_first):
    torch.manual_seed(1)
    res = Residual(8, norm_first=norm_first, dropout=0.4).train()
    randomise_norms_(res)
    sub = nn.Linear(8, 8)
    x = torch.randn(3, 4, 8)
    torch.manual_seed(5)
    got = res(x, sub)
    torch.manual_seed(5)
    drop = nn.functional.dropout
    ref = x + drop(sub(res.norm(x)), 0.4) if norm_first else res.norm(x + drop(sub(x), 0.4))
    torch.testing.assert_close(got, ref)


def test_residual_post_and_pre_norm():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 8)
    sub = nn.Linear(8, 8)
    post = Residual(8, norm_first=False)
    pre = Residual(8, norm_first=True)
    randomise_norms_(post)
    copy_(pre.norm, post.norm)
    torch.testing.assert_close(post(x, sub), post.norm(x + sub(x)))
    torch.testing.assert_close(pre(x, sub), x + sub(pre.norm(x)))


def test_residual_norm_first_has_no_default():
    with pytest.raises(TypeError):
        Residual(8)  # type: ignore[call-arg]


def test_residual_shape_mismatch():
    with pytest.raises(ValueError, match=r"expected \(2, 3, 8\), got \(2, 3, 4\)"):
        Residual(8, norm_first=False)(torch.randn(2, 3, 8), lambda _: torch.randn(2, 3, 4))


# ---------------------------------------------------------------------------
# EncoderBlock: parity with d2l
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("B,T,D,H,F", [(2, 5, 16, 4, 32), (3, 7, 24, 2, 48)])
def test_encoder_block_matches_d2l(use_bias, B, T, D, H, F):
    from d2l import torch as d2l

    torch.manual_seed(2)
    ref = d2l.TransformerEncoderBlock(D, F, H, 0.0, use_bias=use_bias).eval()
    x = torch.randn(B, T, D)
    valid_lens = torch.randint(1, T + 1, (B,))
    ref(x, valid_lens)  # LazyLinear: one forward fixes the input sizes
    randomise_norms_(ref)

    ours = EncoderBlock(D, H, F).eval()
    ours.attention = mha_from_d2l(ref.attention).eval()  # d2l's W_q, W_k, W_v, W_o
    copy_(ours.ffn.fc1, ref.ffn.dense1)
    copy_(ours.ffn.fc2, ref.ffn.dense2)
    copy_(ours.residual1.norm, ref.addnorm1.ln)
    copy_(ours.residual2.norm, ref.addnorm2.ln)

    expected = ref(x, valid_lens)
    got = ours(x, mask=padding_mask(valid_lens, T))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours(x), ref(x, None), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------
# EncoderBlock: parity with torch.nn.TransformerEncoderLayer
# ---------------------------------------------------------------------------


def _block_from_torch(layer: nn.TransformerEncoderLayer, num_heads: int, activation: str) -> EncoderBlock:
    D = layer.linear1.in_features
    block = EncoderBlock(
        D, num_heads, layer.linear1.out_features, norm_first=layer.norm_first,
        activation=activation, eps=layer.norm1.eps,
    )
    block.attention = mha_from_torch(layer.self_attn)  # splits the fused in_proj_weight
    copy_(block.ffn.fc1, layer.linear1)
    copy_(block.ffn.fc2, layer.linear2)
    copy_(block.residual1.norm, layer.norm1)
    copy_(block.residual2.norm, layer.norm2)
    return block


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_matches_torch(norm_first, activation):
    torch.manual_seed(3)
    B, T, D, H, F = 3, 6, 16, 4, 40
    layer = nn.TransformerEncoderLayer(
        D, H, dim_feedforward=F, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first,
    )
    randomise_norms_(layer)
    # Training mode (with dropout 0) keeps torch off its inference fast path,
    # which returns zeros at padded positions instead of computing them.
    layer.train()
    block = _block_from_torch(layer, H, activation)
    x = torch.randn(B, T, D)
    valid_lens = torch.tensor([T, 3, 1])
    key_padding = torch.arange(T)[None, :] >= valid_lens[:, None]  # torch: True = padding, ignore
    expected = layer(x, src_key_padding_mask=key_padding)
    got = block(x, mask=~key_padding[:, None, None, :])  # ours: True = may attend, (B, 1, 1, T)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(block(x, mask=padding_mask(valid_lens, T)), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(block(x), layer(x), atol=1e-5, rtol=1e-4)


def test_encoder_block_matches_torch_gradients():
    torch.manual_seed(4)
    D, H, F = 16, 2, 32
    layer = nn.TransformerEncoderLayer(D, H, F, dropout=0.0, batch_first=True).double()
    block = _block_from_torch(layer, H, "relu").double()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    layer(x1).pow(2).sum().backward()
    block(x2).pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(block.ffn.fc1.weight.grad, layer.linear1.weight.grad)
    torch.testing.assert_close(block.residual1.norm.weight.grad, layer.norm1.weight.grad)


# ---------------------------------------------------------------------------
# EncoderBlock: properties and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_is_permutation_equivariant(norm_first):
    torch.manual_seed(5)
    block = EncoderBlock(16, 4, 32, norm_first=norm_first).eval()
    check_permutation_equivariance(block, torch.randn(2, 7, 16), "EncoderBlock")


def test_block_weights_and_masking():
    torch.manual_seed(6)
    block = EncoderBlock(16, 4, 32).eval()
    x = torch.randn(2, 5, 16)
    mask = padding_mask(torch.tensor([5, 2]), 5)
    out, w = with_weights(block, x, mask=mask)
    assert out.shape == (2, 5, 16) and w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert torch.all(w[1, :, :, 2:] == 0)
    torch.testing.assert_close(out, block(x, mask=mask))
    # valid positions do not depend on what sits in the padding
    x2 = x.clone()
    x2[1, 2:] = torch.randn(3, 16) * 10
    torch.testing.assert_close(block(x2, mask=mask)[1, :2], out[1, :2])


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_gradients_flow(norm_first):
    torch.manual_seed(7)
    block = EncoderBlock(16, 4, 32, norm_first=norm_first, dropout=0.1)
    x = torch.randn(2, 5, 16, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has a zero gradient"


def test_block_errors():
    block = EncoderBlock(16, 4, 32)
    with pytest.raises(ValueError, match=r"D=16.*\(2, 5, 8\)"):
        block(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"\(B, T, D=16\)"):
        block(torch.randn(5, 16))
    with pytest.raises(ValueError, match="divisible"):
        EncoderBlock(10, 4, 32)
    EncoderBlock(10, 4, 32, d_head=8)  # an explicit per-head size lifts the constraint


def test_block_key_dim_and_no_bias():
    block = EncoderBlock(16, 2, 32, d_head=4, bias=False)
    assert block(torch.randn(1, 3, 16)).shape == (1, 3, 16)
    assert block.ffn.fc1.bias is None


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------


def _tiny(**kw) -> EncoderConfig:
    base = dict(vocab_size=50, d_model=16, num_heads=4, d_ff=32, num_layers=2, dropout=0.0, max_len=20)
    base.update(kw)
    return EncoderConfig(**base)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", None])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_shapes_and_weights(positional, norm_first):
    torch.manual_seed(8)
    enc = Encoder(_tiny(positional=positional, norm_first=norm_first)).eval()
    tokens = torch.randint(0, 50, (3, 9))
    out, weights = with_all_weights(enc, tokens, valid_lens=torch.tensor([9, 4, 1]))
    assert out.shape == (3, 9, 16)
    assert len(weights) == 2 and all(w.shape == (3, 4, 9, 9) for w in weights)
    assert isinstance(enc.final_norm, nn.LayerNorm if norm_first else nn.Identity)
    if norm_first:  # the final LayerNorm (at its initial weights) normalises every position
        torch.testing.assert_close(out.mean(-1), torch.zeros(3, 9), atol=1e-5, rtol=0)


def test_encoder_embedding_is_scaled_and_positioned():
    torch.manual_seed(9)
    enc = Encoder(_tiny()).eval()
    tokens = torch.randint(0, 50, (2, 6))
    expected = enc.embedding(tokens) * 4.0 + sinusoidal_table(20, 16)[:6]  # sqrt(16) = 4
    torch.testing.assert_close(enc.embed(tokens), expected)


def test_encoder_scaled_embedding_has_unit_variance():
    torch.manual_seed(13)
    enc = Encoder(_tiny(vocab_size=2000, d_model=64, positional=None))
    scaled = enc.embedding.weight * 8.0  # sqrt(64)
    assert 0.9 < scaled.std().item() < 1.1


def test_encoder_fast_path_matches():
    torch.manual_seed(14)
    slow = Encoder(_tiny()).eval()
    fast = Encoder(_tiny(fast=True)).eval()
    fast.load_state_dict(slow.state_dict())
    tokens = torch.randint(0, 50, (2, 7))
    lens = torch.tensor([7, 4])
    torch.testing.assert_close(fast(tokens, valid_lens=lens), slow(tokens, valid_lens=lens), atol=1e-5, rtol=1e-4)


def test_encoder_is_the_stack_of_its_blocks():
    torch.manual_seed(10)
    enc = Encoder(_tiny(norm_first=True)).eval()
    tokens = torch.randint(0, 50, (2, 6))
    mask = padding_mask(torch.tensor([6, 3]), 6)
    x = enc.embed(tokens)
    for block in enc.blocks:
        x = block(x, mask=mask)
    torch.testing.assert_close(enc(tokens, mask=mask), enc.final_norm(x))
    torch.testing.assert_close(enc(tokens, valid_lens=torch.tensor([6, 3])), enc(tokens, mask=mask))


def test_encoder_without_positions_is_permutation_equivariant():
    torch.manual_seed(11)
    enc = Encoder(_tiny(positional=None)).eval()
    tokens = torch.randint(0, 50, (2, 8))
    perm = torch.randperm(8)
    torch.testing.assert_close(enc(tokens[:, perm]), enc(tokens)[:, perm], atol=1e-5, rtol=1e-4)
    enc_pos = Encoder(_tiny()).eval()
    assert not torch.allclose(enc_pos(tokens[:, perm]), enc_pos(tokens)[:, perm], atol=1e-3)


def test_encoder_gradients_flow():
    torch.manual_seed(12)
    enc = Encoder(_tiny(positional="learned", dropout=0.1))
    tokens = torch.randint(0, 50, (2, 20))  # every position of the learned table is used
    enc(tokens).pow(2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_encoder_config_is_frozen_and_validated():
    cfg = _tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 32  # type: ignore[misc]
    with pytest.raises(ValueError, match="positional must be one of"):
        _tiny(positional="rotary")
    with pytest.raises(ValueError, match="num_layers"):
        _tiny(num_layers=0)


def test_encoder_errors():
    enc = Encoder(_tiny())
    with pytest.raises(ValueError, match="max_len=20"):
        Encoder(_tiny(positional="learned"))(torch.randint(0, 50, (1, 21)))
    with pytest.raises(ValueError, match=r"token ids \(B, T\)"):
        enc(torch.randn(1, 5))


def test_masked_mean_pool_averages_the_real_positions_only():
    from lib.transformer import masked_mean_pool

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    keep = torch.rand(4, 7, generator=g) < 0.5
    keep[0] = False  # an empty row
    expected = torch.stack([x[b][keep[b]].mean(0) if keep[b].any() else torch.zeros(3, dtype=x.dtype)
                            for b in range(4)])
    out = masked_mean_pool(x, keep)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
    changed = x.clone()
    changed[~keep] = 1e3
    torch.testing.assert_close(masked_mean_pool(changed, keep), out)
    xg = x.clone().requires_grad_(True)
    masked_mean_pool(xg, keep).sum().backward()
    assert (xg.grad[~keep] == 0).all()
    with pytest.raises(ValueError, match="boolean"):
        masked_mean_pool(x, keep.float())
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        masked_mean_pool(x, keep[:, :5])


# ---------------------------------------------------------------------------
# RMSNorm and the norm as a choice (lesson 11)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_torch_and_the_written_out_formula(dtype):
    from lib.transformer import RMSNorm

    torch.manual_seed(0)
    D = 24
    norm = RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    ref = nn.RMSNorm(D, eps=1e-6)
    ref.weight.data.copy_(norm.weight)
    x = (torch.randn(3, 5, D) * 3 + 1).to(dtype)
    x64 = x.double()
    written = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()  # Zhang & Sennrich eq. 4
    out = norm.to(dtype)(x)
    assert out.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), written, **tol)
    torch.testing.assert_close(out, ref.to(dtype)(x), **tol)
    # bf16: the statistic is taken in float32, so the error is two roundings (the normalised x, the product)
    if dtype == torch.bfloat16:
        assert (out.double() - written).abs().max() <= (written.abs().max() * 2**-7).item()


def test_rmsnorm_is_scale_invariant_and_has_no_bias():
    from lib.transformer import RMSNorm

    norm = RMSNorm(8, eps=0.0)
    x = torch.randn(4, 8)
    torch.testing.assert_close(norm(x), norm(7.5 * x))  # RMS(c x) = |c| RMS(x)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    assert not torch.allclose(norm(x), nn.LayerNorm(8, elementwise_affine=False, eps=0.0)(x))  # no centring
    with pytest.raises(ValueError, match=r"d_model=8"):
        norm(torch.randn(2, 9))


def test_residual_and_blocks_take_the_norm_by_name_or_factory():
    from lib.transformer import RMSNorm, make_norm

    assert isinstance(Residual(8, norm_first=True).norm, nn.LayerNorm)
    assert isinstance(Residual(8, norm_first=True, norm="rms", eps=1e-6).norm, RMSNorm)
    assert Residual(8, norm_first=True, norm="rms", eps=1e-6).norm.eps == 1e-6
    block = EncoderBlock(8, 2, 16, norm_first=True, norm="rms")
    assert isinstance(block.residual1.norm, RMSNorm) and isinstance(block.residual2.norm, RMSNorm)
    assert block.residual1.norm is not block.residual2.norm
    no_bias = EncoderBlock(8, 2, 16, norm_first=True, norm=lambda d: nn.LayerNorm(d, bias=False))
    assert no_bias.residual1.norm.bias is None
    # the norm really is the one used: the block computes with RMSNorm what the written-out pre-norm block computes
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    expected = x + block.attention(block.residual1.norm(x))
    expected = expected + block.ffn(block.residual2.norm(expected))
    torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("batch", 8)
    with pytest.raises(TypeError, match="factory"):
        Residual(8, norm_first=True, norm=nn.LayerNorm(8))  # a module would be shared: a factory is asked for
