"""Tests of lib.ffn: the Linear FFN, its Conv1d twin, weight conversion, d2l parity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.ffn import (
    PositionWiseFFN,
    PositionWiseFFNConv,
    conv1d_to_linear,
    linear_to_conv1d,
    make_activation,
)

SHAPES = [(1, 1, 4, 8), (2, 5, 8, 32), (3, 7, 16, 12), (4, 32, 24, 96)]  # (B, T, D, F)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("B,T,D,F", SHAPES)
@pytest.mark.parametrize("activation", ["relu", "gelu", torch.tanh])
@pytest.mark.parametrize("bias", [True, False])
def test_conversion_gives_identical_outputs_and_gradients(B, T, D, F, activation, bias):
    torch.manual_seed(B * 100 + T)
    ffn = PositionWiseFFN(D, F, activation=activation, bias=bias).double()
    conv = ffn.to_conv()
    assert isinstance(conv, PositionWiseFFNConv)
    assert conv.conv1.weight.shape == (F, D, 1) and conv.conv2.weight.shape == (D, F, 1)
    assert conv.conv1.weight.dtype == torch.float64

    x = torch.randn(B, T, D, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = ffn(x1), conv(x2)
    torch.testing.assert_close(y2, y1)
    upstream = torch.randn_like(y1)
    y1.backward(upstream)
    y2.backward(upstream)
    torch.testing.assert_close(x2.grad, x1.grad)
    g_lin, g_conv = _grads(ffn), _grads(conv)
    torch.testing.assert_close(g_conv["conv1.weight"].squeeze(-1), g_lin["fc1.weight"])
    torch.testing.assert_close(g_conv["conv2.weight"].squeeze(-1), g_lin["fc2.weight"])
    if bias:
        torch.testing.assert_close(g_conv["conv1.bias"], g_lin["fc1.bias"])
        torch.testing.assert_close(g_conv["conv2.bias"], g_lin["fc2.bias"])


@pytest.mark.parametrize("B,T,D,F", SHAPES[:3])
def test_round_trip_conv_to_linear(B, T, D, F):
    torch.manual_seed(1)
    conv = PositionWiseFFNConv(D, F, activation="gelu")
    ffn = conv.to_linear()
    back = ffn.to_conv()
    x = torch.randn(B, T, D)
    torch.testing.assert_close(ffn(x), conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back(x), conv(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(back.conv1.weight, conv.conv1.weight)
    assert isinstance(ffn.act, nn.GELU) and ffn.act is not conv.act


def test_conversion_keeps_activation_settings():
    ffn = PositionWiseFFN(4, 8, activation=nn.GELU(approximate="tanh"))
    conv = ffn.to_conv()
    assert isinstance(conv.act, nn.GELU) and conv.act.approximate == "tanh" and conv.act is not ffn.act
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(conv(x), ffn(x), atol=1e-6, rtol=1e-5)


def test_conversion_copies_and_does_not_share():
    ffn = PositionWiseFFN(4, 8)
    conv = ffn.to_conv()
    with torch.no_grad():
        conv.conv1.weight.zero_()
    assert ffn.fc1.weight.abs().sum() > 0


def test_conversion_keeps_dropout_and_names():
    ffn = PositionWiseFFN(4, 8, dropout=0.25)
    assert [n for n, _ in ffn.named_children()] == ["fc1", "act", "drop", "fc2"]  # timm's Mlp order
    assert ffn.to_conv().drop.p == 0.25
    assert ffn.to_conv().to_linear().drop.p == 0.25


def test_layer_converters():
    torch.manual_seed(0)
    lin = nn.Linear(6, 10)
    conv = linear_to_conv1d(lin)
    x = torch.randn(3, 6, 7)  # (B, D, T): channels first
    torch.testing.assert_close(conv(x), lin(x.transpose(1, 2)).transpose(1, 2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(conv1d_to_linear(conv).weight, lin.weight)
    with pytest.raises(ValueError, match="kernel_size"):
        conv1d_to_linear(nn.Conv1d(6, 10, kernel_size=3))


@pytest.mark.parametrize("B,T,D,F", SHAPES)
def test_parity_with_d2l_position_wise_ffn(B, T, D, F):
    from d2l import torch as d2l

    torch.manual_seed(2)
    ref = d2l.PositionWiseFFN(F, D)
    x = torch.randn(B, T, D)
    ref(x)  # LazyLinear: the first call fixes the input sizes
    ours = PositionWiseFFN(D, F)
    with torch.no_grad():
        ours.fc1.weight.copy_(ref.dense1.weight)
        ours.fc1.bias.copy_(ref.dense1.bias)
        ours.fc2.weight.copy_(ref.dense2.weight)
        ours.fc2.bias.copy_(ref.dense2.bias)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.to_conv()(x), ref(x), atol=1e-5, rtol=1e-4)


def test_matches_the_formula_and_is_position_wise():
    torch.manual_seed(3)
    ffn = PositionWiseFFN(8, 16).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    W1, b1, W2, b2 = ffn.fc1.weight.T, ffn.fc1.bias, ffn.fc2.weight.T, ffn.fc2.bias
    expected = torch.clamp(x @ W1 + b1, min=0) @ W2 + b2  # max(0, x W1 + b1) W2 + b2
    torch.testing.assert_close(ffn(x), expected)
    perm = torch.randperm(6)
    torch.testing.assert_close(ffn(x[:, perm]), ffn(x)[:, perm])
    for t in range(6):  # each position alone gives the same result
        torch.testing.assert_close(ffn(x[:, t : t + 1]), ffn(x)[:, t : t + 1])


def test_any_leading_dims_for_linear():
    ffn = PositionWiseFFN(4, 8)
    assert ffn(torch.randn(4)).shape == (4,)
    assert ffn(torch.randn(2, 3, 5, 4)).shape == (2, 3, 5, 4)


def test_dropout_only_in_training():
    torch.manual_seed(4)
    ffn = PositionWiseFFN(8, 64, dropout=0.5)
    x = torch.randn(2, 5, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))


@pytest.mark.parametrize("cls", [PositionWiseFFN, PositionWiseFFNConv])
def test_wrong_feature_size_raises(cls):
    ffn = cls(8, 16)
    with pytest.raises(ValueError, match=r"d_model=8.*\(2, 5, 7\)"):
        ffn(torch.randn(2, 5, 7))


def test_conv_needs_3d_input():
    with pytest.raises(ValueError, match=r"\(B, T, d_model=8\)"):
        PositionWiseFFNConv(8, 16)(torch.randn(5, 8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation"):
        PositionWiseFFN(4, 8, activation="swishy")
    with pytest.raises(ValueError, match="dropout"):
        PositionWiseFFN(4, 8, dropout=1.0)
    with pytest.raises(ValueError, match="positive"):
        PositionWiseFFNConv(0, 8)
    with pytest.raises(TypeError, match="callable"):
        make_activation(3)


def test_device_and_dtype_follow_the_source():
    ffn = PositionWiseFFN(4, 8).to(torch.float64)
    conv = ffn.to_conv()
    assert all(p.dtype == torch.float64 for p in conv.parameters())
    assert all(p.dtype == torch.float64 for p in conv.to_linear().parameters())


# ---------------------------------------------------------------------------
# SwiGLU (lesson 11) and the activations by name
# ---------------------------------------------------------------------------


def test_swiglu_matches_the_formula_and_llamas_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from lib.ffn import SwiGLU

    torch.manual_seed(0)
    D, F_ = 16, 40
    ffn = SwiGLU(D, F_)
    x = torch.randn(2, 5, D)
    g, u, d = ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight
    written = (torch.nn.functional.silu(x @ g.T) * (x @ u.T)) @ d.T  # Shazeer (2020), eq. (6)
    torch.testing.assert_close(ffn(x), written, atol=1e-6, rtol=1e-5)
    hf = LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=F_, num_attention_heads=2, num_key_value_heads=2,
                                hidden_act="silu"))
    hf.load_state_dict(ffn.state_dict())  # the same parameter names
    torch.testing.assert_close(ffn(x), hf(x), atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * D * F_  # no biases by default


def test_swiglu_bias_dropout_gelu_gate_and_errors():
    from lib.ffn import SwiGLU

    torch.manual_seed(0)
    ffn = SwiGLU(8, 12, bias=True, activation="gelu", dropout=0.5)
    assert ffn.gate_proj.bias is not None and isinstance(ffn.act, nn.GELU)  # GEGLU
    x = torch.randn(3, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn.down_proj(nn.functional.gelu(ffn.gate_proj(x)) * ffn.up_proj(x)))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))  # dropout acts in training only
    with pytest.raises(ValueError, match=r"d_model=8"):
        ffn(torch.randn(3, 7))
    with pytest.raises(ValueError, match="dropout"):
        SwiGLU(8, 12, dropout=1.0)


def test_silu_and_gelu_tanh_by_name():
    x = torch.linspace(-4, 4, 41)
    torch.testing.assert_close(make_activation("silu")(x), x * torch.sigmoid(x))
    gpt2 = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # GPT-2's gelu_new
    torch.testing.assert_close(make_activation("gelu_tanh")(x), gpt2)
    assert not torch.allclose(make_activation("gelu")(x), gpt2)  # the erf form differs
