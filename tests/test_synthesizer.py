"""Unit tests of lib.synthesizer: the paper's equations, the layer's masks, properties, parameter counts.

Every synthesizer is a scores module inside ``lib.multihead.MultiHeadAttention(..., scores=...)``;
the layer applies the mask before the softmax, dropout, the values and ``W_o``. The
reference computations below are written out with ``masked_softmax`` so that a test does
not trust the layer it checks. The last section runs the same property checks on the
source's wrong Dense Synthesizer (``SourceDenseSynthesizer``, lesson 09) and shows it
fails each one that ``DenseScores`` passes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.attention import Record, causal_mask, masked_softmax, padding_mask
from lib.checks import check_causal, check_close
from lib.multihead import DotProductScores, MultiHeadAttention
from lib.synthesizer import (
    DenseScores,
    FactorizedDenseScores,
    FactorizedRandomScores,
    MixtureScores,
    RandomScores,
    SourceDenseSynthesizer,
    paper_parameter_count,
)

D, H, L = 16, 2, 12


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def random_biases(m: nn.Module) -> nn.Module:
    """Non-zero biases everywhere, so that parity covers them."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "b_" in name or name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return m


SCORES: dict[str, Callable[[], nn.Module]] = {
    "dense": lambda: DenseScores(D, H, L),
    "factorized_dense": lambda: FactorizedDenseScores(D, H, L),
    "random": lambda: RandomScores(H, L),
    "random_fixed": lambda: RandomScores(H, L, trainable=False),
    "factorized_random": lambda: FactorizedRandomScores(H, L, rank=3),
    "mixture": lambda: MixtureScores([RandomScores(H, L), DotProductScores(D, H)], init_logits=[0.3, -0.2]),
    "dense+dot": lambda: MixtureScores([DenseScores(D, H, L), DotProductScores(D, H)]),
}


def layer(kind: str, dropout: float = 0.0) -> MultiHeadAttention:
    return random_biases(MultiHeadAttention(D, H, scores=SCORES[kind](), dropout=dropout)).eval()


