# %% [markdown]
# # 02 · Attention scoring functions and masking
#
# In lesson 01 the attention weights came from a fixed kernel of the distance between
# query and key. Modern attention computes a **score** $a(\mathbf{q}, \mathbf{k}_i)$
# with a learnable or simple function, turns the scores into weights with a softmax,
# and pools the values:
#
# $$\alpha(\mathbf{q}, \mathbf{k}_i) = \mathrm{softmax}_i\big(a(\mathbf{q}, \mathbf{k}_i)\big)
#   = \frac{\exp a(\mathbf{q}, \mathbf{k}_i)}{\sum_j \exp a(\mathbf{q}, \mathbf{k}_j)},
# \qquad \mathrm{Attention}(\mathbf{q}, \mathcal{D}) = \sum_i \alpha(\mathbf{q}, \mathbf{k}_i)\,\mathbf{v}_i .$$
#
# This lesson builds the two scoring functions that matter, **additive** attention
# (Bahdanau et al., 2015) and **scaled dot-product** attention (Vaswani et al., 2017,
# §3.2.1), and the machinery every real model needs around them: **masks** that hide
# padding and the future. It ends by mapping Keras' `Attention` layer onto the same
# pieces. In this lesson you will
#
# 1. mask padded keys so that their weights are exactly zero, and write the masked softmax
#    (exercise 1),
# 2. build additive attention,
# 3. build scaled dot-product attention and see why the scores are divided by $\sqrt{d}$,
# 4. hide the future with a causal mask, test for leaks with gradients, and write causal
#    self-attention (exercise 2),
# 5. map Keras' `Attention` layer onto `lib`.
#
# Shapes used throughout: `B` batch, `H` heads, `Tq`/`Tk` numbers of queries and keys,
# `Dk` query/key size, `Dv` value size.
#
# **Points in this lesson: 10** (exercise 1: 5, exercise 2: 5).
#
# *Run time:* about fifteen seconds on a 2-core CPU.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from lib.attention import (
    AdditiveAttention,
    DotProductAttention,
    Record,
    causal_mask,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)
from lib.checks import check_causal, check_close, check_shape, passed
from lib.plot import show_heatmaps
from lib.runtime import seed_everything

