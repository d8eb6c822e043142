# %% [markdown]
# # 00 · Setting up: how this course works
#
# This course builds attention and the Transformer **from scratch in PyTorch**, one
# component per lesson, and checks every component against PyTorch's built-ins and
# against a reference implementation. By the end you will have written, tested and
# measured scaled dot-product attention, multi-head attention, positional encodings,
# the position-wise feed-forward network and a Transformer encoder that classifies
# movie reviews.
#
# **How the pieces fit together**
#
# * `notebooks/` holds your copies of the lessons. Each lesson explains a component,
#   builds it step by step, and then asks you to write parts of it yourself.
# * `lib/` is the course library: the tested, finished version of every component.
#   Once a lesson has built something, later lessons `import` it from `lib`
#   instead of copying it forward, exactly as you would in a real code base.
# * `solutions/` holds the complete lessons (with every exercise solved) for
#   instructors; it is the single source from which `notebooks/` is generated.
#
# This first notebook checks your environment, shows how the exercises work, and
# walks through a warm-up exercise. In this lesson you will
#
# 1. see which versions of the course's packages you run and check the device that computes,
# 2. see what quick mode changes,
# 3. learn how an exercise works: your code, a check cell that answers at once, hidden tests
#    when it is graded,
# 4. write a numerically stable softmax (exercise 1).
#
# **Points in this lesson: 3** (one exercise).
#
# *Run time:* a few seconds on a 2-core CPU.

# %%
import platform

import torch

from lib.runtime import QUICK, describe, device, pick, seed_everything

seed_everything(0)
dev = device()

# %% [markdown]
# ## 1. Your environment
#
# `make lab` created a virtual environment in `.venv/`, installed the course into it
# and started JupyterLab. The table below lists what you are running. The exact
# versions and the device depend on your machine, so your output may differ from
# the one stored here.

# %% tags=["nbval-ignore-output"]
for key, value in describe().items():
    print(f"{key:>12}: {value}")

# %% [markdown]
# The stored outputs of the lessons were made with the exact versions recorded in
# `requirements-lock.txt` at the top of the course. Every printed output is written to
# hold across the releases the course supports, so a different version is no error;
# but when a cell of yours prints something else than the stored output, this list says
# where to look first. (An instructor who wants every student on the same versions
# installs with `make env-locked` instead of `make lab`'s default install.)

# %% tags=["nbval-ignore-output"]
from lib.runtime import LOCK_FILE, recorded_versions, version_drift

recorded = recorded_versions()
print(f"recorded in {LOCK_FILE.name}: " + ", ".join(f"{p} {recorded[p]}" for p in ("torch", "numpy", "matplotlib")))
drift = version_drift()
print("\n".join(drift) if drift else "your versions are exactly the recorded ones")

# %% [markdown]
# ### Which device?
#
# `lib.runtime.device()` picks the fastest device available: an NVIDIA GPU through
# CUDA, else Apple's GPU through MPS, else the CPU. Everything in the course runs on
# all three. To force a choice, set the environment variable before starting
# JupyterLab, e.g. `COURSE_DEVICE=cpu make lab`.
#
# Let us make sure the device actually computes: a small matrix product on the chosen
# device must agree with the same product on the CPU. (GPUs may use TF32 or a
# different summation order, so we compare with a tolerance rather than exactly.)

