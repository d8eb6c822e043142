# %% [markdown]
# # 05 · The position-wise feed-forward network
#
# Every Transformer layer has two sub-layers: multi-head attention (lesson 03), which
# **mixes** information across positions, and a small two-layer network applied to
# **each position on its own** (Vaswani et al. 2017, section 3.3, eq. (2)):
#
# $$\mathrm{FFN}(x) = \max(0,\; x W_1 + b_1)\, W_2 + b_2,
# \qquad W_1 \in \mathbb{R}^{d_\text{model} \times d_\text{ff}},\;
# W_2 \in \mathbb{R}^{d_\text{ff} \times d_\text{model}}$$
#
# with $d_\text{model} = 512$ and $d_\text{ff} = 2048$ in the paper. The same $W_1, b_1, W_2, b_2$
# are used at every position (and differ from layer to layer). The paper adds: *"another way
# of describing this is as two convolutions with kernel size 1"*.
#
# Shapes: **B** batch, **T** positions, **D** $= d_\text{model}$, **F** $= d_\text{ff}$,
# **H** heads.
#
# In this lesson you will
#
# 1. write the FFN from its formula and check it against `lib.ffn.PositionWiseFFN` (exercise 1),
# 2. see numerically that it is *position-wise*: permuting positions commutes with it, and
#    each position is processed alone,
# 3. turn it into the same map made of two 1x1 convolutions (exercise 2),
# 4. compare it with timm's `Mlp`,
# 5. time Linear against Conv1d, as the source material did in Keras,
# 6. account for the memory of a whole Transformer layer: parameters ($\approx 12 d^2$),
#    Adam's state (20 bytes per parameter in mixed precision), activations and the
#    attention matrix, and check every number against a measurement (exercise 3).
#
# **Points in this lesson: 15** (exercise 1: 5, exercise 2: 5, exercise 3: 5).
#
# *Run time:* about twenty seconds on a 2-core CPU in full mode; `COURSE_QUICK=1` times a
# smaller layer, fewer times.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from lib.attention import Record
from lib.checks import check_close, check_permutation_equivariance, check_shape, passed
from lib.ffn import PositionWiseFFN
from lib.memory import (
    adam_mixed_precision_bytes,
    adam_state_bytes,
    attention_matrix_bytes,
    count_parameters,
    encoder_layer_activation_bytes,
    encoder_layer_saved_tensors,
    format_bytes,
    layer_parameter_breakdown,
    layer_parameters,
    measure_saved_tensors,
    optimizer_state_bytes,
)
from lib.runtime import device, pick, seed_everything, time_steps
from lib.transformer import EncoderBlock

seed_everything(0)
dev = device()
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. The FFN from its formula
#
# A batch of sequences is a tensor $(B, T, D)$. The matrix product `x @ W1` multiplies the
# **last** axis by $W_1$: every one of the $B \cdot T$ feature vectors is transformed by the
# same matrix. Written out with plain tensors:

# %%
B, T, D, Fh = 2, 5, 8, 32
x = torch.randn(B, T, D)  # (B, T, D)
W1, b1 = torch.randn(D, Fh) / D**0.5, torch.zeros(Fh)  # (D, F), (F,)
W2, b2 = torch.randn(Fh, D) / Fh**0.5, torch.zeros(D)  # (F, D), (D,)

hidden = torch.clamp(x @ W1 + b1, min=0)  # max(0, x W1 + b1): (B, T, F)
out = hidden @ W2 + b2  # (B, T, D)
print("x", tuple(x.shape), "-> hidden", tuple(hidden.shape), "-> out", tuple(out.shape))

# %% [markdown]
# `lib.ffn.PositionWiseFFN` is the same map made of two `nn.Linear` layers, named as in
# timm's `Mlp`: `fc1`, `act`, `drop`, `fc2`. An `nn.Linear(in, out)` stores its weight as
# `(out, in)` and computes `x @ weight.T + bias`, so the paper's $W_1$ is `fc1.weight.T`:

# %%
ffn = PositionWiseFFN(D, Fh)
print(ffn)
with torch.no_grad():
    ffn.fc1.weight.copy_(W1.T)  # (F, D)
    ffn.fc1.bias.copy_(b1)
    ffn.fc2.weight.copy_(W2.T)  # (D, F)
    ffn.fc2.bias.copy_(b2)
check_close(ffn(x), out, "PositionWiseFFN vs the formula")
passed("two nn.Linear layers compute max(0, x W1 + b1) W2 + b2")

# %% [markdown]
# ## 2. Position-wise: each position alone
#
# Nothing in the formula looks at another position. Two consequences we can check:
#
# * **permuting the positions commutes with the FFN**: $\mathrm{FFN}(x_{\pi}) = \mathrm{FFN}(x)_{\pi}$;
# * **each position can be processed alone**: feeding one position $(B, 1, D)$ gives the same
#   result as that position's row of the full output. (So the FFN could be run one token at a
#   time, or on all $B \cdot T$ tokens flattened into one batch, which is what `nn.Linear` does.)

