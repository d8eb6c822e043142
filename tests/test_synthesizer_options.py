"""lib.synthesizer: every constructor option away from its default, initial scales, and the cache path of every variant.

``tests/test_synthesizer.py`` checks each variant's equations with the defaults and the cache
path (Tk > Tq: the queries are the last Tq positions) of the Random synthesizer. Here the same
cache rule is checked for every variant inside the attention layer (cached = uncached), the
initial scales each docstring states are measured, and ``d_head``, ``bias``, ``factors``,
``rank``, ``trainable``, ``init_std`` and ``init_logits`` are each seen to change the module.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.attention import KVCache, Record, causal_mask
from lib.multihead import DotProductScores, MultiHeadAttention
from lib.synthesizer import (
    DenseScores,
    FactorizedDenseScores,
    FactorizedRandomScores,
    MixtureScores,
    RandomScores,
)

D, H, L = 16, 2, 12

VARIANTS = {
    "dense": lambda: DenseScores(D, H, L),
    "factorized_dense": lambda: FactorizedDenseScores(D, H, L),
    "random": lambda: RandomScores(H, L),
    "factorized_random": lambda: FactorizedRandomScores(H, L, rank=3),
    "mixture": lambda: MixtureScores([FactorizedRandomScores(H, L, rank=2), DotProductScores(D, H)],
                                     init_logits=[0.5, -0.5]),
}


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_a_synthesizer_layer_refuses_a_cache_instead_of_misreading_positions(kind):
    mha = MultiHeadAttention(D, H, scores=VARIANTS[kind]()).eval()
    x = torch.randn(2, 7, D)
    with pytest.raises(ValueError, match="cache"):
        mha(x[:, :1], mask=causal_mask(1), record=Record(cache=KVCache()))
    torch.testing.assert_close(mha(x, mask=causal_mask(7))[:, :3], mha(x[:, :3], mask=causal_mask(3)))


@pytest.mark.parametrize("kind", ["random", "factorized_random"])
def test_position_based_rows_are_the_last_queries_when_keys_outnumber_them(kind):
    s = VARIANTS[kind]()
    q, k = torch.randn(1, 3, D), torch.randn(1, 8, D)
    whole = s(torch.randn(1, 8, D), k)  # (1, H, 8, 8)
    torch.testing.assert_close(s(q, k), whole[:, :, 5:8])
    torch.testing.assert_close(s.matrix(3, 8), whole[0, :, 5:8])
    torch.testing.assert_close(s.matrix(4), whole[0, :, :4, :4])  # Tk None: square


@pytest.mark.parametrize("kind", ["dense", "factorized_dense"])
def test_dense_rows_depend_on_the_query_token_only_whatever_the_cache(kind):
    s = VARIANTS[kind]()
    x = torch.randn(1, 8, D)
    whole = s(x, x)
    torch.testing.assert_close(s(x[:, 5:], x), whole[:, :, 5:])


def test_random_init_std_and_its_default():
    torch.manual_seed(1)
    big = 64
    default = RandomScores(4, big)
    assert default.R.std().item() == pytest.approx(1.0, rel=0.03)  # init_std 1
    for std in (0.0, 0.1, 3.0):
        r = RandomScores(4, big, init_std=std)
        assert r.R.std().item() == pytest.approx(std, rel=0.03, abs=1e-9)
    with pytest.raises(ValueError, match="init_std"):
        RandomScores(2, 4, init_std=-1.0)


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_factorized_random_entries_start_with_unit_variance(rank):
    torch.manual_seed(2)
    s = FactorizedRandomScores(8, 64, rank)
    assert s.R_1.std().item() == pytest.approx(rank**-0.25, rel=0.05)
    assert s.R_2.std().item() == pytest.approx(rank**-0.25, rel=0.05)
    assert s.matrix(64).var().item() == pytest.approx(1.0, rel=0.1)
    assert s.R_1.shape == s.R_2.shape == (8, 64, rank)


def test_factorized_random_default_rank_is_the_papers_8():
    s = FactorizedRandomScores(H, L)
    assert s.rank == 8 and s.R_1.shape == (H, L, 8)
    assert all(torch.linalg.matrix_rank(s.matrix(L)[h]) == 8 for h in range(H))


@pytest.mark.parametrize("trainable", [True, False])
def test_trainable_decides_parameters_or_buffers_for_both_random_variants(trainable):
    for s, names in ((RandomScores(H, L, trainable=trainable), ["R"]),
                     (FactorizedRandomScores(H, L, trainable=trainable), ["R_1", "R_2"])):
        params = dict(s.named_parameters())
        assert (sorted(params) == names) is trainable and (not params) is (not trainable)
        assert sorted(s.state_dict()) == names  # saved either way
        mha = MultiHeadAttention(D, H, scores=s)
        mha(torch.randn(2, L, D)).pow(2).sum().backward()
        grads = [getattr(s, n).grad for n in names]
        assert all((g is not None and bool(g.abs().sum() > 0)) is trainable for g in grads)


@pytest.mark.parametrize("cls", [DenseScores, FactorizedDenseScores])
def test_dense_d_head_and_bias(cls):
    x = torch.randn(2, 5, D)
    wide = cls(D, H, L, d_head=5)
    assert wide.W_1.out_features == H * 5 and wide(x, x).shape == (2, H, 5, 5)
    default = cls(D, H, L)
    assert default.d_head == D // H and default.W_1.out_features == D
    nobias = cls(D, H, L, bias=False)
    assert nobias.W_1.bias is None
    assert all(p is None for n, p in vars(nobias).items() if n.startswith("b_"))
    assert not any(n.startswith("b_") or n.endswith("bias") for n, _ in nobias.named_parameters())
    # without biases a zero input gives zero logits; with them, not
    zero = torch.zeros(1, 3, D)
    assert nobias(zero, zero).abs().max() == 0
    assert default(zero, zero).abs().max() > 0


def test_factorized_dense_factors_option_is_used():
    s = FactorizedDenseScores(D, H, L, factors=(2, 6))
    assert s.factors == (2, 6) and s.W_A.shape[-1] == 2 and s.W_B.shape[-1] == 6
    x = torch.randn(1, 4, D)
    h = F.relu(s.W_1(x)).view(1, 4, H, -1).transpose(1, 2)
    A, Bf = h @ s.W_A + s.b_A, h @ s.W_B + s.b_B
    expected = (A[..., :, None] * Bf[..., None, :]).flatten(-2)[..., :4]
    torch.testing.assert_close(s(x, x), expected)
    assert FactorizedDenseScores(D, H, L).factors == (4, 3)  # default: ceil(sqrt(12)) = 4, ceil(12 / 4) = 3
    with pytest.raises(ValueError, match="factors"):
        FactorizedDenseScores(D, H, L, factors=(2, 5))


def test_mixture_init_logits_default_equal_weights_and_non_default_used():
    parts = [RandomScores(H, L), FactorizedRandomScores(H, L, rank=2)]
    x = torch.randn(1, 6, D)
    even = MixtureScores(parts)
    torch.testing.assert_close(even.alpha, torch.full((2,), 0.5))
    torch.testing.assert_close(even(x, x), 0.5 * parts[0](x, x) + 0.5 * parts[1](x, x))
    skew = MixtureScores(parts, init_logits=[2.0, 0.0])
    a = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    torch.testing.assert_close(skew(x, x), a[0] * parts[0](x, x) + a[1] * parts[1](x, x))
    assert isinstance(skew.logits, nn.Parameter)
