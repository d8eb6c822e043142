# %% [markdown]
# # 03 · Multi-head attention
#
# One attention computes **one** weighted average per query: one notion of which keys
# matter. A word in a sentence may need several at once: the previous word, its
# verb, the noun it refers to. **Multi-head attention** (Vaswani et al. 2017,
# section 3.2.2) runs $h$ attentions side by side, each on its own learned
# projection of the queries, keys and values, and mixes their results:
#
# $$\mathrm{head}_i = \mathrm{Attention}(Q W_i^Q,\; K W_i^K,\; V W_i^V),\qquad
# \mathrm{MultiHead}(Q, K, V) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W^O$$
#
# with $W_i^Q, W_i^K \in \mathbb{R}^{d_\text{model} \times d_\text{head}}$,
# $W_i^V \in \mathbb{R}^{d_\text{model} \times d_v}$ and
# $W^O \in \mathbb{R}^{h d_v \times d_\text{model}}$. With $d_\text{head} = d_v = d_\text{model}/h$
# the whole layer costs about as much as one head of full width.
#
# Shapes are the lesson. We write **B** batch, **H** heads, **T** (or Tq, Tk) sequence
# lengths, **D** $= d_\text{model}$, **Dh** $= d_\text{head}$.
#
# In this lesson you will
#
# 1. build multi-head attention from one head, with a Python loop over heads,
# 2. replace the loop by one projection and a **split** into a 4-D (B, H, T, Dh) tensor
#    and a **merge** back (exercise 1),
# 3. read timm's fused `qkv` projection index by index,
# 4. write the whole multi-head forward pass (exercise 2), and check it against
#    `lib.multihead.MultiHeadAttention` and `torch.nn.MultiheadAttention`,
# 5. count parameters the way Keras does (284 and 304),
# 6. compute and measure the memory the attention matrix takes,
# 7. look at what different heads attend to.
#
# **Points in this lesson: 8** (exercise 1: 3, exercise 2: 5).
#
# *Run time:* about ten seconds on a 2-core CPU in full mode; `COURSE_QUICK=1` times a smaller
# batch.

# %%
import copy
import math

import torch
from torch import nn

from lib.attention import Record, causal_mask, padding_mask, scaled_dot_product_attention
from lib.checks import check_causal, check_close, check_permutation_equivariance, check_shape, passed
from lib.interop import keras_parameter_count, masks_from_torch, mha_from_keras, mha_from_torch
from lib.memory import count_parameters, cuda_peak_bytes
from lib.multihead import MultiHeadAttention
from lib.plot import show_heatmaps
from lib.runtime import device, pick, seed_everything

seed_everything(0)
dev = device()

# %% [markdown]
# ## 1. From one head to many, with a loop
#
# Each head $i$ has its own three projection matrices. It projects the input to a
# small space of size $D_h$, runs scaled dot-product attention there (lesson 02), and
# returns a $(B, T, D_h)$ result. Concatenating the $H$ results gives back $H \cdot D_h = D$
# features, which $W^O$ mixes.

# %%
B, T, D, H = 2, 5, 12, 3
Dh = D // H  # 4
x = torch.randn(B, T, D)  # (B, T, D): self-attention, so queries = keys = values = x

W_q = [torch.randn(D, Dh) / math.sqrt(D) for _ in range(H)]  # H matrices (D, Dh)
W_k = [torch.randn(D, Dh) / math.sqrt(D) for _ in range(H)]
W_v = [torch.randn(D, Dh) / math.sqrt(D) for _ in range(H)]
W_o = torch.randn(H * Dh, D) / math.sqrt(D)  # (H*Dh, D)

heads = []
for i in range(H):
    q, k, v = x @ W_q[i], x @ W_k[i], x @ W_v[i]  # each (B, T, Dh)
    head, _ = scaled_dot_product_attention(q, k, v)  # (B, T, Dh)
    heads.append(head)
concat = torch.cat(heads, dim=-1)  # (B, T, H*Dh)
out_loop = concat @ W_o  # (B, T, D)
print("one head:", tuple(heads[0].shape), " concatenated:", tuple(concat.shape), " output:", tuple(out_loop.shape))

