"""Unit tests of lib.multihead: parity with PyTorch and d2l, properties, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import with_weights
from torch import nn

from lib.attention import KVCache, Record, causal_mask, padding_mask
from lib.checks import check_causal, check_close, check_permutation_equivariance
from lib.interop import (
    copy_mha_weights,
    keras_parameter_count,
    masks_from_torch,
    mha_from_d2l,
    mha_from_keras,
    mha_from_torch,
)
from lib.memory import count_parameters
from lib.multihead import MultiHeadAttention, PositionalScheme, merge_heads, split_heads

ATOL = 1e-5


def torch_mha(E: int, H: int, **kwargs) -> nn.MultiheadAttention:
    """A torch module with random (not zero) biases, so parity covers them."""
    m = nn.MultiheadAttention(E, H, **kwargs).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return m


def random_bias(m: nn.Module) -> None:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)


# ---------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------


def test_split_merge_heads_roundtrip_and_layout() -> None:
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    # head 1 holds features 4..7 of every position
    assert torch.equal(h[:, 1], x[:, :, 4:8])
    assert torch.equal(merge_heads(h), x)


# ---------------------------------------------------------------------------
# parity with torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("fast", [False, True])
def test_from_torch_self_attention(batch_first: bool, fast: bool) -> None:
    B, T, E, H = 3, 7, 16, 4
    ref = torch_mha(E, H, batch_first=batch_first)
    ours = mha_from_torch(ref, fast=fast)
    x = torch.randn(B, T, E)
    xt = x if batch_first else x.transpose(0, 1)  # torch's (T, B, E) when not batch_first
    expected, expected_w = ref(xt, xt, xt, need_weights=True, average_attn_weights=False)
    if not batch_first:
        expected = expected.transpose(0, 1)
    out = ours(x)
    check_close(out, expected, "output vs torch", atol=ATOL)
    out2, w = with_weights(ours, x)
    check_close(out2, expected, "output (need_weights) vs torch", atol=ATOL)
    check_close(w, expected_w, "weights vs torch", atol=ATOL)


@pytest.mark.parametrize("fast", [False, True])
def test_from_torch_key_padding_and_bool_attn_mask(fast: bool) -> None:
    B, Tq, Tk, E, H = 3, 5, 6, 8, 2
    ref = torch_mha(E, H, batch_first=True)
    ours = mha_from_torch(ref, fast=fast)
    q, kv = torch.randn(B, Tq, E), torch.randn(B, Tk, E)
    kpm = torch.arange(Tk) >= torch.tensor([6, 3, 1])[:, None]  # (B, Tk), True = ignore
    attn_mask = torch.rand(Tq, Tk) < 0.3  # True = not allowed
    attn_mask[:, 0] = False  # every row keeps key 0, so torch gives no NaN
    expected, _ = ref(q, kv, kv, key_padding_mask=kpm, attn_mask=attn_mask)
    mask, bias = masks_from_torch(key_padding_mask=kpm, attn_mask=attn_mask)
    assert bias is None and mask.dtype == torch.bool
    check_close(ours(q, kv, kv, mask=mask, bias=bias), expected, "masked output vs torch", atol=ATOL)


@pytest.mark.parametrize("fast", [False, True])
def test_from_torch_float_and_3d_attn_mask(fast: bool) -> None:
    B, T, E, H = 2, 5, 8, 2
    ref = torch_mha(E, H, batch_first=True)
    ours = mha_from_torch(ref, fast=fast)
    x = torch.randn(B, T, E)
    # float additive mask with -inf above the diagonal (nn.Transformer's causal mask)
    float_mask = nn.Transformer.generate_square_subsequent_mask(T) + 0.3 * torch.randn(T, T)
    expected, _ = ref(x, x, x, attn_mask=float_mask)
    mask, bias = masks_from_torch(attn_mask=float_mask)
    assert torch.equal(mask, causal_mask(T))
    check_close(ours(x, mask=mask, bias=bias), expected, "float attn_mask", atol=ATOL)
    # per-(batch, head) boolean mask (B*H, T, T)
    m3 = torch.rand(B * H, T, T) < 0.4
    m3[..., 0] = False
    expected, _ = ref(x, x, x, attn_mask=m3)
    mask, bias = masks_from_torch(attn_mask=m3, num_heads=H)
    assert mask.shape == (B, H, T, T)
    check_close(ours(x, mask=mask, bias=bias), expected, "3-D attn_mask", atol=ATOL)
    with pytest.raises(ValueError, match="num_heads"):
        masks_from_torch(attn_mask=m3)
    # float key_padding_mask (-inf = padding, other values added) with a bool attn_mask
    kpm = torch.zeros(B, T).masked_fill(torch.arange(T) >= torch.tensor([5, 2])[:, None], float("-inf"))
    kpm[:, 0] = 0.7
    causal = ~causal_mask(T)  # torch's convention: True = not allowed
    expected, _ = ref(x, x, x, key_padding_mask=kpm, attn_mask=causal.float().masked_fill(causal, float("-inf")))
    mask, bias = masks_from_torch(key_padding_mask=kpm, attn_mask=causal)
    assert mask.shape == (B, 1, T, T) and bias.shape == (B, 1, 1, T)
    check_close(ours(x, mask=mask, bias=bias), expected, "float key_padding_mask", atol=ATOL)


def test_from_torch_kdim_vdim_and_no_bias() -> None:
    B, Tq, Tk, E, H = 2, 4, 6, 12, 3
    ref = torch_mha(E, H, kdim=5, vdim=7, batch_first=True)
    assert ref.in_proj_weight is None  # separate q/k/v_proj_weight
    ours = mha_from_torch(ref)
    q, k, v = torch.randn(B, Tq, E), torch.randn(B, Tk, 5), torch.randn(B, Tk, 7)
    check_close(ours(q, k, v), ref(q, k, v)[0], "kdim/vdim", atol=ATOL)

    ref = torch_mha(E, H, bias=False, batch_first=True)
    ours = mha_from_torch(ref, fused_qkv=True)
    assert ours.qkv.bias is None and ours.W_o.bias is None
    x = torch.randn(B, Tq, E)
    check_close(ours(x), ref(x, x, x)[0], "bias=False, fused", atol=ATOL)


def test_from_torch_refuses_bias_kv_and_zero_attn() -> None:
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        mha_from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(NotImplementedError, match="add_zero_attn"):
        mha_from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


# ---------------------------------------------------------------------------
# parity with d2l
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_query", [False, True])
def test_from_d2l_with_valid_lens(per_query: bool, d2l) -> None:
    B, Tq, Tk, hidden, H = 2, 4, 6, 20, 5
    ref = d2l.MultiHeadAttention(hidden, H, dropout=0.0, bias=True).eval()
    q, kv = torch.randn(B, Tq, 7), torch.randn(B, Tk, 9)
    valid = torch.tensor([[1, 2, 3, 6], [6, 5, 4, 2]]) if per_query else torch.tensor([3, 6])
    ref(q, kv, kv, valid)  # initialises the LazyLinear layers
    ours = mha_from_d2l(ref)
    assert (ours.d_model, ours.kdim, ours.vdim, ours.d_head, ours.out_dim) == (7, 9, 9, 4, hidden)
    expected = ref(q, kv, kv, valid)
    for fast in (False, True):
        ours.fast = fast
        check_close(ours(q, kv, kv, mask=padding_mask(valid, Tk)), expected, f"vs d2l (fast={fast})", atol=ATOL)


def test_from_d2l_needs_initialised_layers(d2l) -> None:
    with pytest.raises(ValueError, match="LazyLinear"):
        mha_from_d2l(d2l.MultiHeadAttention(8, 2, dropout=0.0))


# ---------------------------------------------------------------------------
# fast == explicit, fused == separate
# ---------------------------------------------------------------------------


def test_fast_path_matches_explicit_path_with_mask_and_bias() -> None:
    B, Tq, Tk, D, H = 3, 5, 7, 16, 4
    mha = MultiHeadAttention(D, H, d_head=3, value_dim=5, out_dim=10, kdim=6, vdim=9).eval()
    q, k, v = torch.randn(B, Tq, D), torch.randn(B, Tk, 6), torch.randn(B, Tk, 9)
    mask = padding_mask(torch.tensor([7, 2, 0]), Tk)  # batch 2: nothing to attend
    bias = torch.randn(H, Tq, Tk)
    slow = mha(q, k, v, mask=mask, bias=bias)
    mha.fast = True
    fast = mha(q, k, v, mask=mask, bias=bias)
    check_close(fast, slow, "fast vs explicit", atol=ATOL)
    assert not torch.isnan(fast).any()
    # the fully masked batch element attends to nothing: output is W_o's bias
    check_close(fast[2], mha.W_o.bias.expand(Tq, -1), "empty rows give zero attention output", atol=ATOL)
    out, w = with_weights(mha, q, k, v, mask=mask, bias=bias)  # weights force the explicit path
    assert w.shape == (B, H, Tq, Tk)
    check_close(out, slow, "fast + need_weights", atol=ATOL)
    check_close(w.sum(-1)[:2], torch.ones(2, H, Tq), "weights sum to one", atol=ATOL)


def test_fast_causal_matches_explicit() -> None:
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 9, 16)
    m = causal_mask(9)
    slow = mha(x, mask=m)
    mha.fast = True
    check_close(mha(x, mask=m), slow, "fast causal", atol=ATOL)


def test_fused_qkv_matches_separate() -> None:
    sep = MultiHeadAttention(24, 3).eval()
    random_bias(sep)
    fused = copy_mha_weights(MultiHeadAttention(24, 3, fused_qkv=True).eval(), sep)
    assert not hasattr(fused, "W_q") and fused.qkv.weight.shape == (72, 24)
    x = torch.randn(2, 6, 24)
    m = causal_mask(6)
    check_close(fused(x, mask=m), sep(x, mask=m), "fused vs separate", atol=ATOL)
    fused.fast = True
    check_close(fused(x, mask=m), sep(x, mask=m), "fused fast vs separate", atol=ATOL)
    back = copy_mha_weights(MultiHeadAttention(24, 3).eval(), fused)
    check_close(back(x), sep(x), "separate <- fused", atol=ATOL)


def test_dropout_only_in_training() -> None:
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    mha.eval()
    a, b = mha(x), mha(x)
    assert torch.equal(a, b)
    mha.train()
    assert not torch.allclose(mha(x), a)


# ---------------------------------------------------------------------------
# parameter counts (Keras)
# ---------------------------------------------------------------------------


def test_keras_parameter_counts_284_and_304() -> None:
    assert count_parameters(MultiHeadAttention(16, 2, d_head=2)) == 284
    assert count_parameters(MultiHeadAttention(16, 2, d_head=2, out_dim=20)) == 304
    assert keras_parameter_count(16, 2, 2) == 3 * (16 * 4 + 4) + (4 * 16 + 16) == 284
    assert keras_parameter_count(16, 2, 2, out_dim=20) == 284 - 80 + (4 * 20 + 20) == 304


def test_mha_from_keras_takes_keras_names() -> None:
    """Keras' key_dim is d_head; value_dim and out_dim pass through; other arguments reach the layer."""
    keras = mha_from_keras(16, 2, key_dim=3, value_dim=5, out_dim=20, bias=False, fast=True)
    ours = MultiHeadAttention(16, 2, d_head=3, value_dim=5, out_dim=20, bias=False, fast=True)
    assert (keras.d_head, keras.value_dim, keras.out_dim, keras.fast) == (3, 5, 20, True)
    assert {n: p.shape for n, p in keras.named_parameters()} == {n: p.shape for n, p in ours.named_parameters()}
    assert count_parameters(mha_from_keras(16, 2, 2)) == keras_parameter_count(16, 2, 2) == 284
    with pytest.raises(TypeError, match="key_dim"):
        mha_from_keras(16, 2, d_head=2)  # Keras' helper speaks Keras only


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(d_model=512, num_heads=8),
        dict(d_model=32, num_heads=4, d_head=16, value_dim=5, out_dim=7),
        dict(d_model=10, num_heads=3, d_head=4, kdim=6, vdim=11),
        dict(d_model=12, num_heads=2, bias=False),
        dict(d_model=12, num_heads=2, fused_qkv=True),
    ],
)
def test_parameter_count_matches_keras_formula(kwargs: dict) -> None:
    mha = MultiHeadAttention(**kwargs)
    expected = keras_parameter_count(
        kwargs["d_model"],
        kwargs["num_heads"],
        mha.d_head,
        kwargs.get("value_dim"),
        kwargs.get("out_dim"),
        kdim=kwargs.get("kdim"),
        vdim=kwargs.get("vdim"),
        bias=kwargs.get("bias", True),
    )
    assert count_parameters(mha) == expected
    if "kdim" not in kwargs and "value_dim" not in kwargs and "out_dim" not in kwargs:
        torch_count = sum(p.numel() for p in nn.MultiheadAttention(kwargs["d_model"], kwargs["num_heads"], bias=kwargs.get("bias", True)).parameters())
        assert count_parameters(mha) == torch_count


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_self_attention_is_permutation_equivariant(fast: bool) -> None:
    mha = MultiHeadAttention(16, 4, fast=fast).eval()
    check_permutation_equivariance(mha, torch.randn(2, 7, 16), "self-attention")