def weights(mha: MultiHeadAttention, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    rec = Record(need_weights=True)
    out = mha(x, mask=mask, record=rec)
    (w,) = rec.weights
    return out, w


def reference(mha: MultiHeadAttention, x: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """The layer written out: softmax(scores masked before it) (dropped out) @ X W_v, heads merged, W_o."""
    B, T, _ = x.shape
    w = masked_softmax(mha.scores(x, x), mask)  # (B, H, T, T)
    if dropout_p > 0:
        w = F.dropout(w, p=dropout_p)
    v = mha.W_v(x).view(B, T, H, -1).transpose(1, 2)  # (B, H, T, Dv)
    return mha.W_o((w @ v).transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


# ---------------------------------------------------------------------------
# The paper's equations, one variant at a time
# ---------------------------------------------------------------------------


def test_dense_is_the_papers_two_layer_map_per_head() -> None:
    s = random_biases(DenseScores(D, H, L))
    x = torch.randn(3, 7, D)
    logits = s(x, x)
    assert logits.shape == (3, H, 7, 7)
    Dh = D // H
    for h in range(H):
        for i in range(7):
            hidden = F.relu(x[:, i] @ s.W_1.weight.T + s.W_1.bias)[:, h * Dh : (h + 1) * Dh]  # (B, Dh)
            row = hidden @ s.W_2[h] + s.b_2[h]  # (B, L): one logit per position up to max_len
            check_close(logits[:, h, i], row[:, :7], f"head {h}, query {i}: B_i = W_2 relu(W_1 X_i + b_1) + b_2, cut to 7")


def test_dense_reads_the_query_only_and_cuts_columns_to_the_key_length() -> None:
    s = DenseScores(D, H, L)
    q = torch.randn(2, 5, D)
    full = s(q, torch.randn(2, L, 3))  # the key's content and width do not matter, only Tk
    short = s(q, torch.randn(2, 4, 9))
    assert full.shape == (2, H, 5, L) and short.shape == (2, H, 5, 4)
    check_close(short, full[..., :4], "logits for 4 keys = the first 4 of L")


def test_factorized_dense_is_the_outer_product_of_the_tiled_rows() -> None:
    s = random_biases(FactorizedDenseScores(D, H, L, factors=(3, 4)))
    x = torch.randn(2, 6, D)
    h = s.hidden(x)  # (B, H, T, Dh)
    A = h @ s.W_A + s.b_A  # (B, H, T, a)
    Bf = h @ s.W_B + s.b_B  # (B, H, T, b)
    H_A = A.repeat_interleave(4, dim=-1)  # each entry of A, b = 4 times: (B, H, T, 12)
    H_B = Bf.repeat(1, 1, 1, 3)  # the whole of B, a = 3 times
    check_close(s(x, x), (H_A * H_B)[..., :6], "C = H_A(A) * H_B(B), cut to the length")
    # every pair (p, q) appears once: each row is a rank-1 a x b matrix
    row = s(x, torch.randn(2, L, D))[0, 0, 0].view(3, 4)
    assert torch.linalg.matrix_rank(row) == 1


def test_factorized_dense_factors_default_and_errors() -> None:
    assert FactorizedDenseScores(D, H, 256).factors == (16, 16)
    a, b = FactorizedDenseScores(D, H, 10).factors
    assert a * b >= 10
    with pytest.raises(ValueError, match=r"a \* b = 6 < max_len = 10"):
        FactorizedDenseScores(D, H, 10, factors=(2, 3))


def test_random_is_one_matrix_per_head_sliced_to_the_lengths() -> None:
    s = RandomScores(H, L)
    x = torch.randn(3, 5, D)
    logits = s(x, x)
    assert logits.shape == (3, H, 5, 5)
    for b in range(3):
        assert torch.equal(logits[b], s.R[:, :5, :5])
    # a key/value cache: 2 new queries against 7 keys are positions 5 and 6 (as causal_mask)
    assert torch.equal(s(x[:, :2], torch.randn(3, 7, D))[0], s.R[:, 5:7, :7])


def test_factorized_random_is_low_rank() -> None:
    s = FactorizedRandomScores(H, L, rank=3)
    logits = s(torch.randn(1, L, D), torch.randn(1, L, D))
    check_close(logits[0], s.R_1 @ s.R_2.transpose(1, 2), "R = R_1 R_2^T")
    assert all(torch.linalg.matrix_rank(logits[0, h]) == 3 for h in range(H))


def test_mixture_weights_are_a_softmax_and_mix_before_the_layers_softmax() -> None:
    parts = [RandomScores(H, L), DotProductScores(D, H)]
    mix = MixtureScores(parts, init_logits=[1.0, -1.0])
    alpha = mix.alpha
    check_close(alpha.sum(), torch.tensor(1.0), "alpha sums to 1")
    assert (alpha > 0).all()
    check_close(alpha, torch.softmax(torch.tensor([1.0, -1.0]), 0), "alpha = softmax(logits)")
    x = torch.randn(2, 6, D)
    expected = alpha[0] * parts[0](x, x) + alpha[1] * parts[1](x, x)
    check_close(mix(x, x), expected, "sum_i alpha_i S_i(X)")
    # inside the layer: softmax of the mixed logits, not a mixture of softmaxes
    mha = MultiHeadAttention(D, H, scores=mix).eval()
    _, w = weights(mha, x)
    check_close(w, torch.softmax(expected, -1), "weights = softmax(sum alpha_i S_i)")
    wrong = alpha[0] * torch.softmax(parts[0](x, x), -1) + alpha[1] * torch.softmax(parts[1](x, x), -1)
    assert not torch.allclose(w, wrong, atol=1e-4)
    # alpha learns
    mha(x).sum().backward()
    assert mix.logits.grad is not None and mix.logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# Inside the layer: masks, rows, causal leak, padding, dropout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SCORES))
def test_layer_equals_the_written_out_reference(kind: str) -> None:
    mha = layer(kind)
    x = torch.randn(3, 8, D)
    mask = padding_mask(torch.tensor([8, 5, 1]), 8) & causal_mask(8)
    check_close(mha(x, mask=mask), reference(mha, x, mask), f"{kind}: output vs softmax(masked scores) @ V")
    assert not hasattr(mha, "W_q") and not hasattr(mha, "W_k"), "a synthesizer layer has no W_q, W_k of its own"


@pytest.mark.parametrize("kind", list(SCORES))
def test_rows_sum_to_one_or_are_zero_where_fully_masked(kind: str) -> None:
    mha = layer(kind)
    x = torch.randn(3, 6, D)
    mask = padding_mask(torch.tensor([6, 3, 0]), 6)  # the third sequence has nothing to attend to
    out, w = weights(mha, x, mask)
    assert not torch.isnan(w).any() and not torch.isnan(out).any()
    sums = w.sum(-1)  # (B, H, T)
    check_close(sums[:2], torch.ones_like(sums[:2]), f"{kind}: rows with visible keys sum to 1")
    check_close(w[2], torch.zeros_like(w[2]), f"{kind}: fully masked rows are zero")
    assert (w[1, :, :, 3:] == 0).all(), f"{kind}: padded keys get exactly zero weight"


@pytest.mark.parametrize("kind", list(SCORES))
def test_causal_leak_is_zero(kind: str) -> None:
    mha = layer(kind)
    check_causal(lambda x: mha(x, mask=causal_mask(x.shape[1])), torch.randn(2, 7, D), f"{kind} with causal_mask")


@pytest.mark.parametrize("kind", list(SCORES))
def test_padding_content_does_not_reach_real_positions(kind: str) -> None:
    mha = layer(kind)
    x1 = torch.randn(2, 9, D)
    x2 = x1.clone()
    x2[0, 6:] = 100 * torch.randn(3, D)  # change only the padding of sequence 0
    x2[1, 4:] = -50 * torch.randn(5, D)
    mask = padding_mask(torch.tensor([6, 4]), 9)
    with torch.no_grad():
        y1, y2 = mha(x1, mask=mask), mha(x2, mask=mask)
    check_close(y2[0, :6], y1[0, :6], f"{kind}: real positions of sequence 0")
    check_close(y2[1, :4], y1[1, :4], f"{kind}: real positions of sequence 1")


def test_dropout_in_training_mode_matches_the_reference_and_is_off_in_eval() -> None:
    mha = layer("dense", dropout=0.5).train()
    x = torch.randn(2, 6, D)
    mask = padding_mask(torch.tensor([6, 4]), 6)
    torch.manual_seed(7)
    out = mha(x, mask=mask)
    torch.manual_seed(7)
    expected = reference(mha, x, mask, dropout_p=0.5)
    check_close(out, expected, "training mode: dropout on the weights, same seed")
    assert not torch.allclose(out, reference(mha, x, mask), atol=1e-4), "dropout changed nothing in training mode"
    mha.eval()
    check_close(mha(x, mask=mask), reference(mha, x, mask), "eval mode: no dropout")
    check_close(mha(x, mask=mask), mha(x, mask=mask), "eval mode is deterministic")


# ---------------------------------------------------------------------------
# What each variant depends on
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "random_fixed", "factorized_random"])
def test_random_weights_do_not_depend_on_the_content(kind: str) -> None:
    mha = layer(kind)
    x = torch.randn(2, 8, D)
    mask = padding_mask(torch.tensor([8, 5]), 8)
    _, w = weights(mha, x, mask)
    perm = torch.randperm(8)
    _, w_perm = weights(mha, x[:, perm], mask)  # the same tokens in another order
    _, w_new = weights(mha, torch.randn(2, 8, D), mask)  # other tokens altogether
    assert torch.equal(w_perm, w) and torch.equal(w_new, w), f"{kind}: the weights changed with the content"
    # ... so the layer is NOT permutation equivariant (positions matter), unlike dot-product attention
    with torch.no_grad():
        assert not torch.allclose(mha(x[:, perm]), mha(x)[:, perm], atol=1e-4)


@pytest.mark.parametrize("kind", ["dense", "factorized_dense"])
def test_dense_row_depends_on_its_own_token_alone(kind: str) -> None:
    s = SCORES[kind]()
    x = torch.randn(2, 7, D)
    y = x.clone()
    y[:, 3] = torch.randn(2, D)  # change token 3 only
    a, b = s(x, x), s(y, y)
    others = [i for i in range(7) if i != 3]
    check_close(b[:, :, others], a[:, :, others], f"{kind}: rows of the other tokens")
    assert not torch.allclose(b[:, :, 3], a[:, :, 3]), f"{kind}: row 3 must change with token 3"
    # dot-product logits, by contrast, depend on pairs: changing token 3 changes every row (column 3)
    dot = DotProductScores(D, H)
    assert not torch.allclose(dot(y, y)[:, :, 0], dot(x, x)[:, :, 0])


def test_trainable_and_fixed_random() -> None:
    fixed, learned = RandomScores(H, L, trainable=False), RandomScores(H, L)
    assert count(fixed) == 0 and "R" in fixed.state_dict()
    mha = MultiHeadAttention(D, H, scores=fixed)
    before = fixed.R.clone()
    opt = torch.optim.SGD(mha.parameters(), lr=1.0)
    mha(torch.randn(2, L, D)).sum().backward()
    opt.step()
    assert torch.equal(fixed.R, before), "a fixed Random synthesizer must not train"
    m2 = MultiHeadAttention(D, H, scores=learned)
    m2(torch.randn(2, L, D)).pow(2).sum().backward()
    assert learned.R.grad is not None and learned.R.grad.abs().sum() > 0
    assert FactorizedRandomScores(H, L, trainable=False).state_dict().keys() == {"R_1", "R_2"}


# ---------------------------------------------------------------------------
# Parameter counts against the paper's Table 1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d, h, ell", [(16, 2, 256), (64, 8, 100), (12, 3, 7)])
def test_parameter_counts_match_the_paper(d: int, h: int, ell: int) -> None:
    assert count(DenseScores(d, h, ell, bias=False)) == paper_parameter_count("dense", d, ell) == d * d + d * ell
    fd = FactorizedDenseScores(d, h, ell, bias=False)
    a, b = fd.factors
    assert count(fd) == paper_parameter_count("factorized_dense", d, ell) == d * d + d * (a + b)
    assert count(RandomScores(h, ell)) == paper_parameter_count("random", d, ell, num_heads=h) == h * ell * ell
    assert count(FactorizedRandomScores(h, ell, rank=8)) == paper_parameter_count(
        "factorized_random", d, ell, num_heads=h, rank=8
    ) == h * 2 * ell * 8
    assert count(DotProductScores(d, h, bias=False)) == paper_parameter_count("dot", d, ell) == 2 * d * d
    # biases add b_1 (d) and b_2 (one per head and position)
    assert count(DenseScores(d, h, ell)) == d * d + d * ell + d + h * ell
    # the layer: scores + W_v + W_o, no W_q / W_k
    full = MultiHeadAttention(d, h, scores=DenseScores(d, h, ell, bias=False), bias=False)
    assert count(full) == d * d + d * ell + 2 * d * d
    with pytest.raises(ValueError, match="unknown kind"):
        paper_parameter_count("sparse", d, ell)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_errors_name_expected_and_actual() -> None:
    with pytest.raises(ValueError, match=r"max_len=12 positions, got Tq=13, Tk=13"):
        DenseScores(D, H, L)(torch.randn(1, 13, D), torch.randn(1, 13, D))
    with pytest.raises(ValueError, match=r"max_len=12"):
        RandomScores(H, L)(torch.randn(1, 5, D), torch.randn(1, 20, D))
    with pytest.raises(ValueError, match=r"query must have shape \(B, Tq, D=16\), got \(1, 5, 8\)"):
        DenseScores(D, H, L)(torch.randn(1, 5, 8), torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="not divisible"):
        DenseScores(10, 3, L)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        RandomScores(H, 0)
    with pytest.raises(ValueError, match="at least 2"):
        MixtureScores([RandomScores(H, L)])
    with pytest.raises(ValueError, match="different shapes"):
        MixtureScores([RandomScores(H, L), RandomScores(H + 1, L)])(torch.randn(1, 3, D), torch.randn(1, 3, D))


# ---------------------------------------------------------------------------
# The source's wrong version fails what the right one passes
# ---------------------------------------------------------------------------

T_SRC = 6


def lib_dense() -> Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]:
    mha = MultiHeadAttention(D, H, scores=DenseScores(D, H, T_SRC)).eval()
    return lambda x, mask: weights(mha, x, mask)


