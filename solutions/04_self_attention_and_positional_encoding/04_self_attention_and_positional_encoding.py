# %% [markdown]
# # 04 · Self-attention and positional encoding
#
# In **self-attention** the queries, keys and values all come from the same sequence:
# every token looks at every other token of its own sentence and replaces itself by a
# weighted average of them. It is the layer the Transformer is made of (Vaswani et al.
# 2017), and it has two properties that shape this lesson:
#
# * it connects any two positions in **one** step and computes all positions **in
#   parallel**, unlike a recurrent network, at a cost that grows with the **square**
#   of the sequence length;
# * it is **permutation equivariant**: shuffle the tokens and the outputs are shuffled
#   the same way. It does not know the order of its input. Word order has to be added,
#   as a **positional encoding**.
#
# Shapes: **B** batch, **H** heads, **T** (or Tq, Tk) sequence lengths,
# **D** $= d_\text{model}$, **Dh** $= d_\text{head}$.
#
# In this lesson you will
#
# 1. run self-attention and see that it ignores order,
# 2. compare CNNs, RNNs and self-attention on computation, sequential operations and
#    path length, and **measure** how each scales,
# 3. build the sinusoidal encoding of Vaswani et al., look at it, and verify that a
#    fixed linear map shifts it by any offset,
# 4. see why *adding* the encoding is a special case of *concatenating* it,
# 5. find out what goes wrong when many self-attention layers are stacked (exercise 1),
# 6. write a learnable positional encoding (exercise 2),
# 7. write the relative position logits of Shaw et al. 2018 (exercise 3), and, as a
#    stretch, Huang et al.'s memory-efficient "skewing",
# 8. meet the modern relative schemes, rotary embeddings (RoPE) and ALiBi,
# 9. train five small models on short sequences and test them on long ones.
#
# **Points in this lesson: 12** (exercise 1: 4, of which 2 for a written answer;
# exercise 2: 4; exercise 3: 4). The stretch part of exercise 3 is ungraded.
#
# *Run time:* a little over a minute on a 2-core CPU in full mode;
# `COURSE_QUICK=1` times fewer sequence lengths and trains the length-extrapolation models for a few steps.

# %%
import contextlib
import copy
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lib import positional as pos
from lib.attention import Record, causal_mask
from lib.checks import check_close, check_permutation_equivariance, check_shape, passed, yours_or_reference
from lib.multihead import MultiHeadAttention
from lib.plot import plot_curves, show_heatmaps
from lib.runtime import device, pick, seed_everything

seed_everything(0)
dev = device()

# %% [markdown]
# We keep the positional schemes behind the module name `pos` (`pos.SinusoidalEncoding`,
# `pos.RelativePosition`, ...): `lib/positional.py` is the reference for this lesson's
# exercises, so we do not put its names among the notebook's own.
#
# ## 1. Self-attention
#
# Given tokens $\mathbf{x}_1, \dots, \mathbf{x}_n$ ($\mathbf{x}_i \in \mathbb{R}^d$),
# self-attention outputs a sequence of the same length,
#
# $$\mathbf{y}_i = f(\mathbf{x}_i, (\mathbf{x}_1, \mathbf{x}_1), \dots, (\mathbf{x}_n, \mathbf{x}_n)) \in \mathbb{R}^d,$$
#
# each token being a query that attends to all tokens as keys and values. With
# `lib.multihead.MultiHeadAttention` (lesson 03) self-attention is just a call with the
# query alone:

# %%
B, T, D, H = 2, 4, 16, 4
attention = MultiHeadAttention(D, H).eval()
x = torch.randn(B, T, D)  # (B, T, D)
record = Record(need_weights=True)  # modules return a Tensor; a Record collects the weights
y = attention(x, record=record)  # self-attention: key = value = query
weights = record.weights[0]  # (B, H, T, T)
print("input", tuple(x.shape), "-> output", tuple(y.shape), " weights", tuple(weights.shape))

# %% [markdown]
# Permuting the tokens permutes the outputs and nothing else: the layer cannot tell
# "dog bites man" from "man bites dog".

# %%
check_permutation_equivariance(attention, x, "self-attention")
passed("self-attention is permutation equivariant: it ignores the order of its input")


# %% [markdown]
# ## 2. CNNs, RNNs and self-attention
#
# Three layers map a sequence of $n$ tokens of size $d$ to another such sequence:
#
# * a **convolution** with kernel size $k$ looks at a window of $k$ neighbours;
# * a **recurrent** layer carries a hidden state from token to token;
# * **self-attention** lets every token look at every token.
#
# | layer | computation | sequential operations | maximum path length |
# | --- | --- | --- | --- |
# | convolution (kernel $k$) | $\mathcal{O}(k n d^2)$ | $\mathcal{O}(1)$ | $\mathcal{O}(n/k)$ |
# | recurrent | $\mathcal{O}(n d^2)$ | $\mathcal{O}(n)$ | $\mathcal{O}(n)$ |
# | self-attention | $\mathcal{O}(n^2 d)$ | $\mathcal{O}(1)$ | $\mathcal{O}(1)$ |
#
# *Sequential operations* are the steps that must wait for each other: the RNN's $n$
# hidden states are computed one after the other, the other two layers compute all
# positions at once. The *maximum path length* is the number of layers a signal crosses
# to get from the first token to the last: a stack of convolutions needs $n/k$ layers
# (for a $k$-wide kernel; $\log_k n$ with dilations), an RNN $n$ steps, self-attention
# one. Short paths make long-range dependencies easier to learn (Vaswani et al. 2017,
# section 4 and table 1). The price is the $n^2$: self-attention is quadratic in the
# sequence length. Counting operations as the table does, it does less work than a
# recurrent layer only while $n < d$; on a real processor the RNN also pays for its $n$
# sequential steps, so the measured crossover comes later (below, with $d = 64$, between
# $n = 128$ and $n = 256$ in the stored run).
#
# Let us measure it. We time one forward pass of each layer, with $d = 64$, over growing
# $n$, on one CPU thread (timings depend on the machine; the trends are what matters).