def test_causal_mask_prevents_leaks_and_the_check_can_fail() -> None:
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    check_causal(lambda t: mha(t, mask=causal_mask(t.shape[1])), x, "masked MHA")
    with pytest.raises(AssertionError, match="not causal"):
        check_causal(mha, x, "unmasked MHA")


def test_gradients_reach_every_parameter() -> None:
    for fused, fast in ((False, False), (True, True)):
        mha = MultiHeadAttention(12, 3, fused_qkv=fused, fast=fast, dropout=0.1)
        mha(torch.randn(2, 5, 12), mask=causal_mask(5)).square().sum().backward()
        for name, p in mha.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


# ---------------------------------------------------------------------------
# positional hooks
# ---------------------------------------------------------------------------


class DummyPositional(PositionalScheme):
    """Overrides some hooks, records what they see and changes the result in a checkable way."""

    def __init__(self, hooks: set[str], value_shift: float = 0.25) -> None:
        super().__init__()
        self.hooks, self.seen, self.shift = hooks, {}, value_shift

    @property
    def has_value_term(self) -> bool:
        return "value_term" in self.hooks

    def rotate(self, x, positions):
        if "rotate" not in self.hooks:
            return x
        self.seen.setdefault("rotate", []).append((tuple(x.shape), positions.tolist()))
        # queries (the first call sees the keys first: they are rotated before they could be cached)
        return 2 * x if len(self.seen["rotate"]) == 1 else -x  # scores become -2 q·k

    def score_bias(self, q, q_positions, k_positions):
        if "score_bias" not in self.hooks:
            return None
        self.seen["score_bias"] = (tuple(q.shape), q_positions.tolist(), k_positions.tolist())
        Tq, Tk = len(q_positions), len(k_positions)
        return -k_positions.to(q.dtype).expand(Tq, Tk)  # ALiBi-like: (Tq, Tk)

    def value_term(self, weights, q_positions, k_positions):
        self.seen["value_term"] = tuple(weights.shape)
        B, H, Tq, Tk = weights.shape
        return self.shift * weights.sum(-1, keepdim=True).expand(B, H, Tq, 4)  # (B, H, Tq, Dv)


