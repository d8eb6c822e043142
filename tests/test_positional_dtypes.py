"""lib.positional in float32, float16 and bfloat16, at positions where 16-bit arithmetic breaks.

float16 holds integers exactly only up to 2048 and bfloat16 up to 256; an angle m·θ computed in
16 bits at position m = 3000 is off by whole radians. So the tables and rotations are computed
in float32 and only the result is cast: a 16-bit answer must equal the float32 answer rounded
once to 16 bits, up to the rounding of the final multiply-adds. Each scheme returns the
caller's dtype. Offsets (the positions after a key/value cache) and the defaults of each
constructor are checked in the same spirit as ``tests/test_defaults.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from lib.multihead import MultiHeadAttention
from lib.positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePosition,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalEncoding,
    alibi_slopes,
    build,
    sinusoidal_table,
)

HALF = [torch.float16, torch.bfloat16]
DTYPES = [torch.float32, *HALF]
FAR = 3000  # beyond the integers of both 16-bit formats
EPS = {torch.float32: 1e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # relative rounding step


def _sin_cos_reference(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """P[m, 2j] = sin(m / base^(2j/d)), P[m, 2j+1] = cos(...), in float64."""
    m = positions.double()[:, None]
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    out = torch.empty(len(positions), d, dtype=torch.float64)
    out[:, 0::2] = torch.sin(m / freq)
    out[:, 1::2] = torch.cos(m / freq)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sinusoidal_table_is_computed_in_float32_then_cast(dtype):
    D = 16
    table = sinusoidal_table(FAR + 5, D, dtype=dtype)
    assert table.dtype == dtype
    torch.testing.assert_close(table, sinusoidal_table(FAR + 5, D).to(dtype), atol=0, rtol=0)
    ref = _sin_cos_reference(torch.arange(FAR + 5), D)
    # float32 angles of ~3000 rad carry ~1e-4 absolute error; one 16-bit rounding on top
    assert (table.double() - ref).abs().max() < 5e-4 + EPS[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 7, FAR])
def test_sinusoidal_encoding_in_every_dtype_and_offset(dtype, offset):
    D, T = 16, 5
    enc = SinusoidalEncoding(D, max_len=64)  # offsets beyond max_len: rows computed on the fly
    x = torch.randn(2, T, D).to(dtype)
    out = enc(x, offset)
    assert out.dtype == dtype
    P = _sin_cos_reference(torch.arange(offset, offset + T), D)
    expected = (x.double() + P)
    assert (out.double() - expected).abs().max() < 5e-4 + 4 * EPS[dtype] * (1 + x.double().abs().max())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_learned_positions_in_every_dtype(dtype):
    pos = LearnedPositionalEmbedding(d_model=8, max_len=40)
    x = torch.randn(2, 4, 8).to(dtype)
    for offset in (0, 3, 36):
        out = pos(x, offset)
        assert out.dtype == dtype
        torch.testing.assert_close(out, x + pos.embedding.weight[offset:offset + 4].to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_angles_stay_in_float32_for_16_bit_inputs(dtype, interleaved):
    Dh = 16
    rope = RotaryEmbedding(Dh, interleaved=interleaved)
    x = torch.randn(2, 3, 4, Dh)
    positions = torch.tensor([0, 1, FAR, FAR + 1])
    out = rope.rotate(x.to(dtype), positions)
    assert out.dtype == dtype
    exact = rope.rotate(x.double(), positions)  # float64 angles
    err = (out.double() - exact).abs().max().item()
    # one rounding of the input and one of the output (|x| <= ~4); float32 angles near 3000 rad add ~1e-3
    assert err < 1e-3 + 8 * EPS[dtype] * x.abs().max().item()
    cos, sin = rope.cos_sin(positions, dtype)
    assert cos.dtype == sin.dtype == torch.float32  # never below float32
    assert rope.cos_sin(positions, torch.float64)[0].dtype == torch.float64


def test_rope_norm_is_kept_in_16_bits_far_away():
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 1, 3, 8)
    for dtype in HALF:
        out = rope.rotate(x.to(dtype), torch.tensor([FAR, FAR + 100, FAR + 1000]))
        ratio = out.double().norm(dim=-1) / x.to(dtype).double().norm(dim=-1)
        assert ((ratio - 1).abs() < 8 * EPS[dtype]).all()


def test_rope_defaults_base_10000_rotate_half_pairing():
    x = torch.randn(1, 1, 5, 8)
    default = RotaryEmbedding(8)
    explicit = RotaryEmbedding(8, base=10000.0, interleaved=False)
    torch.testing.assert_close(default.rotate(x), explicit.rotate(x))
    torch.testing.assert_close(default.theta, 10000.0 ** (-torch.arange(0, 8, 2).float() / 8))
    assert not torch.allclose(RotaryEmbedding(8, base=100.0).rotate(x), default.rotate(x))
    assert not torch.allclose(RotaryEmbedding(8, interleaved=True).rotate(x), default.rotate(x))
    # rotate-half: feature p is paired with p + Dh/2, turned by position * theta_p
    m = 3
    angle = m * default.theta[1]
    out = default.rotate(x, torch.arange(5))[0, 0, m]
    torch.testing.assert_close(out[1], x[0, 0, m, 1] * torch.cos(angle) - x[0, 0, m, 5] * torch.sin(angle))
    torch.testing.assert_close(out[5], x[0, 0, m, 5] * torch.cos(angle) + x[0, 0, m, 1] * torch.sin(angle))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_score_biases_come_in_the_query_dtype(dtype):
    H, Dh = 4, 8
    q = torch.randn(2, H, 3, Dh).to(dtype)
    i, j = torch.tensor([FAR - 2, FAR - 1, FAR]), torch.arange(FAR - 5, FAR + 1)
    alibi = ALiBi(H)
    bias = alibi.score_bias(q, i, j)
    assert bias.dtype == dtype
    expected = -alibi_slopes(H).double()[:, None, None] * (j[None, :] - i[:, None]).abs().double()
    assert (bias.double() - expected).abs().max() < 4 * EPS[dtype] * expected.abs().max() + 1e-6
    rpb = RelativePositionBias(H, 3)
    with torch.no_grad():
        rpb.bias.normal_()
    b = rpb.score_bias(q, i, j)
    assert b.dtype == dtype
    idx = (j[None, :] - i[:, None]).clamp(-3, 3) + 3
    torch.testing.assert_close(b, rpb.bias[:, idx].to(dtype), atol=0, rtol=0)
    shaw = RelativePosition(Dh, 3)
    s = shaw.score_bias(q, i, j)
    assert s.dtype == dtype
    ref = torch.einsum("bhqd,qkd->bhqk", q.double(), shaw.rel_k[idx].double()) / math.sqrt(Dh)
    assert (s.double() - ref).abs().max() < 16 * EPS[dtype] * (1 + ref.abs().max())
    w = torch.softmax(torch.randn(2, H, 3, 6), -1).to(dtype)
    v = shaw.value_term(w, i, j)
    assert v.dtype == dtype


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", ["rope", "alibi", "shaw", "relative_bias"])
def test_16_bit_attention_with_each_scheme_follows_float32(dtype, name):
    """A whole attention layer: the 16-bit output is the float32 output up to 16-bit rounding, and the
    cached path agrees with the uncached one in 16 bits too."""
    from lib.attention import KVCache, Record, causal_mask

    torch.manual_seed(3)
    D, H, T = 16, 2, 6
    scheme = build(name, d_model=D, num_heads=H, max_distance=3)
    mha = MultiHeadAttention(D, H, positional=scheme).eval()
    x = torch.randn(2, T, D)
    ref = mha(x, mask=causal_mask(T))
    half = mha.to(dtype)
    out = half(x.to(dtype), mask=causal_mask(T))
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() < 64 * EPS[dtype] * (1 + ref.abs().max())
    cache = KVCache()
    steps = [half(x[:, t:t + 1].to(dtype), mask=causal_mask(1, t + 1), record=Record(cache=cache)) for t in range(T)]
    assert (torch.cat(steps, 1).float() - out.float()).abs().max() < 64 * EPS[dtype] * (1 + ref.abs().max())


def test_absolute_encoding_defaults():
    """SinusoidalEncoding: max_len 1000, no dropout, base 10000; LearnedPositionalEmbedding: N(0, 0.02^2), no dropout."""
    enc = SinusoidalEncoding(8)
    assert enc.max_len == 1000 and enc.base == 10000.0 and enc.dropout.p == 0.0
    assert enc.P.shape == (1000, 8)
    torch.testing.assert_close(enc.P, sinusoidal_table(1000, 8, base=10000.0))
    assert not torch.allclose(SinusoidalEncoding(8, base=100.0).P, enc.P)
    torch.testing.assert_close(SinusoidalEncoding(8, max_len=10, base=100.0).table(20), sinusoidal_table(20, 8, base=100.0))
    learned = LearnedPositionalEmbedding(d_model=64, max_len=4000)
    assert learned.dropout.p == 0.0
    assert learned.embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert learned.embedding.weight.mean().abs().item() < 0.002


def test_relative_scheme_initialisations_and_defaults():
    """Shaw's tables start N(0, 1/Dh), shared by the heads, with a^V; the scalar bias starts at zero."""
    torch.manual_seed(4)
    shaw = RelativePosition(16, 200)
    assert shaw.num_heads is None and shaw.has_value_term  # defaults: shared tables, values=True
    assert shaw.rel_k.shape == shaw.rel_v.shape == (401, 16)
    for table in (shaw.rel_k, shaw.rel_v):
        assert table.std().item() == pytest.approx(16**-0.5, rel=0.05)
    per_head = RelativePosition(16, 3, num_heads=4, values=False)
    assert per_head.rel_k.shape == (4, 7, 16) and per_head.rel_v is None and not per_head.has_value_term
    rpb = RelativePositionBias(4, 3)
    assert rpb.bias.shape == (4, 7) and rpb.bias.abs().max() == 0
    assert build("shaw", d_model=32, num_heads=4).max_distance == 16  # build's default K
    assert build("shaw", d_model=32, num_heads=4).d_head == 8  # d_head None: D // H
    assert build("shaw", d_model=32, num_heads=4, d_head=5).d_head == 5