seed_everything(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. Masked softmax
#
# Sequences in a batch have different lengths, so they are padded to a common length.
# The padding tokens are not data: no query may attend to them. Before the softmax
# we therefore **mask** some scores so that their weights come out exactly zero.
#
# Two ways of saying which keys are visible are common:
#
# * **valid lengths** (d2l's `valid_lens`): sequence $b$ has `valid_lens[b]` real keys,
#   the rest is padding; a 2-D `valid_lens` of shape `(B, Tq)` gives a length per query;
# * **boolean masks** (PyTorch's and this course's convention): `True` means *may
#   attend*, with a shape that broadcasts to the scores, `(B, H, Tq, Tk)` or
#   `(B, Tq, Tk)`.
#
# `padding_mask` turns the first into the second:

# %%
valid_lens = torch.tensor([2, 3])
print(padding_mask(valid_lens, Tk=4, ndim=3).int())  # (B, 1, Tk): one row per sequence, broadcast over queries

# %% [markdown]
# `masked_softmax` accepts either (and combines them with AND when both are given).
# Masked keys get weight exactly zero and each row still sums to one:

# %%
scores = torch.rand(2, 2, 4)  # (B, Tq, Tk)
print(masked_softmax(scores, valid_lens=valid_lens))
print(masked_softmax(scores, valid_lens=torch.tensor([[1, 3], [2, 4]])))  # one length per query

# %% [markdown]
# ### What to fill the masked scores with
#
# The usual trick is to replace masked scores by a very negative number, so that
# $\exp$ sends them to zero. Which number matters:
#
# * **`-inf`** is exact, until a query has *no* visible key at all (a fully padded
#   sequence, or a causal mask with a cache offset gone wrong): the softmax computes
#   $e^{-\infty}/\sum e^{-\infty} = 0/0 =$ `nan`, and the `nan` spreads through
#   every later layer and into the gradients.
# * **`-1e6`** (d2l's choice) is fine in float32, but float16's most negative finite
#   value is $-65504$: `-1e6` does not fit. Converted to float16 it *overflows* to
#   `-inf`, with the same `nan` as above. (Writing the Python number `-1e6` into a
#   half-precision tensor either raises an overflow error or silently stores `-inf`,
#   depending on the PyTorch release and the indexing path; the cell below converts
#   explicitly, which behaves the same in every release.) Either way, d2l's
#   `masked_softmax` cannot run in float16.
# * **`torch.finfo(dtype).min`**, the most negative finite number of the dtype, works in
#   every precision. A fully masked row then comes out *uniform* (all scores equal), so
#   `lib` additionally zeroes every masked weight: such a row is all zeros, and so is
#   its output.

# %%
row = torch.tensor([[1.0, 2.0, 3.0]])
nothing_visible = torch.tensor([[False, False, False]])
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    s = row.to(dtype)
    with_inf = F.softmax(s.masked_fill(~nothing_visible, float("-inf")), dim=-1).float()
    minus_1e6 = torch.tensor(-1e6).to(dtype)  # d2l's fill value, as this dtype stores it
    filled = s.masked_fill(~nothing_visible, minus_1e6)
    with_1e6 = [round(v, 4) for v in F.softmax(filled, dim=-1).float().tolist()[0]]
    ours = masked_softmax(s, mask=nothing_visible).float()
    print(f"{str(dtype):>15}:  -inf -> {with_inf.tolist()[0]},  -1e6 (stored as {minus_1e6.item():g}) -> {with_1e6},  "
          f"lib -> {ours.tolist()[0]}")


# %% [markdown]
# (In float32, `-1e6` gives no `nan` but a *uniform* row: attention spread over padding
# that should not be attended. Neither `nan` nor that is what we want. bfloat16 has
# float32's range, so `-1e6` fits there, rounded.)
#
# ### Exercise 1: masked softmax (5 points)
#
# Write `my_masked_softmax(scores, mask)`:
#
# * `scores`: a float tensor `(..., Tq, Tk)` of any float dtype;
# * `mask`: a boolean tensor that broadcasts to `scores`, `True` = may attend;
# * return weights of the scores' shape: the softmax over the last axis where masked
#   keys get weight exactly 0, and rows with no visible key are all zeros, never `nan`,
#   in float32, float16 and bfloat16.
#
# You may use `F.softmax` and `masked_fill` (but not `lib.attention.masked_softmax`).

# %% nbgrader={"grade": false, "grade_id": "ex1_masked_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(filled, dim=-1)
    return weights.masked_fill(~mask, 0.0)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_masked_softmax_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
scores = torch.randn(2, 3, 4, 5)
mask = torch.rand(2, 1, 4, 5) > 0.4
mask[0, 0, 2] = False  # a query with nothing to attend to
w = my_masked_softmax(scores, mask)
check_shape(w, (2, 3, 4, 5), "weights")
_uniform_row = masked_softmax(scores, mask=mask)
_uniform_row[0, :, 2] = 1 / 5  # the row mask[0, 0, 2] hides everything, in every head
check_close(w, masked_softmax(scores, mask=mask), "weights on random scores and a random mask", variants={
    "with the mask inverted (True means *may attend*; fill where ~mask)": lambda: masked_softmax(scores, mask=~mask),
    "normalised over the queries (dim=-2) instead of the keys (dim=-1)": lambda: masked_softmax(scores.transpose(-2, -1), mask=mask.transpose(-2, -1)).transpose(-2, -1),
    "except that the masked scores were set to 0 instead of a very negative number": lambda: F.softmax(scores.masked_fill(~mask, 0.0), dim=-1),
    "except that the fully masked row is uniform (1/Tk) instead of all zeros": _uniform_row,
})
assert not torch.isnan(w).any(), "weights contain NaN: a fully masked row must give zeros"
assert torch.all(w[~mask.expand_as(w)] == 0), "masked keys must get weight exactly 0"
passed("my_masked_softmax matches lib on random scores, and a fully masked row is zeros")

# %% nbgrader={"grade": true, "grade_id": "ex1_masked_softmax_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(7)
cases = []
for shape, mshape in [((3, 6), (3, 6)), ((2, 4, 7), (2, 1, 7)), ((2, 2, 3, 5), (3, 5)), ((1, 1, 1, 1), (1, 1))]:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        s = (torch.randn(*shape, generator=g) * 4).to(dtype)
        m = torch.rand(*mshape, generator=g) > 0.5
        m.view(-1)[0] = False
        cases.append((s, m, masked_softmax(s, mask=m)))
with forbid("lib.attention.masked_softmax", "lib.attention.scaled_dot_product_attention"):
    answers = [my_masked_softmax(s, m) for s, m, _ in cases]
for (s, m, ref), ans in zip(cases, answers):
    assert ans.dtype == s.dtype, f"weights must keep the scores' dtype {s.dtype}, got {ans.dtype}"
    assert not torch.isnan(ans).any(), f"NaN in the weights for {s.dtype} scores of shape {tuple(s.shape)}"
    tol = 1e-5 if s.dtype == torch.float32 else 1e-2
    check_close(ans, ref, f"{s.dtype} scores {tuple(s.shape)}, mask {tuple(m.shape)}", atol=tol, rtol=tol)
all_masked = my_masked_softmax(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool))
check_close(all_masked, torch.zeros(2, 3), "a fully masked input")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Additive attention
#
# When queries and keys have **different sizes**, they cannot be compared by a dot
# product. Additive attention (Bahdanau et al., 2015) projects both into a common
# hidden space of size $h$ and scores the pair with a one-layer MLP:
#
# $$a(\mathbf{q}, \mathbf{k}) = \mathbf{w}_v^\top \tanh(\mathbf{W}_q\mathbf{q} + \mathbf{W}_k\mathbf{k}),
# \qquad \mathbf{W}_q \in \mathbb{R}^{h\times d_q},\ \mathbf{W}_k \in \mathbb{R}^{h\times d_k},\ \mathbf{w}_v \in \mathbb{R}^{h}.$$
#
# Every query is paired with every key, so the hidden features form a
# `(B, Tq, Tk, h)` tensor, the memory cost that makes additive attention less popular
# than the dot product. `lib.attention.AdditiveAttention` implements it; here is the
# example from d2l, with 2 sequences of 10 keys of which only the first 2 and 6 are
# real:

