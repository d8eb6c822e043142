# %% [markdown]
# # 10 · What attention costs, and how to pay less
#
# Self-attention compares every position with every other: for $T$ positions it builds a
# $T \times T$ matrix of scores in every head. This lesson **measures** what that costs in memory,
# accounts for a whole training step, and then removes the quadratic memory with the idea behind
# FlashAttention (Dao et al. 2022): compute the softmax **online**, one block of keys at a time.
#
# Shapes: **B** batch, **H** heads, **T** positions, **D** $= d_\text{model}$, **F** $= d_\text{ff}$,
# **Dh** $= D/H$ per head, **Bk** keys per block, **P** parameters.
#
# In this lesson you will
#
# 1. count the memory of attention, $B \cdot H \cdot T^2$ numbers for the scores and as many for the
#    weights, against the rest of a layer, predicted and measured, and find the $T$ where the quadratic
#    term takes over for the course's model sizes;
# 2. predict and measure the whole memory of a training step: parameters, gradients, optimizer state
#    (16 or 20 bytes per parameter for mixed-precision Adam) and saved activations;
# 3. derive the online softmax, write its update for one block (exercise 1), build tiled attention from
#    it, check it against PyTorch's `scaled_dot_product_attention` (SDPA), and measure its memory: linear in $T$;
# 4. write FlashAttention's backward pass (exercise 2): it saves no weights, only one number per query, and
#    recomputes each block of weights when the gradient needs it; measure what that saves in training;
# 5. look at what PyTorch does: SDPA's backends (math, flash, memory-efficient, cuDNN), which one runs
#    here, and `torch.compile` on the encoder.
#
# **Points in this lesson: 10** (exercise 1: 5, exercise 2: 5).
#
# *Run time:* about two minutes on a 2-core CPU in full mode (the stored run shared its machine with
# other jobs); `COURSE_QUICK=1` measures fewer sequence lengths and skips `torch.compile`.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from lib.attention import causal_mask, padding_mask, scaled_dot_product_attention
from lib.checks import call_explained, check_close, check_shape, passed, yours_or_reference
from lib.efficient import (
    online_softmax_finish,
    online_softmax_init,
    online_softmax_lse,
    online_softmax_update,
    tiled_attention,
    tiled_attention_backward,
)
from lib.memory import (
    adam_mixed_precision_bytes,
    attention_matrix_bytes,
    count_parameters,
    cuda_peak_bytes,
    encoder_layer_activation_bytes,
    encoder_layer_saved_tensors,
    encoder_saved_tensors,
    format_bytes,
    group_bytes,
    measure_peak_bytes,
    measure_saved_tensors,
    measure_training_step,
    training_step_bytes,
    transformer_saved_tensors,
)
from lib.runtime import device, pick, seed_everything, time_steps
from lib.transformer import Encoder, EncoderBlock, EncoderConfig

seed_everything(0)
dev = device()
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. The memory of attention
#
# For queries and keys $q, k \in \mathbb{R}^{B \times H \times T \times D_h}$ the explicit attention
# (`lib.attention.scaled_dot_product_attention`, lesson 02) computes
#
# $$S = \frac{q k^\top}{\sqrt{D_h}} \in \mathbb{R}^{B \times H \times T \times T}, \qquad
# A = \operatorname{softmax}(S), \qquad O = A\,v .$$
#
# $S$ and $A$ are $B \cdot H \cdot T^2$ numbers **each**. In training, autograd keeps $A$ for the
# backward pass (softmax's gradient needs its output, and $A\,v$'s gradient with respect to $v$ needs
# $A$); with a mask it also keeps the masked copy. Everything else an encoder layer keeps grows like
# $B \cdot T \cdot D$: lesson 05 counted eight $(B, T, D)$ tensors and one $(B, T, F)$, so with $F = 4D$
#
# $$\text{saved elements per layer} \approx 12\,B T D + B H T^2
# \quad\Longrightarrow\quad \text{attention dominates once } T > \frac{12 D}{H}.$$
#
# `lib.memory.encoder_layer_saved_tensors` lists every tensor exactly. First one layer, one small
# configuration, formula against the tensors that autograd actually saves:

# %%
B1, T1, D1, H1, F1 = 2, 64, 32, 4, 128
block = EncoderBlock(D1, H1, F1)
x1 = torch.randn(B1, T1, D1, requires_grad=True)
measured = measure_saved_tensors(lambda: block(x1), exclude=block.parameters())
predicted = encoder_layer_saved_tensors(B1, T1, D1, H1, F1)
for t in predicted:
    print(f"{t.name:<48} {str(t.shape):<16} {t.bytes:>8,} bytes")
print(f"{'formula':<48} {'':<16} {sum(t.bytes for t in predicted):>8,} bytes")
print(f"{'measured (saved_tensors_hooks)':<48} {'':<16} {sum(m[2] for m in measured):>8,} bytes "
      f"in {len(measured)} tensors")

# %% [markdown]
# Now the same count against $T$, for three model sizes: a block of lesson 06's deep stacks
# ($D = 32$, $H = 4$, $F = 64$; lesson 06 ran them on the fast path, which section 4 shows keeps no
# $T \times T$ weights, so here they stand for the same sizes on the explicit path), a small encoder
# ($D = 128$, $H = 4$, $F = 512$) and the paper's base model ($D = 512$, $H = 8$, $F = 2048$). (Lesson 06's
# Keras block does not fit this formula: its heads are 16 wide on $D = 16$, so $H \cdot D_h = 2D$.) The table splits the formula into the part
# linear in $T$ and the attention part, and measures the saved bytes for the smallest model
# (for the larger ones the measurement is the same code, only slower).

# %%
models = {"lesson 06 deep stack": (32, 4, 64), "small encoder": (128, 4, 512), "paper base": (512, 8, 2048)}
B = 4
lengths = pick(full=[32, 64, 128, 256, 512, 1024], quick=[32, 64, 128, 256, 512, 1024])


def split(D, H, F_, T, **kw):
    """(bytes linear in T, bytes of attention matrices) of one layer's saved tensors."""
    g = encoder_layer_activation_bytes(B, T, D, H, F_, **kw)
    return g["total"] - g["attention"], g["attention"]


print(f"{'T':>5} " + " ".join(f"{name + ': rest / attention':>34}" for name in models) + f" {'deep stack measured':>20}")
smallest = EncoderBlock(*models["lesson 06 deep stack"])
for T in lengths:
    cells = []
    for D, H, F_ in models.values():
        rest, att = split(D, H, F_, T)
        cells.append(f"{format_bytes(rest):>12} / {format_bytes(att):>10} {'*' if att > rest else ' ':>1}")
    xi = torch.randn(B, T, 32, requires_grad=True)
    got = sum(m[2] for m in measure_saved_tensors(lambda: smallest(xi), exclude=smallest.parameters()))
    ok = "= formula" if got == sum(split(*models["lesson 06 deep stack"], T)) else "≠ formula"
    print(f"{T:>5} " + " ".join(f"{c:>34}" for c in cells) + f" {format_bytes(got):>10} {ok}")
print("* the attention matrices take more than everything else the layer saves")
for name, (D, H, F_) in models.items():
    cross = next(T for T in range(1, 10**5) if split(D, H, F_, T)[1] > split(D, H, F_, T)[0])
    print(f"{name:<19}: attention overtakes the rest from T = {cross} (12 D / H = {12 * D / H:.0f})")

