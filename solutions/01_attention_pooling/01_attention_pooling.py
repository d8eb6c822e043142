# %% [markdown]
# # 01 · Attention pooling: queries, keys and values
#
# Attention is a way of **looking things up softly**. A database answers a query by
# finding the key that matches and returning its value. Attention instead returns a
# *weighted average* of **all** values, where each value's weight says how well its
# key matches the query:
#
# $$\mathrm{Attention}(\mathbf{q}, \mathcal{D}) = \sum_{i=1}^{n} \alpha(\mathbf{q}, \mathbf{k}_i)\, \mathbf{v}_i,
# \qquad \alpha(\mathbf{q}, \mathbf{k}_i) \ge 0,\quad \sum_i \alpha(\mathbf{q}, \mathbf{k}_i) = 1 .$$
#
# The weights $\alpha$ are the **attention weights**; the weighted average is
# **attention pooling**. Everything in the rest of the course (scoring functions,
# multiple heads, Transformers) is a way of computing good weights.
#
# The oldest instance is 60 years old: **Nadaraya–Watson kernel regression**
# (Nadaraya 1964, Watson 1964). Given training pairs $(x_i, y_i)$, it predicts $y$ at
# a new $x$ by averaging the $y_i$, weighting each by how close $x_i$ is to $x$.
# In attention's words: the new $x$ is the **query**, the training inputs $x_i$ are
# the **keys** and the training targets $y_i$ are the **values**.
#
# In this lesson you will
#
# 1. generate a regression problem and try the simplest pooling (a plain average),
# 2. build Nadaraya–Watson attention step by step, and look at its attention weights,
# 3. study kernels and their width, and write two kernels yourself,
# 4. write attention pooling for any kernel,
# 5. make the kernel width a **learnable parameter** and train it.
#
# **Points in this lesson: 8** (exercise 1: 4, exercise 2: 4).
#
# *Run time:* under ten seconds on a 2-core CPU in full mode, training the kernel width included.

# %%
import matplotlib.pyplot as plt
import torch

from lib.attention import KERNELS, NadarayaWatson, Record, nadaraya_watson
from lib.checks import check_close, check_shape, passed
from lib.plot import plot_curves, show_heatmaps
from lib.runtime import seed_everything

seed_everything(0)


# %% [markdown]
# ## 1. A regression problem
#
# We sample 50 inputs uniformly from $[0, 5]$ and observe a smooth function plus noise:
#
# $$y_i = 2\sin(x_i) + x_i^{0.8} + \epsilon_i,\qquad \epsilon_i \sim \mathcal{N}(0, 0.5^2).$$
#
# The validation queries are 50 evenly spaced points, where we know the true function.

