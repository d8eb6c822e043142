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
    decoder_layer_saved_tensors,
    decoder_saved_tensors,
    encoder_layer_activation_bytes,
    encoder_layer_saved_tensors,
    encoder_saved_tensors,
    format_bytes,
    group_bytes,
    layer_parameter_breakdown,
    layer_parameters,
    measure_peak_bytes,
    measure_saved_tensors,
    measure_training_step,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_bytes,
    training_step_bytes,
    transformer_saved_tensors,
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


# ---------------------------------------------------------------------------
# Whole models: encoder, decoder, encoder-decoder
# ---------------------------------------------------------------------------


def _bytes_saved(fn, module):
    measured = measure_saved_tensors(fn, exclude=module.parameters())
    return Counter(m[2] for m in measured if m[1] != torch.bool)  # boolean masks are not modelled


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_saved_tensors_match_autograd(norm_first, masked, activation):
    torch.manual_seed(4)
    cfg = EncoderConfig(vocab_size=50, d_model=16, num_heads=4, d_ff=24, num_layers=3, dropout=0.0, max_len=20,
                        norm_first=norm_first, activation=activation)
    enc = Encoder(cfg).train()
    tokens = torch.randint(0, 50, (3, 7))
    valid = torch.tensor([7, 5, 2]) if masked else None
    measured = _bytes_saved(lambda: enc(tokens, valid_lens=valid), enc)
    model = encoder_saved_tensors(cfg, 3, 7, masked=masked)
    assert measured == Counter(t.bytes for t in model)
    one = encoder_layer_activation_bytes(3, 7, 16, 4, 24, activation=activation, masked=masked, norm_first=norm_first)
    extra = (3 * 7 * 16 * 4 + 2 * 3 * 7 * 4) if norm_first else 0  # the final LayerNorm
    assert group_bytes(model)["total"] == 3 * one["total"] + 3 * 7 * 8 + extra  # + the int64 token ids


class _RefDecoderBlock(nn.Module):
    """The paper's decoder layer composed from lib's pieces: causal self-attention, cross-attention, FFN."""

    def __init__(self, D, H, F, *, norm_first, activation):
        super().__init__()
        from lib.ffn import PositionWiseFFN
        from lib.multihead import MultiHeadAttention
        from lib.transformer import Residual

        self.self_attention = MultiHeadAttention(D, H)
        self.cross_attention = MultiHeadAttention(D, H)
        self.ffn = PositionWiseFFN(D, F, activation=activation)
        self.r1, self.r2, self.r3 = (Residual(D, norm_first=norm_first) for _ in range(3))

    def forward(self, y, memory, memory_mask=None):
        from lib.attention import causal_mask

        T = y.shape[1]
        y = self.r1(y, lambda h: self.self_attention(h, h, h, mask=causal_mask(T)))
        y = self.r2(y, lambda h: self.cross_attention(h, memory, memory, mask=memory_mask))
        return self.r3(y, self.ffn)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("memory_masked", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_saved_tensors_match_autograd(norm_first, memory_masked, activation):
    torch.manual_seed(5)
    B, T, S, D, H, F = 2, 5, 9, 16, 4, 40  # T != S: the cross-attention weights are (B, H, T, S)
    blocks = nn.ModuleList(_RefDecoderBlock(D, H, F, norm_first=norm_first, activation=activation) for _ in range(2))
    y = torch.randn(B, T, D, requires_grad=True)
    memory = torch.randn(B, S, D, requires_grad=True)
    mmask = padding_mask(torch.tensor([9, 4]), S) if memory_masked else None

    def run():
        h = y
        for block in blocks:
            h = block(h, memory, mmask)
        return h

    measured = _bytes_saved(run, blocks)
    kw = dict(activation=activation, memory_masked=memory_masked, norm_first=norm_first)
    model = decoder_layer_saved_tensors(B, T, S, D, H, F, **kw) + decoder_layer_saved_tensors(
        B, T, S, D, H, F, include_memory=False, **kw)
    assert measured == Counter(t.bytes for t in model)
    cross = [t for t in model if t.kind == "attention" and t.shape == (B, H, T, S)]
    assert len(cross) == 2 * (2 if memory_masked else 1)
    assert sum(t.shape == (B, S, D) for t in model) == 2 * 2 + 1  # k, v per layer and the memory once


def _transformer_classes():
    import lib.transformer as tr

    names = ("Decoder", "DecoderConfig", "Transformer", "TransformerConfig")
    if not all(hasattr(tr, n) for n in names):
        pytest.skip("lib.transformer has no Decoder/Transformer yet")
    return [getattr(tr, n) for n in names]


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_saved_tensors_match_autograd(norm_first):
    _, _, Transformer, TransformerConfig = _transformer_classes()
    torch.manual_seed(6)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=40, d_model=16, num_heads=4, d_ff=32,
                            num_encoder_layers=2, num_decoder_layers=3, dropout=0.0, norm_first=norm_first)
    model = Transformer(cfg).train()
    src, tgt = torch.randint(0, 30, (2, 7)), torch.randint(0, 40, (2, 5))
    measured = _bytes_saved(lambda: model(src, tgt), model)
    assert measured == Counter(t.bytes for t in transformer_saved_tensors(cfg, 2, 7, 5))
    padded = _bytes_saved(lambda: model(src, tgt, src_valid_lens=torch.tensor([7, 3])), model)
    assert padded == Counter(t.bytes for t in transformer_saved_tensors(cfg, 2, 7, 5, src_masked=True))


