"""Exercise checks: property tests that give a student actionable feedback.

Every visible check cell and hidden test in the notebooks is written with
these helpers, so a failure always says *what* was expected, *what* came and,
where it can, *where* they differ.  They raise ``AssertionError`` (which
nbgrader counts as a failed test) and print one line on success.

    check_shape(out, (2, 4, 8), "attention output")
    check_close(mine, reference, "masked_softmax on random scores")
    check_close(mine, reference, "masked_softmax", variants={
        "with the mask inverted (True means *may attend*)": lambda: masked_softmax(scores, ~mask),
    })
    check_causal(lambda x: block(x), torch.randn(2, 6, 16))
    with forbid("lib.attention.masked_softmax"):
        mine = masked_softmax(scores, mask)     # must not call the reference
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from unittest import mock

import torch
from torch import Tensor

__all__ = [
    "check_shape",
    "check_close",
    "call_explained",
    "check_causal",
    "check_permutation_equivariance",
    "check_not_reference",
    "forbid",
    "passed",
    "yours_or_reference",
]


def passed(message: str) -> None:
    """Print a success line (deterministic, so nbval can compare it)."""
    print(f"✔ {message}")


def yours_or_reference(
    yours: object,
    reference: object,
    name: str,
    *,
    exercise: str,
    probe: Callable[[object], object],
    check: Callable[[object], object] | None = None,
) -> object:
    """Your function (or class) if it is written and passes its check, else the course's reference, with a notice.

    Cells after an exercise use it so that a student who has not finished the
    exercise, or whose answer runs but is wrong, can still run the rest of the
    lesson instead of meeting a traceback deep inside torch three cells later::

        pool = yours_or_reference(attention_pool, nadaraya_watson_pool, "attention_pool",
                                  exercise="exercise 2", probe=lambda f: f(q, k, v, kernel, 1.0),
                                  check=lambda f: check_close(f(q, k, v, kernel, 1.0), reference_out))

    Args:
        yours: the student's function or class.
        reference: what to use instead, with the same call signature.
        name: the student's name for it, for the notice.
        exercise: which exercise to finish ("exercise 2").
        probe: calls its argument once on a small input; ``yours`` counts as
            unwritten when this raises ``NotImplementedError`` (the exercise's
            placeholder). Without ``check``, any other error is the student's
            to see, so it propagates.
        check: the exercise's check, called with ``yours`` after the probe; it
            raises (``AssertionError`` from ``lib.checks``, or whatever the
            student's code raises) when the answer is wrong. Then the notice
            quotes the check's first line and the reference is used.

    Returns:
        ``yours``, or ``reference`` after printing why.
    """
    try:
        probe(yours)
    except NotImplementedError:
        print(
            f"⚠ {name} is not written yet: finish {exercise} to see your own code at work. "
            f"Until then this lesson uses the course's reference."
        )
        return reference
    except Exception:
        if check is None:
            raise
        # the check below meets the same error and names it
    if check is not None:
        try:
            check(yours)
        except Exception as err:  # noqa: BLE001 - any failure of the student's code means: use the reference
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if not isinstance(err, AssertionError):
                first = f"{type(err).__name__}: {first}"
            print(
                f"⚠ your {name} does not pass {exercise}'s check yet ({first}). "
                f"Until it does, this lesson uses the course's reference; fix it and rerun this cell."
            )
            return reference
    return yours


def call_explained(fn: Callable[..., object], *args: object, name: str, hint: str, **kwargs: object) -> object:
    """``fn(*args, **kwargs)``, with an error of the student's code turned into a check failure that explains it.

    A shape mistake usually surfaces as a raw broadcast or matmul error raised on the
    student's own line; the check cell says what that error means instead::

        out = call_explained(masked_mean_pool, x, keep, name="masked_mean_pool(x, keep)",
                             hint="keep is (B, T): give it a feature axis, keep[..., None]")

    ``NotImplementedError`` (an unwritten exercise) and ``AssertionError`` (a check
    inside) pass through unchanged.

    Raises:
        AssertionError: ``"{name} raised {error}. {hint}"``.
    """
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever the student's code raised, explained
        first = (str(err).strip().splitlines() or [""])[0]
        raise AssertionError(f"{name} raised {type(err).__name__}: {first}. {hint}") from None


def check_shape(t: Tensor, expected: Sequence[int], name: str = "tensor") -> None:
    """Fail unless ``t`` is a tensor of exactly the ``expected`` shape."""
    if not isinstance(t, Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor of shape {tuple(expected)}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise AssertionError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


Variant = Tensor | Callable[[], Tensor]


def _as_float64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _same(a: Tensor, b: Tensor, atol: float, rtol: float) -> bool:
    """Same shape and values within tolerance (NaNs in the same places count as equal)."""
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True)


def _matching_variant(
    actual: Tensor, expected: Tensor, variants: Mapping[str, Variant] | None, atol: float, rtol: float
) -> str | None:
    """The description of the first variant ``actual`` matches, skipping those equal to ``expected``."""
    for description, variant in (variants or {}).items():
        value = variant() if callable(variant) else variant
        if not isinstance(value, Tensor):
            raise TypeError(f"variant {description!r}: expected a tensor or a function returning one, got {type(value).__name__}")
        v = _as_float64(value)
        if _same(v, expected, atol, rtol):
            continue  # on this input the mistake does not show, so it cannot be the explanation
        if _same(actual, v, atol, rtol):
            return description
    return None


def check_close(
    actual: Tensor,
    expected: Tensor,
    name: str = "result",
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    variants: Mapping[str, Variant] | None = None,
) -> None:
    """Fail unless ``actual`` matches ``expected`` in shape and value.

    The message names the largest difference and where it is, and warns about
    NaNs, which are the usual sign of a fully masked row gone wrong.

    Args:
        actual: the student's result.
        expected: the reference result.
        name: what is compared, for the message.
        atol, rtol: tolerances as in :func:`torch.allclose`.
        variants: known wrong answers, ``{description: tensor}``, each the
            reference computed with one typical mistake (the mask inverted, a
            scale missing, axes swapped, ...); a value may also be a function
            of no arguments returning the tensor, computed only when the check
            fails. When ``actual`` is wrong but matches a variant, the message
            names the mistake instead of only the difference::

                your result matches the expected one <description>

            so write the description to complete that sentence, e.g.
            ``"with the mask inverted (True means *may attend*)"``. Variants
            that coincide with ``expected`` on this input are never reported.
            A variant may have another shape than ``expected`` (a transposed
            result, say): a wrong shape that matches it is named too.

    Raises:
        AssertionError: with the message a student sees.
    """
    if not isinstance(actual, Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(actual).__name__}")
    a = _as_float64(actual)
    e = _as_float64(expected)
    if actual.shape != expected.shape:
        mistake = _matching_variant(a, e, variants, atol, rtol)
        hint = f"; your result matches the expected one {mistake}" if mistake else ""
        raise AssertionError(f"{name}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}{hint}")
    if _same(a, e, atol, rtol):
        return
    mistake = _matching_variant(a, e, variants, atol, rtol)
    if mistake:
        raise AssertionError(f"{name}: values differ; your result matches the expected one {mistake}")
    if torch.isnan(a).any() and not torch.isnan(e).any():
        where = tuple(torch.nonzero(torch.isnan(a))[0].tolist())
        raise AssertionError(f"{name}: your result contains NaN (first at index {where}); expected none")
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    idx = tuple(torch.nonzero(diff == diff.max())[0].tolist())
    raise AssertionError(
        f"{name}: values differ; largest difference {diff.max().item():.3g} at index {idx} "
        f"(yours {a[idx].item():.6g}, expected {e[idx].item():.6g})"
    )


def check_causal(fn: Callable[[Tensor], Tensor], x: Tensor, name: str = "model") -> None:
    """Fail if output position t depends on any input position after t.

    Computes the Jacobian's block structure with autograd: for each t, the
    gradient of ``fn(x)[:, t]`` with respect to ``x[:, t+1:]`` must be zero.

    Args:
        fn: maps (B, T, ...) to (B, T, ...).
        x: a float input of shape (B, T, ...).
    """
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    if out.shape[:2] != x.shape[:2]:
        raise AssertionError(f"{name}: expected output of shape (B, T, ...) = {tuple(x.shape[:2])} + ..., got {tuple(out.shape)}")
    T = x.shape[1]
    for t in range(T - 1):
        (grad,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True, allow_unused=True)
        if grad is None:
            continue
        leak = grad[:, t + 1 :].abs().max().item()
        if leak > 0:
            raise AssertionError(
                f"{name}: not causal — output position {t} depends on later input positions "
                f"(gradient {leak:.3g} with respect to positions {t + 1}..{T - 1}); mask keys j > i"
            )


def check_permutation_equivariance(
    fn: Callable[[Tensor], Tensor], x: Tensor, name: str = "model", *, atol: float = 1e-5, seed: int = 0
) -> None:
    """Fail unless permuting the positions of ``x`` (B, T, ...) permutes the output alike."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[1], generator=g)
    with torch.no_grad():
        out = fn(x)
        out_perm = fn(x[:, perm])
    check_close(out_perm, out[:, perm], f"{name}: f(permuted x) vs permuted f(x)", atol=atol, rtol=1e-4)


def check_not_reference(student: object, reference: object, name: str) -> None:
    """Fail if the student's function *is* the library's reference."""
    if student is reference or getattr(student, "__wrapped__", None) is reference:
        raise AssertionError(
            f"{name}: this exercise asks you to write it yourself, not to import the course's reference"
        )


def _resolve_owner(target: str) -> tuple[object, str]:
    """Split 'pkg.module.Class.attr' into (the object holding attr, 'attr')."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name, None)
        if owner is not None and hasattr(owner, parts[-1]):
            return owner, parts[-1]
        break
    raise ValueError(f"forbid: {target!r} does not exist")


def _user_namespace() -> dict:
    """The namespace a notebook's code runs in (IPython's user namespace, else ``__main__``)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is always there in the course
        shell = None
    if shell is not None:
        return shell.user_ns
    return vars(sys.modules["__main__"])