# %%
perm = torch.randperm(T)
print("permutation:", perm.tolist())
print("FFN(x[:, perm]) == FFN(x)[:, perm]:", torch.allclose(ffn(x[:, perm]), ffn(x)[:, perm], atol=1e-6))

one_at_a_time = torch.cat([ffn(x[:, t : t + 1]) for t in range(T)], dim=1)  # T calls on (B, 1, D)
flattened = ffn(x.reshape(B * T, D)).reshape(B, T, D)  # one call on (B*T, D)
print("position by position == all at once:", torch.allclose(one_at_a_time, ffn(x), atol=1e-6))
print("flattened (B*T, D)   == all at once:", torch.allclose(flattened, ffn(x), atol=1e-6))
check_permutation_equivariance(ffn, x, "PositionWiseFFN")
passed("the FFN commutes with permutations and treats every position alone")


# %% [markdown]
# Self-attention is permutation *equivariant* too (lesson 03), but it is not position-wise:
# every output position depends on every input position. The gradient of the output at one
# position with respect to the whole input shows which input positions it depends on:

# %%
def dependence(fn, x: torch.Tensor, t: int) -> list[int]:
    """Input positions that output position t depends on (nonzero gradient)."""
    x = x.detach().clone().requires_grad_(True)
    fn(x)[:, t].sum().backward()
    return [s for s in range(x.shape[1]) if x.grad[:, s].abs().max() > 0]


attention_only = EncoderBlock(D, 2, Fh).attention.eval()
print("FFN: output position 2 depends on input positions      ", dependence(ffn, x, 2))
print("attention: output position 2 depends on input positions", dependence(attention_only, x, 2))


# %% [markdown]
# In a Transformer layer the two alternate: attention moves information **between**
# positions, the FFN transforms it **within** each position. Most of a layer's parameters
# sit in the FFN (section 7).
#
# ### Exercise 1: the FFN forward pass (5 points)
#
# Write `my_ffn(x, W1, b1, W2, b2)` computing $\max(0, x W_1 + b_1) W_2 + b_2$ with the
# weights in the paper's layout:
#
# * `x`: `(..., D)` (e.g. `(B, T, D)`), `W1`: `(D, F)`, `b1`: `(F,)`, `W2`: `(F, D)`, `b2`: `(D,)`;
# * return `(..., D)`.
#
# Use tensor operations (`@`, `torch.clamp` or `torch.relu`), not `lib.ffn`.

# %% nbgrader={"grade": false, "grade_id": "ex1_ffn_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_ffn(x: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    hidden = torch.clamp(x @ W1 + b1, min=0)  # (..., F)
    return hidden @ W2 + b2  # (..., D)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_ffn_forward_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
ref = PositionWiseFFN(6, 20)
xs = torch.randn(3, 7, 6)
mine = my_ffn(xs, ref.fc1.weight.T, ref.fc1.bias, ref.fc2.weight.T, ref.fc2.bias)
check_shape(mine, (3, 7, 6), "my_ffn output")
with torch.no_grad():
    check_close(mine, ref(xs), "my_ffn vs lib.ffn.PositionWiseFFN with the same weights", variants={
        "without the bias b1 (inside the ReLU)": lambda: torch.relu(xs @ ref.fc1.weight.T) @ ref.fc2.weight.T + ref.fc2.bias,
        "without the bias b2 (added after W2)": lambda: ref(xs) - ref.fc2.bias,
        "without the ReLU (max(0, ·) between the two maps)": lambda: ref.fc2(ref.fc1(xs)),
        "with a ReLU after the second map too (the output must be able to go negative)": lambda: torch.relu(ref(xs)),
        "with the ReLU applied before adding b1 (max(0, x W1) + b1)": lambda: (torch.relu(xs @ ref.fc1.weight.T) + ref.fc1.bias) @ ref.fc2.weight.T + ref.fc2.bias,
    })
passed("my_ffn matches PositionWiseFFN on a random input")

# %% nbgrader={"grade": true, "grade_id": "ex1_ffn_forward_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from unittest import mock

import lib.ffn
from lib.checks import forbid


def _refuse(*args, **kwargs):
    raise AssertionError("your code used lib.ffn's FFN; this exercise asks you to write the forward pass yourself")


g = torch.Generator().manual_seed(11)
cases = []
for shape, F_ in [((2, 5, 4), 16), ((1, 1, 3), 5), ((4, 9, 12), 48), ((3, 8), 10), ((2, 3, 4, 6), 7)]:
    ref = PositionWiseFFN(shape[-1], F_).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    xs = torch.randn(*shape, generator=g, dtype=torch.float64)
    weights = (ref.fc1.weight.T.detach(), ref.fc1.bias.detach(), ref.fc2.weight.T.detach(), ref.fc2.bias.detach())
    cases.append((xs, weights, ref(xs).detach()))