# %%
@contextlib.contextmanager
def one_thread():
    """Run PyTorch on one CPU thread: tiny layers gain nothing from more, and shared machines lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def time_forward(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best wall time of ``repeats`` forward passes, in milliseconds."""
    best = float("inf")
    with torch.no_grad():
        layer(x)  # warm-up
        for _ in range(repeats):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            layer(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 1000 * best


class ConvLayer(nn.Module):
    """Conv1d over the sequence, batch-first (B, T, D) like the other two."""

    def __init__(self, d: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) inside, (B, T, D) out


class RNNLayer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(d, d, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]  # (B, T, D)


d = 64
layers = {
    "convolution (k=3)": ConvLayer(d).to(dev),
    "RNN": RNNLayer(d).to(dev),
    "self-attention": MultiHeadAttention(d, 4).to(dev),
}
lengths = pick(full=[32, 64, 128, 256, 512, 1024, 2048], quick=[32, 64, 128])
repeats = pick(full=5, quick=1)

# %% tags=["nbval-ignore-output"]
timings = {name: [] for name in layers}
with one_thread():
    for n in tqdm(lengths, desc="timing each length"):
        x = torch.randn(4, n, d, device=dev)  # (B, n, d)
        for name, layer in layers.items():
            timings[name].append(time_forward(layer, x, repeats))
print(pd.DataFrame(timings, index=pd.Index(lengths, name="n")).round(2).to_string())

# %% tags=["nbval-ignore-output"]
fig = plot_curves(timings, xlabel="sequence length n", ylabel="forward time (ms)", x=lengths, logy=True,
                  title=f"One layer, d = {d}, batch 4")
fig.axes[0].set_xscale("log", base=2)

# %% [markdown]
# On a log-log plot a power law is a straight line. The convolution grows linearly and
# stays cheap. The RNN grows linearly too, but with a large constant: its $n$ steps run
# one after the other, each too small to keep the processor busy. Self-attention keeps up
# with the RNN on short sequences, where fixed costs per call dominate and the time grows
# more slowly than $n$ (in the stored run 0.16 ms at $n = 32$, 0.71 ms at $n = 128$). Then
# the $n^2$ term takes over: in the stored run the time grows 4-fold from 256 to 512 tokens,
# as $n^2$ predicts, and almost 9-fold from 512 to 1024, steeper than $n^2$ because the
# $B \cdot H \cdot n^2$ scores outgrow the processor's caches; the last doubling, 1024 to
# 2048, cost 3.7-fold (single timings on a busy machine are noisy). From 256 tokens
# on it is the slowest of the three (your timings will differ; the shape of the curves
# should not). That quadratic cost is what efficient-attention
# variants attack.
#
# ## 3. Sinusoidal positional encoding
#
# Vaswani et al. (2017, section 3.5) add to the input $\mathbf{X} \in \mathbb{R}^{n \times d}$
# a fixed matrix $\mathbf{P} \in \mathbb{R}^{n \times d}$:
#
# $$p_{i, 2j} = \sin\left(\frac{i}{10000^{2j/d}}\right),\qquad
#   p_{i, 2j+1} = \cos\left(\frac{i}{10000^{2j/d}}\right).$$
#
# Columns $2j$ and $2j+1$ hold the sine and cosine of the position at angular frequency
# $\omega_j = 1/10000^{2j/d}$: fast in the first columns, slower and slower in the last.
# `pos.sinusoidal_table(T, D)` builds the table; `pos.SinusoidalEncoding` adds it (with
# dropout, as in the paper). Its table equals d2l's `PositionalEncoding` bit for bit
# (a unit test checks it).

# %%
T, D = 60, 32
P = pos.sinusoidal_table(T, D)  # (T, D)
encoding = pos.SinusoidalEncoding(D, max_len=1000, dropout=0.0)
x = torch.zeros(1, T, D)
check_close(encoding(x)[0], P, "SinusoidalEncoding(zeros) is the table")
print("P:", tuple(P.shape), " first row:", P[0, :6].tolist())

# %%
fig, ax = plt.subplots(figsize=(6, 2.8))
for col in range(6, 10):
    _ = ax.plot(torch.arange(T), P[:, col], label=f"Col {col}")
ax.set_xlabel("Row (position)")
ax.set_ylabel("encoding value")
ax.set_title("Columns 6-9 of the sinusoidal encoding")
_ = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot, not over the curves

# %% [markdown]
# Column 6 oscillates faster than column 8; columns 7 and 9 are their cosine twins.
#
# ### The binary-representation analogy
#
# Write the numbers 0 to 7 in binary: the lowest bit flips at every number, the next one
# every two numbers, the highest every four. Higher bits alternate at lower frequencies.

# %%
for i in range(8):
    print(f"{i} in binary is {i:>03b}")

# %% [markdown]
# The sinusoidal table is a continuous version of the same picture: along a row
# (a position) the columns go from high to low frequency. Floats instead of bits make
# it cheaper in space and smooth in the position.

# %%
_ = show_heatmaps(P, xlabel="Column (encoding dimension)", ylabel="Row (position)",
                  figsize=(3.5, 4), cmap="Blues")


# %% [markdown]
# ### Relative positions by a linear projection
#
# Besides absolute positions, the table makes **offsets** easy to compute: for any fixed
# offset $\delta$, position $i+\delta$ is a linear function of position $i$, the same for
# every $i$. For one column pair at frequency $\omega_j$, by the angle-sum formulas,
#
# $$\begin{bmatrix} \cos(\delta\omega_j) & \sin(\delta\omega_j) \\ -\sin(\delta\omega_j) & \cos(\delta\omega_j) \end{bmatrix}
#   \begin{bmatrix} p_{i, 2j} \\ p_{i, 2j+1} \end{bmatrix}
# = \begin{bmatrix} \sin((i+\delta)\omega_j) \\ \cos((i+\delta)\omega_j) \end{bmatrix}
# = \begin{bmatrix} p_{i+\delta, 2j} \\ p_{i+\delta, 2j+1} \end{bmatrix}.$$
#
# The $2 \times 2$ rotation depends on $\delta$ only. Stacking one per pair gives a
# block-diagonal $d \times d$ matrix $M(\delta)$ with $\mathbf{p}_{i+\delta} = M(\delta)\,\mathbf{p}_i$.
# Let us verify it for every position at once.

# %%
def shift_matrix(delta: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """M(δ): block-diagonal rotations with p_{i+δ} = M(δ) p_i for the sinusoidal table."""
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    blocks = [torch.tensor([[math.cos(delta * w), math.sin(delta * w)],
                            [-math.sin(delta * w), math.cos(delta * w)]], dtype=torch.float64)
              for w in omega.tolist()]
    return torch.block_diag(*blocks)  # (D, D)


P64 = pos.sinusoidal_table(200, D).double()  # (200, D)
for delta in (1, 5, 37):
    M = shift_matrix(delta, D)
    shifted = P64[:-delta] @ M.T  # row i is M(δ) p_i, (200 - δ, D)
    err = (shifted - P64[delta:]).abs().max().item()
    print(f"δ = {delta:2d}: max over all i of |M(δ) p_i - p_(i+δ)| < 1e-5: {err < 1e-5}")

# %% [markdown]
# So a layer that projects positions linearly (as attention's $W^Q$ and $W^K$ do) can in
# principle learn to attend by relative offset. Note also that $\mathbf{p}_i \cdot \mathbf{p}_{i+\delta}
# = \sum_j \cos(\delta\omega_j)$ depends on $\delta$ only.
#
# ### Adding is concatenating, then projecting
#
# Adding $\mathbf{p}$ to $\mathbf{x}$ looks like it mixes two different things in one vector.
# Think of the first layer instead, which projects its input by some $W$. Had we
# *concatenated* the position to the token and projected, we would compute
#
# $$W \begin{bmatrix} \mathbf{x} \\ \mathbf{p} \end{bmatrix} = W_x \mathbf{x} + W_p \mathbf{p},
# \qquad W = [\,W_x \;\; W_p\,],$$
#
# a sum of a projected token and a projected position. Adding before the projection is
# the special case $W_x = W_p$: $W(\mathbf{x} + \mathbf{p}) = W\mathbf{x} + W\mathbf{p}$. It costs no extra
# width, and in a wide model the token embeddings can learn to leave room (nearly
# orthogonal directions) for the positions.

# %%
_ = torch.manual_seed(0)
d_in, d_pos, d_out = 6, 4, 5
W = torch.randn(d_out, d_in + d_pos)  # projection of the concatenation
W_x, W_p = W[:, :d_in], W[:, d_in:]  # (d_out, d_in), (d_out, d_pos)
xv, pv = torch.randn(d_in), torch.randn(d_pos)
check_close(W @ torch.cat([xv, pv]), W_x @ xv + W_p @ pv, "W [x; p] = W_x x + W_p p")
W_same = torch.randn(d_out, d_in)  # adding needs equal sizes: d_pos = d_in
pv = torch.randn(d_in)
check_close(W_same @ (xv + pv), torch.cat([W_same, W_same], dim=1) @ torch.cat([xv, pv]),
            "W (x + p) = [W  W] [x; p]")
passed("concatenate-then-project splits into a sum; adding is the case W_x = W_p")

# %% [markdown]
# With the encoding added, self-attention is no longer permutation equivariant:

# %%
x = torch.randn(2, 6, 16)
with_positions = nn.Sequential(pos.SinusoidalEncoding(16), attention).eval()
perm = torch.tensor([3, 1, 5, 0, 2, 4])
with torch.no_grad():
    same = torch.allclose(with_positions(x[:, perm]), with_positions(x)[:, perm], atol=1e-5)
print("permuting the input only permutes the output:", same)


# %% [markdown]
# ## 4. Exercise 1: stacking self-attention layers (4 points)
#
# The positional encoding is added **once**, at the input. What happens to the tokens,
# and to their positions, after many self-attention layers? Each layer replaces every
# token by a weighted **average** of tokens: its weights are a row-stochastic matrix.
#
# First a tool to measure it. Write `mean_pairwise_cosine(h)`: for representations
# `h` of shape (B, T, D), the mean cosine similarity $\cos(\mathbf{h}_i, \mathbf{h}_j)$ over all
# pairs of **different** positions $i \ne j$ of each sequence, one number per sequence,
# shape (B,). Do not use `torch.nn.functional.cosine_similarity` (normalise the rows
# and use one matrix product).

# %%
# The checks compare your function with this direct (and memory-hungry: it builds a
# (B, T, T, D) tensor) version, which the hidden tests do not let you call.
def _cosine_reference(h: torch.Tensor) -> torch.Tensor:
    sim = F.cosine_similarity(h.unsqueeze(2), h.unsqueeze(1), dim=-1)  # (B, T, T)
    off = ~torch.eye(h.shape[1], dtype=torch.bool)  # (T, T): the pairs i != j
    return sim[:, off].mean(-1)


# %% nbgrader={"grade": false, "grade_id": "ex1_cosine", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mean_pairwise_cosine(h: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B,): mean of cos(h_i, h_j) over the T (T - 1) pairs i != j."""
    ### BEGIN SOLUTION
    T = h.shape[1]
    u = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, T, D), unit rows
    sim = u @ u.transpose(-2, -1)  # (B, T, T)
    off_diagonal = sim.sum(dim=(-2, -1)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B,)
    return off_diagonal / (T * (T - 1))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_cosine_check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_h = torch.randn(3, 5, 8)
check_shape(mean_pairwise_cosine(_h), (3,), "mean_pairwise_cosine(h of shape (3, 5, 8))")
_all_pairs = F.cosine_similarity(_h.unsqueeze(2), _h.unsqueeze(1), dim=-1)  # (B, T, T), diagonal included
_dots = _h @ _h.transpose(-2, -1)
check_close(mean_pairwise_cosine(_h), _cosine_reference(_h), "mean_pairwise_cosine on random h", variants={
    "with the diagonal included (each token with itself, cosine 1): average over i != j only": _all_pairs.mean((-2, -1)),
    "with the diagonal left out of the sum but still divided by T² (there are T (T - 1) pairs)": _cosine_reference(_h) * 4 / 5,
    "counting each pair once (divided by T (T - 1) / 2, but the sum has both (i, j) and (j, i))": _cosine_reference(_h) * 2,
    "without normalising the rows (dot products, not cosines)": (_dots.sum((-2, -1)) - _dots.diagonal(dim1=-2, dim2=-1).sum(-1)) / 20,
})
check_close(mean_pairwise_cosine(torch.ones(2, 4, 3)), torch.ones(2), "identical tokens have cosine 1")
passed("mean_pairwise_cosine matches the pairwise cosine similarity, diagonal excluded")

# %% nbgrader={"grade": true, "grade_id": "ex1_cosine_hidden", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: the student sees this cell empty but for this comment.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

_g = torch.Generator().manual_seed(7)
_cases = [torch.randn(_shape, generator=_g, dtype=torch.float64) for _shape in [(1, 2, 1), (2, 7, 3), (4, 16, 32)]]
_refs = [_cosine_reference(_h) for _h in _cases]
with forbid("torch.nn.functional.cosine_similarity", "torch.cosine_similarity"):
    for _h, _ref in zip(_cases, _refs, strict=True):
        _got = mean_pairwise_cosine(_h)
        check_shape(_got, (_h.shape[0],), f"mean_pairwise_cosine on {tuple(_h.shape)}")
        check_close(_got, _ref, f"mean_pairwise_cosine on {tuple(_h.shape)}")
        check_close(mean_pairwise_cosine(_h * 5.0), _got, "cosine similarity ignores the scale of h")
    _h = torch.randn(1, 2, 4, generator=_g)
    check_close(mean_pairwise_cosine(torch.cat([_h[:, :1], -_h[:, :1]], dim=1)), -torch.ones(1),
                "opposite tokens have cosine -1")
### END HIDDEN TESTS

# %% [markdown]
# Now the experiment. We stack `depth` untrained self-attention layers **without** the
# residual connections and feed-forward layers that a Transformer block adds (lesson 05
# builds the feed-forward layer, lesson 06 the block),
# feed them random tokens plus the sinusoidal encoding, and follow two numbers through
# the stack:
#
# * the mean pairwise cosine similarity of the tokens (1 means all tokens are the same);
# * the **positional signal**: the share of the representation that still varies along
#   the sequence, $\lVert \mathbf{H} - \mathbf{1}\bar{\mathbf{h}}^\top \rVert_F / \lVert \mathbf{H} \rVert_F$
#   (0 means every position holds the same vector, so no position can be told apart).
#
# We run three stacks: PyTorch's default initialisation, "sharp" attention (all weights
# scaled up, so each token attends to few others), and the default stack with a residual
# connection (and a layer norm) around each layer.
#
# Two tools of the Transformer block appear here for the first time (lesson 06 builds the
# block around them):
#
# * a **residual connection** adds a layer's output to its input, $\mathbf{h} \leftarrow
#   \mathbf{h} + f(\mathbf{h})$, instead of replacing it: the input always gets through, and
#   $f$ only has to learn a correction (He et al. 2016);
# * **layer normalisation** (Ba et al. 2016) rescales each token's vector to mean 0 and
#   variance 1 over its $D$ features, then applies a learned gain $\boldsymbol\gamma$ and
#   bias $\boldsymbol\beta$ (here, untrained: $\boldsymbol\gamma = 1$, $\boldsymbol\beta = 0$):
#
# $$\mathrm{LN}(\mathbf{h}) = \boldsymbol\gamma \odot \frac{\mathbf{h} - \mu}{\sqrt{\sigma^2 + \epsilon}} + \boldsymbol\beta,
# \qquad \mu = \frac1D \sum_k h_k,\quad \sigma^2 = \frac1D \sum_k (h_k - \mu)^2 .$$
#
# Normalising the input of $f$, not the sum, is the **pre-norm** arrangement,
# $\mathbf{h} + f(\mathrm{LN}(\mathbf{h}))$, used below and by GPT-2 and most recent models
# (lesson 06 compares it with the original post-norm $\mathrm{LN}(\mathbf{h} + f(\mathbf{h}))$).
# The formula, checked against PyTorch:

# %%
_h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1  # (B, T, D), mean 1, std 3
_mu = _h.mean(-1, keepdim=True)
_var = _h.var(-1, unbiased=False, keepdim=True)  # the biased variance (divide by D)
_ln = (_h - _mu) / torch.sqrt(_var + 1e-5)
check_close(_ln, F.layer_norm(_h, (8,)), "the LayerNorm formula vs F.layer_norm")
check_close(_ln, nn.LayerNorm(8)(_h).detach(), "vs nn.LayerNorm(8) (gain 1, bias 0 at initialisation)")
print("every token after LayerNorm has mean 0:", torch.allclose(_ln.mean(-1), torch.zeros(2, 5), atol=1e-6),
      " and standard deviation 1:", torch.allclose(_ln.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3))

# %%
def positional_signal(h: torch.Tensor) -> torch.Tensor:
    """||H - mean over positions|| / ||H|| per sequence: (B, T, D) -> (B,)."""
    centred = h - h.mean(dim=1, keepdim=True)  # (B, T, D)
    return centred.flatten(1).norm(dim=-1) / h.flatten(1).norm(dim=-1)


def run_stack(measure, depth: int = 12, sharp: bool = False, residual: bool = False):
    """Follow (cosine, positional signal) through a stack of untrained self-attention layers."""
    _ = torch.manual_seed(0)
    T, D = 32, 64
    h = torch.randn(8, T, D) + pos.sinusoidal_table(T, D)  # (B, T, D): tokens + positions
    stack = [MultiHeadAttention(D, 4).eval() for _ in range(depth)]
    if sharp:  # larger weights: peaked attention, and values that do not shrink
        for layer in stack:
            for linear in (layer.W_q, layer.W_k, layer.W_v, layer.W_o):
                nn.init.xavier_normal_(linear.weight, gain=2.0)
    cosines, signals = [measure(h).mean().item()], [positional_signal(h).mean().item()]
    with torch.no_grad():
        for layer in stack:
            h = h + layer(F.layer_norm(h, (D,))) if residual else layer(h)
            cosines.append(measure(h).mean().item())
            signals.append(positional_signal(h).mean().item())
    return cosines, signals


# your function if it is written, else the reference, so that the rest of the lesson runs
measure = yours_or_reference(mean_pairwise_cosine, _cosine_reference, "mean_pairwise_cosine",
                             exercise="exercise 1", probe=lambda f: f(torch.randn(1, 2, 3)))

stacks = {
    "default init": run_stack(measure),
    "sharp attention": run_stack(measure, sharp=True),
    "default init + residual": run_stack(measure, residual=True),
}
print(f"{'depth':>5} " + " ".join(f"{name:>24}" for name in stacks))
for depth in (0, 1, 2, 4, 8, 12):
    print(f"{depth:>5} " + " ".join(f"{'cos %.3f  signal %.3f' % (c[depth], s[depth]):>24}" for c, s in stacks.values()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
_ = plot_curves({name: c for name, (c, s) in stacks.items()}, xlabel="depth (layers)",
                ylabel="mean pairwise cosine", x=list(range(13)), ax=axes[0],
                title="Tokens become the same")
_ = plot_curves({name: s for name, (c, s) in stacks.items()}, xlabel="depth (layers)",
                ylabel="positional signal", x=list(range(13)), ax=axes[1],
                title="Positions can no longer be told apart")
for _ax in axes:  # one legend below both panels, so that no curve is hidden
    _ax.get_legend().remove()
_ = fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3)
_ = fig.subplots_adjust(bottom=0.3)


# %% [markdown]
# **Your answer** (2 points, graded by hand). Describe what the experiment shows and
# explain *why* it happens, in terms of what one self-attention layer does to its input.
# What does it mean for the positional encoding that was added at the bottom? Name at
# least two remedies that real models use.

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex1_written", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# ### BEGIN SOLUTION
# **What happens.** Without residual connections the token representations collapse:
# their mean pairwise cosine similarity goes to 1 and the positional signal to 0 after a
# few layers (two with the default initialisation, about ten with sharp attention). All
# positions end up holding the same vector, so both the token identities and the positional
# encoding are lost; a model built this way could not use word order at depth.
#
# **Why.** Each layer multiplies the values by a row-stochastic matrix $A$ (non-negative,
# rows summing to 1): every output is a convex combination, an average, of the inputs. A
# product of such averaging matrices converges to a rank-one matrix whose rows are all equal
# (like repeatedly applying a Markov chain's transition matrix): the spread between tokens
# shrinks at every layer, geometrically, faster when the attention is flatter. Dong et al.
# (2021, "Attention is not all you need: pure attention loses rank doubly exponentially with
# depth") prove this. The positional encoding is added only once, at the input, so it is
# averaged away together with everything else.
#
# **Remedies.** Residual (skip) connections, which keep the input alongside the averaged
# update (the third curve drifts only slowly); feed-forward layers and layer normalisation between
# attention layers (the Transformer block); and relative or rotary positional schemes
# (Shaw et al., RoPE, ALiBi) that inject position in **every** attention layer instead of once
# at the bottom.
# ### END SOLUTION

# %% [markdown]
# ## 5. Exercise 2: a learnable positional encoding (4 points)
#
# Instead of a fixed formula, BERT and GPT-2 **learn** one vector per position, like a
# word embedding indexed by position. Write `LearnablePositionalEncoding(max_len, d_model)`:
#
# * it holds a trainable table of `max_len` vectors of size `d_model`, initialised at
#   random with small values (e.g. normal with std 0.02, as BERT does), so that positions
#   differ from the start;
# * `forward(x)` takes `x` of shape (B, T, D) and returns `x + P[:T]`, position $t$ getting
#   row $t$ of the table;
# * a sequence longer than `max_len` has positions that were never trained: raise a
#   `ValueError` whose message names `max_len`.
#
# You may use `nn.Parameter` or `nn.Embedding`, but not `pos.LearnedPositionalEmbedding`.

# %% nbgrader={"grade": false, "grade_id": "ex2_learned", "locked": false, "schema_version": 3, "solution": true, "task": false}
class LearnablePositionalEncoding(nn.Module):
    """x (B, T, D) -> x + P[:T] with a trained table P of shape (max_len, D)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        ### BEGIN SOLUTION
        self.max_len = max_len
        self.P = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # (max_len, D)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}")
        return x + self.P[:T]  # (B, T, D)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_learned_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_enc = LearnablePositionalEncoding(10, 8)
_x = torch.randn(2, 6, 8)
_out = _enc(_x)
check_shape(_out, (2, 6, 8), "LearnablePositionalEncoding(10, 8) on x of shape (2, 6, 8)")
_params = [p for p in _enc.parameters() if p.requires_grad]
assert _params, "the module has no trainable parameters: wrap the table in nn.Parameter (or use nn.Embedding)"
_out.pow(2).sum().backward()
assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in _params), \
    "no gradient reached the table: is it used in forward?"
_added = _enc(torch.zeros(1, 6, 8))[0]  # (6, 8): what is added at each position
assert not torch.allclose(_added[0], _added[1]), "positions 0 and 1 get the same vector: initialise the table at random"
check_close(_enc(_x) - _x, _added.expand(2, 6, 8), "the same vector is added to every sequence of the batch")
try:
    _full = _enc(torch.randn(1, 10, 8))
except ValueError as e:
    raise AssertionError(
        f"a sequence of exactly max_len = 10 positions must be accepted (positions 0..9 all have a row); "
        f"raise only when T > max_len. Your module said: {e}"
    ) from None
check_shape(_full, (1, 10, 8), "LearnablePositionalEncoding(10, 8) on a sequence of length max_len = 10")
try:
    _enc(torch.randn(1, 11, 8))
except ValueError as e:
    assert "max_len" in str(e), f"the error message should name max_len, got: {e}"
except Exception as e:
    raise AssertionError(
        f"a sequence of length 11 > max_len = 10 must raise ValueError naming max_len (check T in forward), "
        f"got {type(e).__name__}: {e}"
    ) from None
else:
    raise AssertionError("a sequence of length 11 > max_len = 10 must raise ValueError")
passed("LearnablePositionalEncoding adds trainable, position-dependent vectors and refuses long inputs")

# %% nbgrader={"grade": true, "grade_id": "ex2_learned_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: the student sees this cell empty but for this comment.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

_reference_class = pos.LearnedPositionalEmbedding
assert not issubclass(LearnablePositionalEncoding, _reference_class), \
    "this exercise asks you to write the module yourself, not to subclass the course's reference"
with forbid("lib.positional.LearnedPositionalEmbedding", "lib.positional.SinusoidalEncoding",
            "lib.positional.sinusoidal_table"):
    for _max_len, _D, _T in [(1, 4, 1), (5, 3, 5), (64, 16, 17)]:
        _enc = LearnablePositionalEncoding(_max_len, _D)
        assert not any(isinstance(m, _reference_class) for m in _enc.modules()), \
            "this exercise asks you to write the module yourself, not to wrap the course's reference"
        _x = torch.randn(3, _T, _D)
        _out = _enc(_x)
        check_shape(_out, (3, _T, _D), f"LearnablePositionalEncoding({_max_len}, {_D}) on {(3, _T, _D)}")
        _added = _enc(torch.zeros(1, _T, _D))[0]  # (T, D)
        check_close(_out - _x, _added.expand(3, _T, _D), "the encoding is added, the same for every sequence")
        if _T > 1:
            assert (_added[1:] - _added[:-1]).abs().amax(-1).min() > 0, "neighbouring positions must differ"
        _n = sum(p.numel() for p in _enc.parameters() if p.requires_grad)
        assert _n >= _max_len * _D, f"expected a trainable table of at least max_len x d_model = {_max_len * _D} numbers, got {_n}"
        # Training moves the encoding of the positions used.
        _opt = torch.optim.SGD(_enc.parameters(), lr=1.0)
        _before = _enc(torch.zeros(1, _T, _D)).detach()
        _enc(_x).sum().backward()
        _opt.step()
        assert not torch.allclose(_enc(torch.zeros(1, _T, _D)), _before), "one SGD step did not change the encoding"
        try:
            _enc(torch.randn(1, _max_len + 1, _D))
        except ValueError as e:
            assert "max_len" in str(e), f"the error message should name max_len, got: {e}"
        else:
            raise AssertionError(f"length {_max_len + 1} > max_len = {_max_len} must raise ValueError")
### END HIDDEN TESTS

# %% [markdown]
# `pos.LearnedPositionalEmbedding(d_model, max_len=...)` is the library's version. Learned
# positions are as good as sinusoidal ones on the lengths seen in training (Vaswani et al.
# 2017, table 3, row E), but they say nothing about positions beyond `max_len`, and rows
# that training never reached stay at their random initial values. Section 8 measures
# what that costs.
#
# ## 6. Exercise 3: relative position representations (4 points)
#
# Absolute encodings tell a token *where it is*; often what matters is *how far* another
# token is. Shaw, Uszkoreit and Vaswani (2018) learn one vector per **clipped relative
# distance** $\mathrm{clip}(j - i, -K, K)$, two tables $a^K$ and $a^V$ of $2K + 1$ vectors of size
# $D_h$, and put them inside attention (their eqs. 3-5):
#
# $$e_{ij} = \frac{\mathbf{q}_i \cdot (\mathbf{k}_j + a^K_{ij})}{\sqrt{D_h}}
#          = \underbrace{\frac{\mathbf{q}_i \cdot \mathbf{k}_j}{\sqrt{D_h}}}_{\text{usual score}}
#          + \underbrace{\frac{\mathbf{q}_i \cdot a^K_{ij}}{\sqrt{D_h}}}_{\text{relative logits}},
# \qquad \mathbf{z}_i = \sum_j \alpha_{ij} (\mathbf{v}_j + a^V_{ij}),\qquad
# a^K_{ij} = w^K_{\mathrm{clip}(j - i, -K, K)}.$$
#
# Beyond distance $K$ all tokens share one vector: precise position matters nearby, only
# the direction far away. The tables are shared by all heads.
#
# Write `relative_logits(q, rel_k, max_distance)`: for queries `q` of shape (B, H, T, Dh) and
# the table `rel_k` of shape (2K + 1, Dh), whose row $r$ is $w^K_{r - K}$ (row 0 for distance
# $-K$, row $K$ for distance 0), return the relative logits
# $\mathbf{q}_i \cdot a^K_{ij} / \sqrt{D_h}$, shape (B, H, T, T). Build the (T, T) table of clipped
# distances yourself; do not call `pos.RelativePosition` or `pos.relative_distances`.

# %% nbgrader={"grade": false, "grade_id": "ex3_relative", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relative_logits(q: torch.Tensor, rel_k: torch.Tensor, max_distance: int) -> torch.Tensor:
    """q (B, H, T, Dh), rel_k (2K+1, Dh) -> (B, H, T, T): q_i · w_clip(j-i) / sqrt(Dh)."""
    ### BEGIN SOLUTION
    T, Dh = q.shape[-2], q.shape[-1]
    positions = torch.arange(T, device=q.device)  # (T,)
    distance = positions.view(1, T) - positions.view(T, 1)  # (T, T): j - i
    index = distance.clamp(-max_distance, max_distance) + max_distance  # (T, T) in [0, 2K]
    a = rel_k[index]  # (T, T, Dh)
    return torch.einsum("bhid,ijd->bhij", q, a) / math.sqrt(Dh)  # (B, H, T, T)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex3_relative_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_rel = pos.RelativePosition(d_head=8, max_distance=3)
_q = torch.randn(2, 4, 10, 8)
_got = relative_logits(_q, _rel.rel_k.detach(), 3)
check_shape(_got, (2, 4, 10, 10), "relative_logits(q of shape (2, 4, 10, 8), ...)")
def _bias_with(table):
    """lib's relative logits computed with another table (a typical indexing mistake, expressed as a table)."""
    other = copy.deepcopy(_rel)
    with torch.no_grad():
        other.rel_k.copy_(table)
    return other.score_bias(_q, torch.arange(10), torch.arange(10)).detach()


_expected = _rel.score_bias(_q, torch.arange(10), torch.arange(10)).detach()
check_close(_got, _expected, "relative_logits vs lib's RelativePosition.score_bias", variants={
    "with the distance's sign flipped: use j - i (key minus query), so row 0 of rel_k is distance -K": lambda: _bias_with(_rel.rel_k.flip(0)),
    "without the +K offset: clip(j - i, -K, K) indexes rows -K..K, negative rows wrap around; add K": lambda: _bias_with(_rel.rel_k.roll(3, 0)),
    "without the 1/√D_h scale": _expected * math.sqrt(8),
    "divided by D_h instead of √D_h": _expected / math.sqrt(8),
})
passed("relative_logits agrees with Shaw et al.'s relative keys in lib.positional")

# %% nbgrader={"grade": true, "grade_id": "ex3_relative_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: the student sees this cell empty but for this comment.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

_g = torch.Generator().manual_seed(11)
_cases = [(1, 1, 1, 2, 0), (2, 3, 7, 4, 2), (1, 2, 5, 6, 9), (3, 1, 12, 16, 4)]
_refs = []
for _B, _H, _T, _Dh, _K in _cases:
    _rel = pos.RelativePosition(_Dh, _K).double()
    _q = torch.randn(_B, _H, _T, _Dh, generator=_g, dtype=torch.float64)
    _refs.append((_q, _rel.rel_k.detach(), _K, _rel.score_bias(_q, torch.arange(_T), torch.arange(_T)).detach()))
with forbid("lib.positional.RelativePosition", "lib.positional.relative_distances"):
    for _q, _table, _K, _ref in _refs:
        _got = relative_logits(_q, _table, _K)
        check_shape(_got, tuple(_ref.shape), f"relative_logits on q {tuple(_q.shape)}, K = {_K}")
        check_close(_got, _ref, f"relative_logits on q {tuple(_q.shape)}, K = {_K}")
    # Clipping: with K = 1, every key at distance >= 1 to the right gets the same logit.
    _q = torch.randn(1, 1, 6, 4, generator=_g)
    _got = relative_logits(_q, torch.randn(3, 4, generator=_g), 1)[0, 0]  # (T, T)
    check_close(_got[0, 2:], _got[0, 1].expand(4), "distances beyond K share one vector")
### END HIDDEN TESTS

# %% [markdown]
# ### Stretch (ungraded): the "skewing" of Huang et al. (2018)
#
# `relative_logits` builds a (T, T, Dh) tensor of gathered vectors: $\mathcal{O}(T^2 D_h)$
# memory. The Music Transformer (Huang et al. 2018, section 3.4) needs only
# $\mathcal{O}(T D_h)$ in the causal case ($j \le i$): multiply the queries by the $T$ vectors
# for distances $-(T-1), \dots, -1, 0$, giving $S = Q E^\top$ of shape (T, T) where column $r$
# holds distance $r - (T-1)$; then **skew** it: pad one column of zeros on the left,
# reshape (T, T + 1) to (T + 1, T), drop the first row. Entry $(i, j)$, $j \le i$, then holds
# $\mathbf{q}_i \cdot w_{j - i}$; entries above the diagonal are junk the causal mask hides.
# Write `relative_logits_skewed(q, rel_k, max_distance)` with the same arguments and scaling.

# %% nbgrader={"grade": false, "grade_id": "stretch_skewing", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relative_logits_skewed(q: torch.Tensor, rel_k: torch.Tensor, max_distance: int) -> torch.Tensor:
    """Causal relative logits by skewing: (B, H, T, Dh) -> (B, H, T, T), valid for j <= i."""
    ### BEGIN SOLUTION
    B, H, T, Dh = q.shape
    distance = torch.arange(-(T - 1), 1, device=q.device)  # (T,): -(T-1) .. 0
    E = rel_k[distance.clamp(-max_distance, max_distance) + max_distance]  # (T, Dh)
    S = q @ E.T  # (B, H, T, T): column r is distance r - (T - 1)
    S = F.pad(S, (1, 0))  # (B, H, T, T + 1)
    S = S.reshape(B, H, T + 1, T)[:, :, 1:]  # (B, H, T, T): entry (i, j) is distance j - i
    return S / math.sqrt(Dh)
    ### END SOLUTION


# %%
try:
    _rel = pos.RelativePosition(d_head=8, max_distance=4)
    _q = torch.randn(2, 3, 9, 8)
    _lower = causal_mask(9)  # (T, T): j <= i
    _got = relative_logits_skewed(_q, _rel.rel_k.detach(), 4)
    check_close(_got[..., _lower], _rel.score_bias(_q, torch.arange(9), torch.arange(9)).detach()[..., _lower], "skewed relative logits, j <= i")
    passed("the skewing trick gives Shaw's relative logits on and below the diagonal")
except NotImplementedError:
    print("stretch not attempted (that is fine)")

# %% [markdown]
# `pos.RelativePosition(d_head, max_distance)` exposes both terms as hooks that
# `MultiHeadAttention(positional=...)` calls, given the positions of queries and keys:
# `score_bias(q, q_positions, k_positions)` is added to the scaled scores and
# `value_term(weights, q_positions, k_positions)` to `weights @ v`. So Shaw's attention is one argument away:

# %%
_ = torch.manual_seed(0)
shaw_attention = MultiHeadAttention(16, 4, positional=pos.RelativePosition(4, max_distance=2)).eval()
x = torch.randn(1, 6, 16)
record = Record(need_weights=True)
out = shaw_attention(x, mask=causal_mask(6), record=record)
w = record.weights[0]  # (B, H, T, T)
print("output", tuple(out.shape), " weights", tuple(w.shape))
print("learned relative tables a^K, a^V:", tuple(shaw_attention.positional.rel_k.shape),
      tuple(shaw_attention.positional.rel_v.shape))

# %% [markdown]
# ## 7. Beyond the classics: RoPE and ALiBi
#
# ### Rotary position embedding (RoPE)
#
# Su et al. (2021, RoFormer) encode position by **rotating** queries and keys. Feature pair
# $p$ of the query at position $m$ turns by the angle $m\theta_p$, with $\theta_p = 10000^{-2p/D_h}$
# (the sinusoidal frequencies again); the key at position $n$ by $n\theta_p$. Rotations compose,
# $R_m^\top R_n = R_{n-m}$, so
#
# $$(R_m \mathbf{q}) \cdot (R_n \mathbf{k}) = \mathbf{q} \cdot R_{n-m}\, \mathbf{k}:$$
#
# the score depends on the positions only through the offset $n - m$, with no parameter and
# no extra term. It is applied inside every attention layer, after the head split, and is
# the scheme of LLaMA, GPT-NeoX, Mistral and most current language models. Two pairings of
# the features exist: adjacent pairs $(2p, 2p+1)$ (the paper, GPT-J: `interleaved=True`) and
# halves $(p, p + D_h/2)$ (GPT-NeoX, Hugging Face LLaMA: the default). They are the same model
# up to a permutation of the features.

# %%
_ = torch.manual_seed(0)
rope = pos.RotaryEmbedding(d_head=8)
q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)


def rope_score(m: int, n: int) -> float:
    qm = rope.rotate(q.view(1, 8), torch.tensor([m]))  # (1, Dh): q rotated to position m
    kn = rope.rotate(k.view(1, 8), torch.tensor([n]))
    return (qm @ kn.T).item()


for m, n in [(2, 0), (7, 5), (102, 100)]:
    print(f"score(m={m:3d}, n={n:3d}) = {rope_score(m, n):+.4f}   (offset m - n = {m - n})")
print("rotation keeps norms:", torch.allclose(rope.rotate(q.view(1, 8), torch.tensor([50])).norm(), q.norm()))

# %% [markdown]
# ### ALiBi: attention with linear biases
#
# Press, Smith and Lewis (2022) add no vector at all: head $h$ subtracts from each score a
# penalty proportional to the distance, $-m_h\,|i - j|$, with fixed slopes $m_h$: a geometric
# sequence $2^{-8/H}, 2^{-16/H}, \dots, 2^{-8}$ (for 8 heads $\frac12, \frac14, \dots, \frac1{256}$;
# for another head count $H$, the paper takes the $k$ slopes of the largest power of two
# $k \le H$ and appends every other slope of the sequence for $2k$ heads, the two lists
# concatenated: for 6 heads $\frac14, \frac1{16}, \frac1{64}, \frac1{256}$, then $\frac12, \frac18$;
# `pos.alibi_slopes`). Steep heads look at
# the last few tokens, flat heads far back. With a causal mask this is the paper's language-model
# bias; without a mask the same formula is the symmetric variant used in encoders. ALiBi was
# designed to **extrapolate**: train short, run long.

# %%
print("slopes, 8 heads:", [f"1/{round(1 / m)}" for m in pos.alibi_slopes(8).tolist()])
print("slopes, 6 heads:", [round(m, 4) for m in pos.alibi_slopes(6).tolist()])
alibi = pos.ALiBi(num_heads=4)
bias = alibi.bias(8)  # (H, Tq, Tk); a causal mask would hide the upper triangle
_ = show_heatmaps(bias, xlabel="key j", ylabel="query i", cmap="viridis", figsize=(2.8, 2.8),
                  titles=[f"head {h}: m = 1/{round(1 / m)}" for h, m in enumerate(alibi.slopes.tolist())])


# %% [markdown]
# ## 8. Train short, test long
#
# Which schemes let a model run on sequences **longer** than those it was trained on? We
# train the same small causal model five times, once per scheme, on a generated task:
# **predict the previous token**. The input is a random sequence over 16 symbols; at every
# position $t \ge 1$ the target is the token at $t - 1$. It needs position (order) and nothing
# else: a model that cannot find "the token just before me" at position 300 fails there.
# Training uses sequences of length 32; testing uses lengths up to 512.
#
# The model: token embedding, the absolute encoding if any, two pre-norm blocks of
# causal multi-head attention and a small feed-forward layer (lesson 05 builds the
# feed-forward layer, lesson 06 the block), and a linear read-out. Each block is pre-norm,
# $\mathbf{x} + \mathrm{attention}(\mathrm{LN}(\mathbf{x}))$ then $\mathbf{x} + \mathrm{FFN}(\mathrm{LN}(\mathbf{x}))$
# (section 4), and the feed-forward layer uses the **GELU** non-linearity of BERT and GPT-2
# (Hendrycks and Gimpel 2016), $\mathrm{GELU}(x) = x\,\Phi(x) = \frac{x}{2}\big(1 + \mathrm{erf}(x/\sqrt2)\big)$
# with $\Phi$ the standard normal distribution function: a smooth ReLU that lets small
# negative values through, checked against PyTorch in the next cell. The relative schemes go into every attention layer
# through `positional=`. The learned table has room for the longest test length; rows
# beyond 32 are never trained.

# %%
_x = torch.linspace(-4, 4, 81)
check_close(_x / 2 * (1 + torch.erf(_x / math.sqrt(2))), F.gelu(_x), "GELU(x) = x Φ(x) vs F.gelu")
check_close(nn.GELU()(_x), F.gelu(_x), "nn.GELU vs F.gelu")
print(f"GELU(-1) = {F.gelu(torch.tensor(-1.0)):.4f}, GELU(1) = {F.gelu(torch.tensor(1.0)):.4f}, ReLU gives 0 and 1")


# %%
class Block(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, d_model: int, num_heads: int, positional: nn.Module | None) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = MultiHeadAttention(d_model, num_heads, positional=positional)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask=mask)  # (B, T, D)
        return x + self.ffn(self.norm2(x))  # (B, T, D)