# %%
queries = torch.normal(0, 1, (2, 1, 20))  # (B, Tq, d_q)
keys = torch.normal(0, 1, (2, 10, 2))  # (B, Tk, d_k)
values = torch.arange(40, dtype=torch.float32).reshape(1, 10, 4).repeat(2, 1, 1)  # (B, Tk, Dv)
additive = AdditiveAttention(d_query=20, d_key=2, d_hidden=8).eval()
record = Record(need_weights=True)  # modules return a Tensor; a Record collects the weights
out = additive(queries, keys, values, valid_lens=torch.tensor([2, 6]), record=record)
weights = record.weights[0]  # (B, Tq, Tk)
print("output:", tuple(out.shape), " weights:", tuple(weights.shape))
print("parameters:", {name: tuple(p.shape) for name, p in additive.named_parameters()})
_ = show_heatmaps(weights.unsqueeze(0), titles=["sequence 0 (2 valid keys)", "sequence 1 (6 valid keys)"], figsize=(4, 1.2))

# %% [markdown]
# ## 3. Scaled dot-product attention
#
# When queries and keys have the same size $d$, the cheapest score is the dot
# product $\mathbf{q}^\top\mathbf{k}$. For a whole batch of queries it is one matrix
# product, and Vaswani et al. (2017, eq. 1) divide it by $\sqrt{d}$:
#
# $$\mathrm{Attention}(\mathbf{Q}, \mathbf{K}, \mathbf{V}) = \mathrm{softmax}\!\left(\frac{\mathbf{Q}\mathbf{K}^\top}{\sqrt{d}}\right)\mathbf{V}.$$
#
# ### Why divide by $\sqrt{d}$?
#
# If the entries of $\mathbf{q}$ and $\mathbf{k}$ are independent with mean 0 and
# variance 1, then $\mathbf{q}^\top\mathbf{k} = \sum_{i=1}^{d} q_i k_i$ is a sum of $d$
# independent terms of variance 1: its variance is $d$. Large $d$ gives scores with a
# large spread, the softmax **saturates** (nearly all weight on one key) and its
# gradient vanishes. Dividing by $\sqrt{d}$ brings the variance back to 1 whatever
# $d$ is. Let us check both claims numerically.