@pytest.mark.parametrize("fast", [False, True])
def test_positional_hooks_are_applied(fast: bool) -> None:
    B, Tq, Tk, D, H = 2, 3, 5, 8, 2
    q, kv = torch.randn(B, Tq, D), torch.randn(B, Tk, D)
    plain = MultiHeadAttention(D, H).eval()
    random_bias(plain)

    # rotate: same as giving the module -W_q and 2 W_k (biases included)
    pos = DummyPositional({"rotate"})
    mha = copy_mha_weights(MultiHeadAttention(D, H, positional=pos, fast=fast).eval(), plain)
    twisted = copy_mha_weights(MultiHeadAttention(D, H).eval(), plain)
    with torch.no_grad():
        for lin, f in ((twisted.W_q, -1.0), (twisted.W_k, 2.0)):
            lin.weight.mul_(f)
            lin.bias.mul_(f)
    check_close(mha(q, kv), twisted(q, kv), "rotate hook", atol=ATOL)
    assert pos.seen["rotate"] == [((B, H, Tk, 4), list(range(Tk))), ((B, H, Tq, 4), list(range(Tq)))]

    # score_bias: same as passing the bias ourselves
    pos = DummyPositional({"score_bias"})
    mha = copy_mha_weights(MultiHeadAttention(D, H, positional=pos, fast=fast).eval(), plain)
    bias = -torch.arange(Tk, dtype=torch.float32).expand(Tq, Tk)
    check_close(mha(q, kv), plain(q, kv, bias=bias), "score_bias hook", atol=ATOL)
    extra = torch.randn(H, Tq, Tk)
    check_close(mha(q, kv, bias=extra), plain(q, kv, bias=bias + extra), "score_bias + bias", atol=ATOL)
    assert pos.seen["score_bias"] == ((B, H, Tq, 4), list(range(Tq)), list(range(Tk)))

    # value_term: adds shift to every head's output before W_o
    pos = DummyPositional({"value_term"})
    mha = copy_mha_weights(MultiHeadAttention(D, H, positional=pos, fast=fast).eval(), plain)
    mask = padding_mask(torch.tensor([5, 2]), Tk)
    expected = plain(q, kv, mask=mask) + pos.shift * plain.W_o.weight.sum(1)
    check_close(mha(q, kv, mask=mask), expected, "value_term hook", atol=ATOL)
    assert pos.seen["value_term"] == (B, H, Tq, Tk)