# %% [markdown]
# ## 2. No loop: one projection, then split the heads
#
# The $H$ matrices $W_i^Q$ of shape $(D, D_h)$ placed side by side form **one** matrix
# $W^Q = [W_1^Q \,|\, \dots \,|\, W_H^Q]$ of shape $(D, H D_h)$. One matrix product then
# computes every head's queries at once: columns $i D_h \dots (i+1) D_h - 1$ of
# $x W^Q$ are head $i$'s queries.
#
# To let attention run on all heads in parallel we move the heads into their own axis:
#
# | step | code | shape |
# | --- | --- | --- |
# | project | `x @ W_q_all` | (B, T, H·Dh) |
# | **split** the features into heads | `.view(B, T, H, Dh)` | (B, T, H, Dh) |
# | heads before time | `.transpose(1, 2)` | (B, H, T, Dh) |
# | attention, batched over B and H | `softmax(q kᵀ/√Dh) v` | (B, H, T, Dh) |
# | time before heads | `.transpose(1, 2)` | (B, T, H, Dh) |
# | **merge**: concatenate the heads | `.reshape(B, T, H * Dh)` | (B, T, H·Dh) |
#
# The `view` is free (it only reinterprets memory); the `transpose` is free too, but makes
# the tensor non-contiguous, which is why the merge needs `reshape` (which copies when it
# must) rather than `view`. nanoGPT, timm and PyTorch's own
# `scaled_dot_product_attention` all use this 4-D layout. d2l instead folds the heads into
# the batch, $(B \cdot H, T, D_h)$: the same numbers, one more reshape to keep track of.

# %%
W_q_all = torch.cat(W_q, dim=1)  # (D, H*Dh)
W_k_all = torch.cat(W_k, dim=1)  # (D, H*Dh)
W_v_all = torch.cat(W_v, dim=1)  # (D, H*Dh)

q = (x @ W_q_all).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
k = (x @ W_k_all).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
v = (x @ W_v_all).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
print("q:", tuple(q.shape), " contiguous:", q.is_contiguous())

o, weights = scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh), (B, H, T, T)
print("per-head output:", tuple(o.shape), " weights:", tuple(weights.shape))
merged = o.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H*Dh)
out_batched = merged @ W_o  # (B, T, D)

check_close(out_batched, out_loop, "batched heads vs the loop")
passed("one projection + split/merge computes exactly what the loop over heads computes")


# %% [markdown]
# ### Exercise 1: split and merge the heads (3 points)
#
# Write
#
# * `split_heads(x, num_heads)`: $(B, T, D) \to (B, H, T, D_h)$ with $D_h = D / H$,
#   head $h$ getting features $h D_h \dots (h+1) D_h - 1$;
# * `merge_heads(x)`: $(B, H, T, D_h) \to (B, T, H D_h)$, its inverse.
#
# Do not call `lib.multihead.split_heads` / `merge_heads`: the point is to write them.

# %% nbgrader={"grade": false, "grade_id": "ex1_split_merge", "locked": false, "schema_version": 3, "solution": true, "task": false}
def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D // H)."""
    ### BEGIN SOLUTION
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, H, T, Dh)
    ### END SOLUTION


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    ### BEGIN SOLUTION
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H*Dh)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_split_merge_check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_x = torch.randn(2, 5, 12)
_h = split_heads(_x, 3)
check_shape(_h, (2, 3, 5, 4), "split_heads(x of shape (2, 5, 12), 3)")
check_close(_h[:, 1], _x[:, :, 4:8], "head 1 must hold features 4..7 of every position", variants={
    "after reshaping x straight to (B, H, T, Dh): view it as (B, T, H, Dh), then transpose(1, 2)": _x.reshape(2, 3, 5, 4)[:, 1],
    "with the features interleaved (head 1 takes features 1, 4, 7, 10): view as (B, T, H, Dh), not (B, T, Dh, H)": _x.reshape(2, 5, 4, 3)[..., 1],
})
check_shape(merge_heads(_h), (2, 5, 12), "merge_heads(split_heads(x, 3))")
check_close(merge_heads(_h), _x, "merge_heads(split_heads(x, 3)) must give x back", variants={
    "except that merge_heads reshapes straight to (B, T, H·Dh): move the head axis next to the features first (transpose(1, 2))": _h.reshape(2, 5, 12),
})
# In exercise 2, merge_heads gets `weights @ v`, a fresh (contiguous) (B, H, T, Dh) tensor:
_y = torch.randn(2, 3, 5, 4)
try:
    _merged = merge_heads(_y)
