"""lib.memory's predictions in every dtype the course uses, per device, and with frozen parameters.

``tests/test_memory.py`` checks the saved-tensor formulas in float32 and float64. Here the same
formulas meet autograd in float16 and bfloat16, where one detail depends on the device:
LayerNorm's saved mean and 1/std. The CPU kernel keeps them in the input's dtype (16-bit
here); CUDA's keeps them in float32, its accumulation type. ``device=`` says which;
the default is ``lib.runtime.device()``. The CUDA comparison runs where a GPU is present.

Every comparison counts (dtype, bytes) of each saved storage, so a statistic saved in the
wrong dtype shows up even where the byte totals happen to agree.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

import lib.runtime
from lib.attention import padding_mask
from lib.memory import (
    adam_mixed_precision_bytes,
    count_parameters,
    decoder_saved_tensors,
    encoder_layer_activation_bytes,
    encoder_layer_saved_tensors,
    encoder_saved_tensors,
    group_bytes,
    measure_saved_tensors,
    optimizer_state_bytes,
    training_step_bytes,
    transformer_saved_tensors,
)
from lib.transformer import Encoder, EncoderBlock, EncoderConfig, Transformer, TransformerConfig

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _measured(fn, module) -> Counter:
    saved = measure_saved_tensors(fn, exclude=module.parameters())
    return Counter((dtype, nbytes) for _, dtype, nbytes in saved if dtype != torch.bool)  # masks are not modelled


def _predicted(saved) -> Counter:
    return Counter((t.dtype, t.bytes) for t in saved)


def _layer_case(device: str, dtype: torch.dtype, norm_first: bool, masked: bool):
    torch.manual_seed(11)
    B, T, D, H, F = 2, 6, 16, 4, 40
    block = EncoderBlock(D, H, F, activation="gelu", norm_first=norm_first).to(device, dtype)
    x = torch.randn(B, T, D, device=device, dtype=dtype, requires_grad=True)
    mask = padding_mask(torch.tensor([6, 3], device=device), T) if masked else None
    measured = _measured(lambda: block(x, mask=mask), block)
    kw = dict(activation="gelu", masked=masked, norm_first=norm_first, dtype=dtype)
    return measured, (B, T, D, H, F), kw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_layer_in_every_dtype_on_the_cpu(dtype, norm_first, masked):
    measured, sizes, kw = _layer_case("cpu", dtype, norm_first, masked)
    assert measured == _predicted(encoder_layer_saved_tensors(*sizes, **kw, device="cpu"))
    stats = [t for t in encoder_layer_saved_tensors(*sizes, **kw, device="cpu") if t.kind == "norm statistics"]
    assert len(stats) == 4 and {t.dtype for t in stats} == {dtype}  # the CPU: in the input's dtype
    assert sum(measured.values()) == len(encoder_layer_saved_tensors(*sizes, **kw, device="cpu"))
    groups = encoder_layer_activation_bytes(*sizes, **kw, device="cpu")
    assert groups["total"] == sum(nbytes * n for (_, nbytes), n in measured.items())


@CUDA
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_in_every_dtype_on_cuda(dtype, norm_first):
    measured, sizes, kw = _layer_case("cuda", dtype, norm_first, masked=True)
    assert measured == _predicted(encoder_layer_saved_tensors(*sizes, **kw, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_devices_differ_by_the_norm_statistics_only(dtype, monkeypatch):
    B, T, D, H = 2, 5, 8, 2
    cpu = encoder_layer_saved_tensors(B, T, D, H, dtype=dtype, device="cpu")
    cuda = encoder_layer_saved_tensors(B, T, D, H, dtype=dtype, device=torch.device("cuda", 0))
    assert [t.name for t in cpu] == [t.name for t in cuda]
    differ = [(a, b) for a, b in zip(cpu, cuda, strict=True) if a != b]
    assert len(differ) == 4 and all(a.kind == "norm statistics" and b.dtype == torch.float32 for a, b in differ)
    assert group_bytes(cuda)["total"] - group_bytes(cpu)["total"] == 4 * B * T * (4 - 2)
    # float32 and float64 are the same everywhere
    for wide in (torch.float32, torch.float64):
        assert encoder_layer_saved_tensors(B, T, D, H, dtype=wide, device="cpu") == encoder_layer_saved_tensors(
            B, T, D, H, dtype=wide, device="cuda")
    # device None is lib.runtime.device(), the device the course runs on
    for where, expected in (("cpu", cpu), ("cuda", cuda)):
        monkeypatch.setattr(lib.runtime, "device", lambda prefer=None, w=where: torch.device(w))
        assert encoder_layer_saved_tensors(B, T, D, H, dtype=dtype) == expected
        assert encoder_layer_activation_bytes(B, T, D, H, dtype=dtype) == group_bytes(expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm_first", [False, True])
def test_whole_model_predictions_pass_the_device_to_every_layer(dtype, norm_first):
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=40, d_model=16, num_heads=4, d_ff=32,
                            num_encoder_layers=2, num_decoder_layers=3, dropout=0.0, norm_first=norm_first)
    for device, stats in (("cpu", dtype), ("cuda", torch.float32)):
        for saved in (encoder_saved_tensors(cfg.encoder(), 2, 7, dtype=dtype, device=device),
                      decoder_saved_tensors(cfg.decoder(), 2, 5, 7, dtype=dtype, device=device),
                      transformer_saved_tensors(cfg, 2, 7, 5, dtype=dtype, device=device)):
            norm = [t for t in saved if t.kind == "norm statistics"]
            assert norm and {t.dtype for t in norm} == {stats}, device
            assert {t.dtype for t in saved if t.kind != "norm statistics"} <= {dtype, torch.int64}
    n_norms = 2 * 2 + 3 * 3 + (2 if norm_first else 0)  # per layer, and the final LayerNorms of pre-norm stacks
    cpu = group_bytes(transformer_saved_tensors(cfg, 2, 7, 5, dtype=dtype, device="cpu"))
    cuda = group_bytes(transformer_saved_tensors(cfg, 2, 7, 5, dtype=dtype, device="cuda"))
    enc_norms, dec_norms = 2 * 2 + int(norm_first), 3 * 3 + int(norm_first)
    assert enc_norms + dec_norms == n_norms
    assert cuda["norm statistics"] - cpu["norm statistics"] == 2 * (enc_norms * 2 * 7 + dec_norms * 2 * 5) * 2


def _stack_case(device: str, dtype: torch.dtype, norm_first: bool):
    torch.manual_seed(12)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=40, d_model=16, num_heads=4, d_ff=32,
                            num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, norm_first=norm_first)
    model = Transformer(cfg).to(device, dtype).train()
    src = torch.randint(0, 30, (2, 7), device=device)
    tgt = torch.randint(0, 40, (2, 5), device=device)
    lens = torch.tensor([7, 3], device=device)
    measured = _measured(lambda: model(src, tgt, src_valid_lens=lens), model)
    return cfg, measured


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_first", [False, True])
def test_whole_models_in_every_dtype_on_the_cpu(dtype, norm_first):
    """Encoder + decoder, with the final LayerNorms of pre-norm stacks: every statistic in the CPU's dtype."""
    cfg, measured = _stack_case("cpu", dtype, norm_first)
    predicted = transformer_saved_tensors(cfg, 2, 7, 5, src_masked=True, dtype=dtype, device="cpu")
    assert measured == _predicted(predicted)
    assert predicted == (encoder_saved_tensors(cfg.encoder(), 2, 7, masked=True, dtype=dtype, device="cpu")
                         + decoder_saved_tensors(cfg.decoder(), 2, 5, 7, memory_masked=True, dtype=dtype,
                                                 device="cpu"))