xs, w, _ = cases[2]
perm = torch.randperm(xs.shape[1], generator=g)
# forbid() replaces lib.ffn's names; patching forward also catches the classes under any other name
with mock.patch.object(lib.ffn.PositionWiseFFN, "forward", _refuse), \
        mock.patch.object(lib.ffn.PositionWiseFFNConv, "forward", _refuse), \
        forbid("lib.ffn.PositionWiseFFN", "lib.ffn.PositionWiseFFNConv"):
    answers = [my_ffn(c[0], *c[1]) for c in cases]
    alone = torch.cat([my_ffn(xs[:, t : t + 1], *w) for t in range(xs.shape[1])], dim=1)  # one position at a time
    permuted = my_ffn(xs[:, perm], *w)
for (xc, wc, expected), ans in zip(cases, answers):
    check_close(ans, expected, f"my_ffn on input {tuple(xc.shape)} with F={wc[0].shape[1]}")
check_close(alone, answers[2], "my_ffn position by position vs all at once")
check_close(permuted, answers[2][:, perm], "my_ffn on permuted positions")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The same map as two 1x1 convolutions
#
# A 1-D convolution with $C_\text{in}$ input and $C_\text{out}$ output channels slides a
# kernel of shape $(C_\text{out}, C_\text{in}, k)$ along the positions. With $k = 1$ the kernel
# sees **one** position at a time, and at each position it computes
# $y_t = W[:, :, 0]\, x_t + b$: exactly a Linear layer with weight $W[:, :, 0]$. So
#
# * `nn.Linear(D, F).weight` has shape `(F, D)`;
# * `nn.Conv1d(D, F, kernel_size=1).weight` has shape `(F, D, 1)`: the same numbers with a
#   trailing axis of length 1.
#
# PyTorch convolutions take **channels first**, `(B, C, T)`, while our activations are
# `(B, T, D)`; `PositionWiseFFNConv` transposes in and out (Keras' `Conv1D` is channels-last
# and needs no transpose):
#
# ```python
# x = x.transpose(1, 2)                    # (B, D, T): channels first for Conv1d
# h = self.drop(self.act(self.conv1(x)))   # (B, F, T)
# out = self.conv2(h)                      # (B, D, T)
# return out.transpose(1, 2)               # (B, T, D)
# ```

# %%
conv = ffn.to_conv()  # copies the weights into a PositionWiseFFNConv
print(conv)
print("fc1.weight", tuple(ffn.fc1.weight.shape), "-> conv1.weight", tuple(conv.conv1.weight.shape))
print("same numbers:", torch.equal(conv.conv1.weight.squeeze(-1), ffn.fc1.weight))
print("Conv1d FFN == Linear FFN:", torch.allclose(conv(x), ffn(x), atol=1e-6))
back = conv.to_linear()
print("round trip Linear -> Conv1d -> Linear gives the same weights:", torch.equal(back.fc2.weight, ffn.fc2.weight))

# %% [markdown]
# The gradients agree too, so training either one gives the same model:

# %%
ffn.zero_grad(set_to_none=True)  # earlier cells left gradients behind
xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
ffn(xa).pow(2).sum().backward()
conv(xb).pow(2).sum().backward()
check_close(xb.grad, xa.grad, "input gradients")
check_close(conv.conv1.weight.grad.squeeze(-1), ffn.fc1.weight.grad, "fc1 / conv1 weight gradients")
passed("Linear and Conv1d FFN: equal outputs and equal gradients")


# %% [markdown]
# ### Exercise 2: Linear weights to Conv1d weights (5 points)
#
# Write `my_linear_to_conv1d(linear)` that returns a **new** `nn.Conv1d` with `kernel_size=1`
# computing what `linear` computes, on channels-first input `(B, D_in, T)`:
# `conv(x.transpose(1, 2)).transpose(1, 2) == linear(x)`. Copy the weights (do not share
# them), keep `bias=None` when the Linear has no bias, and keep the Linear's dtype.
# Do not use `lib.ffn`'s converters.

# %% nbgrader={"grade": false, "grade_id": "ex2_linear_to_conv", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_linear_to_conv1d(linear: nn.Linear) -> nn.Conv1d:
    ### BEGIN SOLUTION
    out_features, in_features = linear.weight.shape
    conv = nn.Conv1d(in_features, out_features, kernel_size=1, bias=linear.bias is not None,
                     dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.unsqueeze(-1))  # (out, in) -> (out, in, 1)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_linear_to_conv_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
lin = nn.Linear(6, 10)
c = my_linear_to_conv1d(lin)
assert isinstance(c, nn.Conv1d), f"expected an nn.Conv1d, got {type(c).__name__}"
assert c.kernel_size == (1,), f"expected kernel_size (1,), got {c.kernel_size}"
check_shape(c.weight, (10, 6, 1), "conv weight")
assert c.bias is not None, "the Linear has a bias, so the Conv1d needs one too (bias=True), holding the same values"
check_close(c.bias, lin.bias.detach(), "conv bias: copy linear.bias into it (a fresh Conv1d starts with a random bias)")
xs = torch.randn(2, 7, 6)  # (B, T, D_in)
with torch.no_grad():
    check_close(c(xs.transpose(1, 2)).transpose(1, 2), lin(xs), "Conv1d on (B, D, T) vs Linear on (B, T, D)", variants={
        "without the Linear's bias (copy linear.bias into conv.bias)": lambda: lin(xs) - lin.bias,
    })