# %% [markdown]
# For the deep-stack block the crossover is at 82 positions (its $F$ is only $2D$, so its rest is
# smaller than $12BTD$ and the crossover comes before $12D/H = 96$): on the explicit path, at the 64
# tokens lesson 06 trained its stacks on the attention weights are still a little smaller than the
# rest, and at the 256 tokens of a whole review they would take three quarters of the memory. The small encoder crosses at 386, the
# paper's base model at 769, BERT's size ($D = 768$, $H = 12$) at about the same $12 D / H = 768$.
#
# The *peak* of the forward pass is more than what is saved: the scores $S$ live until the softmax
# has made $A$, so for a moment both matrices exist. `lib.memory.measure_peak_bytes` counts every tensor
# PyTorch allocates while a function runs (above its inputs) until it is freed; here it is
# plotted against the formula for the saved tensors and for "saved + scores":

# %% tags=["nbval-ignore-output"]
D, H, F_ = models["small encoder"]
small = EncoderBlock(D, H, F_)
peak_lengths = pick(full=[64, 128, 256, 512, 1024, 2048], quick=[64, 128, 256, 512])
rows = []
for T in peak_lengths:
    xs = torch.randn(B, T, D, requires_grad=True)
    saved = sum(split(D, H, F_, T))
    peak = measure_peak_bytes(lambda: small(xs))
    rows.append((T, saved, saved + attention_matrix_bytes(B, H, T), peak))
    print(f"T={T:>5}: saved (formula) {format_bytes(saved):>11}   + scores {format_bytes(rows[-1][2]):>11}   "
          f"measured forward peak {format_bytes(peak):>11}   peak / (saved + scores) {peak / rows[-1][2]:.2f}")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
_ = ax.plot([r[0] for r in rows], [r[1] / 2**20 for r in rows], "o-", label="saved tensors (formula)")
_ = ax.plot([r[0] for r in rows], [r[2] / 2**20 for r in rows], "s--", label="saved + scores (formula)")
_ = ax.plot([r[0] for r in rows], [r[3] / 2**20 for r in rows], "x:", label="forward peak (measured)")
_ = ax.plot([r[0] for r in rows], [2 * attention_matrix_bytes(B, H, r[0]) / 2**20 for r in rows], color="gray",
            lw=0.8, label="2 B·H·T² floats alone")
_ = ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="MiB",
           title=f"one encoder layer, B={B}, D={D}, H={H}, fp32")
_ = ax.legend(fontsize=8)

# %% [markdown]
# The measured peak lies between the two formulas: above what is saved (the scores and short-lived
# copies come on top), below "saved + scores" (the scores are freed before the FFN's tensors exist).
# From a few hundred positions on all three run parallel to the grey line of the two $B H T^2$
# matrices alone: doubling $T$ quadruples the memory.
#
# ## 2. A whole training step
#
# Training holds four things at its peak:
#
# | part | bytes (fp32 Adam) | mixed-precision Adam |
# | --- | --- | --- |
# | parameters | $4P$ | $2P$ (fp16) + $4P$ (fp32 master copy) |
# | gradients | $4P$ | $2P$ (fp16) + $4P$ (fp32, optional) |
# | optimizer state | $8P$ (Adam's $m$ and $v$) | $8P$ |
# | activations | the saved tensors of every layer | the same in fp16 |
#
# That is 16 bytes per parameter in fp32 and 20 in mixed precision (16 in ZeRO's count, which
# drops the fp32 gradients; Rajbhandari et al. 2020). `lib.memory.training_step_bytes` adds the four
# parts; `lib.memory.encoder_saved_tensors` counts a whole `Encoder`'s activations (every layer, the
# token ids, the final LayerNorm in pre-norm). `measure_training_step` runs one real step
# (`zero_grad`, forward, backward, `optimizer.step()`) and measures its peak.

# %%
for name, P in [("the small encoder below", None), ("BERT base", 110_000_000), ("GPT-2 XL", 1_500_000_000)]:
    if P is None:
        P = count_parameters(Encoder(EncoderConfig(vocab_size=1000, d_model=128, num_heads=4, d_ff=512,
                                                   num_layers=2, dropout=0.0, max_len=1024)))
    mp = adam_mixed_precision_bytes(P)
    zero = adam_mixed_precision_bytes(P, fp32_gradients=False)
    print(f"{name:<24} P = {P:>13,}: fp32 Adam {format_bytes(16 * P):>10}, mixed precision "
          f"{format_bytes(mp.total):>10} ({mp.per_parameter:.0f} B/param), ZeRO's count "
          f"{format_bytes(zero.total):>10} ({zero.per_parameter:.0f} B/param)")

# %% [markdown]
# Predicted against measured for a small encoder (2 layers, $D = 128$, $H = 4$, $F = 512$, vocabulary
# 1,000, batch 8), trained with fp32 Adam; the loss is `out.sum()` so that no loss head adds tensors
# of its own. The optimizer's state exists from the second step on, so one step runs first:

# %% tags=["nbval-ignore-output"]
cfg = EncoderConfig(vocab_size=1000, d_model=128, num_heads=4, d_ff=512, num_layers=2, dropout=0.0, max_len=1024)
step_lengths = pick(full=[32, 128, 256, 512, 1024], quick=[32, 128, 256])
Bt = 8
table = []
for T in step_lengths:
    seed_everything(0)
    enc = Encoder(cfg).train()
    tokens = torch.randint(0, cfg.vocab_size, (Bt, T))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    enc(tokens).sum().backward()
    opt.step()
    pred = training_step_bytes(enc, group_bytes(encoder_saved_tensors(cfg, Bt, T))["total"])
    meas = measure_training_step(enc, opt, lambda: enc(tokens).sum())
    table.append((T, pred, meas))
print(f"{'T':>5} {'params':>9} {'grads':>9} {'Adam':>9} {'activations':>12} {'sum of 4':>11} "
      f"{'+ 2 BHT²':>11} {'measured peak':>14} {'/ sum':>6} {'/ (+ 2 BHT²)':>12} {'attention share':>16}")
for T, pred, meas in table:
    att = group_bytes(encoder_saved_tensors(cfg, Bt, T))["attention"]
    plus = pred.total + 2 * attention_matrix_bytes(Bt, cfg.num_heads, T)  # backward's two temporaries
    print(f"{T:>5} {format_bytes(pred.parameters):>9} {format_bytes(pred.gradients):>9} "
          f"{format_bytes(pred.optimizer_state):>9} {format_bytes(pred.activations):>12} {format_bytes(pred.total):>11} "
          f"{format_bytes(plus):>11} {format_bytes(meas['peak']):>14} {meas['peak'] / pred.total:>6.2f} "
          f"{meas['peak'] / plus:>12.2f} {att / pred.activations:>15.0%}")

# %% [markdown]
# Parameters, gradients and Adam's state do not depend on $T$; the activations do, and from a few
# hundred positions on the attention weights are most of them. The four-part sum, the usual
# accounting, is close at short sequences (the measured peak is a little *below* it at $T = 32$:
# the last layer's activations are freed before the first layer's gradients exist) but falls
# behind as $T$ grows, to 1.6 times at $T = 1024$. What it leaves out is quadratic too: in the backward
# pass of the softmax, the gradient of the weights and the gradient of the scores, $B H T^2$ numbers
# each, exist together while most activations are still alive. Adding those two matrices
# ("+ 2 BHT²") predicts the measured peak within about 15% at every length. The tests
# (`tests/test_memory.py`) check that the peak is never below parameters + state + activations.
#
# The same formulas cover the decoder and the encoder-decoder Transformer
# (`decoder_saved_tensors`, `transformer_saved_tensors`): the decoder's causal self-attention keeps
# two $(B, H, T, T)$ matrices (softmax output and masked copy), its cross-attention a
# $(B, H, T_\text{tgt}, T_\text{src})$ one, and the encoder's output (the *memory*) is saved once for all
# decoder layers. For the paper's base Transformer, batch 8:

# %%
base = EncoderConfig(vocab_size=37000, d_model=512, num_heads=8, d_ff=2048, num_layers=6, dropout=0.0)
for Ts, Tt in [(128, 128), (512, 512), (2048, 2048)]:
    g = group_bytes(transformer_saved_tensors(base, 8, Ts, Tt))
    print(f"source {Ts:>4}, target {Tt:>4}: activations {format_bytes(g['total']):>10}, of which attention "
          f"matrices {format_bytes(g['attention']):>10} ({g['attention'] / g['total']:.0%})")

# %% [markdown]
# On a GPU, the allocator's own counter (`torch.cuda.max_memory_allocated`) measures the same step.
# This cell measures only where CUDA is present:

# %% tags=["nbval-ignore-output"]
if torch.cuda.is_available():
    seed_everything(0)
    genc = Encoder(cfg).to(dev).train()
    gtok = torch.randint(0, cfg.vocab_size, (Bt, 512), device=dev)
    gopt = torch.optim.Adam(genc.parameters())
    for _ in range(2):
        gopt.zero_grad(set_to_none=True)
        genc(gtok).sum().backward()
        gopt.step()
    gopt.zero_grad(set_to_none=True)

    def gstep():
        gopt.zero_grad(set_to_none=True)
        genc(gtok).sum().backward()
        gopt.step()

    held = torch.cuda.memory_allocated(dev)
    gpeak = held + cuda_peak_bytes(gstep, dev)
    gpred = training_step_bytes(genc, group_bytes(encoder_saved_tensors(cfg, Bt, 512))["total"])
    print(f"{torch.cuda.get_device_name(dev)}: peak {format_bytes(gpeak)}, predicted {format_bytes(gpred.total)}, "
          f"ratio {gpeak / gpred.total:.2f}")
else:
    print(f"no CUDA here ({dev.type}): torch.cuda.max_memory_allocated is not measured")

# %% [markdown]
# ## 3. The online softmax
#
# The softmax of one row of scores $s_1, \dots, s_{T}$ is computed stably by subtracting the
# maximum $m = \max_j s_j$:
#
# $$o = \frac{\sum_j e^{s_j - m}\, v_j}{\sum_j e^{s_j - m}} .$$
#
# Suppose we have seen a first block of keys and kept only three things per query: the maximum $m$
# so far, the sum $\ell = \sum_j e^{s_j - m}$ and the unnormalised output
# $a = \sum_j e^{s_j - m} v_j$. A new block with scores $s'_1, \dots, s'_{B_k}$ and values
# $v'_1, \dots, v'_{B_k}$ arrives. Its maximum may be larger, $m' = \max(m, \max_j s'_j)$, and everything
# kept so far was scaled by $e^{-m}$ instead of $e^{-m'}$. Multiplying by $e^{m - m'}$ fixes that:
#
# $$m' = \max\!\big(m, \max_j s'_j\big), \qquad
# \ell' = e^{m - m'}\,\ell + \sum_j e^{s'_j - m'}, \qquad
# a' = e^{m - m'}\,a + \sum_j e^{s'_j - m'}\, v'_j .$$
#
# After the last block, $o = a / \ell$: exactly the softmax, without ever holding a whole row.
# Starting from $m = -\infty$, $\ell = 0$, $a = 0$ every block is handled alike. The running maximum and
# sum are the *online normaliser* of Milakov & Gimelshein (2018), who computed the softmax's denominator
# in one pass instead of two; carrying the unnormalised output $a$ along with them, so that attention
# itself needs one pass over the keys and never a whole row of weights, is the step of Rabe & Staats
# (2021) and of FlashAttention (Dao et al. 2022).
#
# Masks need care. A masked key gets score $-\infty$, so $e^{s - m'} = 0$. But if a **whole block**
# is masked and nothing has been seen yet, $m' = -\infty$ and $e^{m - m'} = e^{-\infty + \infty}$ is
# NaN. The fix: where $m' = -\infty$, subtract 0 instead; then $e^{-\infty} = 0$ everywhere and the state
# stays $(-\infty, 0, 0)$. A row with no key at all to attend ends with $\ell = 0$ and gets a zero output,
# as `lib.attention` gives.
#
# Two blocks by hand first: a row of 6 scores split in halves, merged, against `torch.softmax`:

# %%
g = torch.Generator().manual_seed(0)
s = torch.randn(6, generator=g) * 3
s[3:] += 4  # the second block holds the larger scores: the maximum grows
vals = torch.randn(6, 2, generator=g)
m1 = s[:3].max()
l1 = torch.exp(s[:3] - m1).sum()
a1 = torch.exp(s[:3] - m1) @ vals[:3]
m2 = torch.maximum(m1, s[3:].max())
l2 = torch.exp(m1 - m2) * l1 + torch.exp(s[3:] - m2).sum()
a2 = torch.exp(m1 - m2) * a1 + torch.exp(s[3:] - m2) @ vals[3:]
print("two blocks, merged:", a2 / l2)
print("softmax(s) @ v:    ", torch.softmax(s, dim=0) @ vals)
print("without rescaling: ", (a1 + torch.exp(s[3:] - m2) @ vals[3:]) / (l1 + torch.exp(s[3:] - m2).sum()))

# %% [markdown]
# ### Exercise 1: the online-softmax update for one block (5 points)
#
# Write `my_online_softmax_update(m, l, acc, scores, v, mask=None)` returning the new `(m, l, acc)`:
#
# * `m`, `l`: `(..., Tq, 1)` running maximum and running sum; `acc`: `(..., Tq, Dv)` unnormalised output;
# * `scores`: `(..., Tq, Bk)` this block's (scaled) scores; `v`: `(..., Bk, Dv)` its values;
# * `mask`: `None` or boolean broadcastable to `scores`, True = may attend.
#
# Masked keys must contribute nothing, and a block where a row's keys are all masked must leave that
# row unchanged, **without NaN** (also when nothing has been seen yet, `m = -inf`).
# Use tensor operations (`torch.exp`, `torch.maximum`, `amax`, `masked_fill`, `@`), not `lib.efficient`.

# %% nbgrader={"grade": false, "grade_id": "ex1_online_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_online_softmax_update(m, l, acc, scores, v, mask=None):
    ### BEGIN SOLUTION
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)  # masked keys: exp(-inf) = 0
    m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))  # (..., Tq, 1)
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no -inf - (-inf)
    p = torch.exp(scores - m_safe)  # (..., Tq, Bk)
    alpha = torch.exp(m - m_safe)  # (..., Tq, 1): rescale what came before
    return m_new, l * alpha + p.sum(dim=-1, keepdim=True), acc * alpha + p @ v
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_online_softmax_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _fold_state(update, s, v, mask, block):
    """Run an update over the key blocks of s (..., Tq, Tk); return the final state (m, l, acc)."""
    m = torch.full((*s.shape[:-1], 1), -math.inf, dtype=s.dtype)
    l = torch.zeros_like(m)
    acc = torch.zeros(*s.shape[:-1], v.shape[-1], dtype=s.dtype)
    for j in range(0, s.shape[-1], block):
        blk = None if mask is None else mask[..., j : j + block]
        m, l, acc = update(m, l, acc, s[..., j : j + block], v[..., j : j + block, :], blk)
    return m, l, acc