SCHEMES = ["sinusoidal", "learned", "relative (Shaw)", "RoPE", "ALiBi"]


class TinyCausalLM(nn.Module):
    def __init__(self, scheme: str, vocab: int = 16, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2, max_len: int = 512, max_distance: int = 8) -> None:
        super().__init__()
        d_head = d_model // num_heads
        self.embed = nn.Embedding(vocab, d_model)
        self.absolute = {
            "sinusoidal": lambda: pos.SinusoidalEncoding(d_model, max_len=max_len),
            "learned": lambda: pos.LearnedPositionalEmbedding(d_model, max_len=max_len),
        }.get(scheme, nn.Identity)()

        def relative() -> nn.Module | None:  # one per layer (Shaw's tables are learned per layer)
            return {
                "relative (Shaw)": lambda: pos.RelativePosition(d_head, max_distance),
                "RoPE": lambda: pos.RotaryEmbedding(d_head),
                "ALiBi": lambda: pos.ALiBi(num_heads),
            }.get(scheme, lambda: None)()

        self.blocks = nn.ModuleList(Block(d_model, num_heads, relative()) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.absolute(self.embed(tokens))  # (B, T, D)
        mask = causal_mask(tokens.shape[1], device=tokens.device)  # (T, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.readout(self.norm(x))  # (B, T, vocab)


def previous_token_loss(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy and accuracy of predicting tokens[t - 1] at every position t >= 1."""
    logits = model(tokens)[:, 1:]  # (B, T - 1, vocab)
    target = tokens[:, :-1]  # (B, T - 1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return loss, (logits.argmax(-1) == target).float().mean().item()


def train_model(scheme: str, steps: int, train_len: int = 32, batch: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = TinyCausalLM(scheme).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, 16, (batch, train_len), generator=g).to(dev)  # (B, T)
        loss, _ = previous_token_loss(model, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def test_accuracy(model: nn.Module, length: int, sequences: int) -> float:
    g = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, 16, (sequences, length), generator=g).to(dev)
    return previous_token_loss(model, tokens)[1]


steps = pick(full=500, quick=20)
test_lengths = pick(full=[32, 64, 128, 256, 512], quick=[32, 64])
sequences = pick(full=16, quick=2)

# %% tags=["nbval-ignore-output"]
results, started = {}, time.perf_counter()
with one_thread():
    for scheme in tqdm(SCHEMES, desc="training one model per scheme"):  # under a minute in full mode
        model = train_model(scheme, steps)
        results[scheme] = [test_accuracy(model, n, sequences) for n in test_lengths]
table = pd.DataFrame(results, index=pd.Index(test_lengths, name="test length")).T
print(f"accuracy of predicting the previous token (trained on length 32, {steps} steps, "
      f"{time.perf_counter() - started:.0f} s in total)")
print(table.round(3).to_string())

# %% tags=["nbval-ignore-output"]
fig = plot_curves(results, xlabel="test sequence length", ylabel="accuracy", x=test_lengths,
                  title="Trained on length 32, tested longer")
ax = fig.axes[0]
for line in ax.lines:  # dashed lines on top, so curves that coincide stay visible
    if line.get_label() in ("learned", "ALiBi"):
        line.set_linestyle("--")
ax.set_xscale("log", base=2)
_ = ax.axvline(32, color="grey", linestyle=":")
_ = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot, not over the curves

# %% [markdown]
# What the stored run shows (your numbers may differ a little, the pattern should not):
#
# * **Sinusoidal** and **learned** absolute encodings solve the task on the training length
#   and fail beyond it. Their accuracy on length $n$ is about $32/n + (1 - 32/n)/16$: right on
#   the 32 positions seen in training, chance (1/16) on the other $n - 32$ (0.53, 0.30, 0.18
#   and 0.12 for $n$ = 64, 128, 256, 512, against the 0.55, 0.30, 0.19 and 0.13 measured).
#   Learned rows beyond 32 were never trained; the sinusoidal rows exist, but the model
#   never learned what to do with them.
# * **Shaw's relative positions** extrapolate perfectly: the model only ever sees clipped
#   distances in $[-8, 8]$, all of which occur in training at every length.
# * **RoPE** is relative in its scores, yet it degrades with length: rotations by angles
#   never seen in training (large offsets) give keys far away scores the model never learned
#   to suppress, and they steal attention from the previous token. Extending RoPE's context
#   is an active topic (position interpolation, NTK scaling, YaRN).
# * **ALiBi** extrapolates: far tokens are pushed down by a penalty that only grows with
#   distance, so longer inputs add keys that get (almost) no attention.
#
# ## Summary
#
# * Self-attention connects every pair of positions in one parallel step, at $\mathcal{O}(n^2 d)$
#   cost; convolutions and RNNs are linear in $n$ but need $n/k$ layers or $n$ sequential steps
#   to connect distant tokens.
# * It ignores order; absolute encodings (sinusoidal, learned) add position to the input,
#   and adding is a restricted form of concatenating.
# * The sinusoidal table shifts by a fixed rotation, so relative offsets are linear in it.
# * Stacked pure attention averages tokens, and positions, into one vector; residual
#   connections and per-layer positional schemes prevent it.
# * Relative schemes (Shaw et al., RoPE, ALiBi) act inside every attention layer, through
#   `lib.positional`'s hooks `score_bias`, `value_term` and `rotate`, and the ones whose
#   inputs stay in the training range extrapolate to longer sequences.