for _mine, _theirs, _what in [(c.weight, lin.weight, "weight"), (c.bias, lin.bias, "bias")]:
    assert _mine.untyped_storage().data_ptr() != _theirs.untyped_storage().data_ptr(), (
        f"the Conv1d's {_what} shares its memory with the Linear's {_what}, so training one would change the other: "
        f"copy the values (e.g. conv.{_what}.copy_(...) under torch.no_grad(), or .clone())"
    )
c_nobias = my_linear_to_conv1d(nn.Linear(6, 10, bias=False))
assert c_nobias.bias is None, "a Linear without bias must give a Conv1d with bias=None"
passed("my_linear_to_conv1d gives a Conv1d with the Linear's outputs, its own copy of the weights, no bias when the Linear has none")

# %% nbgrader={"grade": true, "grade_id": "ex2_linear_to_conv_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from unittest import mock

import lib.ffn
from lib.checks import forbid


def _refuse_conv(*args, **kwargs):
    raise AssertionError("your code used lib.ffn's converter; this exercise asks you to copy the weights yourself")


g = torch.Generator().manual_seed(12)
linears = []
for fin, fout, bias, dtype in [(3, 5, True, torch.float32), (16, 4, False, torch.float32), (1, 1, True, torch.float64), (8, 32, True, torch.float64)]:
    lin = nn.Linear(fin, fout, bias=bias, dtype=dtype)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    linears.append(lin)
ffn_ref = PositionWiseFFN(5, 11)
conv_ref = ffn_ref.to_conv()
linears += [ffn_ref.fc1, ffn_ref.fc2]

# The references are refused under lib.ffn's names (forbid), as methods, and under any
# name this notebook bound them to (patch.dict restores globals() on exit, so results
# are collected in a list created before the block).
references = (lib.ffn.linear_to_conv1d, lib.ffn.conv1d_to_linear, lib.ffn.PositionWiseFFNConv)
aliases = {name: _refuse_conv for name, value in list(globals().items()) if any(value is r for r in references)}
convs = []
with mock.patch.object(lib.ffn.PositionWiseFFN, "to_conv", _refuse_conv), \
        forbid("lib.ffn.linear_to_conv1d", "lib.ffn.conv1d_to_linear", "lib.ffn.PositionWiseFFNConv"), \
        mock.patch.dict(globals(), aliases):
    convs.extend(my_linear_to_conv1d(lin) for lin in linears)
assert len(convs) == len(linears)
for lin, c in zip(linears[:4], convs[:4]):
    fin, fout, bias, dtype = lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype
    assert isinstance(c, nn.Conv1d) and c.kernel_size == (1,), "expected an nn.Conv1d with kernel_size=1"
    assert (c.bias is None) == (not bias), f"bias={bias} in the Linear, but the Conv1d has bias={c.bias is not None}"
    assert c.weight.dtype == dtype, f"the Conv1d must keep the Linear's dtype {dtype}, got {c.weight.dtype}"
    xs = torch.randn(3, 9, fin, generator=g, dtype=dtype)
    check_close(c(xs.transpose(1, 2)).transpose(1, 2), lin(xs).detach(), f"Linear({fin}, {fout}, bias={bias}), {dtype}")
    with torch.no_grad():
        c.weight.add_(1.0)
    assert not torch.allclose(lin(xs), c(xs.transpose(1, 2)).transpose(1, 2)), "the weights must be copied, not shared"
# a whole FFN from the two converted layers equals lib's Conv1d twin
c1, c2 = convs[4], convs[5]
xs = torch.randn(2, 6, 5, generator=g)
mine = c2(torch.relu(c1(xs.transpose(1, 2)))).transpose(1, 2)
check_close(mine, conv_ref(xs).detach(), "an FFN built from your two converted layers")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. timm's `Mlp`
#
# The vision Transformers in timm (`timm.layers.Mlp`, used by every ViT block) implement the
# same sub-layer. Its forward pass is
#
# ```python
# x = self.fc1(x)     # Linear(in_features, hidden_features)
# x = self.act(x)     # GELU by default
# x = self.drop1(x)
# x = self.norm(x)    # Identity unless norm_layer is given
# x = self.fc2(x)     # Linear(hidden_features, out_features)
# x = self.drop2(x)
# ```
#
# with `hidden_features = mlp_ratio * in_features` (`mlp_ratio=4.0` in ViT, the paper's
# $d_\text{ff} = 4\,d_\text{model}$). It can also be built with `use_conv=True`, which swaps
# the two Linear layers for `Conv2d(kernel_size=1)` on channels-first feature maps: the same
# duality as in section 3. Mapping it onto ours:
#
# | timm `Mlp` | `lib.ffn.PositionWiseFFN` | d2l `PositionWiseFFN` |
# | --- | --- | --- |
# | `fc1` | `fc1` | `dense1` (LazyLinear) |
# | `act` (GELU) | `act` (`activation="relu"` or `"gelu"`) | `relu` |
# | `drop1` | `drop` | none |
# | `norm` (Identity) | none | none |
# | `fc2` | `fc2` | `dense2` (LazyLinear) |
# | `drop2` | none here: `lib.transformer.EncoderBlock` applies the residual dropout | none (in `AddNorm`) |
#
# So `PositionWiseFFN(D, 4 * D, activation="gelu")` computes what a default timm `Mlp(D)`
# computes; only the place of the output dropout differs, and dropout is off at inference.

