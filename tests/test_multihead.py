"""Unit tests of lib.multihead: parity with PyTorch and d2l, properties, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib.attention import causal_mask, padding_mask
from lib.checks import check_causal, check_close, check_permutation_equivariance
from lib.multihead import (
    MultiHeadAttention,
    keras_parameter_count,
    masks_from_torch,
    merge_heads,
    split_heads,
)

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
    ours = MultiHeadAttention.from_torch(ref, fast=fast)
    x = torch.randn(B, T, E)
    xt = x if batch_first else x.transpose(0, 1)  # torch's (T, B, E) when not batch_first
    expected, expected_w = ref(xt, xt, xt, need_weights=True, average_attn_weights=False)
    if not batch_first:
        expected = expected.transpose(0, 1)
    out = ours(x)
    check_close(out, expected, "output vs torch", atol=ATOL)
    out2, w = ours(x, need_weights=True)
    check_close(out2, expected, "output (need_weights) vs torch", atol=ATOL)
    check_close(w, expected_w, "weights vs torch", atol=ATOL)


@pytest.mark.parametrize("fast", [False, True])
def test_from_torch_key_padding_and_bool_attn_mask(fast: bool) -> None:
    B, Tq, Tk, E, H = 3, 5, 6, 8, 2
    ref = torch_mha(E, H, batch_first=True)
    ours = MultiHeadAttention.from_torch(ref, fast=fast)
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
    ours = MultiHeadAttention.from_torch(ref, fast=fast)
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
    ours = MultiHeadAttention.from_torch(ref)
    q, k, v = torch.randn(B, Tq, E), torch.randn(B, Tk, 5), torch.randn(B, Tk, 7)
    check_close(ours(q, k, v), ref(q, k, v)[0], "kdim/vdim", atol=ATOL)

    ref = torch_mha(E, H, bias=False, batch_first=True)
    ours = MultiHeadAttention.from_torch(ref, fused_qkv=True)
    assert ours.qkv.bias is None and ours.W_o.bias is None
    x = torch.randn(B, Tq, E)
    check_close(ours(x), ref(x, x, x)[0], "bias=False, fused", atol=ATOL)


def test_from_torch_refuses_bias_kv_and_zero_attn() -> None:
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(NotImplementedError, match="add_zero_attn"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


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
    ours = MultiHeadAttention.from_d2l(ref)
    assert (ours.d_model, ours.kdim, ours.vdim, ours.key_dim, ours.out_dim) == (7, 9, 9, 4, hidden)
    expected = ref(q, kv, kv, valid)
    for fast in (False, True):
        ours.fast = fast
        check_close(ours(q, kv, kv, mask=padding_mask(valid, Tk)), expected, f"vs d2l (fast={fast})", atol=ATOL)


def test_from_d2l_needs_initialised_layers(d2l) -> None:
    with pytest.raises(ValueError, match="LazyLinear"):
        MultiHeadAttention.from_d2l(d2l.MultiHeadAttention(8, 2, dropout=0.0))


# ---------------------------------------------------------------------------
# fast == explicit, fused == separate
# ---------------------------------------------------------------------------


def test_fast_path_matches_explicit_path_with_mask_and_bias() -> None:
    B, Tq, Tk, D, H = 3, 5, 7, 16, 4
    mha = MultiHeadAttention(D, H, key_dim=3, value_dim=5, out_dim=10, kdim=6, vdim=9).eval()
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
    out, w = mha(q, k, v, mask=mask, bias=bias, need_weights=True)  # weights force the explicit path
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
    fused = MultiHeadAttention(24, 3, fused_qkv=True).eval().copy_weights_from(sep)
    assert not hasattr(fused, "W_q") and fused.qkv.weight.shape == (72, 24)
    x = torch.randn(2, 6, 24)
    m = causal_mask(6)
    check_close(fused(x, mask=m), sep(x, mask=m), "fused vs separate", atol=ATOL)
    fused.fast = True
    check_close(fused(x, mask=m), sep(x, mask=m), "fused fast vs separate", atol=ATOL)
    back = MultiHeadAttention(24, 3).eval().copy_weights_from(fused)
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
    assert MultiHeadAttention(16, 2, key_dim=2).parameter_count() == 284
    assert MultiHeadAttention(16, 2, key_dim=2, out_dim=20).parameter_count() == 304
    assert keras_parameter_count(16, 2, 2) == 3 * (16 * 4 + 4) + (4 * 16 + 16) == 284
    assert keras_parameter_count(16, 2, 2, out_dim=20) == 284 - 80 + (4 * 20 + 20) == 304


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(d_model=512, num_heads=8),
        dict(d_model=32, num_heads=4, key_dim=16, value_dim=5, out_dim=7),
        dict(d_model=10, num_heads=3, key_dim=4, kdim=6, vdim=11),
        dict(d_model=12, num_heads=2, bias=False),
        dict(d_model=12, num_heads=2, fused_qkv=True),
    ],
)
def test_parameter_count_matches_keras_formula(kwargs: dict) -> None:
    mha = MultiHeadAttention(**kwargs)
    expected = keras_parameter_count(
        kwargs["d_model"],
        kwargs["num_heads"],
        mha.key_dim,
        kwargs.get("value_dim"),
        kwargs.get("out_dim"),
        kdim=kwargs.get("kdim"),
        vdim=kwargs.get("vdim"),
        bias=kwargs.get("bias", True),
    )
    assert mha.parameter_count() == expected
    if "kdim" not in kwargs and "value_dim" not in kwargs and "out_dim" not in kwargs:
        torch_count = sum(p.numel() for p in nn.MultiheadAttention(kwargs["d_model"], kwargs["num_heads"], bias=kwargs.get("bias", True)).parameters())
        assert mha.parameter_count() == torch_count


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


class DummyPositional(nn.Module):
    """Records the shapes it sees and changes the result in a checkable way."""

    def __init__(self, hooks: set[str], value_shift: float = 0.25) -> None:
        super().__init__()
        self.seen: dict[str, tuple] = {}
        self.shift = value_shift
        if "rotate" in hooks:
            self.rotate = self._rotate
        if "score_bias" in hooks:
            self.score_bias = self._score_bias
        if "value_term" in hooks:
            self.value_term = self._value_term

    def _rotate(self, q, k):
        self.seen["rotate"] = (tuple(q.shape), tuple(k.shape))
        return -q, 2 * k  # scores become -2 q·k

    def _score_bias(self, q, Tk):
        self.seen["score_bias"] = (tuple(q.shape), Tk)
        Tq = q.shape[-2]
        return -torch.arange(Tk, dtype=q.dtype).expand(Tq, Tk)  # ALiBi-like: (Tq, Tk)

    def _value_term(self, weights):
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
    mha = MultiHeadAttention(D, H, positional=pos, fast=fast).eval().copy_weights_from(plain)
    twisted = MultiHeadAttention(D, H).eval().copy_weights_from(plain)
    with torch.no_grad():
        for lin, f in ((twisted.W_q, -1.0), (twisted.W_k, 2.0)):
            lin.weight.mul_(f)
            lin.bias.mul_(f)
    check_close(mha(q, kv), twisted(q, kv), "rotate hook", atol=ATOL)
    assert pos.seen["rotate"] == ((B, H, Tq, 4), (B, H, Tk, 4))

    # score_bias: same as passing the bias ourselves
    pos = DummyPositional({"score_bias"})
    mha = MultiHeadAttention(D, H, positional=pos, fast=fast).eval().copy_weights_from(plain)
    bias = -torch.arange(Tk, dtype=torch.float32).expand(Tq, Tk)
    check_close(mha(q, kv), plain(q, kv, bias=bias), "score_bias hook", atol=ATOL)
    extra = torch.randn(H, Tq, Tk)
    check_close(mha(q, kv, bias=extra), plain(q, kv, bias=bias + extra), "score_bias + bias", atol=ATOL)
    assert pos.seen["score_bias"] == ((B, H, Tq, 4), Tk)

    # value_term: adds shift to every head's output before W_o
    pos = DummyPositional({"value_term"})
    mha = MultiHeadAttention(D, H, positional=pos, fast=fast).eval().copy_weights_from(plain)
    mask = padding_mask(torch.tensor([5, 2]), Tk)
    expected = plain(q, kv, mask=mask) + pos.shift * plain.W_o.weight.sum(1)
    check_close(mha(q, kv, mask=mask), expected, "value_term hook", atol=ATOL)
    assert pos.seen["value_term"] == (B, H, Tq, Tk)


def test_positional_module_without_hooks_changes_nothing() -> None:
    plain = MultiHeadAttention(8, 2).eval()
    mha = MultiHeadAttention(8, 2, positional=nn.Identity()).eval().copy_weights_from(plain)
    x = torch.randn(2, 4, 8)
    check_close(mha(x), plain(x), "no hooks", atol=0)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_errors_name_expected_and_actual_shapes() -> None:
    mha = MultiHeadAttention(8, 2, kdim=5)
    with pytest.raises(ValueError, match=r"query: expected shape \(B, Tq, d_model=8\), got \(4, 8\)"):
        mha(torch.randn(4, 8), torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match=r"d_model=8\), got \(1, 4, 6\)"):
        mha(torch.randn(1, 4, 6), torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match=r"key: expected shape \(B, Tk, kdim=5\), got \(1, 3, 8\)"):
        mha(torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"key and value must share \(B, Tk\)"):
        mha(torch.randn(1, 4, 8), torch.randn(1, 3, 5), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="batch sizes differ"):
        mha(torch.randn(2, 4, 8), torch.randn(1, 3, 5), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        MultiHeadAttention(8, 3)
    with pytest.raises(ValueError, match="fused_qkv=True is for self-attention"):
        MultiHeadAttention(8, 2, fused_qkv=True, kdim=4)
    fused = MultiHeadAttention(8, 2, fused_qkv=True)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        fused(x, x.clone())
    with pytest.raises(ValueError, match="does not broadcast"):
        MultiHeadAttention(8, 2)(x, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be boolean"):
        MultiHeadAttention(8, 2)(x, mask=torch.ones(3, 3))
