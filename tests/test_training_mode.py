"""Training mode and dropout > 0: where each dropout sits, and converters that carry the mode.

Parity tests at dropout 0 or in eval mode cannot see a dropout in the wrong place (before the
activation, on the residual stream instead of the branch, missing) or a converter that forgets
the source module's train/eval mode. Here every comparison runs in training mode with dropout
> 0, against a reference written out (``fc2(drop(act(fc1 x)))``, ``norm(x + drop(sub(x)))``)
or against PyTorch's and d2l's modules, with the generator reseeded before each side.

On the CPU, ``F.dropout`` draws its mask from the global generator in the tensor's memory
order, and so does the math kernel of ``F.scaled_dot_product_attention``; so two computations
that apply the same dropouts to tensors of the same shapes, in the same order, agree exactly.
A dropout in another place, of another shape or in another order gives other numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.attention import (
    AdditiveAttention,
    DotProductAttention,
    padding_mask,
    scaled_dot_product_attention,
)
from lib.ffn import PositionWiseFFN, PositionWiseFFNConv, conv1d_to_linear, linear_to_conv1d
from lib.interop import mha_from_d2l, mha_from_torch
from lib.positional import LearnedPositionalEmbedding, SinusoidalEncoding, sinusoidal_table
from lib.transformer import EncoderBlock, Residual

P = 0.3  # a dropout large enough that a misplaced one changes most outputs


def seeded(fn, *args, seed: int = 7, **kwargs):
    """``fn(*args, **kwargs)`` with the global generator reseeded: both sides of a comparison draw the same masks."""
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def assert_dropout_active(module: nn.Module, x: torch.Tensor, *args) -> None:
    """Two draws differ in training mode (the comparison is not trivially at dropout 0)."""
    assert not torch.allclose(seeded(module, x, *args, seed=1), seeded(module, x, *args, seed=2))


# ---------------------------------------------------------------------------
# The position-wise FFN: fc2(drop(act(fc1 x)))
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "gelu", torch.tanh])
def test_ffn_dropout_sits_between_the_activation_and_fc2(activation):
    """With GELU or tanh, dropout before the activation gives other numbers (with ReLU it commutes)."""
    ffn = PositionWiseFFN(8, 32, activation=activation, dropout=P).train()
    x = torch.randn(3, 5, 8)
    act = {"relu": F.relu, "gelu": F.gelu}.get(activation, activation)
    expected = seeded(lambda: ffn.fc2(F.dropout(act(ffn.fc1(x)), P)))  # the hidden (B, T, F) is dropped
    assert_same(seeded(lambda: ffn(x)), expected)
    assert_dropout_active(ffn, x)
    assert_same(ffn.eval()(x), ffn.fc2(act(ffn.fc1(x))))  # eval: no dropout at all


def test_conv_ffn_dropout_sits_between_the_activation_and_conv2():
    ffn = PositionWiseFFNConv(8, 32, activation="gelu", dropout=P).train()
    x = torch.randn(3, 5, 8)
    expected = seeded(lambda: ffn.conv2(F.dropout(F.gelu(ffn.conv1(x.transpose(1, 2))), P)).transpose(1, 2))
    assert_same(seeded(lambda: ffn(x)), expected)
    assert_same(ffn.eval()(x), ffn.conv2(F.gelu(ffn.conv1(x.transpose(1, 2)))).transpose(1, 2))


@pytest.mark.parametrize("training", [True, False])
def test_ffn_converters_carry_dropout_and_mode(training):
    linear = PositionWiseFFN(8, 16, activation="gelu", dropout=P).train(training)
    conv = linear.to_conv()
    back = conv.to_linear()
    for twin in (conv, back):
        assert twin.training is training, type(twin).__name__
        assert all(m.training is training for m in twin.modules())
        assert twin.drop.p == P
    lin = nn.Linear(8, 4).train(training)
    assert linear_to_conv1d(lin).training is training and conv1d_to_linear(linear_to_conv1d(lin)).training is training
    x = torch.randn(2, 4, 8)
    if not training:  # eval: the twins compute the same function
        assert_same(conv(x), linear(x))
        assert_same(back(x), linear(x))
    else:  # training: the same function up to where the mask falls; the Linear round trip is exact
        assert_same(seeded(lambda: back(x)), seeded(lambda: linear(x)))


# ---------------------------------------------------------------------------
# Residual connections: norm(x + drop(sub(x))) and x + drop(sub(norm(x)))
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_dropout_is_on_the_branch_only(norm_first):
    D = 8
    res = Residual(D, norm_first=norm_first, dropout=P).train()  # a fresh LayerNorm: weight 1, bias 0
    sub = nn.Linear(D, D)
    x = torch.randn(3, 5, D)

    def norm(t):
        return F.layer_norm(t, (D,), eps=1e-5)

    if norm_first:
        expected = seeded(lambda: x + F.dropout(sub(norm(x)), P))
    else:
        expected = seeded(lambda: norm(x + F.dropout(sub(x), P)))
    assert_same(seeded(lambda: res(x, sub)), expected)
    assert_dropout_active(res, x, sub)
    res.eval()
    assert_same(res(x, sub), x + sub(norm(x)) if norm_first else norm(x + sub(x)))


# ---------------------------------------------------------------------------
# Attention: dropout on the weights, on every path
# ---------------------------------------------------------------------------


def test_sdpa_dropout_is_on_the_weights_on_both_paths():
    B, H, Tq, Tk, Dh = 2, 3, 4, 6, 5
    q, k, v = torch.randn(B, H, Tq, Dh), torch.randn(B, H, Tk, Dh), torch.randn(B, H, Tk, Dh)
    mask = padding_mask(torch.tensor([6, 3]), Tk)  # (B, 1, 1, Tk)
    bias = torch.randn(H, Tq, Tk)
    scale = 0.7

    def written_out():
        scores = (q @ k.transpose(-2, -1)) * scale + bias
        w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return F.dropout(w, P) @ v

    expected = seeded(written_out)
    for fast in (False, True):
        out, _ = seeded(scaled_dot_product_attention, q, k, v, mask, bias, P, scale=scale, fast=fast)
        assert_same(out, expected)


def test_dot_product_and_additive_attention_match_d2l_in_training(d2l):
    B, Tq, Tk, dq, dk, dv, h = 2, 3, 7, 6, 4, 5, 8
    queries, keys, values = torch.randn(B, Tq, dq), torch.randn(B, Tk, dk), torch.randn(B, Tk, dv)
    vl = torch.tensor([3, 7])
    ref_add = d2l.AdditiveAttention(h, dropout=P).train()
    ref_add(queries, keys, values, vl)  # materialise the lazy layers
    ours_add = AdditiveAttention(d_query=dq, d_key=dk, d_hidden=h, dropout=P).train()
    with torch.no_grad():
        for name in ("W_q", "W_k", "w_v"):
            getattr(ours_add, name).weight.copy_(getattr(ref_add, name).weight)
    assert_same(seeded(lambda: ours_add(queries, keys, values, valid_lens=vl)),
                seeded(lambda: ref_add(queries, keys, values, vl)))
    assert_dropout_active(ours_add, queries, keys, values)

    q2, k2 = torch.randn(B, Tq, dk), keys
    ref_dot = d2l.DotProductAttention(dropout=P).train()
    ours_dot = DotProductAttention(dropout=P).train()
    assert_same(seeded(lambda: ours_dot(q2, k2, values, valid_lens=vl)), seeded(lambda: ref_dot(q2, k2, values, vl)))
    assert_dropout_active(ours_dot, q2, k2, values)


def _torch_mha(D: int, H: int, **kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, H, dropout=P, batch_first=True, **kw)
    with torch.no_grad():
        ref.in_proj_bias.normal_() if ref.in_proj_bias is not None else None
        ref.out_proj.bias.normal_()
    return ref


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])  # torch's two paths: SDPA, and softmax + dropout
@pytest.mark.parametrize("fused_qkv", [False, True])
def test_mha_matches_torch_in_training(fast, need_weights, fused_qkv):
    B, T, D, H = 2, 5, 12, 3
    ref = _torch_mha(D, H).train()
    ours = mha_from_torch(ref, fused_qkv=fused_qkv, fast=fast)
    assert ours.training
    x = torch.randn(B, T, D)
    valid = torch.tensor([5, 2])
    key_padding = torch.arange(T)[None, :] >= valid[:, None]  # torch: True = ignore
    expected = seeded(lambda: ref(x, x, x, key_padding_mask=key_padding, need_weights=need_weights)[0])
    assert_same(seeded(lambda: ours(x, mask=padding_mask(valid, T))), expected)
    expected = seeded(lambda: ref(x, x, x, need_weights=need_weights)[0])
    assert_same(seeded(lambda: ours(x)), expected)
    assert_dropout_active(ours, x)


def test_mha_cross_attention_matches_torch_in_training():
    B, Tq, Tk, D, H = 2, 3, 6, 8, 2
    ref = _torch_mha(D, H, kdim=5, vdim=7).train()
    ours = mha_from_torch(ref)
    q, k, v = torch.randn(B, Tq, D), torch.randn(B, Tk, 5), torch.randn(B, Tk, 7)
    assert_same(seeded(lambda: ours(q, k, v)), seeded(lambda: ref(q, k, v)[0]))


@pytest.mark.parametrize("training", [True, False])
def test_mha_converters_carry_the_mode_and_dropout(d2l, training):
    ref = _torch_mha(8, 2).train(training)
    for fast in (False, True):
        ours = mha_from_torch(ref, fast=fast)
        assert ours.training is training and all(m.training is training for m in ours.modules())
        x = torch.randn(2, 4, 8)
        assert_same(seeded(ours, x), seeded(ref, x, x, x)[0])
    d2l_mha = d2l.MultiHeadAttention(8, 2, dropout=P, bias=True)
    x = torch.randn(2, 4, 8)
    d2l_mha(x, x, x, None)  # materialise the lazy layers
    d2l_mha.train(training)
    ours = mha_from_d2l(d2l_mha)
    assert ours.training is training
    vl = torch.tensor([4, 2])
    assert_same(seeded(lambda: ours(x, mask=padding_mask(vl, 4))), seeded(lambda: d2l_mha(x, x, x, vl)))


# ---------------------------------------------------------------------------
# The encoder block against torch.nn.TransformerEncoderLayer, in training mode
# ---------------------------------------------------------------------------


def _copy_(dst: nn.Module, src: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def _block_like(layer: nn.TransformerEncoderLayer, H: int, fast: bool) -> EncoderBlock:
    D, Fh = layer.linear1.in_features, layer.linear1.out_features
    block = EncoderBlock(D, H, Fh, dropout=P, norm_first=layer.norm_first, activation="gelu", fast=fast)
    block.attention = mha_from_torch(layer.self_attn, fast=fast)
    _copy_(block.ffn.fc1, layer.linear1)
    _copy_(block.ffn.fc2, layer.linear2)
    _copy_(block.residual1.norm, layer.norm1)
    _copy_(block.residual2.norm, layer.norm2)
    return block.train()


def _torch_layer_written_out(layer: nn.TransformerEncoderLayer, x, key_padding=None, p: float = P):
    """torch's TransformerEncoderLayer.forward in training mode, spelled out over its own sub-modules.

    (Calling the layer itself draws the residual dropout's mask in (T, B, D) memory order: with
    batch_first its attention output is a transposed view. The math is the same; the masks fall
    elsewhere, so the written-out form keeps the comparison exact.)
    """
    def sa(h):  # torch's MultiheadAttention, dropout on the weights
        return layer.self_attn(h, h, h, key_padding_mask=key_padding, need_weights=False)[0].contiguous()

    def ff(h):  # linear2(dropout(activation(linear1(h))))
        return layer.linear2(F.dropout(F.gelu(layer.linear1(h)), p))

    if layer.norm_first:
        x = x + F.dropout(sa(layer.norm1(x)), p)
        return x + F.dropout(ff(layer.norm2(x)), p)
    x = layer.norm1(x + F.dropout(sa(x), p))
    return layer.norm2(x + F.dropout(ff(x), p))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_matches_torch_in_training(norm_first, fast):
    """Dropout on the attention weights, on the FFN's hidden layer (GELU) and on both residual branches."""
    B, T, D, H, Fh = 2, 6, 16, 4, 32
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D, H, dim_feedforward=Fh, dropout=P, activation="gelu", batch_first=True, norm_first=norm_first
    ).train()
    with torch.no_grad():
        for norm in (layer.norm1, layer.norm2):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    block = _block_like(layer, H, fast)
    x = torch.randn(B, T, D)
    valid = torch.tensor([6, 3])
    key_padding = torch.arange(T)[None, :] >= valid[:, None]
    expected = seeded(lambda: _torch_layer_written_out(layer, x, key_padding))
    assert_same(seeded(lambda: block(x, mask=padding_mask(valid, T))), expected)
    assert_same(seeded(lambda: block(x)), seeded(lambda: _torch_layer_written_out(layer, x)))
    assert_dropout_active(block, x)
    # the written-out form is torch's own forward (checked at dropout 0, where masks do not matter)
    layer.self_attn.dropout = layer.dropout.p = layer.dropout1.p = layer.dropout2.p = 0.0
    assert_same(_torch_layer_written_out(layer, x, key_padding, p=0.0), layer(x, src_key_padding_mask=key_padding))