# %%
gen = torch.Generator().manual_seed(0)
dims = [4, 16, 64, 256, 1024]
print(f"{'d':>5} {'var(q.k)':>9} {'var(q.k/sqrt d)':>16} {'max weight':>11} {'max weight, scaled':>19}")
max_w, max_w_scaled = [], []
for d in dims:
    q = torch.randn(2000, 1, d, generator=gen)
    k = torch.randn(2000, 16, d, generator=gen)
    s = (q @ k.transpose(1, 2)).squeeze(1)  # (2000, 16): 16 keys per query
    max_w.append(F.softmax(s, -1).max(-1).values.mean().item())
    max_w_scaled.append(F.softmax(s / math.sqrt(d), -1).max(-1).values.mean().item())
    print(f"{d:>5} {s.var().item():>9.1f} {(s / math.sqrt(d)).var().item():>16.2f} {max_w[-1]:>11.2f} {max_w_scaled[-1]:>19.2f}")

# %% [markdown]
# The variance of the raw dot product grows like $d$; scaled, it stays near 1. With
# 16 keys a uniform softmax would put $1/16 \approx 0.06$ on each; without scaling,
# the largest weight approaches 1 as $d$ grows (a hard, one-hot lookup), while the
# scaled scores keep the distribution soft. The softmax's gradient
# $\partial \alpha_i / \partial s_j = \alpha_i(\delta_{ij} - \alpha_j)$ is nearly zero for
# a one-hot $\alpha$, which is why saturation stalls learning:

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx(dims, max_w, "o-", label="q·k")
ax.semilogx(dims, max_w_scaled, "o-", label="q·k / √d")
ax.axhline(1 / 16, color="gray", ls="--", label="uniform (1/16)")
ax.set(xlabel="d", ylabel="mean largest weight", title="softmax saturation over 16 keys")
_ = ax.legend()

# %% [markdown]
# ### The implementation
#
# `lib.attention.scaled_dot_product_attention(q, k, v, mask=None, bias=None, dropout_p=0.0)`
# is the **teaching path**: three lines you can read, returning the output *and* the
# weights so we can plot them. PyTorch has a fused version,
# `torch.nn.functional.scaled_dot_product_attention`, that picks a FlashAttention or
# memory-efficient kernel where it can and never materialises the weights; `lib`
# calls it when asked with `fast=True`. Both agree, and agree with PyTorch:

# %%
q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 6)  # (B, H, T, D)
mask = padding_mask(torch.tensor([7, 3]), 7)  # (B, 1, 1, Tk)
out, w = scaled_dot_product_attention(q, k, v, mask=mask)
out_fast, _ = scaled_dot_product_attention(q, k, v, mask=mask, fast=True)
out_torch = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
print("output:", tuple(out.shape), " weights:", tuple(w.shape))
check_close(out, out_torch, "teaching path vs torch.nn.functional.scaled_dot_product_attention")
check_close(out_fast, out_torch, "fast path vs torch")
passed("the teaching path, the fast path and PyTorch agree")

