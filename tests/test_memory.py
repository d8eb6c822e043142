"""Tests of lib.memory: every formula checked against a measurement on real modules and tensors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import with_weights
from torch import nn

from lib.attention import padding_mask
from lib.memory import (
    activation_bytes,
    adam_mixed_precision_bytes,
    adam_state_bytes,
    attention_matrix_bytes,
    bytes_per_element,
    count_parameters,
    cuda_peak_bytes,
    encoder_layer_activation_bytes,
    encoder_layer_saved_tensors,
    format_bytes,
    layer_parameter_breakdown,
    layer_parameters,
    measure_saved_tensors,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_bytes,
)
from lib.transformer import Encoder, EncoderBlock, EncoderConfig

# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------



@pytest.mark.parametrize("D,H,F", [(8, 2, 32), (16, 4, 24), (64, 8, 256), (512, 8, 2048)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_parameters_match_encoder_block(D, H, F, bias):
    block = EncoderBlock(D, H, F, bias=bias)
    assert layer_parameters(D, F, bias=bias) == count_parameters(block)


@pytest.mark.parametrize("D,H,F", [(8, 2, 32), (16, 4, 24), (512, 8, 2048)])
def test_layer_parameters_match_torch_encoder_layer(D, H, F):
    layer = nn.TransformerEncoderLayer(D, H, dim_feedforward=F, batch_first=True)
    assert layer_parameters(D, F) == count_parameters(layer)


def test_decoder_layer_parameters_match_torch():
    D, H, F = 32, 4, 64
    layer = nn.TransformerDecoderLayer(D, H, dim_feedforward=F, batch_first=True)
    assert layer_parameters(D, F, cross_attention=True, num_norms=3) == count_parameters(layer)


@pytest.mark.parametrize("D", [1, 8, 512, 1024])
def test_twelve_d_squared(D):
    assert layer_parameters(D) == 12 * D * D + 13 * D
    assert layer_parameters(D, bias=False, num_norms=0) == 12 * D * D


def test_breakdown_matches_the_modules():
    D, H, F = 16, 4, 40
    block = EncoderBlock(D, H, F)
    parts = layer_parameter_breakdown(D, F)
    assert parts["ffn fc1"] == count_parameters(block.ffn.fc1)
    assert parts["ffn fc2"] == count_parameters(block.ffn.fc2)
    assert parts["attention q, k, v"] + parts["attention output"] == count_parameters(block.attention)
    assert parts["layer norms"] == count_parameters(block.residual1) + count_parameters(block.residual2)


def test_encoder_parameters():
    cfg = EncoderConfig(vocab_size=100, d_model=16, num_heads=4, d_ff=32, num_layers=3, max_len=10,
                        positional="learned", norm_first=True)
    enc = Encoder(cfg)
    expected = 100 * 16 + 10 * 16 + 3 * layer_parameters(16, 32) + 2 * 16  # + final LayerNorm
    assert count_parameters(enc) == expected


def test_count_parameters_shared_and_trainable():
    lin = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(lin, lin)) == 20  # shared: counted once
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 16


def test_parameter_bytes_against_tensors():
    block = EncoderBlock(16, 4, 32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        measured = sum(p.element_size() * p.nelement() for p in block.to(dtype).parameters())
        assert parameter_bytes(layer_parameters(16, 32), dtype) == measured


# ---------------------------------------------------------------------------
# Optimizer state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_state_matches_a_real_step(amsgrad):
    torch.manual_seed(0)
    block = EncoderBlock(16, 4, 32)
    opt = torch.optim.Adam(block.parameters(), lr=1e-3, amsgrad=amsgrad)
    block(torch.randn(2, 5, 16)).sum().backward()
    opt.step()
    params = list(block.parameters())
    P, n = sum(p.numel() for p in params), len(params)
    assert optimizer_state_bytes(opt) == adam_state_bytes(P, n, amsgrad=amsgrad)
    # fp32: 2 moments x 4 bytes per parameter, plus one 4-byte step per tensor
    assert adam_state_bytes(P, n) == 8 * P + 4 * n
    for state in opt.state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["step"].numel() == 1


def test_mixed_precision_adam_is_20_bytes_per_parameter():
    mp = adam_mixed_precision_bytes(1000)
    assert mp.total == 20_000 and mp.per_parameter == 20
    assert dict(mp.rows()) == {
        "fp16_weights": 2000, "fp16_gradients": 2000, "fp32_master_weights": 4000,
        "fp32_gradients": 4000, "fp32_momentum": 4000, "fp32_variance": 4000,
    }
    assert adam_mixed_precision_bytes(1000, fp32_gradients=False).per_parameter == 16  # ZeRO's count


def test_mixed_precision_breakdown_against_real_tensors():
    """Build each piece of mixed-precision training for a real block and add up element_size x nelement."""
    torch.manual_seed(1)
    master = EncoderBlock(16, 4, 32)  # fp32 master weights
    half = EncoderBlock(16, 4, 32).to(torch.bfloat16)  # 16-bit working copy (bf16: CPU matmuls support it)
    half.load_state_dict(master.state_dict())
    half(torch.randn(2, 5, 16, dtype=torch.bfloat16)).float().sum().backward()
    for p32, p16 in zip(master.parameters(), half.parameters(), strict=True):
        p32.grad = p16.grad.float()  # fp32 gradients for the update
    opt = torch.optim.Adam(master.parameters())
    opt.step()

    def nbytes(ts):
        return sum(t.element_size() * t.nelement() for t in ts)

    P = count_parameters(master)
    mp = adam_mixed_precision_bytes(P)
    assert mp.fp16_weights == nbytes(half.parameters())
    assert mp.fp16_gradients == nbytes(p.grad for p in half.parameters())
    assert mp.fp32_master_weights == nbytes(master.parameters())
    assert mp.fp32_gradients == nbytes(p.grad for p in master.parameters())
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert mp.fp32_momentum + mp.fp32_variance == nbytes(moments)
    assert mp.total == 20 * P


# ---------------------------------------------------------------------------
# Activations and attention matrices
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_attention_and_activation_bytes_against_tensors(dtype):
    torch.manual_seed(2)
    B, T, D, H = 3, 7, 16, 4
    block = EncoderBlock(D, H, 32).to(dtype).eval()
    out, w = with_weights(block, torch.randn(B, T, D, dtype=dtype))
    assert w.shape == (B, H, T, T)
    assert attention_matrix_bytes(B, H, T, dtype=dtype) == w.element_size() * w.nelement()
    assert activation_bytes(B, T, D, dtype=dtype) == out.element_size() * out.nelement()
    assert attention_matrix_bytes(B, H, T, num_saved=2, dtype=dtype, key_len=5) == 2 * B * H * T * 5 * w.element_size()


def test_bytes_per_element():
    assert [bytes_per_element(t) for t in (torch.float32, torch.float16, torch.bfloat16, torch.bool)] == [4, 2, 2, 1]
    assert tensor_bytes((2, 3, 4), torch.float16) == torch.empty(2, 3, 4, dtype=torch.float16).nbytes


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saved_tensors_match_autograd(activation, norm_first, masked, dtype):
    torch.manual_seed(3)
    B, T, D, H, F = 2, 6, 16, 4, 40
    block = EncoderBlock(D, H, F, activation=activation, norm_first=norm_first).to(dtype)
    x = torch.randn(B, T, D, dtype=dtype, requires_grad=True)
    mask = padding_mask(torch.tensor([6, 3]), T) if masked else None
    measured = measure_saved_tensors(lambda: block(x, mask=mask), exclude=block.parameters())
    measured = [m for m in measured if m[1] != torch.bool]  # the boolean masks are not modelled
    model = encoder_layer_saved_tensors(
        B, T, D, H, F, activation=activation, masked=masked, norm_first=norm_first, dtype=dtype
    )
    assert Counter(m[2] for m in measured) == Counter(t.bytes for t in model)
    groups = encoder_layer_activation_bytes(
        B, T, D, H, F, activation=activation, masked=masked, norm_first=norm_first, dtype=dtype
    )
    assert groups["total"] == sum(m[2] for m in measured)
    e = bytes_per_element(dtype)
    assert groups["(B, T, D)"] == activation_bytes(B, T, D, num_saved=8, dtype=dtype)
    assert groups["(B, T, F)"] == B * T * F * (1 if activation == "relu" else 2) * e
    assert groups["attention"] == attention_matrix_bytes(B, H, T, num_saved=2 if masked else 1, dtype=dtype)


def test_twelve_btd_plus_attention():
    """ReLU, F = 4D, no mask: 12 B·T·D + B·H·T² elements (+ 4 B·T norm statistics)."""
    B, T, D, H = 4, 32, 64, 8
    groups = encoder_layer_activation_bytes(B, T, D, H)
    assert groups["total"] == 4 * (12 * B * T * D + B * H * T * T + 4 * B * T)


def test_saved_tensor_errors_and_format():
    with pytest.raises(ValueError, match="activation"):
        encoder_layer_saved_tensors(1, 2, 8, 2, activation="tanh")
    with pytest.raises(ValueError, match="positive"):
        layer_parameters(0)
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"


# ---------------------------------------------------------------------------
# CUDA: the allocator's own count
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_of_an_attention_matrix():
    B, H, T = 4, 8, 256  # a multiple of the allocator's 512-byte blocks
    peak = cuda_peak_bytes(lambda: torch.empty(B, H, T, T, device="cuda"))
    assert peak == attention_matrix_bytes(B, H, T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_retained_activations_of_a_block():
    B, T, D, H, F = 4, 128, 64, 4, 256
    block = EncoderBlock(D, H, F).cuda()
    x = torch.randn(B, T, D, device="cuda", requires_grad=True)
    block(x).sum().backward()  # warm-up: cuBLAS workspace and the like
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = block(x)
    torch.cuda.synchronize()
    retained = torch.cuda.memory_allocated() - before - out.nbytes
    expected = encoder_layer_activation_bytes(B, T, D, H, F)["total"]
    assert expected <= retained <= expected + 64 * 1024  # allocator rounding of the small tensors