# %%
vit_like = PositionWiseFFN(768, 4 * 768, activation="gelu")
print([name for name, _ in vit_like.named_children()])
print(f"parameters: {count_parameters(vit_like):,} (= 2 * 768 * 3072 + 3072 + 768)")

# %% [markdown]
# ## 5. Linear or Conv1d: which is faster?
#
# The source material trained both versions in Keras on an RTX 2080 (128,000 samples of
# length 32, $d_\text{model}=512$, $d_\text{ff}=2048$, batch 512): the Dense FFN took
# **14.8 s** per epoch, the Conv1D one **18.2 s**, a ratio of 1.23. The arithmetic is the
# same, so the difference comes from how each reaches the hardware:
#
# * `nn.Linear` on $(B, T, D)$ views the input as one $(B \cdot T, D)$ matrix and calls **one
#   GEMM** per layer, the most tuned kernel of every library (cuBLAS, MKL, oneDNN);
# * `nn.Conv1d(kernel_size=1)` goes through the **convolution path**: PyTorch transposes the
#   activations to channels-first $(B, D, T)$ and back (memory copies), and the convolution
#   library chooses an algorithm (im2col + GEMM on CPU; on GPU one of cuDNN's algorithms, by
#   heuristics or by timing with `torch.backends.cudnn.benchmark = True`). Its weight
#   gradient is a separate reduction over the batch.
#
# A small version of the benchmark, one training step (forward, loss, backward, Adam) of
# each, timed side by side. The numbers depend on the machine (the cell's output is not
# compared by the tests):

# %% tags=["nbval-ignore-output"]
Bb, Tb, Db, Fb = pick(full=(128, 32, 512, 2048), quick=(16, 32, 128, 512))
repeats = pick(full=5, quick=2)
seed_everything(0)
lin_ffn = PositionWiseFFN(Db, Fb).to(dev)
models = {"Linear": lin_ffn, "Conv1d": lin_ffn.to_conv()}
xb, yb = torch.randn(Bb, Tb, Db, device=dev), torch.randn(Bb, Tb, Db, device=dev)


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    F.mse_loss(model(xb), yb).backward()
    opt.step()


opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}
# lib.runtime.time_steps times the steps round-robin (so both see the same machine state), after an
# untimed warm-up round, with the GPU synchronised around each step, and returns median milliseconds
ms = time_steps({name: (lambda m=m, opt=opts[name]: train_step(m, opt)) for name, m in models.items()},
                dev, warmup=1, repeats=repeats)
where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type}, {torch.get_num_threads()} threads"
print(f"device: {where}; B={Bb} T={Tb} D={Db} F={Fb}")
for name, t in ms.items():
    print(f"{name:>7}: {t:8.1f} ms per step")
print(f"Conv1d / Linear = {ms['Conv1d'] / ms['Linear']:.2f}")

# %% [markdown]
# The careful measurement is `python bench/bench_ffn.py` (the source's full configuration,
# round-robin repeats after warm-up, and a third variant that feeds the convolution
# channels-first input, to separate the transposes from the convolution). On the course's
# CPU build machine (2 threads, PyTorch 2.15, float32) it printed
#
# ```text
# $ python bench/bench_ffn.py
# device: cpu (2 threads)   torch 2.15.0+cu132   dtype float32
# one training step (forward, MSE loss, backward, Adam): B=512 T=32 d_model=512 d_ff=2048; an epoch of 128,000 samples = 250 steps
# variant                                ms/step   s/epoch  vs Linear
# -------------------------------------------------------------------
# Linear (PositionWiseFFN)               4168.09   1042.02      1.00x
# Conv1d k=1 (PositionWiseFFNConv)       5422.66   1355.67      1.30x
# Conv1d on (B, D, T), no transposes     5356.53   1339.13      1.29x
# Conv1d/Linear ratio: 1.30   (Keras on an RTX 2080, from the source: 18.2 s / 14.8 s = 1.23)
# (median of 10 round-robin repeats after 2 warm-up rounds)
# ```
#
# Conv1d/Linear = 1.30 in this run, 1.08 in an earlier one (`--repeats 5`) on the same
# machine, which other jobs were sharing; the source measured 1.23 on a GPU. Every run puts
# the Linear version ahead; the size of the gap does not transfer (the smaller run in the cell
# above may show quite a different ratio): it depends on the device, the load, the library
# versions, the dtype and the shapes. Measure where you train (`--device cuda` on a GPU).
# Without a measurement, prefer `nn.Linear`: one GEMM, no transposes, and it accepts any
# number of leading axes.
#
# ## 6. How big is a Transformer layer?
#
# An encoder layer (the next lessons build it; `lib.transformer.EncoderBlock` is ready) has
# four weight matrices:
#
# | map | shape | parameters |
# | --- | --- | --- |
# | $W_Q, W_K, W_V$ together | $(d, 3d)$ | $3d^2$ |
# | $W_O$ | $(d, d)$ | $d^2$ |
# | FFN $W_1$ | $(d, 4d)$ | $4d^2$ |
# | FFN $W_2$ | $(4d, d)$ | $4d^2$ |
#
# together $\mathbf{12\,d^2}$; two thirds of it are the FFN. Biases add $3d + d + 4d + d$ and
# the two LayerNorms $2 \cdot 2d$, so the exact count is $12 d^2 + 13 d$.
# `lib.memory.layer_parameters` computes it for any $d_\text{ff}$, with or without biases:

# %%
for name, n in layer_parameter_breakdown(512, 2048).items():
    print(f"{name:<20} {n:>10,}")
print(f"{'total':<20} {layer_parameters(512, 2048):>10,}   12 d^2 = {12 * 512**2:,}")

# %% [markdown]
# Checked against real modules, ours and PyTorch's:

# %%
for d, h in [(64, 4), (512, 8)]:
    ours = count_parameters(EncoderBlock(d, h, 4 * d))
    torchs = count_parameters(nn.TransformerEncoderLayer(d, h, dim_feedforward=4 * d, batch_first=True))
    print(f"d={d}: formula {layer_parameters(d):,}, lib EncoderBlock {ours:,}, "
          f"torch TransformerEncoderLayer {torchs:,}")
    assert layer_parameters(d) == ours == torchs

# %% [markdown]
# ### Training state: 20 bytes per parameter
#
# Training with Adam in mixed precision keeps, for every parameter
# (Micikevicius et al. 2018; Rajbhandari et al. 2020, ZeRO, section 3.1):
#
# * fp16 weights (2 bytes) and fp16 gradients (2 bytes), used by forward and backward;
# * an fp32 **master copy** of the weights (4 bytes), which the optimizer updates, so that
#   updates smaller than fp16's resolution are not lost; the gradients converted to fp32
#   (4 bytes);
# * Adam's **momentum** $m$ and **variance** $v$ in fp32 (4 + 4 bytes).
#
# $4 \cdot 4 + 2 \cdot 2 = 20$ bytes per parameter. (ZeRO counts 16: it converts each
# gradient to fp32 on the fly instead of keeping a copy; `fp32_gradients=False`.)

# %%
for part, n in adam_mixed_precision_bytes(layer_parameters(512)).rows():
    print(f"{part:<20} {n:>12,} bytes")
state = adam_mixed_precision_bytes(layer_parameters(512))
print(f"{'total':<20} {state.total:>12,} bytes = {state.per_parameter:.0f} bytes x {state.num_params:,} parameters")

# %% [markdown]
# ### Activations and the attention matrix
#
# The backward pass needs some tensors of the forward pass, which autograd keeps
# ("saves") until then. For one `EncoderBlock` with ReLU and no dropout they are eight
# $(B, T, d)$ tensors, one $(B, T, d_\text{ff})$ and one attention matrix $(B, H, T, T)$:

# %%
for t in encoder_layer_saved_tensors(2, 6, 16, 4, 64):
    print(f"{t.name:<46} {str(t.shape):<14} {t.bytes:>6,} bytes")


# %% [markdown]
# With $d_\text{ff} = 4d$ that is $12\,B T d + B H T^2$ numbers per layer (plus $4BT$
# LayerNorm statistics). The first term grows linearly with the sequence length, the
# attention matrix **quadratically**: at $T = 4096$ it dominates. (Fused attention kernels,
# `fast=True`, do not store it: they recompute it in the backward pass. Korthikanti et al.
# 2022 count the same way, with dropout masks and fp16.)
#
# ### A table for a few model sizes
#
# One layer, fp16 activations on a GPU (`device="cuda"`, where LayerNorm keeps its statistics in fp32; the CPU keeps them in fp16), a batch of 8 sequences of 512 tokens:

# %%
def layer_table(B: int, T: int) -> None:
    print(f"{'model':<16} {'d':>5} {'H':>3} {'params/layer':>13} {'12 d^2':>12} {'20 B x params':>14} "
          f"{'activations':>12} {'of which attn':>14}")
    for model, d, h in [("Transformer base", 512, 8), ("BERT base", 768, 12), ("BERT large", 1024, 16),
                        ("GPT-3 2.7B", 2560, 32)]:
        P = layer_parameters(d)
        act = encoder_layer_activation_bytes(B, T, d, h, dtype=torch.float16, device="cuda")
        print(f"{model:<16} {d:>5} {h:>3} {P:>13,} {12 * d * d:>12,} {format_bytes(20 * P):>14} "
              f"{format_bytes(act['total']):>12} {format_bytes(act['attention']):>14}")