def source_dense() -> Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]:
    """The learner's module, called as they would call it on a batch (it has no mask argument)."""
    src = SourceDenseSynthesizer(D, T_SRC)

    def run(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Implicit dimension choice for softmax"
            return src(x), src.weights(x)

    run.module = src  # type: ignore[attr-defined]
    return run


def prop_rows_sum_to_one(attn) -> None:
    _, w = attn(torch.randn(3, T_SRC, D), None)
    check_close(w.sum(-1), torch.ones(w.shape[:-1]), "rows of the weights sum to 1")


def prop_one_sequence_batch(attn) -> None:
    _, w = attn(torch.randn(1, T_SRC, D), None)
    check_close(w.sum(-1), torch.ones(w.shape[:-1]), "a batch of one: rows sum to 1")


def prop_causal(attn) -> None:
    check_causal(lambda x: attn(x, causal_mask(T_SRC))[0], torch.randn(2, T_SRC, D), "with the causal mask")


def prop_padding(attn) -> None:
    x1 = torch.randn(2, T_SRC, D)
    x2 = x1.clone()
    x2[:, 4:] = 100.0
    mask = padding_mask(torch.tensor([4, 4]), T_SRC)
    check_close(attn(x2, mask)[0][:, :4], attn(x1, mask)[0][:, :4], "real positions after changing the padding")


def prop_shorter_sequence(attn) -> None:
    out, _ = attn(torch.randn(2, T_SRC - 2, D), None)
    assert out.shape[:2] == (2, T_SRC - 2)


PROPERTIES = [prop_rows_sum_to_one, prop_one_sequence_batch, prop_causal, prop_padding, prop_shorter_sequence]


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.__name__)
def test_the_source_fails_what_the_right_version_passes(prop) -> None:
    prop(lib_dense())
    with pytest.raises((AssertionError, RuntimeError)):
        prop(source_dense())


def test_the_source_has_the_wrong_shapes_and_parameter_count() -> None:
    src = SourceDenseSynthesizer(D, L)
    assert src.dense.weight.shape == (L, D), "the source's first layer maps d -> l"
    assert count(src.dense) + count(src.dense2) != count(DenseScores(D, 1, L)), "and so misses the paper's d^2 + d l"
    assert count(DenseScores(D, 1, L, bias=False)) == paper_parameter_count("dense", D, L)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        w = src.weights(torch.randn(4, L, D))
    check_close(w.sum(0), torch.ones(L, L), "the source's softmax normalises over the batch (dim 0)")