# %% tags=["nbval-ignore-output"]
print(f"computing on: {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else ""))

# %%
a = torch.randn(256, 128)
b = torch.randn(128, 64)
on_device = (a.to(dev) @ b.to(dev)).cpu()
on_cpu = a @ b
print("shape:", tuple(on_device.shape))
print("device result agrees with the CPU:", torch.allclose(on_device, on_cpu, atol=1e-2, rtol=1e-3))

# %% [markdown]
# ## 2. Quick mode
#
# Some lessons train models. Run as they are, they use the full datasets and as
# many epochs as it takes to get good results: a few minutes on a laptop CPU.
# The course's automatic tests run every notebook in **quick mode**, which shrinks
# data and epochs so the whole course executes in a few minutes. Quick mode is
# switched on by the environment variable `COURSE_QUICK=1` (the test command sets it)
# and the lessons choose their sizes with `pick`:
#
# ```python
# epochs = pick(full=10, quick=1)
# ```
#
# You normally never set it yourself.

# %%
epochs = pick(full=10, quick=1)
print("Training cells use `pick(full=..., quick=...)` to choose their sizes.")

# %% tags=["nbval-ignore-output"]
print(f"quick mode is {'on' if QUICK else 'off'}: epochs = {epochs}")


# %% [markdown]
# ## 3. How exercises work
#
# An exercise is a cell that contains
#
# ```python
# # YOUR CODE HERE
# raise NotImplementedError()
# ```
#
# Replace those two lines with your code. Right below it is a **check cell**: run it
# and it tells you immediately whether your code behaves as it should, and if not,
# *what* is wrong: a wrong shape, a value that differs (and where), a `NaN`, code that
# looks into the future where it must not. The checks test *properties* on random
# inputs (agreement with PyTorch, shapes, invariances), so they cannot be passed by
# hard-coding an answer.
#
# When your notebook is graded, the same checks run again together with **hidden
# tests** that probe more inputs. Each check cell and each hidden test earns points
# separately, so a partly working solution earns part of the points. Some exercises
# ask you to write a component that `lib` already contains; the hidden tests notice
# when a solution merely calls the library's version, so write it yourself.
#
# Do not delete or rename cells, and do not edit the check cells: the grader restores
# them anyway.
#
# ### Exercise 1: a numerically stable softmax (3 points)
#
# The softmax turns scores into a probability distribution:
# $\mathrm{softmax}(\mathbf{x})_i = \exp(x_i) / \sum_j \exp(x_j)$. Computed like
# that, $\exp$ overflows for scores above about 88 in float32 and the result
# becomes `nan`. Since the softmax does not change when the same constant is
# subtracted from every score, subtract the maximum first:
# $\mathrm{softmax}(\mathbf{x}) = \mathrm{softmax}(\mathbf{x} - \max_j x_j)$.
#
# Write `stable_softmax(x)` for a tensor of any shape, normalising over the **last**
# axis, using only `torch.exp`, `sum` and `max` (not `torch.softmax`).

# %% nbgrader={"grade": false, "grade_id": "ex1_stable_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def stable_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, safe for large scores."""
    ### BEGIN SOLUTION
    shifted = x - x.max(dim=-1, keepdim=True).values
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)
    ### END SOLUTION


# %% [markdown]
# Run the check:

# %% nbgrader={"grade": true, "grade_id": "ex1_stable_softmax_check", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
from lib.checks import check_close, passed

scores = torch.randn(4, 7)
mistakes = {  # the reference computed with a typical mistake, so a wrong answer is named
    "normalised over the first axis (dim=0) instead of the last": torch.softmax(scores, dim=0),
    "without dividing by the sum (exp of the shifted scores only)": lambda: torch.exp(scores - scores.max(-1, keepdim=True).values),
}
check_close(stable_softmax(scores), torch.softmax(scores, dim=-1), "stable_softmax on random scores", variants=mistakes)
passed("stable_softmax agrees with torch.softmax on random scores")
big = torch.tensor([[1000.0, 1001.0, 1002.0]])
check_close(stable_softmax(big), torch.softmax(big, dim=-1), "stable_softmax on scores near 1000")
passed("stable_softmax survives large scores")

# %% nbgrader={"grade": true, "grade_id": "ex1_stable_softmax_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from lib.checks import check_shape, forbid

g = torch.Generator().manual_seed(1234)
cases = [torch.randn(*shape, generator=g) * 50 for shape in [(5,), (2, 3, 9), (1, 1, 1), (3, 2, 4, 6)]]
expected = [torch.softmax(x, dim=-1) for x in cases]
with forbid("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax"):
    answers = [stable_softmax(x) for x in cases]
    extreme = stable_softmax(torch.tensor([-1e4, 0.0, 1e4]))
for x, y, e in zip(cases, answers, expected):
    check_shape(y, tuple(x.shape), f"stable_softmax output for input {tuple(x.shape)}")
    check_close(y, e, f"stable_softmax for shape {tuple(x.shape)}")
assert not torch.isnan(extreme).any(), "stable_softmax gives NaN for scores of -1e4 and 1e4"
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# Notice what the check cell printed: one line per property. If a check fails, it
# raises an error whose message says what it expected and what it got; fix your code
# and run both cells again.
#
# ## 4. What comes next
#
# The course map: every lesson of this course, read from the lesson folders themselves (so it
# lists whatever lessons your copy has, each by the title it opens with).

# %%
import json
from pathlib import Path

import lib

lesson_dir = Path(lib.__file__).resolve().parents[1] / "notebooks"
lesson_files = sorted(lesson_dir.glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
for path in lesson_files:
    first_cell = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
    print(first_cell.splitlines()[0].lstrip("# "))
if not lesson_files:
    print(f"no lessons found in {lesson_dir}: the course map lists the folders of notebooks/")

# %% [markdown]
# Continue with `01_attention_pooling`.