def _output(state):
    """acc / l, zeros where l = 0 (a row with nothing to attend); NaN stays NaN."""
    _, l, acc = state
    return torch.where(l == 0, torch.zeros_like(acc), acc / l)


def _fold(update, s, v, mask, block):
    """Run an update over the key blocks of s; return acc / l (zeros where l = 0, NaN kept) and l."""
    state = _fold_state(update, s, v, mask, block)
    return _output(state), state[1]


def _mistake(rescale_l=True, rescale_acc=True, sign=1.0, running_max=True, use_mask=True):
    """The update with one predictable mistake (the keywords), for naming what a wrong answer did."""
    def update(m, l, acc, s, v, mask=None):
        if mask is not None and use_mask:
            s = s.masked_fill(~mask, -math.inf)
        block_max = s.amax(-1, keepdim=True)
        m_new = torch.maximum(m, block_max) if running_max else block_max
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(s - m_safe)
        alpha = torch.exp(sign * (m - m_safe))
        return (m_new, (l * alpha if rescale_l else l) + p.sum(-1, keepdim=True),
                (acc * alpha if rescale_acc else acc) + p @ v)
    return update


_MISTAKES = {
    "your update does not rescale l and acc by exp(m_old - m_new) when the maximum grows": _mistake(False, False),
    "your update rescales l but not acc: both hold sums taken against the old maximum, so multiply both by "
    "exp(m_old - m_new)": _mistake(rescale_acc=False),
    "your update rescales acc but not l: multiply both by exp(m_old - m_new)": _mistake(rescale_l=False),
    "your update rescales by exp(m_new - m_old): the factor is exp(m_old - m_new), at most 1": _mistake(sign=-1.0),
    "your update ignores the mask: masked keys must contribute nothing (fill their scores with -inf first)":
        _mistake(use_mask=False),
}


def _name_mistake(got, s, v, mask, block, expected):
    if torch.allclose(got, expected, atol=1e-5):
        return
    for what, update in _MISTAKES.items():
        wrong = _output(_fold_state(update, s, v, mask, block))
        if not torch.allclose(wrong, expected, atol=1e-5) and torch.allclose(got, wrong, atol=1e-5, equal_nan=True):
            raise AssertionError(what)


_hint = ("m, l are (..., Tq, 1), acc (..., Tq, Dv), scores (..., Tq, Bk), v (..., Bk, Dv): take the block's "
         "maximum with amax(dim=-1, keepdim=True) and combine exp(scores - m') @ v")
g = torch.Generator().manual_seed(1)
s = torch.randn(2, 5, 12, generator=g) * 4
vv = torch.randn(2, 12, 3, generator=g)
expected = torch.softmax(s, dim=-1) @ vv
got = _output(call_explained(_fold_state, my_online_softmax_update, s, vv, None, 4,
                             name="folding three blocks of 4 keys", hint=_hint))
check_shape(got, (2, 5, 3), "output after three blocks of 4 keys")
_name_mistake(got, s, vv, None, 4, expected)
check_close(got, expected, "three blocks folded vs softmax(s) @ v")
mask = torch.ones(2, 5, 12, dtype=torch.bool)
mask[..., :4] = False  # the FIRST block entirely masked: m is still -inf after it
mask[1, 2] = False  # and one row with nothing to attend at all
_m, _l, _acc = _fold_state(my_online_softmax_update, s, vv, mask, 4)
if _l.isnan().any() or _acc.isnan().any():
    raise AssertionError("NaN after a fully masked block: exp(-inf - (-inf)) is NaN; subtract 0 where the max is -inf")
got = _output((_m, _l, _acc))
ref = torch.softmax(s.masked_fill(~mask, -math.inf), dim=-1).nan_to_num(0.0) @ vv
_name_mistake(got, s, vv, mask, 4, ref)
check_close(got, ref, "with a fully masked first block and a fully masked row")
check_close(_l[1, 2], torch.zeros(1), "l of a row with nothing to attend")
_big = torch.cat([torch.full((1, 1, 4), 200.0), torch.zeros(1, 1, 8)], dim=-1)  # the largest score comes first
_m, _l, _acc = _fold_state(my_online_softmax_update, _big, vv[:1], None, 4)
if not (torch.isfinite(_l).all() and torch.isfinite(_acc).all()):
    raise AssertionError("l or acc overflowed after a block whose scores are far below an earlier one: m must be "
                         "the running maximum, max(m, this block's maximum), so that exp(m_old - m_new) <= 1")
check_close(_output((_m, _l, _acc)), torch.softmax(_big, -1) @ vv[:1], "a large score in the first block")
passed("my_online_softmax_update folds blocks into softmax(s) @ v, masks included")

# %% nbgrader={"grade": true, "grade_id": "ex1_online_softmax_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(21)
cases = []
for shape, Tk, Dv, block in [((3,), 1, 2, 1), ((2, 3), 17, 4, 5), ((1, 2, 4), 33, 8, 8), ((2, 6), 10, 1, 3),
                             ((4,), 64, 16, 64)]:
    s_ = torch.randn(*shape, 7, Tk, generator=g, dtype=torch.float64) * 6
    v_ = torch.randn(*shape, Tk, Dv, generator=g, dtype=torch.float64)
    mask_ = torch.rand(*shape, 7, Tk, generator=g) > 0.5
    mask_[..., : min(block, Tk)] = False  # first block fully masked
    mask_[..., 3, :] = False  # a fully masked row
    cases.append((s_, v_, mask_, block))
# one block with a (Bk,)-broadcast mask, from a state that is already past some keys
st = online_softmax_update(online_softmax_init(cases[1][0], cases[1][1]), cases[1][0][..., :5], cases[1][1][..., :5, :])
key_mask = torch.tensor([True, False, True, True, False])
ref_state = online_softmax_update(st, cases[1][0][..., 5:10], cases[1][1][..., 5:10, :], key_mask)
with forbid("lib.efficient.online_softmax_update", "lib.efficient.tiled_attention"):
    results = [(_fold(my_online_softmax_update, s_, v_, None, b)[0], _fold(my_online_softmax_update, s_, v_, m_, b)[0])
               for s_, v_, m_, b in cases]
    mine = my_online_softmax_update(*st, cases[1][0][..., 5:10], cases[1][1][..., 5:10, :], key_mask)
for (s_, v_, m_, b), (plain, masked) in zip(cases, results):
    check_close(plain, torch.softmax(s_, -1) @ v_, f"scores {tuple(s_.shape)}, blocks of {b}", atol=1e-9, rtol=1e-9)
    ref = torch.softmax(s_.masked_fill(~m_, -math.inf), -1).nan_to_num(0.0) @ v_
    assert not masked.isnan().any(), f"NaN with scores {tuple(s_.shape)} and masks"
    check_close(masked, ref, f"masked scores {tuple(s_.shape)}, blocks of {b}", atol=1e-9, rtol=1e-9)
for name, a, b in zip(("m", "l", "acc"), mine, ref_state):
    check_close(a, b, f"one update's {name} vs lib.efficient.online_softmax_update", atol=1e-9, rtol=1e-9)
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ### Tiled attention, step by step
#
# With the update, attention over blocks of keys is a loop: start from $(-\infty, 0, 0)$, fold in
# each block's scores $q k_\text{block}^\top / \sqrt{D_h}$ and values, divide at the end. Here with your
# update (or lib's, if the exercise is not done yet), against SDPA for several block sizes:

