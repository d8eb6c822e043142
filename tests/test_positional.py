"""lib.positional: parity with d2l, the properties each scheme is built for, errors, MHA hooks."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import with_weights

from lib.attention import causal_mask, scaled_dot_product_attention
from lib.positional import (
    SCHEMES,
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePosition,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalEncoding,
    alibi_slopes,
    build,
    relative_distances,
    sinusoidal_table,
)

# ---------------------------------------------------------------- sinusoidal



def test_sinusoidal_matches_d2l_table(d2l):
    for D in (2, 8, 32):
        ref = d2l.PositionalEncoding(D, 0.0, max_len=200)
        assert torch.equal(sinusoidal_table(200, D), ref.P[0])
        enc = SinusoidalEncoding(D, max_len=200)
        assert torch.equal(enc.P, ref.P[0])
        x = torch.randn(3, 50, D)
        torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)


def test_sinusoidal_relative_shift_is_a_fixed_rotation():
    """P[i + δ] = M(δ) P[i] with one 2x2 rotation per frequency pair, independent of i (Vaswani 3.5)."""
    D, base = 16, 10000.0
    P = sinusoidal_table(300, D).double()
    omega = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    for delta in (1, 3, 17, 100):
        for p, w in enumerate(omega):
            c, s = math.cos(delta * w), math.sin(delta * w)
            M = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # acts on (sin, cos)
            for i in (0, 5, 42, 150):
                pair_i = P[i, 2 * p : 2 * p + 2]
                pair_j = P[i + delta, 2 * p : 2 * p + 2]
                torch.testing.assert_close(M @ pair_i, pair_j, atol=1e-5, rtol=0)


def test_sinusoidal_beyond_max_len_and_dropout():
    enc = SinusoidalEncoding(8, max_len=10)
    x = torch.zeros(1, 25, 8)
    torch.testing.assert_close(enc(x)[0], sinusoidal_table(25, 8))
    drop = SinusoidalEncoding(8, max_len=10, dropout=0.5).train()
    out = drop(torch.zeros(2, 10, 8))
    assert (out == 0).any()
    drop.eval()
    torch.testing.assert_close(drop(torch.zeros(2, 10, 8))[0], sinusoidal_table(10, 8))


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(4, 7)
    with pytest.raises(ValueError, match=r"\(B, T, D=8\)"):
        SinusoidalEncoding(8)(torch.randn(2, 3, 6))


def _pos(T):
    """Positions 0..T-1 of queries and keys."""
    return torch.arange(T), torch.arange(T)


# ---------------------------------------------------------------- learned


def test_learned_embedding_adds_trainable_rows():
    emb = LearnedPositionalEmbedding(6, max_len=12)
    x = torch.randn(2, 5, 6)
    out = emb(x)
    torch.testing.assert_close(out - x, emb.embedding.weight[:5].expand(2, 5, 6))
    out.sum().backward()
    grad = emb.embedding.weight.grad
    assert grad[:5].abs().sum() > 0 and grad[5:].abs().sum() == 0


def test_learned_embedding_errors():
    emb = LearnedPositionalEmbedding(6, max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        emb(torch.randn(1, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, T, D=6\)"):
        emb(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEmbedding(6, max_len=0)


def test_absolute_encodings_take_d_model_first_and_max_len_by_name():
    """The two siblings agree: (d_model, *, max_len); the old (max_len, d_model) order cannot slip through."""
    for cls in (SinusoidalEncoding, LearnedPositionalEmbedding):
        enc = cls(6, max_len=12)
        assert (enc.d_model, enc.max_len) == (6, 12)
        with pytest.raises(TypeError):
            cls(12, 6)


# ---------------------------------------------------------------- Shaw et al. relative positions


def test_relative_distances_clip():
    idx = relative_distances(5, 5, 2) - 2  # clipped j - i
    expected = torch.tensor([[max(-2, min(2, j - i)) for j in range(5)] for i in range(5)])
    assert torch.equal(idx, expected)
    # Queries are the last Tq positions of Tk (key/value cache).
    assert torch.equal(relative_distances(2, 5, 10) - 10, torch.tensor([[-3, -2, -1, 0, 1], [-4, -3, -2, -1, 0]]))


def _shaw_loop(q, k, v, rel_k, rel_v, K, mask=None):
    """Shaw et al. eqs. (3)-(5), one (i, j) pair at a time."""
    B, H, T, Dh = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                e = torch.empty(T, dtype=q.dtype)
                for j in range(T):
                    a_k = rel_k[max(-K, min(K, j - i)) + K]
                    e[j] = q[b, h, i] @ (k[b, h, j] + a_k) / math.sqrt(Dh)
                if mask is not None:
                    e = e.masked_fill(~mask[i], float("-inf"))
                alpha = torch.softmax(e, dim=0)
                for j in range(T):
                    a_v = rel_v[max(-K, min(K, j - i)) + K]
                    out[b, h, i] += alpha[j] * (v[b, h, j] + a_v)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_relative_position_equals_direct_loop(causal):
    B, H, T, Dh, K = 2, 2, 6, 4, 2
    rel = RelativePosition(Dh, K).double()
    q, k, v = (torch.randn(B, H, T, Dh, dtype=torch.float64) for _ in range(3))
    mask = causal_mask(T) if causal else None
    pos = torch.arange(T)
    bias = rel.score_bias(q, pos, pos)
    assert bias.shape == (B, H, T, T)
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    term = rel.value_term(weights, pos, pos)
    assert term.shape == (B, H, T, Dh)
    expected = _shaw_loop(q, k, v, rel.rel_k.detach(), rel.rel_v.detach(), K, mask)
    torch.testing.assert_close(out + term, expected)


def test_relative_position_clipping_shares_vectors():
    rel = RelativePosition(4, 1)
    a = rel.key_embeddings(torch.arange(6), torch.arange(6))  # (Tq, Tk, Dh)
    assert a.shape == (6, 6, 4)
    # Every distance >= 1 uses the same vector, every distance <= -1 another.
    torch.testing.assert_close(a[0, 5], a[0, 1])
    torch.testing.assert_close(a[5, 0], a[4, 3])
    torch.testing.assert_close(a[2, 2], rel.rel_k[1])
    assert not torch.allclose(a[0, 1], a[1, 0])


def test_relative_position_per_head_and_errors():
    rel = RelativePosition(4, 3, num_heads=2)
    q = torch.randn(1, 2, 5, 4)
    assert rel.score_bias(q, *_pos(5)).shape == (1, 2, 5, 5)
    assert rel.value_term(torch.softmax(torch.randn(1, 2, 5, 5), -1), *_pos(5)).shape == (1, 2, 5, 4)
    # Head h uses table h: compare with a shared module holding that table.
    shared = RelativePosition(4, 3)
    with torch.no_grad():
        shared.rel_k.copy_(rel.rel_k[1])
    torch.testing.assert_close(rel.score_bias(q, *_pos(5))[:, 1], shared.score_bias(q, *_pos(5))[:, 1])
    with pytest.raises(ValueError, match="H=2"):
        rel.score_bias(torch.randn(1, 3, 5, 4), *_pos(5))
    with pytest.raises(ValueError, match="d_head=4"):
        RelativePosition(4, 3).score_bias(torch.randn(1, 2, 5, 8), *_pos(5))
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        RelativePosition(4, 3).score_bias(torch.randn(2, 5, 4), *_pos(5))
    no_v = RelativePosition(4, 3, values=False)
    assert not no_v.has_value_term and no_v.rel_v is None and RelativePosition(4, 3).has_value_term


def test_relative_position_bias_is_per_head_scalar():
    rpb = RelativePositionBias(3, 2)
    with torch.no_grad():
        rpb.bias.copy_(torch.randn(3, 5))
    b = rpb.score_bias(torch.randn(2, 3, 4, 8), *_pos(4))
    assert b.shape == (3, 4, 4)
    assert b[1, 0, 3] == rpb.bias[1, 4] and b[2, 3, 0] == rpb.bias[2, 0]


# ---------------------------------------------------------------- RoPE


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_scores_depend_only_on_relative_position(interleaved):
    Dh = 16
    rope = RotaryEmbedding(Dh, interleaved=interleaved)
    q, k = torch.randn(Dh, dtype=torch.float64), torch.randn(Dh, dtype=torch.float64)

    def score(m, n):
        qm = rope.rotate(q.float().view(1, Dh), torch.tensor([m]))
        kn = rope.rotate(k.float().view(1, Dh), torch.tensor([n]))
        return (qm @ kn.T).item()

    for m, n in ((0, 0), (3, 1), (2, 9), (40, 17)):
        for shift in (1, 5, 123):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-3)
    assert score(0, 5) != pytest.approx(score(0, 0), abs=1e-3)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_rotate_shift_invariance_in_batch(interleaved):
    """Full (B, H, T, Dh) path: scores of a sequence equal those of the same sequence placed later."""
    rope = RotaryEmbedding(8, interleaved=interleaved)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    qr, kr = rope.rotate(q), rope.rotate(k)
    shift = torch.arange(5) + 7
    qs, ks = rope.rotate(q, shift), rope.rotate(k, shift)
    torch.testing.assert_close(qr @ kr.transpose(-2, -1), qs @ ks.transpose(-2, -1), atol=1e-4, rtol=1e-4)


def test_rope_preserves_norms_and_position_zero():
    rope = RotaryEmbedding(12)
    q, k = torch.randn(2, 2, 9, 12), torch.randn(2, 2, 9, 12)
    qr, kr = rope.rotate(q), rope.rotate(k)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(kr.norm(dim=-1), k.norm(dim=-1))
    torch.testing.assert_close(qr[..., 0, :], q[..., 0, :])


def test_rope_pairings_agree_under_a_permutation():
    Dh = 10
    half, inter = RotaryEmbedding(Dh), RotaryEmbedding(Dh, interleaved=True)
    perm = torch.cat([torch.arange(0, Dh, 2), torch.arange(1, Dh, 2)])  # interleaved -> half layout
    inv = torch.argsort(perm)
    x = torch.randn(2, 3, 7, Dh)
    torch.testing.assert_close(inter.rotate(x), half.rotate(x[..., perm])[..., inv])
    # Scores are equal when both q and k are permuted.
    q, k = torch.randn(1, 2, 6, Dh), torch.randn(1, 2, 6, Dh)
    qi, ki = inter.rotate(q), inter.rotate(k)
    a = qi @ ki.transpose(-2, -1)
    qh, kh = half.rotate(q[..., perm]), half.rotate(k[..., perm])
    torch.testing.assert_close(a, qh @ kh.transpose(-2, -1), atol=1e-5, rtol=1e-5)


def test_rope_matches_complex_multiplication():
    """The paper's form: (x_2p + i x_2p+1) · e^{i m θ_p}."""
    Dh, T = 8, 6
    rope = RotaryEmbedding(Dh, interleaved=True)
    x = torch.randn(T, Dh, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    z = torch.view_as_complex(x.view(T, Dh // 2, 2).contiguous())
    rot = z * torch.polar(torch.ones(T, Dh // 2, dtype=torch.float64), torch.arange(T).unsqueeze(1) * theta)
    torch.testing.assert_close(rope.rotate(x.float()), torch.view_as_real(rot).flatten(-2).float(), atol=1e-5, rtol=1e-5)


def test_rope_kv_cache_positions_and_errors():
    rope = RotaryEmbedding(4)
    q = torch.randn(1, 1, 2, 4)
    qr = rope.rotate(q, torch.tensor([3, 4]))
    torch.testing.assert_close(qr, rope.rotate(torch.cat([torch.randn(1, 1, 3, 4), q], 2))[..., 3:, :])
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(5)
    with pytest.raises(ValueError, match="Dh=4"):
        rope.rotate(torch.randn(1, 1, 3, 6))
    with pytest.raises(ValueError, match=r"integer positions \(2,\), got \(3,\)"):
        rope.rotate(q, torch.arange(3))


# ---------------------------------------------------------------- ALiBi


def _paper_slopes(n):
    """Press et al.'s reference get_slopes (github.com/ofirpress/attention_with_linear_biases)."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return get_slopes_power_of_2(closest_power_of_2) + _paper_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-h for h in range(1, 9)]))
    for n in (1, 2, 3, 5, 6, 12, 16, 20, 24):
        torch.testing.assert_close(alibi_slopes(n), torch.tensor(_paper_slopes(n), dtype=torch.float32))
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)


def test_alibi_bias():
    alibi = ALiBi(4)
    q = torch.randn(2, 4, 5, 8)
    b = alibi.score_bias(q, *_pos(5))
    assert b.shape == (4, 5, 5)
    i, j = torch.arange(5).view(-1, 1), torch.arange(5).view(1, -1)
    torch.testing.assert_close(b, -alibi_slopes(4).view(-1, 1, 1) * (i - j).abs())
    # Under a causal mask, the paper's m·j form gives the same attention (softmax is shift invariant per row).
    scores = torch.randn(2, 4, 5, 5)
    m = causal_mask(5)
    from lib.attention import masked_softmax

    paper = alibi_slopes(4).view(-1, 1, 1) * j.float()
    torch.testing.assert_close(masked_softmax(scores, m, bias=b), masked_softmax(scores, m, bias=paper.expand(4, 5, 5)))
    with pytest.raises(ValueError, match="H=4"):
        alibi.score_bias(torch.randn(2, 3, 5, 8), *_pos(5))


# ---------------------------------------------------------------- plugged into MultiHeadAttention


def _mha():
    import lib.multihead

    return lib.multihead


def test_mha_with_rope_is_shift_invariant():
    mh = _mha()
    mha = mh.MultiHeadAttention(16, 2, positional=RotaryEmbedding(8)).eval()
    x = torch.randn(2, 6, 16)
    out, w = with_weights(mha, x)
    q, k, v = mha.project_qkv(x, x, x)
    qr, kr = RotaryEmbedding(8).rotate(q), RotaryEmbedding(8).rotate(k)
    _, ref = scaled_dot_product_attention(qr, kr, v)
    torch.testing.assert_close(w, ref)
    # Without positions the module is permutation equivariant; with RoPE it is not.
    perm = torch.tensor([5, 1, 0, 3, 2, 4])
    assert not torch.allclose(mha(x[:, perm]), out[:, perm], atol=1e-4)


def test_mha_with_shaw_matches_loop():
    mh = _mha()
    torch.manual_seed(1)
    rel = RelativePosition(4, 2)
    mha = mh.MultiHeadAttention(8, 2, positional=rel).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = mha(x, mask=causal_mask(5))
    q, k, v = mha.project_qkv(x, x, x)
    o = _shaw_loop(q, k, v, rel.rel_k.detach(), rel.rel_v.detach(), 2, causal_mask(5))  # (B, H, T, Dh)
    expected = mha.W_o(o.transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(out, expected)
    # values=False: only the score term.
    mha_k = mh.MultiHeadAttention(8, 2, positional=RelativePosition(4, 2, values=False)).eval()
    assert mha_k(torch.randn(1, 5, 8)).shape == (1, 5, 8)


def test_mha_with_alibi_and_fast_path():
    mh = _mha()
    mha = mh.MultiHeadAttention(16, 4, positional=ALiBi(4)).eval()
    x = torch.randn(2, 7, 16)
    out, w = with_weights(mha, x, mask=causal_mask(7))
    q, k, v = mha.project_qkv(x, x, x)
    _, ref = scaled_dot_product_attention(q, k, v, mask=causal_mask(7), bias=ALiBi(4).bias(7))
    torch.testing.assert_close(w, ref)
    fast = mh.MultiHeadAttention(16, 4, positional=ALiBi(4), fast=True).eval()
    fast.load_state_dict(mha.state_dict())
    torch.testing.assert_close(fast(x, mask=causal_mask(7)), out, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- one contract, one registry, the cache


@pytest.mark.parametrize("name", ["rope", "alibi", "shaw", "relative_bias"])
@pytest.mark.parametrize("fast", [False, True])
def test_relative_schemes_cached_equals_uncached(name, fast):
    """Keys are rotated/biased by their own positions once: cached decoding gives the full causal result."""
    from lib.attention import KVCache, Record
    from lib.multihead import MultiHeadAttention

    torch.manual_seed(0)
    scheme = build(name, d_model=16, num_heads=4, max_distance=3)
    if name == "relative_bias":
        with torch.no_grad():
            scheme.bias.normal_()
    mha = MultiHeadAttention(16, 4, positional=scheme, fast=fast).eval()
    x = torch.randn(2, 6, 16)
    full = mha(x, mask=causal_mask(6))
    cache = KVCache()
    steps = [mha(x[:, t:t + 1], mask=causal_mask(1, t + 1), record=Record(cache=cache)) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_registry_builds_every_scheme_and_refuses_unknown_names():
    from lib.multihead import PositionalScheme

    kinds = {name: build(name, d_model=16, num_heads=4) for name in SCHEMES}
    assert isinstance(kinds["sinusoidal"], SinusoidalEncoding) and isinstance(kinds["learned"], LearnedPositionalEmbedding)
    for name in ("shaw", "relative_bias", "rope", "alibi"):
        assert isinstance(kinds[name], PositionalScheme), name
    assert kinds["rope"].d_head == 4 and build("rope", d_model=16, num_heads=4, d_head=8).d_head == 8
    assert build(None, d_model=16, num_heads=4) is None
    with pytest.raises(ValueError, match=r"unknown positional scheme 'rotary'; expected one of \['alibi'"):
        build("rotary", d_model=16, num_heads=4)


@pytest.mark.parametrize("cls", [SinusoidalEncoding, LearnedPositionalEmbedding])
def test_absolute_offset_continues_the_table(cls):
    enc = cls(16, max_len=12)
    x = torch.randn(2, 7, 16)
    full = enc(x)
    torch.testing.assert_close(torch.cat([enc(x[:, :3]), enc(x[:, 3:], offset=3)], 1), full)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        enc(x, offset=-1)