# ---------------------------------------------------------------------------
# Positional encodings: dropout(x + P[:T])
# ---------------------------------------------------------------------------


def test_sinusoidal_encoding_matches_d2l_in_training(d2l):
    B, T, D = 2, 7, 8
    ours = SinusoidalEncoding(D, max_len=50, dropout=P).train()
    ref = d2l.PositionalEncoding(D, P, max_len=50).train()
    x = torch.randn(B, T, D)
    assert_same(seeded(lambda: ours(x)), seeded(lambda: ref(x)))
    assert_same(seeded(lambda: ours(x)), seeded(lambda: F.dropout(x + sinusoidal_table(T, D), P)))
    assert_dropout_active(ours, x)


def test_learned_positions_dropout_is_on_the_sum():
    B, T, D = 2, 5, 8
    pos = LearnedPositionalEmbedding(D, max_len=10, dropout=P).train()
    x = torch.randn(B, T, D)
    assert_same(seeded(lambda: pos(x)), seeded(lambda: F.dropout(x + pos.table(T), P)))
    assert_dropout_active(pos, x)


def test_a_stack_in_training_is_embedding_dropout_then_its_blocks():
    """Encoder: dropout(emb * sqrt(D) + P), then each block (training mode), then the final norm."""
    from lib.transformer import Encoder, EncoderConfig

    cfg = EncoderConfig(vocab_size=20, d_model=8, num_heads=2, d_ff=16, num_layers=2, dropout=P, max_len=16)
    enc = Encoder(cfg).train()
    tokens = torch.randint(0, 20, (2, 6))
    valid = torch.tensor([6, 4])

    def written_out():
        x = F.dropout(enc.embedding(tokens) * math.sqrt(8) + sinusoidal_table(6, 8), P)
        for block in enc.blocks:
            x = block(x, mask=padding_mask(valid, 6))
        return enc.final_norm(x)

    assert_same(seeded(lambda: enc(tokens, valid_lens=valid)), seeded(written_out))
    assert_dropout_active(enc, tokens)