layer_table(B=8, T=512)

# %% [markdown]
# The parameters and their training state do not depend on the batch; the activations grow
# with $B$ and $T$. Multiply by the number of layers (12 for BERT base, 24 for BERT large)
# for a whole model.
#
# How the activations of one BERT-base layer grow with the sequence length:

# %%
lengths = [128, 256, 512, 1024, 2048, 4096]
linear_part, attn_part = [], []
for Tn in lengths:
    act = encoder_layer_activation_bytes(8, Tn, 768, 12, dtype=torch.float16, device="cuda")
    linear_part.append((act["total"] - act["attention"]) / 2**20)
    attn_part.append(act["attention"] / 2**20)
fig, ax = plt.subplots(figsize=(5, 3.2))
_ = ax.plot(lengths, linear_part, "o-", label="(B, T, d) and (B, T, 4d) tensors")
_ = ax.plot(lengths, attn_part, "s-", label="attention matrix (B, H, T, T)")
_ = ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="MiB per layer",
           title="BERT-base layer, B=8, fp16 activations")
_ = ax.set_xticks(lengths, [str(n) for n in lengths])  # one plain label per length measured
_ = ax.xaxis.set_minor_locator(plt.NullLocator())  # no crowded minor labels (2×10³, 3×10³, ...)
_ = ax.legend()

# %% [markdown]
# ### Checked against measurement
#
# Every number above is a formula. Here each one meets a measurement on this machine:
#
# 1. the bytes of the attention-weight tensor the block returns (`element_size() * nelement()`);
# 2. the tensors autograd actually saves, caught with `torch.autograd.graph.saved_tensors_hooks`
#    (`lib.memory.measure_saved_tensors`);
# 3. the state of a real `torch.optim.Adam` after one step (fp32 here: two moment tensors per
#    parameter tensor and a one-element `step` counter).

# %%
Bm, Tm, Dm, Hm, Fm = 4, 16, 32, 4, 128
block = EncoderBlock(Dm, Hm, Fm)
xm = torch.randn(Bm, Tm, Dm, requires_grad=True)

record = Record(need_weights=True)
out_m = block(xm, record=record)
w_m = record.weights[0]  # (B, H, T, T)
print(f"attention weights {tuple(w_m.shape)}: measured {w_m.element_size() * w_m.nelement():,} bytes, "
      f"formula {attention_matrix_bytes(Bm, Hm, Tm):,}")

saved = measure_saved_tensors(lambda: block(xm), exclude=block.parameters())
predicted = encoder_layer_activation_bytes(Bm, Tm, Dm, Hm, Fm)
print(f"saved for backward: measured {sum(s[2] for s in saved):,} bytes in {len(saved)} tensors, "
      f"formula {predicted['total']:,}")

opt = torch.optim.Adam(block.parameters())
block(xm).pow(2).mean().backward()
opt.step()
params = list(block.parameters())
print(f"Adam state after one step: measured {optimizer_state_bytes(opt):,} bytes, formula "
      f"{adam_state_bytes(sum(p.numel() for p in params), len(params)):,} "
      f"(8 bytes x {count_parameters(block):,} parameters + 4 bytes x {len(params)} step counters)")

# %% [markdown]
# On a GPU the allocator can be asked directly: the peak memory of a forward pass grows by
# the saved tensors. This cell measures only where CUDA is present (its output depends on
# the machine):

# %% tags=["nbval-ignore-output"]
if torch.cuda.is_available():
    gblock = EncoderBlock(512, 8, 2048).cuda()
    gx = torch.randn(8, 512, 512, device="cuda", requires_grad=True)
    gblock(gx).sum().backward()  # warm-up (cuBLAS workspace)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    gout = gblock(gx)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before - gout.nbytes
    print(f"{torch.cuda.get_device_name()}: kept for backward {format_bytes(kept)}, "
          f"formula {format_bytes(encoder_layer_activation_bytes(8, 512, 512, 8)['total'])}")
else:
    print(f"no CUDA here ({dev.type}): the allocator is not measured")


# %% [markdown]
# ### Exercise 3: memory of a layer in training (5 points)
#
# Write `my_layer_training_bytes(d_model, d_ff, bias=True)`: the bytes that the parameters
# of one encoder layer **and** their mixed-precision Adam state take (20 bytes per
# parameter, section 6). Count exactly: the four linear maps $(d, 3d), (d, d), (d, d_\text{ff}),
# (d_\text{ff}, d)$, their biases when `bias=True` ($3d$, $d$, $d_\text{ff}$, $d$), and two
# LayerNorms of $2d$ parameters each (always present). Return an `int`.
#
# Use arithmetic, not `lib.memory` and not by building a module.