except RuntimeError as _e:
    raise AssertionError(
        "merge_heads fails on a contiguous (B, H, T, Dh) tensor such as `weights @ v` in exercise 2: after "
        "transpose(1, 2) its memory is no longer in (B, T, H, Dh) order, so .view cannot regroup it; "
        f"use .reshape (it copies when it must). PyTorch said: {_e}"
    ) from None
check_close(_merged, _y.transpose(1, 2).reshape(2, 5, 12), "merge_heads on a (B, H, T, Dh) tensor", variants={
    "reshaped straight to (B, T, H·Dh): move the head axis next to the features first (transpose(1, 2))": _y.reshape(2, 5, 12),
})
passed("split_heads and merge_heads have the right shapes, layout and round trip")

# %% nbgrader={"grade": true, "grade_id": "ex1_split_merge_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: the student sees this cell empty but for this comment.
### BEGIN HIDDEN TESTS
import lib.multihead as _lm
from lib.checks import check_not_reference, forbid

check_not_reference(split_heads, _lm.split_heads, "split_heads")
check_not_reference(merge_heads, _lm.merge_heads, "merge_heads")
_g = torch.Generator().manual_seed(123)
with forbid("lib.multihead.split_heads", "lib.multihead.merge_heads"):
    for _B, _T, _H, _Dh in [(1, 1, 1, 1), (3, 7, 4, 5), (2, 9, 8, 2), (4, 3, 2, 16)]:
        _x = torch.randn(_B, _T, _H * _Dh, generator=_g)
        _h = split_heads(_x, _H)
        check_shape(_h, (_B, _H, _T, _Dh), f"split_heads on {tuple(_x.shape)} with {_H} heads")
        for _i in range(_H):
            check_close(_h[:, _i], _x[..., _i * _Dh : (_i + 1) * _Dh], f"head {_i} of split_heads")
        check_close(merge_heads(_h), _x, "merge_heads(split_heads(x))")
        _y = torch.randn(_B, _H, _T, _Dh, generator=_g)
        check_close(split_heads(merge_heads(_y), _H), _y, "split_heads(merge_heads(y))")
        _yt = torch.randn(_B, _T, _H, _Dh, generator=_g).transpose(1, 2)  # non-contiguous input
        check_close(merge_heads(_yt), _yt.transpose(1, 2).reshape(_B, _T, _H * _Dh), "merge_heads on a non-contiguous tensor")
passed("hidden tests of split_heads / merge_heads")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The fused `qkv` projection, the timm way
#
# For **self-attention** the queries, keys and values are projections of the *same* $x$.
# So the three matrices can be stacked into one, and one matrix product computes all
# three: timm's `Attention` (and `torch.nn.MultiheadAttention`'s `in_proj_weight`) do
# exactly this. The `nn.Linear` `qkv` maps $D \to 3D$; its output features are laid out
# as `[q of head 0 .. q of head H-1 | k of head 0 .. | v of head 0 ..]`. timm then writes
#
# ```python
# qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
# q, k, v = qkv.unbind(0)
# ```
#
# (timm says `N` for the number of tokens and `C` for $D$.) Read the `reshape` from the
# last axis backwards: the $3D$ output features split into 3 blocks (q, k, v), each
# into $H$ heads of $D_h$ features. The `permute(2, 0, 3, 1, 4)` then lists, for each
# **new** axis, which **old** axis goes there:
#
# | new axis | `permute` index | old axis | meaning | size |
# | --- | --- | --- | --- | --- |
# | 0 | 2 | "which of q, k, v" | unbind picks q, k, v from it | 3 |
# | 1 | 0 | batch | | B |
# | 2 | 3 | head | heads before time, as in section 2 | H |
# | 3 | 1 | token | | N |
# | 4 | 4 | feature within the head | | Dh |
#
# so `qkv` is $(3, B, H, N, D_h)$ and `q, k, v = qkv.unbind(0)` are each $(B, H, N, D_h)$.