def test_decoder_stack_formula_parts():
    from types import SimpleNamespace

    cfg = SimpleNamespace(d_model=8, num_heads=2, d_ff=16, num_layers=3, norm_first=False, dropout=0.0)
    saved = decoder_saved_tensors(cfg, 2, 5, 7)
    assert sum(t.name.startswith("memory") for t in saved) == 1
    assert group_bytes(saved)["token ids"] == 2 * 5 * 8
    both = transformer_saved_tensors(cfg, 2, 7, 5)
    assert group_bytes(both)["total"] == group_bytes(encoder_saved_tensors(cfg, 2, 7))["total"] + group_bytes(saved)["total"]
    with pytest.raises(ValueError, match="dropout"):
        encoder_saved_tensors(SimpleNamespace(**{**vars(cfg), "dropout": 0.1}), 2, 5)


# ---------------------------------------------------------------------------
# Peak memory and a whole training step
# ---------------------------------------------------------------------------


def test_measure_peak_bytes_counts_live_tensors():
    assert measure_peak_bytes(lambda: torch.empty(10, 10)) == 400
    assert measure_peak_bytes(lambda: [torch.ones(100) for _ in range(3)]) == 1200  # all alive together
    assert measure_peak_bytes(lambda: [torch.ones(100).sum() for _ in range(3)]) == 400 + 3 * 4  # freed in turn
    x = torch.ones(1000)
    assert measure_peak_bytes(lambda: x.view(10, 100).t().add_(1)) == 0  # views and in-place: nothing new
    a = torch.randn(64, 64)
    assert measure_peak_bytes(lambda: (a @ a).relu()) == 2 * 64 * 64 * 4  # product, then relu's output


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("T", [8, 64, 192])
def test_training_step_peak_between_bounds(norm_first, T):
    """The peak is at least params + Adam state + every saved activation (all alive at the start of
    the backward pass), and the four-part sum misses only temporaries (scores, gradients of the weights)."""
    torch.manual_seed(7)
    B = 4
    cfg = EncoderConfig(vocab_size=64, d_model=32, num_heads=4, d_ff=128, num_layers=2, dropout=0.0, max_len=256,
                        norm_first=norm_first)
    enc = Encoder(cfg).train()
    tokens = torch.randint(0, 64, (B, T))
    opt = torch.optim.Adam(enc.parameters())
    enc(tokens).sum().backward()
    opt.step()
    predicted = training_step_bytes(enc, group_bytes(encoder_saved_tensors(cfg, B, T))["total"])
    assert predicted.parameters == predicted.gradients == 4 * count_parameters(enc)
    measured = measure_training_step(enc, opt, lambda: enc(tokens).sum())
    assert measured["optimizer_state"] == predicted.optimizer_state
    lower = predicted.parameters + predicted.optimizer_state + predicted.activations
    transients = 3 * attention_matrix_bytes(B, 4, T) + 4 * predicted.parameters
    assert lower <= measured["peak"] <= predicted.total + transients


def test_training_step_bytes_mixed_precision_and_errors():
    block = EncoderBlock(16, 4, 32)
    P = count_parameters(block)
    mp = training_step_bytes(block, 1000, mixed_precision=True)
    assert mp.total - 1000 == 20 * P and mp.parameters == 6 * P and mp.gradients == 6 * P and mp.optimizer_state == 8 * P
    sgd = training_step_bytes(block, 0, optimizer="sgd")
    assert sgd.optimizer_state == 0 and sgd.total == 8 * P
    assert dict(sgd.rows())["total"] == sgd.total
    with pytest.raises(ValueError, match="optimizer"):
        training_step_bytes(block, 0, optimizer="lion")
    with pytest.raises(ValueError, match="mixed"):
        training_step_bytes(block, 0, optimizer="sgd", mixed_precision=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T", [128, 512])
def test_cuda_training_step_peak(T):
    """The allocator's peak of a training step lies between the same bounds as on the CPU."""
    torch.manual_seed(8)
    B = 8
    cfg = EncoderConfig(vocab_size=128, d_model=64, num_heads=4, d_ff=256, num_layers=2, dropout=0.0, max_len=T,
                        norm_first=True)
    enc = Encoder(cfg).cuda().train()
    tokens = torch.randint(0, 128, (B, T), device="cuda")
    opt = torch.optim.Adam(enc.parameters())
    for _ in range(2):  # the optimizer's state and cuBLAS' workspace exist from here on
        opt.zero_grad(set_to_none=True)
        enc(tokens).sum().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    predicted = training_step_bytes(enc, group_bytes(encoder_saved_tensors(cfg, B, T))["total"])

    def step():
        opt.zero_grad(set_to_none=True)
        enc(tokens).sum().backward()
        opt.step()

    held = torch.cuda.memory_allocated()
    peak = held + cuda_peak_bytes(step)
    assert held >= predicted.parameters + predicted.optimizer_state
    lower = predicted.parameters + predicted.optimizer_state + predicted.activations
    transients = 3 * attention_matrix_bytes(B, 4, T) + 4 * predicted.parameters + 64 * 2**20  # + workspaces
    assert lower <= peak <= predicted.total + transients