# %%
def _lib_update(m, l, acc, scores, v, mask=None):
    return online_softmax_update((m, l, acc), scores, v, mask)


def _update_agrees(f) -> None:
    """Exercise 1's check in short: three blocks, the first one fully masked, against softmax."""
    gen = torch.Generator().manual_seed(3)
    sc, vals = torch.randn(2, 4, 9, generator=gen) * 4, torch.randn(2, 9, 2, generator=gen)
    keep = torch.ones(2, 4, 9, dtype=torch.bool)
    keep[..., :3] = False
    m_, l_, acc_ = online_softmax_init(sc, vals)
    for j in range(0, 9, 3):
        m_, l_, acc_ = f(m_, l_, acc_, sc[..., j : j + 3], vals[..., j : j + 3, :], keep[..., j : j + 3])
    check_close(acc_ / l_, torch.softmax(sc.masked_fill(~keep, -math.inf), -1) @ vals, "three blocks folded")


# your update if it passes exercise 1's check, else lib's (with a notice), so the rest of the lesson runs
update = yours_or_reference(my_online_softmax_update, _lib_update, "my_online_softmax_update", exercise="exercise 1",
                            probe=lambda f: f(*online_softmax_init(torch.zeros(1, 1), torch.zeros(1, 1)),
                                              torch.zeros(1, 1), torch.zeros(1, 1)),
                            check=_update_agrees)


def my_tiled_attention(q, k, v, block_size):
    scale = 1 / math.sqrt(q.shape[-1])
    state = online_softmax_init(q, v)  # m (B, H, Tq, 1), l (B, H, Tq, 1), acc (B, H, Tq, Dv)
    for j in range(0, k.shape[-2], block_size):
        scores = q @ k[..., j : j + block_size, :].transpose(-2, -1) * scale  # (B, H, Tq, Bk)
        state = update(*state, scores, v[..., j : j + block_size, :])
    return online_softmax_finish(state)  # (B, H, Tq, Dv)


q, k, v = (torch.randn(2, 4, 100, 16) for _ in range(3))
reference = F.scaled_dot_product_attention(q, k, v)
for bs in (1, 7, 32, 100, 128):
    diff = (my_tiled_attention(q, k, v, bs) - reference).abs().max().item()
    print(f"block size {bs:>3}: max |tiled - SDPA| < 1e-5: {diff < 1e-5}")

# %% [markdown]
# `lib.efficient.tiled_attention` is the same loop, with masks, additive biases, causal attention (it
# skips blocks entirely in the future) and blocks of queries too. It agrees with SDPA and with
# lib's explicit path:

# %%
q, k, v = torch.randn(2, 4, 37, 16), torch.randn(2, 4, 53, 16), torch.randn(2, 4, 53, 8)
pad = padding_mask(torch.tensor([53, 0]), 53)  # the second sequence has nothing to attend
checks = {
    "plain vs SDPA": (tiled_attention(q, k, v, block_size=16), F.scaled_dot_product_attention(q, k, v)),
    "padding mask (one empty sequence) vs explicit": (tiled_attention(q, k, v, mask=pad, block_size=8),
                                                      scaled_dot_product_attention(q, k, v, mask=pad)[0]),
    "causal, 9 x 5 blocks vs explicit": (tiled_attention(q, k, v, causal=True, block_size=9, query_block_size=5),
                                         scaled_dot_product_attention(q, k, v, mask=causal_mask(37, 53))[0]),
}
for name, (a, b) in checks.items():
    print(f"{name:<48} max difference < 1e-5: {(a - b).abs().max().item() < 1e-5}, NaN: {a.isnan().any().item()}")

# %% [markdown]
# ### Its memory: linear in $T$
#
# The explicit path holds the scores and the weights, two $(B, H, T, T)$ tensors. The tiled path holds
# one $(B, H, B_q, B_k)$ block of scores and the running state: its extra memory grows like the output,
# linearly. Measured with `measure_peak_bytes` (inference, `torch.no_grad()`; with autograd the tiled
# loop would save every block for the backward pass, which FlashAttention avoids by recomputing them):

# %% tags=["nbval-ignore-output"]
Bm, Hm, Dm, blk = 1, 4, 32, 64
mem_lengths = pick(full=[256, 512, 1024, 2048, 4096], quick=[256, 512, 1024])
curve = []
with torch.no_grad():
    for T in mem_lengths:
        q, k, v = (torch.randn(Bm, Hm, T, Dm) for _ in range(3))
        explicit_peak = measure_peak_bytes(lambda: scaled_dot_product_attention(q, k, v))
        tiled_peak = measure_peak_bytes(lambda: tiled_attention(q, k, v, block_size=blk, query_block_size=blk))
        curve.append((T, explicit_peak, tiled_peak))
print(f"{'T':>5} {'explicit':>11} {'tiled':>11} {'explicit / tiled':>17} {'growth explicit':>16} {'growth tiled':>13}")
for i, (T, e, t) in enumerate(curve):
    growth = "" if i == 0 else f"{e / curve[i - 1][1]:>15.2f}x {t / curve[i - 1][2]:>12.2f}x"
    print(f"{T:>5} {format_bytes(e):>11} {format_bytes(t):>11} {e / t:>16.1f}x {growth}")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
_ = ax.plot([c[0] for c in curve], [c[1] / 2**20 for c in curve], "o-", label="explicit (scores + weights)")
_ = ax.plot([c[0] for c in curve], [c[2] / 2**20 for c in curve], "s-", label=f"tiled, {blk}x{blk} blocks")
_ = ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="extra MiB (measured)",
           title=f"attention forward, B={Bm}, H={Hm}, Dh={Dm}")
_ = ax.legend()

# %% [markdown]
# Each doubling of $T$ multiplies the explicit path's memory by about 4 and the tiled path's by at most 2.
# In pure Python the tiled loop is slow (one small matrix product per block); FlashAttention is the same
# algorithm in one fused GPU kernel, where the blocks live in the fast on-chip memory.
#
# **What FlashAttention is about: IO, not FLOPs.** A GPU has a large, slow memory (HBM, tens of GB) and
# a small, fast one on each processor (SRAM, a few hundred KB). Explicit attention writes $S$ to HBM,
# reads it for the softmax, writes $A$, reads it again for $A v$: $\Theta(T^2)$ slow-memory traffic per
# head, and attention's few FLOPs per byte make that traffic, not the arithmetic, the bottleneck. The
# tiled loop keeps each block of scores in SRAM and writes only the output: Dao et al. (2022) show it
# needs $\Theta(T^2 D_h^2 / M)$ HBM accesses for SRAM of size $M$, several times fewer, and that is
# where the wall-clock speed-up comes from. The **backward pass** is the other half: FlashAttention
# does not save $A$ at all; it keeps only the output and the per-row statistics $(m, \ell)$ and
# **recomputes** each block of scores and weights from $q$ and $k$ when the gradient needs it: more
# FLOPs, far less memory and traffic. The linear memory measured above is the by-product of the same
# design.
#
# ### The backward pass by recomputation
#
# What must the forward pass keep so that the backward pass can do without the weights $A$? For query
# $i$ the weights are $A_{ij} = e^{s_{ij} - m_i} / \ell_i = e^{s_{ij} - L_i}$ with $L_i = m_i + \log \ell_i$,
# the **log-sum-exp** of the row. One number per query (`lib.efficient.online_softmax_lse`) is enough to
# recompute any block of weights exactly from $q$ and that block's keys. The tiled forward pass has $m$ and
# $\ell$ at its end anyway; `flash_forward` returns $L$ with the output:

# %%
def flash_forward(q, k, v, block_size):
    """Tiled attention (with `update`, yours or lib's) returning the output and each query's log-sum-exp."""
    scale = 1 / math.sqrt(q.shape[-1])
    state = online_softmax_init(q, v)
    for j in range(0, k.shape[-2], block_size):
        scores = q @ k[..., j : j + block_size, :].transpose(-2, -1) * scale  # (B, H, Tq, Bk)
        state = update(*state, scores, v[..., j : j + block_size, :])
    return online_softmax_finish(state), online_softmax_lse(state)  # (B, H, Tq, Dv), (B, H, Tq)


def explicit_grads(q, k, v, dout):
    """The reference: autograd through the explicit attention (it saves the (Tq, Tk) weights)."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    return torch.autograd.grad(scaled_dot_product_attention(q, k, v)[0], (q, k, v), dout)


# %%
q, k, v = (torch.randn(2, 4, n, 16) for n in (50, 70, 70))
out, lse = flash_forward(q, k, v, 16)
print("lse = logsumexp of each row of scores:",
      torch.allclose(lse, torch.logsumexp(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1), atol=1e-5))
print("out = SDPA:", torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5))

# %% [markdown]
# Backpropagation through $S = c\, q k^\top$ (with $c = 1/\sqrt{D_h}$), the softmax and $O = A v$ gives, for
# the gradient $dO$ of the loss with respect to the output,
#
# $$dv = A^\top dO, \qquad dA = dO\, v^\top, \qquad
# dS_{ij} = A_{ij}\,\big(dA_{ij} - D_i\big) \text{ with } D_i = \textstyle\sum_j A_{ij}\, dA_{ij}, \qquad
# dq = c\, dS\, k, \qquad dk = c\, dS^\top q .$$
#
# The softmax's term $D_i$ sums over **all** keys of row $i$, which a loop over key blocks does not have at
# any one time. But $\sum_j A_{ij}\, dA_{ij} = \sum_j A_{ij}\, (dO_i \cdot v_j) = dO_i \cdot O_i$: so
# $D = \operatorname{rowsum}(dO \circ O)$, known before the loop from $(T_q, D_v)$ numbers. Then each block
# of keys is on its own: recompute its weights from $L$, and they give its rows of $dv$ and $dk$ and its
# share of $dq$. Nothing of size $T_q \times T_k$ is ever held, and nothing but $O$ and $L$ was saved.
#
# ### Exercise 2: FlashAttention's backward pass (5 points)
#
# Write `my_attention_backward(q, k, v, out, lse, dout, block_size)` returning `(dq, dk, dv)`, the gradients
# of attention (no mask, scale $c = 1/\sqrt{D_k}$) with respect to `q`, `k` and `v`:
#
# * `q` (B, H, Tq, Dk), `k` (B, H, Tk, Dk), `v` (B, H, Tk, Dv); `out` (B, H, Tq, Dv) and `lse` (B, H, Tq)
#   from the forward pass; `dout` (B, H, Tq, Dv), the gradient with respect to `out`;
# * compute $D$ = rowsum(`dout` ∘ `out`) once, before the loop;
# * loop over blocks of `block_size` keys (the last block may be shorter); in each, recompute the block's
#   weights `p = exp(q k_blockᵀ · c - lse)`, (B, H, Tq, Bk), and use them for the block's `dv`, `dk` and its
#   share of `dq`; never build a (Tq, Tk) matrix.
#
# Use tensor operations (`@`, `transpose`, `torch.exp`, `sum`), not autograd (`.backward()`,
# `torch.autograd.grad`) and not `lib.efficient`.

# %% nbgrader={"grade": false, "grade_id": "ex2_attention_backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_attention_backward(q, k, v, out, lse, dout, block_size):
    ### BEGIN SOLUTION
    scale = 1 / math.sqrt(q.shape[-1])
    delta = (dout * out).sum(dim=-1, keepdim=True)  # (B, H, Tq, 1): rowsum(A * dA) over all keys
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for j in range(0, k.shape[-2], block_size):
        kb, vb = k[..., j : j + block_size, :], v[..., j : j + block_size, :]  # (B, H, Bk, Dk), (B, H, Bk, Dv)
        p = torch.exp(q @ kb.transpose(-2, -1) * scale - lse[..., None])  # (B, H, Tq, Bk): recomputed weights
        dv[..., j : j + block_size, :] = p.transpose(-2, -1) @ dout  # (B, H, Bk, Dv)
        ds = p * (dout @ vb.transpose(-2, -1) - delta)  # (B, H, Tq, Bk)
        dq += ds @ kb * scale  # (B, H, Tq, Dk)
        dk[..., j : j + block_size, :] = ds.transpose(-2, -1) @ q * scale  # (B, H, Bk, Dk)
    return dq, dk, dv
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_attention_backward_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _backward_with(q, k, v, out, lse, dout, block, *, delta="all", grad_scale=True, score_scale=True,
                   lse_axis=True, normalise=True, p_t=True, ds_t=True, accumulate=True):
    """The recomputing backward with one predictable mistake (the keywords), for naming what a wrong answer did."""
    c = 1 / math.sqrt(q.shape[-1])
    L = lse[..., None] if lse_axis else lse
    d_all = (dout * out).sum(-1, keepdim=True)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for j in range(0, k.shape[-2], block):
        kb, vb = k[..., j : j + block, :], v[..., j : j + block, :]
        s = q @ kb.transpose(-2, -1) * (c if score_scale else 1.0)
        p = torch.exp(s - L) if normalise else torch.exp(s)
        dp = dout @ vb.transpose(-2, -1)
        ds = p * (dp - {"all": d_all, "none": 0.0, "block": (p * dp).sum(-1, keepdim=True)}[delta])
        dv[..., j : j + block, :] = (p.transpose(-2, -1) if p_t else p) @ dout
        share = ds @ kb * (c if grad_scale else 1.0)
        dq = dq + share if accumulate else share
        dk[..., j : j + block, :] = (ds.transpose(-2, -1) if ds_t else ds) @ q * (c if grad_scale else 1.0)
    return dq, dk, dv


_BACKWARD_MISTAKES = {
    "ds = p * dp misses the softmax's term: ds = p * (dp - D) with D = rowsum(dout * out)": {"delta": "none"},
    "D is summed over this block's keys only: the softmax's D sums over all keys of the row, so take "
    "D = rowsum(dout * out) once, before the loop": {"delta": "block"},
    "dq and dk miss the factor c = 1/sqrt(Dk): the scores were q kᵀ · c": {"grad_scale": False},
    "the recomputed scores miss the factor c = 1/sqrt(Dk): p = exp(q kᵀ · c - lse)": {"score_scale": False},
    "p = exp(q kᵀ · c) without subtracting lse: only exp(s - lse) is the softmax's weight": {"normalise": False},
    "lse (B, H, Tq) was subtracted along the key axis: give it a key axis, lse[..., None]": {"lse_axis": False},
    "dv = p @ dout: the block's dv is pᵀ @ dout, (Bk, Tq) @ (Tq, Dv)": {"p_t": False},
    "dk = ds @ q: the block's dk is dsᵀ @ q · c, (Bk, Tq) @ (Tq, Dk)": {"ds_t": False},
    "dq keeps only the last block's share: every key block adds ds @ k_block · c to dq (dq += ...)":
        {"accumulate": False},
}


def _check_backward(Tq, Tk, Dk, Dv, block, seed, what):
    gen = torch.Generator().manual_seed(seed)
    q_, k_, v_ = (torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64) for n, d in ((Tq, Dk), (Tk, Dk), (Tk, Dv)))
    dout_ = torch.randn(2, 3, Tq, Dv, generator=gen, dtype=torch.float64)
    out_ = F.scaled_dot_product_attention(q_, k_, v_)
    lse_ = torch.logsumexp(q_ @ k_.transpose(-2, -1) / math.sqrt(Dk), dim=-1)
    args = (q_, k_, v_, out_, lse_, dout_)
    got = call_explained(my_attention_backward, *args, block, name=f"my_attention_backward on {what}", hint=(
        "p and ds are (B, H, Tq, Bk); the block's dv and dk are (B, H, Bk, Dv) and (B, H, Bk, Dk), so transpose "
        "p and ds (pᵀ @ dout, dsᵀ @ q); lse is (B, H, Tq), subtract lse[..., None]"))
    if not (isinstance(got, tuple | list) and len(got) == 3):
        raise AssertionError(f"my_attention_backward: return the tuple (dq, dk, dv), got {type(got).__name__}")
    expected = explicit_grads(q_, k_, v_, dout_)
    for name, g_, e_ in zip(("dq", "dk", "dv"), got, expected):
        check_shape(g_, tuple(e_.shape), f"{name} on {what}")
    if all(torch.allclose(g_, e_, atol=1e-8) for g_, e_ in zip(got, expected)):
        return
    for mistake, kw in _BACKWARD_MISTAKES.items():
        try:
            wrong = _backward_with(*args, block, **kw)
        except RuntimeError:
            continue  # this mistake cannot run on these shapes
        if all(w.shape == e_.shape for w, e_ in zip(wrong, expected)) \
                and any(not torch.allclose(w, e_, atol=1e-8) for w, e_ in zip(wrong, expected)) \
                and all(torch.allclose(g_, w, atol=1e-8) for g_, w in zip(got, wrong)):
            raise AssertionError(f"my_attention_backward on {what}: {mistake}")
    for name, g_, e_ in zip(("dq", "dk", "dv"), got, expected):
        check_close(g_, e_, f"{name} on {what}, against autograd", atol=1e-8)


_check_backward(6, 6, 4, 4, 6, seed=5, what="one block of 6 keys, Tq = Tk = 6")  # every mistake above runs here
_check_backward(5, 11, 6, 3, 4, seed=6, what="three blocks of 4, 4 and 3 keys, Tq = 5")
passed("my_attention_backward recomputes the weights block by block and matches autograd")

# %% nbgrader={"grade": true, "grade_id": "ex2_attention_backward_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(23)
cases = []
for B_, H_, Tq_, Tk_, Dk_, Dv_, block_ in [(1, 1, 1, 1, 1, 1, 1), (2, 3, 17, 17, 8, 8, 5), (1, 2, 9, 40, 16, 4, 7),
                                           (3, 1, 30, 12, 5, 9, 12), (1, 4, 64, 64, 32, 32, 100),
                                           (2, 2, 13, 29, 8, 3, 1)]:
    q_ = torch.randn(B_, H_, Tq_, Dk_, generator=g, dtype=torch.float64) * 2
    k_ = torch.randn(B_, H_, Tk_, Dk_, generator=g, dtype=torch.float64) * 2
    v_ = torch.randn(B_, H_, Tk_, Dv_, generator=g, dtype=torch.float64)
    dout_ = torch.randn(B_, H_, Tq_, Dv_, generator=g, dtype=torch.float64)
    out_ = F.scaled_dot_product_attention(q_, k_, v_)
    lse_ = torch.logsumexp(q_ @ k_.transpose(-2, -1) / math.sqrt(Dk_), dim=-1)
    cases.append(((q_, k_, v_, out_, lse_, dout_), block_))
with forbid("lib.efficient.tiled_attention_backward", "torch.autograd.grad", "torch.autograd.backward",
            "torch.Tensor.backward"):
    answers = [my_attention_backward(*args, block_) for args, block_ in cases]
for (args, block_), answer in zip(cases, answers):
    expected = explicit_grads(args[0], args[1], args[2], args[5])
    for name, a, e in zip(("dq", "dk", "dv"), answer, expected):
        check_close(a, e, f"{name} for q {tuple(args[0].shape)}, k {tuple(args[1].shape)}, blocks of {block_}",
                    atol=1e-9, rtol=1e-7)
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# Your backward pass (or lib's `tiled_attention_backward`, if the exercise is not done yet) against autograd,
# for several block sizes, after `flash_forward`:

# %%
def _lib_backward(q, k, v, out, lse, dout, block_size):
    return tiled_attention_backward(q, k, v, out, lse, dout, block_size=block_size)


def _backward_agrees(f) -> None:
    """Exercise 2's check in short: three blocks of keys against autograd."""
    gen = torch.Generator().manual_seed(4)
    q_, k_, v_ = (torch.randn(1, 2, n, 4, generator=gen, dtype=torch.float64) for n in (5, 9, 9))
    dout_ = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64)
    lse_ = torch.logsumexp(q_ @ k_.transpose(-2, -1) / 2, dim=-1)
    got = f(q_, k_, v_, F.scaled_dot_product_attention(q_, k_, v_), lse_, dout_, 4)
    for name, a, e in zip(("dq", "dk", "dv"), got, explicit_grads(q_, k_, v_, dout_), strict=True):
        check_close(a, e, name, atol=1e-8)