# %%
qkv = nn.Linear(D, 3 * D, bias=False)
with torch.no_grad():  # stack our three matrices: nn.Linear stores (out, in), the transposes
    qkv.weight.copy_(torch.cat([W_q_all.T, W_k_all.T, W_v_all.T], dim=0))  # (3*D, D)
print("qkv(x):", tuple(qkv(x).shape))
t = qkv(x).reshape(B, T, 3, H, D // H)  # (B, N, 3, H, Dh)
print("reshape:", tuple(t.shape))
t = t.permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
print("permute:", tuple(t.shape))
q2, k2, v2 = t.unbind(0)  # each (B, H, N, Dh)
print("q, k, v:", tuple(q2.shape), tuple(k2.shape), tuple(v2.shape))
for name, a, b in (("q", q2, q), ("k", k2, k), ("v", v2, v)):
    check_close(a, b, f"fused {name} vs separate {name}")
passed("the fused projection gives the same q, k, v as three separate ones")


# %% [markdown]
# `lib.multihead.MultiHeadAttention(d_model, num_heads, fused_qkv=True)` is written this
# way; with `fused_qkv=False` (the default) it keeps separate `W_q`, `W_k`, `W_v`, which
# also work for **cross-attention** (queries from one sequence, keys and values from
# another, possibly of other sizes `kdim`, `vdim`). One large matrix product is usually a
# little faster than three smaller ones; `bench/bench_mha.py` measures it.

# %% [markdown]
# ### Exercise 2: the multi-head forward pass (5 points)
#
# Write `mha_forward(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None)`
# returning the multi-head attention output of shape $(B, T_q, D_\text{out})$. The weight
# matrices are given in the paper's orientation (multiply from the right), without biases:
#
# | argument | shape |
# | --- | --- |
# | `query`, `key`, `value` | (B, Tq, D), (B, Tk, Dk_in), (B, Tk, Dv_in) |
# | `W_q`, `W_k` | (D, H·Dh), (Dk_in, H·Dh) |
# | `W_v` | (Dv_in, H·Dv), where Dv may differ from Dh |
# | `W_o` | (H·Dv, D_out) |
# | `mask` | bool, True = may attend, broadcastable to (B, H, Tq, Tk), or `None` |
#
# Scale the scores by $1/\sqrt{D_h}$. You may use `scaled_dot_product_attention` from
# `lib.attention` (lesson 02) or write the softmax yourself; you may use your functions
# from exercise 1 (but note that `W_v` may have a different head size than `W_q`).
# Do not use `lib.multihead.MultiHeadAttention` or `torch.nn.MultiheadAttention`.

# %% nbgrader={"grade": false, "grade_id": "ex2_mha_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mha_forward(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None):
    """Multi-head attention with the given projection matrices; returns (B, Tq, D_out)."""
    ### BEGIN SOLUTION
    B, Tq, _ = query.shape
    Tk = key.shape[1]
    H = num_heads
    Dh = W_q.shape[1] // H
    Dv = W_v.shape[1] // H
    q = (query @ W_q).view(B, Tq, H, Dh).transpose(1, 2)  # (B, H, Tq, Dh)
    k = (key @ W_k).view(B, Tk, H, Dh).transpose(1, 2)  # (B, H, Tk, Dh)
    v = (value @ W_v).view(B, Tk, H, Dv).transpose(1, 2)  # (B, H, Tk, Dv)
    scores = q @ k.transpose(-2, -1) / math.sqrt(Dh)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    o = weights @ v  # (B, H, Tq, Dv)
    return o.transpose(1, 2).reshape(B, Tq, H * Dv) @ W_o  # (B, Tq, D_out)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_mha_forward_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _weights_of(m: MultiHeadAttention):
    """lib's nn.Linear weights (out, in), turned into the paper's (in, out) matrices."""
    return m.W_q.weight.T, m.W_k.weight.T, m.W_v.weight.T, m.W_o.weight.T


def _altered(**change):
    """A copy of _ref with some nn.Linear weights changed, e.g. W_q=lambda w: 2 * w."""
    m = copy.deepcopy(_ref)
    with torch.no_grad():
        for name, fn in change.items():
            getattr(m, name).weight.copy_(fn(getattr(m, name).weight).clone())
    return m


_g = torch.Generator().manual_seed(1)
_ref = MultiHeadAttention(16, 4, bias=False).eval()
_x = torch.randn(2, 6, 16, generator=_g)
with torch.no_grad():
    try:
        _mine = mha_forward(_x, _x, _x, *_weights_of(_ref), num_heads=4)
    except RuntimeError as _e:
        if "view" not in str(_e):
            raise
        raise AssertionError(
            "mha_forward: a .view failed. `weights @ v` is (B, H, T, Dv); after transpose(1, 2) its memory is not "
            f"in (B, T, H, Dv) order, so merge the heads with .reshape. PyTorch said: {_e}"
        ) from None
    check_shape(_mine, (2, 6, 16), "mha_forward on x of shape (2, 6, 16), 4 heads")
    _mistakes = {  # lib's layer with one typical mistake built into its weights
        "without the 1/√D_h scale": lambda: _altered(W_q=lambda w: w * 2.0)(_x),
        "scaled by 1/√D (the model width, 16) instead of 1/√D_h (the head width, 4)": lambda: _altered(W_q=lambda w: w / 2.0)(_x),
        "without the output projection W_o": lambda: _altered(W_o=lambda w: torch.eye(16))(_x),
        "with the weight matrices transposed (they multiply from the right: query @ W_q)": lambda: _altered(
            W_q=lambda w: w.T, W_k=lambda w: w.T, W_v=lambda w: w.T, W_o=lambda w: w.T)(_x),
    }
    check_close(_mine, _ref(_x), "self-attention vs lib.multihead.MultiHeadAttention", variants=_mistakes)
    _m = causal_mask(6)
    check_close(mha_forward(_x, _x, _x, *_weights_of(_ref), num_heads=4, mask=_m), _ref(_x, mask=_m),
                "with a causal mask", variants={
                    "with the mask inverted (True means *may attend*)": lambda: _ref(_x, mask=~_m),
                    "with the mask inverted (True means *may attend*); the last query then sees no key, hence NaN":
                        lambda: _ref(_x, mask=~_m).index_fill(1, torch.tensor([5]), float("nan")),
                    "with the mask transposed (each query sees the future)": lambda: _ref(_x, mask=_m.T),
                })
check_permutation_equivariance(lambda t: mha_forward(t, t, t, *_weights_of(_ref), num_heads=4), _x,
                               "mha_forward without positions")
check_causal(lambda t: mha_forward(t, t, t, *_weights_of(_ref), num_heads=4, mask=causal_mask(t.shape[1])), _x,
             "mha_forward with a causal mask")
passed("mha_forward matches lib, is permutation equivariant, and the causal mask stops leaks")

# %% nbgrader={"grade": true, "grade_id": "ex2_mha_forward_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: the student sees this cell empty but for this comment.
### BEGIN HIDDEN TESTS
from lib.checks import forbid


def _weights_of(m: MultiHeadAttention):
    return m.W_q.weight.T, m.W_k.weight.T, m.W_v.weight.T, m.W_o.weight.T


_g = torch.Generator().manual_seed(321)
_cases = [  # (B, Tq, Tk, D, H, d_head, value_dim, out_dim, kdim, vdim)
    (1, 1, 1, 4, 1, 4, 4, 4, 4, 4),
    (3, 4, 7, 12, 3, 4, 4, 12, 12, 12),
    (2, 5, 3, 10, 2, 3, 6, 7, 5, 9),
    (2, 8, 8, 32, 8, 4, 2, 32, 32, 32),
]
_forbidden = ("lib.multihead.MultiHeadAttention", "torch.nn.MultiheadAttention",
              "torch.nn.functional.multi_head_attention_forward")
for _B, _Tq, _Tk, _D, _H, _kd, _vd, _od, _ki, _vi in _cases:
    _ref = MultiHeadAttention(_D, _H, d_head=_kd, value_dim=_vd, out_dim=_od, kdim=_ki, vdim=_vi, bias=False).eval()
    _W = _weights_of(_ref)
    _q = torch.randn(_B, _Tq, _D, generator=_g)
    _k = torch.randn(_B, _Tk, _ki, generator=_g)
    _v = torch.randn(_B, _Tk, _vi, generator=_g)
    _valid = torch.randint(1, _Tk + 1, (_B,), generator=_g)
    _pm = padding_mask(_valid, _Tk)  # (B, 1, 1, Tk)
    with torch.no_grad():
        _expected = _ref(_q, _k, _v)
        _expected_masked = _ref(_q, _k, _v, mask=_pm)
        with forbid(*_forbidden):
            _mine = mha_forward(_q, _k, _v, *_W, num_heads=_H)
            _mine_masked = mha_forward(_q, _k, _v, *_W, num_heads=_H, mask=_pm)
    check_shape(_mine, (_B, _Tq, _od), f"mha_forward, case {(_B, _Tq, _Tk, _D, _H, _kd, _vd, _od, _ki, _vi)}")
    check_close(_mine, _expected, "cross-attention with other sizes")
    check_close(_mine_masked, _expected_masked, "with a padding mask (B, 1, 1, Tk)")
# self-attention properties on a fresh shape
_ref = MultiHeadAttention(24, 6, bias=False).eval()
_x = torch.randn(3, 9, 24, generator=_g)
with forbid(*_forbidden):
    check_permutation_equivariance(lambda t: mha_forward(t, t, t, *_weights_of(_ref), num_heads=6), _x, "mha_forward")
    check_causal(lambda t: mha_forward(t, t, t, *_weights_of(_ref), num_heads=6, mask=causal_mask(t.shape[1])), _x,
                 "mha_forward with a causal mask")
    # a per-head mask (B, H, Tq, Tk) must reach the right head
    _hm = torch.rand(3, 6, 9, 9, generator=_g) < 0.5
    _hm[..., 0] = True
    with torch.no_grad():
        check_close(mha_forward(_x, _x, _x, *_weights_of(_ref), num_heads=6, mask=_hm), _ref(_x, mask=_hm),
                    "with a per-head mask (B, H, Tq, Tk)")
passed("hidden tests of mha_forward")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The same layer in `lib` and in PyTorch
#
# `lib.multihead.MultiHeadAttention` is the layer you just wrote, with biases,
# dropout on the attention weights, and a `fast=True` switch to PyTorch's fused kernel.
# `lib.interop.mha_from_torch` copies the weights of a `torch.nn.MultiheadAttention`
# (whose `in_proj_weight` is the stacked `qkv` of section 3). Two conventions differ:
#
# * `torch.nn.MultiheadAttention` is **sequence-first** (T, B, D) unless built with
#   `batch_first=True`; ours is always batch-first, so transpose around the call.
# * PyTorch's boolean masks say where **not** to attend (`key_padding_mask`: True =
#   padding); ours say where attention **may** go. `masks_from_torch` converts.

# %%
torch_mha = nn.MultiheadAttention(16, 4)  # sequence-first, the default
ours = mha_from_torch(torch_mha)
x = torch.randn(3, 6, 16)  # (B, T, D)
pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 2 + [True] * 4])  # (B, T): True = padding