# %% [markdown]
# `DotProductAttention` is the same computation as an `nn.Module` with the `valid_lens`
# interface of d2l, and no parameters:

# %%
attention = DotProductAttention(dropout=0.0).eval()
queries = torch.normal(0, 1, (2, 1, 2))  # (B, Tq, Dk)
keys = torch.normal(0, 1, (2, 10, 2))  # (B, Tk, Dk)
record = Record(need_weights=True)
out = attention(queries, keys, values, valid_lens=torch.tensor([2, 6]), record=record)
weights = record.weights[0]  # (B, Tq, Tk)
print("output:", tuple(out.shape), " parameters:", sum(p.numel() for p in attention.parameters()))
_ = show_heatmaps(weights.unsqueeze(0), titles=["sequence 0 (2 valid keys)", "sequence 1 (6 valid keys)"], figsize=(4, 1.2))

# %% [markdown]
# ## 4. Causal masks
#
# A language model predicts token $t+1$ from tokens $1..t$. In self-attention every
# position is a query *and* a key, so position $t$ could simply look at position
# $t+1$ and copy the answer. A **causal mask** forbids it: query $i$ may attend to
# keys $j \le i$ only, a lower-triangular boolean matrix.

# %%
T = 6
print(causal_mask(T).int())
x = torch.randn(1, T, 8)  # (B, T, D): queries, keys and values all come from x
_, w_causal = scaled_dot_product_attention(x, x, x, mask=causal_mask(T))
_ = show_heatmaps(w_causal[0], xlabel="keys (positions)", ylabel="queries (positions)", figsize=(3, 3))


# %% [markdown]
# ### The causal-leak test
#
# How do we *prove* that a model does not look ahead? Output $t$ must not change when
# any input after $t$ changes, so the gradient of output $t$ with respect to inputs
# $t+1, \ldots, T$ must be exactly zero. `lib.checks.check_causal` computes these
# gradients with autograd; without the mask it finds the leak:

# %%
def self_attention(x, mask=None):
    return scaled_dot_product_attention(x, x, x, mask=mask)[0]


check_causal(lambda x: self_attention(x, causal_mask(T)), x, "masked self-attention")
passed("with the causal mask, no output depends on a later input")
try:
    check_causal(lambda x: self_attention(x), x, "unmasked self-attention")
except AssertionError as err:
    print("without the mask:", err)


# %% [markdown]
# ### Exercise 2: causal self-attention (5 points)
#
# Write
#
# * `my_causal_mask(T)`: a boolean `(T, T)` tensor, `True` where query $i$ may attend to
#   key $j$, i.e. $j \le i$;
# * `causal_attention(q, k, v)`: scaled dot-product attention of `q`, `k`, `v` of shape
#   `(B, T, D)` (`v` may have another last size) with your causal mask, returning the
#   output `(B, T, Dv)`. You may use `masked_softmax` from `lib.attention`, but compute
#   the scores and the scaling yourself.

# %% nbgrader={"grade": false, "grade_id": "ex2_causal_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_causal_mask(T: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    return torch.tril(torch.ones(T, T, dtype=torch.bool))
    ### END SOLUTION


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, T, T)
    weights = masked_softmax(scores, mask=my_causal_mask(q.shape[-2]))
    return weights @ v  # (B, T, Dv)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_causal_attention_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