@CUDA
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_whole_models_in_every_dtype_on_cuda(dtype):
    cfg, measured = _stack_case("cuda", dtype, norm_first=True)
    assert measured == _predicted(transformer_saved_tensors(cfg, 2, 7, 5, src_masked=True, dtype=dtype,
                                                            device="cuda"))


# ---------------------------------------------------------------------------
# A training step with frozen parameters
# ---------------------------------------------------------------------------


def _partly_frozen_encoder():
    torch.manual_seed(13)
    cfg = EncoderConfig(vocab_size=40, d_model=16, num_heads=4, d_ff=32, num_layers=2, dropout=0.0, max_len=16)
    enc = Encoder(cfg)
    for p in [*enc.embedding.parameters(), *enc.blocks[0].parameters()]:
        p.requires_grad_(False)  # fine-tuning the last block only
    return cfg, enc


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_step_with_frozen_parameters_against_a_real_step(optimizer):
    cfg, enc = _partly_frozen_encoder()
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(enc.parameters()))
    opt = (torch.optim.Adam(trainable) if optimizer == "adam" else torch.optim.SGD(trainable, lr=0.1))
    enc(torch.randint(0, 40, (2, 6))).sum().backward()
    opt.step()
    activations = group_bytes(encoder_saved_tensors(cfg, 2, 6, device="cpu"))["total"]
    predicted = training_step_bytes(enc, activations, optimizer=optimizer)
    assert predicted.parameters == sum(p.nbytes for p in enc.parameters())
    assert predicted.gradients == sum(p.grad.nbytes for p in enc.parameters() if p.grad is not None)
    assert predicted.optimizer_state == optimizer_state_bytes(opt)
    assert predicted.activations == activations


def test_mixed_precision_step_counts_frozen_parameters_once():
    """A frozen parameter keeps its 16-bit copy (2 bytes) and nothing else: no master copy, gradients or moments."""
    _, enc = _partly_frozen_encoder()
    P, Pt = count_parameters(enc), count_parameters(enc, trainable_only=True)
    assert Pt < P
    mp = training_step_bytes(enc, 100, mixed_precision=True)
    per_trainable = adam_mixed_precision_bytes(Pt)
    assert mp.parameters == 2 * P + 4 * Pt
    assert mp.gradients == per_trainable.fp16_gradients + per_trainable.fp32_gradients == 6 * Pt
    assert mp.optimizer_state == 8 * Pt
    assert mp.total == 2 * P + 18 * Pt + 100
    # against real tensors: what a mixed-precision trainer allocates for this model
    half = {id(p): p.detach().half() for p in enc.parameters()}
    master = [p.detach().float().clone() for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.Adam([nn.Parameter(m) for m in master])
    for q in opt.param_groups[0]["params"]:
        q.grad = torch.zeros_like(q)
    opt.step()
    moments = optimizer_state_bytes(opt) - 4 * len(master)  # less the step counters, which the formula leaves out
    assert mp.parameters == sum(t.nbytes for t in half.values()) + sum(m.nbytes for m in master)
    assert mp.optimizer_state == moments
    block = EncoderBlock(16, 4, 32)  # nothing frozen: the 20 bytes per parameter
    assert training_step_bytes(block, 0, mixed_precision=True).total == 20 * count_parameters(block)