x_tbd = x.transpose(0, 1)  # (T, B, D) for torch
expected, _ = torch_mha(x_tbd, x_tbd, x_tbd, key_padding_mask=pad)
expected = expected.transpose(0, 1)  # (B, T, D)

mask, bias = masks_from_torch(key_padding_mask=pad)
print("our mask:", tuple(mask.shape), mask.dtype, " bias:", bias)
out = ours(x, mask=mask)
print("max |ours - torch| < 1e-5:", (out - expected).abs().max().item() < 1e-5)
ours.fast = True
print("fast path too:", (ours(x, mask=mask) - expected).abs().max().item() < 1e-5)

# %% [markdown]
# ## 5. Counting parameters, the Keras way
#
# Keras' `MultiHeadAttention(num_heads, key_dim, value_dim=None, output_shape=None)`
# names the per-head sizes directly: `key_dim` is $D_h$ and need not be $D/H$. Each of
# the four projections is a dense layer with a bias, `inputs × outputs + outputs`.
# The course's source model has 16-dimensional embeddings and two attention layers:
#
# * `MultiHeadAttention(num_heads=2, key_dim=2)`: $H D_h = 4$, so q, k and v each have
#   $16 \cdot 4 + 4 = 68$ parameters ($3 \cdot 68 = 204$), the output layer $4 \cdot 16 + 16 = 80$:
#   **284**.
# * the same with output size 20: the output layer becomes $4 \cdot 20 + 20 = 100$: **304**.
#
# `lib.interop.mha_from_keras` takes Keras' arguments (`MultiHeadAttention` itself calls
# `key_dim` `d_head`).