m = my_causal_mask(5)
check_shape(m, (5, 5), "my_causal_mask(5)")
assert m.dtype == torch.bool, f"the mask must be boolean, got {m.dtype}"
_ones = torch.ones(5, 5, dtype=torch.int)
check_close(m.int(), causal_mask(5).int(), "my_causal_mask(5) (1 = may attend)", variants={
    "transposed: True for j >= i lets query i see the future; use j <= i (torch.tril)": torch.triu(_ones),
    "inverted: True must mean *may attend* (j <= i), not *hidden*": torch.triu(_ones, diagonal=1),
    "without the diagonal: query i may also attend to itself (j <= i, not j < i)": torch.tril(_ones, diagonal=-1),
})
q, k, v = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 3)
out = causal_attention(q, k, v)
check_shape(out, (2, 5, 3), "causal_attention output")
_scores = q @ k.transpose(-2, -1)
check_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), "causal_attention vs PyTorch (is_causal=True)", variants={
    "without the 1/√d scale": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0),
    "with the scores multiplied by √d instead of divided": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=math.sqrt(8)),
    "with the scores divided by d instead of √d": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / 8),
    "without the causal mask": lambda: F.scaled_dot_product_attention(q, k, v),
    "with the mask inverted (True means *may attend*)": lambda: masked_softmax(_scores / math.sqrt(8), mask=~causal_mask(5)) @ v,
    "with the mask transposed (each query sees itself and the future)": lambda: masked_softmax(_scores / math.sqrt(8), mask=causal_mask(5).T) @ v,
    "with q and k swapped in the scores (k qᵀ instead of q kᵀ)": lambda: masked_softmax(_scores.transpose(-2, -1) / math.sqrt(8), mask=causal_mask(5)) @ v,
})
check_causal(lambda x: causal_attention(x, x, x), torch.randn(2, 5, 4), "causal_attention")
passed("my_causal_mask and causal_attention are right, and nothing leaks from the future")

# %% nbgrader={"grade": true, "grade_id": "ex2_causal_attention_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(11)
forbidden = ("lib.attention.causal_mask", "lib.attention.scaled_dot_product_attention",
             "torch.nn.functional.scaled_dot_product_attention")
for T in (1, 2, 9):
    with forbid(*forbidden):
        m = my_causal_mask(T)
    check_close(m.int(), torch.tril(torch.ones(T, T)).int(), f"my_causal_mask({T})")
for B, T, D, Dv in [(1, 1, 4, 4), (3, 7, 16, 5), (2, 12, 2, 9)]:
    q, k, v = (torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g), torch.randn(B, T, Dv, generator=g))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with forbid(*forbidden):
        out = causal_attention(q, k, v)
        check_causal(lambda x: causal_attention(x, x, x), torch.randn(B, T, D, generator=g), f"causal_attention, T={T}")
    check_close(out, expected, f"causal_attention for B={B}, T={T}, D={D}, Dv={Dv}")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Keras' `Attention` layer in terms of `lib`
#
# Much of the material on attention (including the IMDB models of lesson 06) is
# written with Keras, whose `keras.layers.Attention` is dot-product attention with
# different conventions. The mapping:
#
# | Keras `Attention` | meaning | in `lib` |
# | --- | --- | --- |
# | `layer([query, value])` | inputs in the order **query, value**, key defaults to value | `attn(query, key=value, value=value)` |
# | `layer([query, value, key])` | key given explicitly, **last** | `attn(query, key, value)` |
# | scores `query @ keyᵀ`, no $1/\sqrt{d}$ | the Luong-style dot product, unscaled | `DotProductAttention(scaled=False)` |
# | `use_scale=True` | scores times one trainable scalar, initialised to 1 | `DotProductAttention(scaled=False, use_scale=True)` |
# | `causal=True` (Keras 2) / `use_causal_mask=True` (call argument, Keras 3) | query $i$ sees keys $j \le i$ | `mask=causal_mask(Tq, Tk)` |
# | `mask=[query_mask, value_mask]`, both `(B, T)` booleans | `value_mask` hides padded keys; `query_mask` zeroes the output at padded queries | a key-padding mask, and the output multiplied by `query_mask` |
# | `return_attention_scores=True` | also return the weights | `record=Record(need_weights=True)`, then `record.weights` |
#
# The adapter below makes this concrete (it is only for this comparison; the course
# uses `lib`'s conventions everywhere else):