# ---------------------------------------------------------------------------
# The decoder block against torch.nn.TransformerDecoderLayer's placement, in training mode
# ---------------------------------------------------------------------------


def _torch_decoder_written_out(layer: nn.TransformerDecoderLayer, x, memory, causal, memory_padding, p=P):
    """TransformerDecoderLayer.forward in training mode over its own sub-modules (see the encoder's)."""
    def sa(h):
        return layer.self_attn(h, h, h, attn_mask=~causal, need_weights=False)[0].contiguous()

    def ca(h):
        return layer.multihead_attn(h, memory, memory, key_padding_mask=memory_padding,
                                    need_weights=False)[0].contiguous()

    def ff(h):
        return layer.linear2(F.dropout(F.gelu(layer.linear1(h)), p))

    if layer.norm_first:
        x = x + F.dropout(sa(layer.norm1(x)), p)
        x = x + F.dropout(ca(layer.norm2(x)), p)
        return x + F.dropout(ff(layer.norm3(x)), p)
    x = layer.norm1(x + F.dropout(sa(x), p))
    x = layer.norm2(x + F.dropout(ca(x), p))
    return layer.norm3(x + F.dropout(ff(x), p))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_torch_in_training(norm_first):
    """Dropout on both attentions' weights, the FFN's hidden layer and all three residual branches."""
    from lib.attention import causal_mask
    from lib.transformer import DecoderBlock

    B, T, S, D, H, Fh = 2, 5, 6, 16, 4, 32
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(
        D, H, dim_feedforward=Fh, dropout=P, activation="gelu", batch_first=True, norm_first=norm_first
    ).train()
    block = DecoderBlock(
        D, H, Fh, dropout=P, norm_first=norm_first, activation="gelu",
        self_attention=mha_from_torch(layer.self_attn),
        cross_attention=mha_from_torch(layer.multihead_attn),
    ).train()
    _copy_(block.ffn.fc1, layer.linear1)
    _copy_(block.ffn.fc2, layer.linear2)
    for ours, theirs in ((block.residual1, layer.norm1), (block.residual2, layer.norm2), (block.residual3, layer.norm3)):
        with torch.no_grad():
            theirs.weight.normal_(1.0, 0.2)
            theirs.bias.normal_(0.0, 0.2)
        _copy_(ours.norm, theirs)
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    causal = causal_mask(T)
    valid = torch.tensor([6, 2])
    memory_padding = torch.arange(S)[None, :] >= valid[:, None]
    expected = seeded(_torch_decoder_written_out, layer, x, memory, causal, memory_padding)
    got = seeded(block, x, memory, self_mask=causal, memory_mask=padding_mask(valid, S))
    assert_same(got, expected)
    assert not torch.allclose(seeded(block, x, memory, seed=1), seeded(block, x, memory, seed=2))
    # the written-out form is torch's own forward (at dropout 0)
    for m in layer.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    layer.self_attn.dropout = layer.multihead_attn.dropout = 0.0
    expected = _torch_decoder_written_out(layer, x, memory, causal, memory_padding, p=0.0)
    assert_same(expected, layer(x, memory, tgt_mask=~causal, memory_key_padding_mask=memory_padding))