# %%
for kwargs in (dict(key_dim=2), dict(key_dim=2, out_dim=20)):
    m = mha_from_keras(16, 2, **kwargs)
    sizes = {name: p.numel() for name, p in m.named_parameters()}
    print(kwargs, "->", count_parameters(m), "parameters:", sizes)
print("Keras formula:", keras_parameter_count(16, 2, 2), keras_parameter_count(16, 2, 2, out_dim=20))
print("the Transformer base layer (D=512, H=8):", count_parameters(MultiHeadAttention(512, 8)),
      "= 4 * (512 * 512 + 512)")

# %% [markdown]
# ## 6. The memory of the attention matrix
#
# The projections cost $O(T D^2)$; attention itself keeps a $T_q \times T_k$ weight matrix
# **per head and per sequence**: $B \cdot H \cdot N^2$ numbers for self-attention over $N$
# tokens. Its result `attn @ v` is only $B \cdot H \cdot N \cdot D_h$. In bytes, with 4 bytes
# per number in fp32 and 2 in fp16 or bf16:

# %%
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention_bytes(B: int, H: int, N: int, dtype: torch.dtype) -> int:
    """Bytes of one (B, H, N, N) attention matrix."""
    return B * H * N * N * torch.empty((), dtype=dtype).element_size()