# %%
class KerasStyleAttention(nn.Module):
    """Keras' Attention(use_scale, score_mode="dot") semantics on top of lib."""

    def __init__(self, use_scale: bool = False, dropout: float = 0.0):
        super().__init__()
        self.attention = DotProductAttention(dropout=dropout, scaled=False, use_scale=use_scale)

    def forward(self, inputs, mask=None, use_causal_mask=False, return_attention_scores=False):
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) > 2 else value  # Keras order: [query, value, key]
        query_mask, value_mask = mask if mask is not None else (None, None)
        attn_mask = None
        if value_mask is not None:
            attn_mask = value_mask[:, None, :]  # (B, 1, Tk): hide padded keys
        if use_causal_mask:
            causal = causal_mask(query.shape[1], key.shape[1])  # (Tq, Tk)
            attn_mask = causal if attn_mask is None else attn_mask & causal
        record = Record(need_weights=True)
        out = self.attention(query, key, value, mask=attn_mask, record=record)
        weights = record.weights[0]  # (B, Tq, Tk)
        if query_mask is not None:
            out = out * query_mask[..., None]  # (B, Tq, Dv): zero the padded queries
        return (out, weights) if return_attention_scores else out


keras_like = KerasStyleAttention(use_scale=True)
n_params = sum(p.numel() for p in keras_like.parameters())
print(f"Keras-style Attention(use_scale=True): {n_params} parameter, a scalar of shape {tuple(keras_like.attention.scale.shape)}")
print(f"Keras-style Attention(use_scale=False): {sum(p.numel() for p in KerasStyleAttention().parameters())} parameters")

# %% [markdown]
# Check the semantics: the key defaults to the value, the scores are unscaled dot
# products times the scalar, masked queries give zero output, and the causal option
# is the causal mask:

# %%
query, value = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
with torch.no_grad():
    keras_like.attention.scale.fill_(0.5)
out, w = keras_like([query, value], return_attention_scores=True)
check_close(w, F.softmax(0.5 * query @ value.transpose(1, 2), -1), "weights = softmax(scale · q vᵀ)")
query_mask = torch.tensor([[True, True, False], [True, False, False]])
value_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
out, w = keras_like([query, value], mask=[query_mask, value_mask], return_attention_scores=True)
assert torch.all(out[~query_mask] == 0) and torch.all(w[1, :, 2:] == 0)
x = torch.randn(1, 4, 4)
_, w = keras_like([x, x], use_causal_mask=True, return_attention_scores=True)
assert torch.equal(w[0] > 0, causal_mask(4))
passed("the adapter reproduces Keras' Attention semantics with one trainable parameter")

# %% [markdown]
# With `use_scale=True` the layer learns a temperature for the softmax: the one
# parameter decides how sharp the attention is, the job that $1/\sqrt{d}$ does by
# fixed formula in the Transformer.
#
# ## Summary
#
# * A scoring function compares a query with each key; a softmax turns scores into
#   weights. **Additive** attention works for any sizes at the cost of a
#   `(B, Tq, Tk, h)` tensor; **scaled dot-product** attention is one matrix product,
#   and the $1/\sqrt{d}$ keeps the scores' variance at 1 so the softmax does not saturate.
# * Masks are boolean, `True` = may attend; fill masked scores with
#   `torch.finfo(dtype).min` and zero the masked weights, so that a row with nothing to
#   attend to gives zeros, never `nan`, in any precision.
# * A causal mask is lower-triangular, and the causal-leak test (zero gradients from
#   the future) proves a model respects it.
#
# Next, lesson 03 runs several attention functions in parallel: **multi-head attention**.