def test_positional_scheme_without_overrides_changes_nothing() -> None:
    plain = MultiHeadAttention(8, 2).eval()
    mha = copy_mha_weights(MultiHeadAttention(8, 2, positional=PositionalScheme()).eval(), plain)
    x = torch.randn(2, 4, 8)
    check_close(mha(x), plain(x), "no hooks", atol=0)
    with pytest.raises(TypeError, match="PositionalScheme.*got Identity"):
        MultiHeadAttention(8, 2, positional=nn.Identity())


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_errors_name_expected_and_actual_shapes() -> None:
    mha = MultiHeadAttention(8, 2, kdim=5)
    with pytest.raises(ValueError, match=r"query: expected shape \(B, T, d_model=8\), got \(4, 8\)"):
        mha(torch.randn(4, 8), torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match=r"d_model=8\), got \(1, 4, 6\)"):
        mha(torch.randn(1, 4, 6), torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match=r"key: expected shape \(B, T, kdim=5\), got \(1, 3, 8\)"):
        mha(torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"must share B and key, value Tk"):
        mha(torch.randn(1, 4, 8), torch.randn(1, 3, 5), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"must share B.*query \(2, 4, 8\), key \(1, 3, 5\)"):
        mha(torch.randn(2, 4, 8), torch.randn(1, 3, 5), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        MultiHeadAttention(8, 3)
    with pytest.raises(ValueError, match="fused_qkv=True is for dot-product self-attention"):
        MultiHeadAttention(8, 2, fused_qkv=True, kdim=4)
    fused = MultiHeadAttention(8, 2, fused_qkv=True)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        fused(x, x.clone())
    with pytest.raises(ValueError, match="does not broadcast"):
        MultiHeadAttention(8, 2)(x, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be boolean"):
        MultiHeadAttention(8, 2)(x, mask=torch.ones(3, 3))


# ---------------------------------------------------------------------------
# the core, scores=, the key/value cache (issue 16)
# ---------------------------------------------------------------------------


def test_attend_with_dropout_and_value_term_matches_written_out_reference() -> None:
    from lib.attention import attend, masked_softmax

    torch.manual_seed(0)
    scores, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6)
    mask = padding_mask(torch.tensor([5, 2]), 5)
    shift = torch.randn(6)

    def term(attn):
        return attn.sum(-1, keepdim=True) * shift  # depends on the *dropped* weights

    torch.manual_seed(1)
    out, w = attend(scores, v, mask, dropout_p=0.4, value_term=term)
    torch.manual_seed(1)
    ref_w = masked_softmax(scores, mask=mask)
    dropped = torch.nn.functional.dropout(ref_w, p=0.4)
    check_close(w, ref_w, "weights before dropout", atol=0)
    check_close(out, dropped @ v + term(dropped), "dropout(weights) @ v + value_term(dropout(weights))", atol=1e-6)
    with pytest.raises(ValueError, match=r"same Tk, got scores \(2, 3, 4, 5\) and values \(2, 3, 4, 6\)"):
        attend(scores, v[..., :4, :])


@pytest.mark.parametrize("fast", [False, True])
def test_training_mode_dropout_matches_written_out_reference(fast: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.3, fast=fast).train()
    random_bias(mha)
    x = torch.randn(3, 5, 8)
    mask = causal_mask(5)
    torch.manual_seed(7)
    out = with_weights(mha, x, mask=mask)[0] if fast else mha(x, mask=mask)  # fast + weights: explicit path
    torch.manual_seed(7)
    q, k, v = (split_heads(lin(x), 2) for lin in (mha.W_q, mha.W_k, mha.W_v))
    w = torch.softmax((q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf")), -1)
    ref = mha.W_o(merge_heads(torch.nn.functional.dropout(w, 0.3) @ v))
    check_close(out, ref, "W_o(merge(dropout(softmax(q k^T/sqrt(Dh))) v))", atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_dot_product_scores_module_equals_built_in_scores(training: bool) -> None:
    from lib.multihead import DotProductScores

    torch.manual_seed(0)
    plain = MultiHeadAttention(12, 3, kdim=6, vdim=6, dropout=0.2).train(training)
    random_bias(plain)
    scores = DotProductScores(12, 3, kdim=6)
    via = MultiHeadAttention(12, 3, kdim=6, vdim=6, dropout=0.2, scores=scores).train(training)
    assert not hasattr(via, "W_q") and not hasattr(via, "W_k")
    with torch.no_grad():
        scores.W_q.load_state_dict(plain.W_q.state_dict())
        scores.W_k.load_state_dict(plain.W_k.state_dict())
        via.W_v.load_state_dict(plain.W_v.state_dict())
        via.W_o.load_state_dict(plain.W_o.state_dict())
    q, kv = torch.randn(2, 4, 12), torch.randn(2, 7, 6)
    mask = padding_mask(torch.tensor([7, 3]), 7)
    torch.manual_seed(3)
    a, wa = with_weights(plain, q, kv, kv, mask=mask)
    torch.manual_seed(3)
    b, wb = with_weights(via, q, kv, kv, mask=mask)
    check_close(b, a, "scores=DotProductScores vs built-in", atol=1e-6)
    check_close(wb, wa, "weights", atol=1e-6)
    with pytest.raises(ValueError, match="no key/value cache"):
        via(q, kv, kv, record=Record(cache=KVCache()))
    bad = MultiHeadAttention(12, 3, kdim=6, vdim=6, scores=lambda_module(lambda qq, kk: torch.zeros(2, 3, 4, 6)))
    with pytest.raises(ValueError, match=r"returned \(2, 3, 4, 6\), expected \(B, H, Tq, Tk\) = \(2, 3, 4, 7\)"):
        bad(q, kv, kv)


def lambda_module(fn):
    class _F(nn.Module):
        def forward(self, *a):
            return fn(*a)

    return _F()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_cached_self_attention_equals_full_causal(fast: bool, fused: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, fast=fast, fused_qkv=fused).eval()
    x = torch.randn(2, 7, 16)
    full = mha(x, mask=causal_mask(7))
    cache, outs = KVCache(), []
    for t0, t1 in ((0, 3), (3, 4), (4, 5), (5, 7)):  # a prompt of 3, then 1, 1, 2 tokens
        outs.append(mha(x[:, t0:t1], mask=causal_mask(t1 - t0, t1), record=Record(cache=cache)))
        assert cache.length(mha) == t1
    check_close(torch.cat(outs, 1), full, "cached vs uncached self-attention", atol=1e-5)


def test_cross_attention_keys_values_are_computed_once_and_reorder() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    memory, x = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    calls = []
    mha.W_k.register_forward_hook(lambda *_: calls.append(1))
    cache = KVCache()
    steps = [mha(x[:, t:t + 1], memory, record=Record(cache=cache)) for t in range(4)]
    assert len(calls) == 1, f"W_k ran {len(calls)} times; the memory's keys must be projected once"
    check_close(torch.cat(steps, 1), mha(x, memory), "cached cross-attention", atol=1e-6)
    cache.reorder(torch.tensor([2, 2, 0]))
    k, _ = cache.get(mha)
    check_close(k[1], k[0], "reordered rows", atol=0)
    assert k.shape[0] == 3
    with pytest.raises(ValueError, match="no slot"):
        KVCache().get(mha)


def test_the_stacked_qkv_weights_are_reused_only_while_no_weight_changes():
    """fast=True stacks W_q, W_k, W_v into one GEMM; outside autograd the stack is kept between calls. An optimizer
    step, load_state_dict or an in-place edit must be seen at once (the memo is keyed on each weight's version)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2, fast=True, bias=True).eval()
    ref = MultiHeadAttention(16, 4, n_kv_heads=2, fast=False, bias=True).eval()
    x = torch.randn(2, 5, 16)

    def agree() -> None:
        ref.load_state_dict(mha.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(mha(x), ref(x), atol=1e-5, rtol=1e-4)

    agree()
    agree()  # the second call reads the memo
    opt = torch.optim.SGD(mha.parameters(), lr=0.5)
    mha(x).sum().backward()  # with autograd: stacked afresh, gradients reach every projection
    assert all(p.grad is not None for p in (mha.W_q.weight, mha.W_k.weight, mha.W_v.weight, mha.W_v.bias))
    opt.step()
    agree()
    with torch.no_grad():
        mha.W_k.weight.mul_(-1.0)  # in place
    agree()
    mha.load_state_dict({k: torch.randn_like(v) for k, v in mha.state_dict().items()})
    agree()
    with torch.inference_mode():
        torch.testing.assert_close(mha(x), ref(x), atol=1e-5, rtol=1e-4)