# %% nbgrader={"grade": false, "grade_id": "ex3_layer_memory", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_layer_training_bytes(d_model: int, d_ff: int, bias: bool = True) -> int:
    ### BEGIN SOLUTION
    d, f = d_model, d_ff
    weights = 3 * d * d + d * d + d * f + f * d
    biases = (3 * d + d + f + d) if bias else 0
    norms = 2 * 2 * d
    return 20 * (weights + biases + norms)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex3_layer_memory_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
got = my_layer_training_bytes(512, 2048)
assert isinstance(got, int), f"return an int, got {type(got).__name__}"
expected = adam_mixed_precision_bytes(layer_parameters(512, 2048)).total
_d, _f = 512, 2048
check_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
            f"d_model=512, d_ff=2048: bytes (expected {expected:,}, got {got:,})", atol=0.5, rtol=0, variants={
    "without the two LayerNorms (2 × 2d parameters)": torch.tensor(expected - 20 * 4 * _d),
    "with one LayerNorm instead of two": torch.tensor(expected - 20 * 2 * _d),
    "without the biases (3d + d + d_ff + d)": torch.tensor(expected - 20 * (3 * _d + _d + _f + _d)),
    "as a count of parameters, not of bytes (20 bytes each)": torch.tensor(expected / 20),
    "with 16 bytes per parameter instead of 20 (section 6 counts 20)": torch.tensor(expected / 20 * 16),
    "with one (d, d) map for q, k and v together instead of (d, 3d)": torch.tensor(expected - 20 * (2 * _d * _d + 2 * _d)),
})
measured = 20 * count_parameters(EncoderBlock(16, 2, 24, bias=False))
assert my_layer_training_bytes(16, 24, bias=False) == measured, (
    f"d_model=16, d_ff=24, bias=False: a real EncoderBlock gives {measured:,} bytes, "
    f"you gave {my_layer_training_bytes(16, 24, bias=False):,}"
)
passed("my_layer_training_bytes matches lib.memory and a real EncoderBlock")

# %% nbgrader={"grade": true, "grade_id": "ex3_layer_memory_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
import random as _random
from unittest import mock

from lib.checks import forbid

rng = _random.Random(13)
configs = [(1, 1, True), (1, 4, False), (768, 3072, True)] + [
    (rng.randint(1, 300), rng.randint(1, 1200), rng.random() < 0.5) for _ in range(20)
]
expected = [adam_mixed_precision_bytes(layer_parameters(d, f, bias=b)).total for d, f, b in configs]
import lib.memory
import lib.transformer


def _refuse_memory(*args, **kwargs):
    raise AssertionError("your code called lib.memory or built a module; this exercise asks for the arithmetic")


references = (lib.memory.layer_parameters, lib.memory.layer_parameter_breakdown, lib.memory.adam_mixed_precision_bytes,
              lib.memory.count_parameters, lib.transformer.EncoderBlock)
aliases = {name: _refuse_memory for name, value in list(globals().items()) if any(value is r for r in references)}
answers = []  # filled inside the block: patch.dict restores globals() on exit, so nothing may be bound there
with forbid(
    "lib.memory.layer_parameters", "lib.memory.layer_parameter_breakdown", "lib.memory.adam_mixed_precision_bytes",
    "lib.memory.count_parameters", "lib.transformer.EncoderBlock",
), mock.patch.dict(globals(), aliases):
    answers.extend(my_layer_training_bytes(d, f, bias=b) for d, f, b in configs)
assert len(answers) == len(configs)
for (d, f, b), exp, ans in zip(configs, expected, answers):
    assert ans == exp, f"d_model={d}, d_ff={f}, bias={b}: expected {exp:,} bytes, got {ans:,}"
for d, f in [(8, 32), (12, 20)]:  # against real PyTorch layers
    real = 20 * count_parameters(nn.TransformerEncoderLayer(d, 2, dim_feedforward=f, batch_first=True))
    assert my_layer_training_bytes(d, f) == real, f"d_model={d}, d_ff={f}: a torch layer gives {real:,} bytes"
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## Summary
#
# * The FFN is $\max(0, xW_1 + b_1)W_2 + b_2$ at every position, with the same weights:
#   permuting positions commutes with it, and each position can be computed alone.
# * A Conv1d with kernel size 1 is the same map (weight `(out, in, 1)` = Linear weight
#   `(out, in)` with an extra axis); `PositionWiseFFN.to_conv()` / `PositionWiseFFNConv.to_linear()` convert.
#   `nn.Linear` is the simpler and usually faster choice (one GEMM, no transposes).
# * timm's `Mlp` is the same sub-layer: `fc1`, `act`, `drop`, `fc2`.
# * A layer has $12d^2 + 13d$ parameters; mixed-precision Adam needs 20 bytes for each.
#   Activations grow like $12\,BTd$ and the attention matrix like $BHT^2$ per layer.
#
# Next, attention and the FFN come together, with residual connections and layer
# normalisation, into the Transformer encoder (`lib.transformer`).