print(f"{'B':>3} {'H':>3} {'N':>6} {'elements':>14} " + " ".join(f"{k + ' MiB':>10}" for k in DTYPES))
for b, h, n in [(8, 12, 512), (8, 12, 1024), (8, 12, 4096), (1, 32, 32768)]:
    mib = [attention_bytes(b, h, n, dt) / 2**20 for dt in DTYPES.values()]
    print(f"{b:>3} {h:>3} {n:>6} {b * h * n * n:>14,} " + " ".join(f"{m:>10,.0f}" for m in mib))

# %% [markdown]
# A batch of 8 sequences of 4096 tokens with 12 heads needs 6 GiB in fp32 for **one**
# layer's attention weights, and training keeps them for the backward pass. Doubling $N$
# quadruples it. Now measure: build the tensors the explicit path builds and count
# their bytes exactly with `t.element_size() * t.nelement()`.

# %%
Bm, Hm, Nm, Dhm = 2, 4, 256, 16
for name, dt in DTYPES.items():
    q = torch.randn(Bm, Hm, Nm, Dhm).to(dt)  # (B, H, N, Dh)
    k = torch.randn(Bm, Hm, Nm, Dhm).to(dt)
    v = torch.randn(Bm, Hm, Nm, Dhm).to(dt)
    attn = torch.softmax((q @ k.transpose(-2, -1)).float() / math.sqrt(Dhm), dim=-1).to(dt)  # (B, H, N, N)
    o = attn @ v  # (B, H, N, Dh)
    measured = attn.element_size() * attn.nelement()
    print(f"{name}: attn {tuple(attn.shape)} = {measured:,} bytes "
          f"(formula {attention_bytes(Bm, Hm, Nm, dt):,}); attn @ v {tuple(o.shape)} = "
          f"{o.element_size() * o.nelement():,} bytes, {Nm // Dhm}x smaller")


# %% [markdown]
# On a GPU we can also ask the allocator for its peak. PyTorch's fused kernel
# (`fast=True`, flash or memory-efficient attention) never stores the full matrix, so its
# peak grows with $N$, not $N^2$. This cell only runs where CUDA is present; its numbers
# depend on the machine.

# %% tags=["nbval-ignore-output"]
def peak_mib(fast: bool, N: int) -> float:
    """Peak CUDA memory of one forward pass, above what was allocated before (lib.memory.cuda_peak_bytes)."""
    m = MultiHeadAttention(512, 8, fast=fast).to(dev)
    xg = torch.randn(4, N, 512, device=dev)
    with torch.no_grad():
        return cuda_peak_bytes(lambda: m(xg), dev) / 2**20


if dev.type == "cuda":
    for N in (1024, 4096):
        print(f"N={N}: explicit {peak_mib(False, N):,.0f} MiB, fast {peak_mib(True, N):,.0f} MiB "
              f"(weights alone: {attention_bytes(4, 8, N, torch.float32) / 2**20:,.0f} MiB)")