backward = yours_or_reference(my_attention_backward, _lib_backward, "my_attention_backward", exercise="exercise 2",
                              probe=lambda f: f(*(torch.zeros(1, 1, 1, 1),) * 4, torch.zeros(1, 1, 1),
                                                torch.zeros(1, 1, 1, 1), 1),
                              check=_backward_agrees)
q, k, v = (torch.randn(2, 4, n, 16, dtype=torch.float64) for n in (50, 70, 70))
dout = torch.randn(2, 4, 50, 16, dtype=torch.float64)
out, lse = flash_forward(q, k, v, 16)
reference = explicit_grads(q, k, v, dout)
for bs in (1, 16, 70):
    grads = backward(q, k, v, out, lse, dout, bs)
    diff = max((a - b).abs().max().item() for a, b in zip(grads, reference, strict=True))
    print(f"block size {bs:>2}: max |recomputed - autograd| over dq, dk, dv < 1e-10: {diff < 1e-10}")

# %% [markdown]
# And the memory of a whole forward and backward pass of attention, measured with `measure_peak_bytes`:
# autograd through the explicit path (it saves the weights and makes their gradients) against
# `flash_forward` plus the recomputing backward, blocks of 64 keys:

# %% tags=["nbval-ignore-output"]
train_rows = []
for T in pick(full=[256, 512, 1024, 2048], quick=[256, 512]):
    q, k, v, dout = (torch.randn(1, 4, T, 32) for _ in range(4))
    explicit_peak = measure_peak_bytes(lambda: explicit_grads(q, k, v, dout))
    with torch.no_grad():
        tiled_peak = measure_peak_bytes(lambda: backward(q, k, v, *flash_forward(q, k, v, 64), dout, 64))
    train_rows.append((T, explicit_peak, tiled_peak))