@contextlib.contextmanager
def forbid(*targets: str) -> Iterator[None]:
    """Make the named functions raise while the block runs.

    Use around a call of a student's function so that a solution that merely
    delegates to the reference implementation fails with a clear message::

        with forbid("lib.attention.masked_softmax", "torch.nn.functional.scaled_dot_product_attention"):
            out = student_attention(q, k, v)

    Besides the named attribute, every name in the notebook's namespace bound
    to the same object (``from lib.attention import masked_softmax as sm``) is
    refused too, and restored afterwards; other names the block defines stay.
    """
    patches = []
    namespace = _user_namespace()
    aliased: dict[str, tuple[object, Callable[..., None]]] = {}
    for target in targets:
        owner, attr = _resolve_owner(target)
        original = getattr(owner, attr)

        def _refuse(*args: object, _target: str = target, **kwargs: object) -> None:
            raise AssertionError(
                f"your code called {_target}; this exercise asks you to implement it yourself"
            )

        patches.append(mock.patch.object(owner, attr, _refuse))
        for name, value in list(namespace.items()):
            if value is original and not name.startswith("_"):
                aliased[name] = (value, _refuse)
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        for name, (_, refuse) in aliased.items():
            namespace[name] = refuse
        try:
            yield
        finally:
            for name, (value, refuse) in aliased.items():
                if namespace.get(name) is refuse:
                    namespace[name] = value