else:
    print(f"no CUDA here ({dev.type}): the allocator's peak is not measured")

# %% [markdown]
# ## 7. What do different heads look at?
#
# With random weights every head attends almost uniformly, which makes dull pictures. To
# see that heads *can* specialise, we set two heads by hand on one-hot position inputs:
# head 0 matches each token with **itself**; head 1's key projection shifts every
# position by one, so query $i$ matches key $i-1$, the **previous** token. With a causal
# mask, that is the pattern of the "previous-token heads" found in trained language models.

# %%
Tp, Dp, Hp = 8, 16, 2
xp = torch.zeros(1, Tp, Dp)
xp[0, torch.arange(Tp), torch.arange(Tp)] = 1.0  # token t is one-hot(t), (1, T, D)
sharp = 10.0 * math.sqrt(Dp // Hp)  # large enough for near one-hot softmax rows
mp = MultiHeadAttention(Dp, Hp, bias=False).eval()
with torch.no_grad():
    eye = torch.eye(Tp)  # (Dh, D) blocks act on the first 8 features
    shift = torch.diag(torch.ones(Tp - 1), diagonal=1)  # maps one-hot(j) to one-hot(j + 1)
    for lin in (mp.W_q, mp.W_k):
        lin.weight.zero_()
    mp.W_q.weight[:Tp, :Tp] = sharp * eye  # head 0 queries
    mp.W_k.weight[:Tp, :Tp] = eye  # head 0 keys: same position
    mp.W_q.weight[Tp:, :Tp] = sharp * eye  # head 1 queries
    mp.W_k.weight[Tp:, :Tp] = shift.T  # head 1 keys: key j looks like position j + 1
record = Record(need_weights=True)
_ = mp(xp, mask=causal_mask(Tp), record=record)
wp = record.weights[0]  # (1, H, T, T)
print("weights:", tuple(wp.shape))
for h in range(Hp):
    print(f"head {h}: query i attends most to key", wp[0, h].argmax(-1).tolist())
_ = show_heatmaps(wp[0], titles=["head 0: same token", "head 1: previous token"], figsize=(3.2, 2.8))

# %% [markdown]
# (Query 0 has no previous token; the causal mask leaves it only itself.)
#
# ## 8. How fast?
#
# The explicit path is for reading; `fast=True` hands the attention to PyTorch's fused
# kernel. One forward + backward on a small batch (numbers depend on the machine; run
# `python bench/bench_mha.py` for a careful side-by-side measurement):

# %% tags=["nbval-ignore-output"]
import time

Bt, Tt = pick(full=(8, 256), quick=(2, 32))
ref_mha = nn.MultiheadAttention(256, 8, batch_first=True).to(dev)
candidates = {
    "lib explicit": mha_from_torch(ref_mha).to(dev),
    "lib fast": mha_from_torch(ref_mha, fast=True).to(dev),
    "torch.nn.MultiheadAttention": lambda t: ref_mha(t, t, t, need_weights=False)[0],
}
xt = torch.randn(Bt, Tt, 256, device=dev, requires_grad=True)
for name, fn in candidates.items():
    fn(xt).sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        fn(xt).sum().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{name:<28} {(time.perf_counter() - start) / 3 * 1e3:8.1f} ms")

# %% [markdown]
# ## Summary
#
# * Multi-head attention = $H$ attentions on learned projections of size $D_h$,
#   concatenated and mixed by $W^O$; with $D_h = D/H$ it costs about as much as one.
# * One projection of width $H D_h$ and a split `view(B, T, H, Dh).transpose(1, 2)` replace
#   the loop over heads; `transpose(1, 2).reshape(B, T, H * Dh)` merges them back.
# * For self-attention, q, k and v come out of one fused `qkv` matrix product:
#   `reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)` puts "which of q/k/v" first and
#   heads before tokens.
# * Keras counts 284 parameters for `MultiHeadAttention(num_heads=2, key_dim=2)` on 16-dim
#   inputs, 304 with output size 20.
# * The attention matrix takes $B H N^2$ numbers per layer: the reason fused kernels
#   (flash attention) that never store it matter for long sequences.
#
# Next: attention is blind to order (you checked permutation equivariance); lesson 04
# gives it positions.