print(f"{'T':>5} {'autograd, explicit':>19} {'tiled + recomputed':>19} {'ratio':>7}")
for T, e, t in train_rows:
    print(f"{T:>5} {format_bytes(e):>19} {format_bytes(t):>19} {e / t:>6.1f}x")

# %% [markdown]
# The explicit path's peak grows fourfold with each doubling of $T$ (the weights and their gradients are
# $(T, T)$ per head); the recomputing pair grows about twofold, like its inputs. The price is compute: the
# backward pass computes every block of scores a second time: one $(T, T)$-sized matrix product per head on
# top of the explicit path's six (two in the forward pass, four in the backward). On a GPU, where attention is limited by memory
# traffic, FlashAttention is faster *and* smaller for it.

# %% [markdown]
# ## 4. What PyTorch does: SDPA's backends and `torch.compile`
#
# `torch.nn.functional.scaled_dot_product_attention` chooses among backends (`torch.nn.attention.SDPBackend`):
#
# * **math**: the explicit formula in ATen ops, any device and dtype, materialises the weights;
# * **flash**: FlashAttention (Dao et al. 2022; FlashAttention-2 on CUDA), tiled with the online softmax;
#   PyTorch also has a CPU implementation;
# * **memory-efficient**: xFormers' kernel (Rabe & Staats 2021), CUDA only, also tiled, supports arbitrary masks;
# * **cuDNN**: NVIDIA's fused attention (recent GPUs).
#
# Which of them run on this machine, and what each costs at one length (the benchmark
# `bench/bench_attention.py` does this for $T$ up to 8192):

# %% tags=["nbval-ignore-output"]
from torch.nn.attention import SDPBackend, sdpa_kernel

T = pick(full=1024, quick=256)
q, k, v = (torch.randn(1, 8, T, 64, device=dev) for _ in range(3))
candidates = {"explicit (lib)": lambda: scaled_dot_product_attention(q, k, v)[0],
              "tiled (lib)": lambda: tiled_attention(q, k, v, block_size=128, query_block_size=128),
              "sdpa (PyTorch's choice)": lambda: F.scaled_dot_product_attention(q, k, v)}
for name in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
    backend = getattr(SDPBackend, name)

    def run_backend(backend=backend):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    try:
        with torch.no_grad():
            run_backend()
        candidates[f"sdpa {name.lower()}"] = run_backend
        print(f"{name:<20} runs on {dev.type}")
    except RuntimeError as err:
        print(f"{name:<20} not available on {dev.type}: {str(err).splitlines()[0][:60]}")
with torch.no_grad():
    ms = time_steps(candidates, dev, warmup=1, repeats=pick(full=5, quick=2))
    peaks = {name: (cuda_peak_bytes(fn, dev) if dev.type == "cuda" else measure_peak_bytes(fn))
             for name, fn in candidates.items()}
base_ms, base_mem = ms["sdpa (PyTorch's choice)"], peaks["sdpa (PyTorch's choice)"]
print(f"\nT={T}, B=1, H=8, Dh=64, forward:")
for name in candidates:
    print(f"{name:<26} {ms[name]:>9.2f} ms ({ms[name] / base_ms:>6.2f}x)   peak {format_bytes(peaks[name]):>10} "
          f"({peaks[name] / max(base_mem, 1):>5.2f}x)")

# %% [markdown]
# On this CPU, PyTorch's own choice is its flash kernel, as the two rows with the same memory (and
# similar times) show; the math backend costs the same memory as the explicit path. Memory-efficient and cuDNN need a
# GPU.
#
# ### `torch.compile` on the encoder
#
# `torch.compile` traces a model into a graph and generates fused kernels for it (TorchInductor:
# C++/OpenMP on the CPU, Triton on GPUs). The first call pays for the compilation. Measured here on the
# small encoder's forward pass, only in full mode (compiling takes minutes on 2 busy cores); the cell
# reports the error instead of failing where compilation is not possible:

# %% tags=["nbval-ignore-output"]
seed_everything(0)
enc = Encoder(cfg).to(dev).eval()
tokens = torch.randint(0, cfg.vocab_size, (8, 256), device=dev)
if pick(full=True, quick=False):
    try:
        compiled = torch.compile(enc)
        start = time.perf_counter()
        with torch.no_grad():
            out_c = compiled(tokens)
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            same = (out_c - enc(tokens)).abs().max().item() < 1e-4
            ms = time_steps({"eager": lambda: enc(tokens), "compiled": lambda: compiled(tokens)}, dev,
                            warmup=1, repeats=10)
        print(f"first call (compilation) {compile_s:.1f} s; outputs agree: {same}")
        print(f"eager {ms['eager']:.2f} ms, compiled {ms['compiled']:.2f} ms: speed-up {ms['eager'] / ms['compiled']:.2f}x")
        if ms["compiled"] < ms["eager"]:
            print(f"compilation pays for itself after about {compile_s * 1e3 / (ms['eager'] - ms['compiled']):,.0f} calls")
    except Exception as err:  # noqa: BLE001 -- a missing compiler or an unsupported op: report it, go on
        print(f"torch.compile failed here: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
else:
    print("quick mode: torch.compile is skipped (compilation alone takes minutes on a small CPU)")

# %% [markdown]
# In the run stored here (a 2-core CPU shared with other jobs, so the times are rough) the first call
# took 3.3 s and the compiled forward pass was about 1.23 times faster (17.70 against 21.83 ms): a gain
# of about 4 ms per call, so compilation pays for itself only after some 800 calls. (Inductor
# caches its generated kernels on disk, so a later run on the same machine compiles faster.) The matrix products run in the same BLAS library either way;
# what fusion removes is the separate elementwise passes over memory (masking, softmax pieces,
# residual adds, LayerNorm), a modest part of the time on a CPU. On a GPU, where each kernel launch
# and each pass through memory costs more, compilation usually pays off sooner. Where it fails
# (no C++ compiler, an unsupported operation) the cell prints the error and the lesson goes on.

# %% [markdown]
# ## Summary
#
# * Explicit attention holds $B \cdot H \cdot T^2$ scores and as many weights; in training the weights
#   (and, with a mask, their masked copy) are saved for the backward pass. The rest of a layer grows
#   like $12\,BTD$, so attention dominates from $T \approx 12D/H$: 82 positions for a block of lesson 06's
#   deep stacks, 769 for the paper's base model.
# * A training step holds parameters, gradients and optimizer state (16 bytes per parameter with fp32 Adam,
#   20 with mixed precision, 16 in ZeRO's count) plus the activations; the measured peak adds
#   quadratic temporaries (the gradients of the weights and of the scores) on top of that sum.
# * The online softmax keeps a running maximum, a running sum and an unnormalised output per query,
#   rescaling both by $e^{m_\text{old} - m_\text{new}}$ when the maximum grows; fully masked blocks need
#   $-\infty$ handled without NaN. Attention over key blocks then needs memory linear in $T$.
# * The backward pass needs no saved weights either: the output and one log-sum-exp per query let it
#   recompute each block of weights, with $D = \operatorname{rowsum}(dO \circ O)$ standing in for the softmax's
#   sum over the whole row. FlashAttention trades that extra matrix product for memory and memory traffic.
# * PyTorch's SDPA picks a fused backend (flash, memory-efficient, cuDNN) where it can, and the math
#   backend otherwise; `torch.compile` fuses the rest of the model, which pays off on GPUs more than
#   on a small CPU.