# %%
def f(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(x) + x**0.8


n_train = 50
x_train, _ = torch.sort(torch.rand(n_train) * 5)  # keys, (n_train,)
y_train = f(x_train) + torch.randn(n_train) * 0.5  # values, (n_train,)
x_val = torch.arange(0, 5, 0.1)  # queries, (50,)
y_truth = f(x_val)
print("keys:", tuple(x_train.shape), " values:", tuple(y_train.shape), " queries:", tuple(x_val.shape))


def plot_fit(y_hat: torch.Tensor, title: str, ax=None):
    """Training data, the truth, and a prediction."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ax.plot(x_train, y_train, "o", alpha=0.5, label="training data (keys, values)")
    ax.plot(x_val, y_truth, label="truth")
    ax.plot(x_val, y_hat.detach(), label="prediction")
    ax.set(xlabel="x", ylabel="y", title=title, xlim=(0, 5), ylim=(-1, 5))
    ax.legend(fontsize=7)
    return ax


def mse(y_hat: torch.Tensor) -> float:
    return ((y_hat - y_truth) ** 2).mean().item()


# %% [markdown]
# ### The simplest pooling: average everything
#
# With $\alpha(q, k_i) = 1/n$ every query gets the same answer, the mean of the
# values. The weights ignore the query entirely, so this is a poor estimator:

# %%
y_avg = y_train.mean().expand_as(x_val)
print(f"average pooling, validation MSE: {mse(y_avg):.3f}")
_ = plot_fit(y_avg, "average pooling")

# %% [markdown]
# ## 2. Nadaraya–Watson attention, step by step
#
# Let the weights depend on the distance between query and key through a **kernel**
# $k(u)$ of the scaled distance $u = (q - x_i)/h$, where $h$ is the bandwidth:
#
# $$f(q) = \sum_i \frac{k\big((q - x_i)/h\big)}{\sum_j k\big((q - x_j)/h\big)}\, y_i .$$
#
# With the Gaussian kernel $k(u) = \exp(-u^2/2)$ the normalised weights are exactly a
# **softmax** of the scores $-\tfrac12 (q - x_i)^2/h^2$, and we write the whole
# computation for all queries at once with broadcasting. Watch the shapes: every
# query is compared with every key, so the weights form a $(T_q, T_k)$ matrix.

# %%
h = 1.0
diffs = x_val.unsqueeze(1) - x_train.unsqueeze(0)  # (Tq, 1) - (1, Tk) -> (Tq, Tk)
scores = -((diffs / h) ** 2) / 2  # (Tq, Tk)
weights = torch.softmax(scores, dim=1)  # (Tq, Tk), rows sum to 1
y_nw = weights @ y_train  # (Tq, Tk) @ (Tk,) -> (Tq,)
print("differences:", tuple(diffs.shape), " weights:", tuple(weights.shape), " prediction:", tuple(y_nw.shape))
print("every row of weights sums to 1:", torch.allclose(weights.sum(1), torch.ones(len(x_val))))
print(f"Nadaraya-Watson (Gaussian, h=1), validation MSE: {mse(y_nw):.3f}")

# %% [markdown]
# `lib.attention.nadaraya_watson` does the same for any kernel (it normalises by the
# sum rather than with a softmax, which is the same thing for the Gaussian):

# %%
y_lib, w_lib = nadaraya_watson(x_val, x_train, y_train, kernel="gaussian", bandwidth=h)
check_close(y_lib, y_nw, "lib prediction vs ours")
check_close(w_lib, weights, "lib weights vs ours")
passed("our step-by-step version agrees with lib.attention.nadaraya_watson")
_ = plot_fit(y_nw, "Nadaraya-Watson, Gaussian kernel, h = 1")

# %% [markdown]
# ### Looking at the attention weights
#
# The keys are sorted, so a query attends to the keys near it: the weights
# concentrate along the diagonal. Each row is one query's distribution over the 50
# keys.

# %%
_ = show_heatmaps(weights, xlabel="sorted training inputs (keys)", ylabel="validation inputs (queries)", figsize=(3.5, 3.5))

# %% [markdown]
# ## 3. Kernels and their width
#
# Any non-negative function that is largest at $u = 0$ and decreases with $|u|$ can
# serve as a kernel. Three classics:
#
# | kernel | $k(u)$ |
# | --- | --- |
# | Gaussian | $\exp(-u^2/2)$ |
# | boxcar | $1$ if $\lvert u\rvert < 1$, else $0$ |
# | constant | $1$ (average pooling again) |
#
# The **bandwidth** $h$ matters more than the kernel's shape: small $h$ means each
# query listens only to its nearest keys (low bias, high variance: it follows the
# noise), large $h$ means it averages over many (high bias: it smooths the function
# away).

# %%
u = torch.linspace(-2.5, 2.5, 201)
fig, axes = plt.subplots(1, 3, figsize=(9, 2.2), sharey=True)
for ax, name in zip(axes, ["gaussian", "boxcar", "constant"]):
    ax.plot(u, KERNELS[name](u))
    ax.set(title=name, xlabel="u")
_ = fig.tight_layout()

# %%
bandwidths = [0.1, 0.3, 1.0, 3.0]
fig, axes = plt.subplots(1, len(bandwidths), figsize=(16, 3), sharey=True)
print(f"{'kernel':>10} " + " ".join(f"h={bw:<6}" for bw in bandwidths))
for name in ["gaussian", "boxcar"]:
    row = []
    for ax, bw in zip(axes, bandwidths):
        y_hat, _ = nadaraya_watson(x_val, x_train, y_train, kernel=name, bandwidth=bw)
        row.append(mse(y_hat))
        if name == "gaussian":
            plot_fit(y_hat, f"Gaussian, h = {bw}", ax=ax)
    print(f"{name:>10} " + " ".join(f"{m:<8.3f}" for m in row))
_ = fig.tight_layout()


# %% [markdown]
# The table shows validation MSE: too narrow a kernel overfits the noise, too wide a
# kernel underfits. (With $h = 0.1$ the boxcar kernel reaches no training point at all
# for some queries; `nadaraya_watson` then returns a zero prediction rather than
# dividing by zero, which costs it here.)
#
# ### Exercise 1: two more kernels (4 points)
#
# Implement
#
# * the **Laplace** kernel $k(u) = \exp(-\lvert u\rvert)$, and
# * the **Epanechnikov** kernel $k(u) = \max(0,\ 1 - u^2)$, which minimises the asymptotic
#   mean integrated squared error among **all** non-negative kernels (Epanechnikov, 1969),
#   not only among those of compact support.
#
# Both take a tensor of scaled distances of any shape and return a tensor of the same
# shape. Use elementwise tensor operations (no Python loops).

# %% nbgrader={"grade": false, "grade_id": "ex1_kernels", "locked": false, "schema_version": 3, "solution": true, "task": false}
def laplace(u: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return torch.exp(-u.abs())
    ### END SOLUTION


def epanechnikov(u: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return torch.clamp(1 - u**2, min=0.0)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_kernels_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
u = torch.linspace(-3, 3, 61)
check_close(laplace(u), torch.exp(-u.abs()), "laplace(u) for u in [-3, 3]", variants={
    "without the absolute value: exp(-u) (the kernel must be symmetric)": torch.exp(-u),
    "with u squared: exp(-u²) is Gaussian-like, the Laplace kernel uses |u|": torch.exp(-(u**2)),
    "with the sign flipped: exp(|u|) (a kernel decays away from 0)": torch.exp(u.abs()),
})
check_close(epanechnikov(u), torch.clamp(1 - u**2, min=0.0), "epanechnikov(u) for u in [-3, 3]", variants={
    "without the clamp at 0: 1 - u² goes negative for |u| > 1": 1 - u**2,
    "times the normalising constant 3/4 (here every kernel has k(0) = 1)": 0.75 * torch.clamp(1 - u**2, min=0.0),
    "with |u| instead of u²: max(0, 1 - |u|) is the triangular kernel": torch.clamp(1 - u.abs(), min=0.0),
})
for name, kernel in [("laplace", laplace), ("epanechnikov", epanechnikov)]:
    k = kernel(u)
    check_shape(k, tuple(u.shape), f"{name}(u)")
    assert torch.all(k >= 0), f"{name}: a kernel must never be negative"
    check_close(k, kernel(-u), f"{name}: symmetry k(u) = k(-u)")
    assert k.argmax().item() == 30, f"{name}: the kernel must peak at u = 0"
    check_close(kernel(torch.zeros(1)), torch.ones(1), f"{name}(0)")
check_close(laplace(torch.tensor([1.0, -2.0])), torch.exp(torch.tensor([-1.0, -2.0])), "laplace at u = 1 and -2")
assert torch.all(epanechnikov(torch.tensor([1.0, 1.5, -4.0])) == 0), "epanechnikov must be 0 for |u| >= 1"
passed("both kernels are non-negative, symmetric, peak at 0 and have the right values")

# %% nbgrader={"grade": true, "grade_id": "ex1_kernels_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(101)
for shape in [(7,), (3, 4), (2, 3, 5)]:
    x = torch.randn(*shape, generator=g) * 2
    with forbid("lib.attention._laplace", "lib.attention._epanechnikov"):
        ours_l, ours_e = laplace(x), epanechnikov(x)
    check_close(ours_l, KERNELS["laplace"](x), f"laplace on shape {shape}")
    check_close(ours_e, KERNELS["epanechnikov"](x), f"epanechnikov on shape {shape}")
for kernel in (laplace, epanechnikov):
    assert kernel not in KERNELS.values(), "write the kernel yourself rather than taking it from lib.attention.KERNELS"
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# With your kernels in hand, compare all five at a bandwidth of 0.5: the constant kernel
# (average pooling, section 1), the Gaussian, the boxcar and your two:

# %%
from lib.checks import yours_or_reference

_probe = lambda kernel: kernel(torch.zeros(1))  # noqa: E731
ours = {
    "constant": KERNELS["constant"],
    "gaussian": KERNELS["gaussian"],
    "boxcar": KERNELS["boxcar"],
    "laplace": yours_or_reference(laplace, KERNELS["laplace"], "laplace", exercise="exercise 1", probe=_probe),
    "epanechnikov": yours_or_reference(epanechnikov, KERNELS["epanechnikov"], "epanechnikov", exercise="exercise 1", probe=_probe),
}
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for name, kernel in ours.items():
    axes[0].plot(u, kernel(u), label=name)
    y_hat, _ = nadaraya_watson(x_val, x_train, y_train, kernel=kernel, bandwidth=0.5)
    axes[1].plot(x_val, y_hat, label=f"{name} (MSE {mse(y_hat):.3f})")
axes[0].set(title="kernels", xlabel="u", ylabel="k(u)")
axes[1].plot(x_val, y_truth, "k--", label="truth")
axes[1].set(title="predictions, h = 0.5", xlabel="x", ylabel="y")
for ax in axes:
    ax.legend(fontsize=7)
_ = fig.tight_layout()


# %% [markdown]
# ### Exercise 2: attention pooling with any kernel (4 points)
#
# Write `attention_pool(queries, keys, values, kernel, bandwidth)` that returns the
# prediction **and** the weights:
#
# * `queries` has shape `(Tq,)`, `keys` and `values` shape `(Tk,)`;
# * `kernel` is a function like the ones above;
# * the weights have shape `(Tq, Tk)`, are non-negative and each row sums to 1;
# * a query that no key reaches (every kernel value is 0, possible with compact
#   kernels) gets a row of zeros and a prediction of 0, **not** `nan`.

# %% nbgrader={"grade": false, "grade_id": "ex2_attention_pool", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attention_pool(queries, keys, values, kernel, bandwidth):
    ### BEGIN SOLUTION
    k = kernel((queries.unsqueeze(1) - keys.unsqueeze(0)) / bandwidth)  # (Tq, Tk)
    total = k.sum(dim=1, keepdim=True)  # (Tq, 1)
    weights = torch.where(total > 0, k / total.clamp_min(1e-30), torch.zeros_like(k))
    return weights @ values, weights
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_attention_pool_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
y_hat, w = attention_pool(x_val, x_train, y_train, KERNELS["gaussian"], 0.5)
check_shape(w, (len(x_val), n_train), "weights")
check_shape(y_hat, (len(x_val),), "prediction")
ref_y, ref_w = nadaraya_watson(x_val, x_train, y_train, kernel="gaussian", bandwidth=0.5)
_k = KERNELS["gaussian"]((x_val.unsqueeze(1) - x_train.unsqueeze(0)) / 0.5)  # (Tq, Tk), not normalised
check_close(w, ref_w, "weights (Gaussian, h = 0.5)", variants={
    "without dividing the distances by the bandwidth": lambda: nadaraya_watson(x_val, x_train, y_train, kernel="gaussian", bandwidth=1.0)[1],
    "with the distances multiplied by the bandwidth instead of divided": lambda: nadaraya_watson(x_val, x_train, y_train, kernel="gaussian", bandwidth=2.0)[1],
    "normalised over the queries (columns sum to 1) instead of over the keys (rows)": _k / _k.sum(0, keepdim=True),
    "without normalising (the raw kernel values; each row must sum to 1)": _k,
})
check_close(y_hat, ref_y, "prediction (Gaussian, h = 0.5)", variants={
    "computed from the kernel values before normalising (divide each row by its sum)": _k @ y_train,
})
y_far, w_far = attention_pool(torch.tensor([100.0]), x_train, y_train, KERNELS["boxcar"], 0.5)
assert not torch.isnan(y_far).any(), "a query no key reaches gives NaN; return zeros instead"
check_close(w_far, torch.zeros(1, n_train), "weights of a query that no key reaches")
passed("attention_pool matches lib and handles queries that no key reaches")

# %% nbgrader={"grade": true, "grade_id": "ex2_attention_pool_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(202)
for name in ["gaussian", "boxcar", "epanechnikov", "laplace"]:
    for Tq, Tk, bw in [(1, 1, 0.7), (9, 13, 0.3), (20, 5, 2.0)]:
        q = torch.rand(Tq, generator=g) * 6 - 0.5
        k = torch.rand(Tk, generator=g) * 5
        v = torch.randn(Tk, generator=g)
        ref_y, ref_w = nadaraya_watson(q, k, v, kernel=name, bandwidth=bw)
        with forbid("lib.attention.nadaraya_watson", "lib.attention.masked_softmax"):
            y_hat, w = attention_pool(q, k, v, KERNELS[name], bw)
        check_close(w, ref_w, f"weights, {name} kernel, Tq={Tq}, Tk={Tk}, h={bw}")
        check_close(y_hat, ref_y, f"prediction, {name} kernel, Tq={Tq}, Tk={Tk}, h={bw}")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Learning the kernel width
#
# So far $h$ was chosen by hand. Attention becomes a *learned* component once its
# weights depend on parameters. The simplest parametric version multiplies the
# distance by a learnable $w$ (an inverse bandwidth):
#
# $$f(q) = \sum_i \mathrm{softmax}_i\!\left(-\tfrac12 \big((q - x_i)\, w\big)^2\right) y_i .$$
#
# `lib.attention.NadarayaWatson` implements it as a one-parameter `nn.Module`. To train
# $w$ on the training set itself, each training point must predict its own $y_i$
# from the **other** points: otherwise $w \to \infty$ makes every point attend only to
# itself, with zero training loss and a useless model. A boolean mask that is
# `False` on the diagonal hides each point's own key: this is the first **attention
# mask** of the course. (Lesson 02 is all about masks.)

# %%
seed_everything(0)
model = NadarayaWatson(w=1.0)
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
not_self = ~torch.eye(n_train, dtype=torch.bool)  # (n, n), False on the diagonal
losses = []
for epoch in range(20):
    optimizer.zero_grad()
    y_fit = model(x_train, x_train, y_train, mask=not_self)  # queries = keys = training inputs, (n,)
    loss = ((y_fit - y_train) ** 2).mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"learned w = {model.w.item():.3f}  (bandwidth 1/w = {1 / model.w.item():.3f})")
print(f"leave-one-out training loss: {losses[0]:.3f} -> {losses[-1]:.3f}")
_ = plot_curves({"leave-one-out training loss": losses}, ylabel="MSE")

# %% [markdown]
# The learned bandwidth is narrower than $h = 1$, so the fit follows the data more
# closely, and the attention weights are more concentrated along the diagonal:

# %%
with torch.no_grad():
    record = Record(need_weights=True)  # the module fills in its attention weights
    y_learned = model(x_val, x_train, y_train, record=record)  # (Tq,)
    w_learned = record.weights[0]  # (Tq, Tk)
print(f"parametric Nadaraya-Watson, validation MSE: {mse(y_learned):.3f}")
_ = plot_fit(y_learned, f"learned w = {model.w.item():.2f}")
_ = show_heatmaps(torch.stack([weights, w_learned]), titles=["fixed h = 1", "learned w"],
                  xlabel="sorted training inputs (keys)", ylabel="validation inputs (queries)", figsize=(3.2, 3.2))

# %% [markdown]
# ## Summary
#
# * Attention pooling is a weighted average of **values**; the weights come from
#   comparing a **query** with **keys**, are non-negative, and sum to 1.
# * Nadaraya–Watson regression is attention pooling with a fixed kernel; with the
#   Gaussian kernel the weights are a softmax of negative squared distances.
# * The kernel's width trades bias against variance; making it a parameter turns
#   attention into a trainable layer. Training it needed a **mask**.
#
# Next, lesson 02 replaces the distance by learned **scoring functions**
# (additive and scaled dot-product attention) and makes masking rigorous.
