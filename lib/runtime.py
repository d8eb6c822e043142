"""Where code runs and how reproducibly: device choice, seeding, quick mode.

Every notebook starts with::

    from lib.runtime import device, seed_everything, QUICK, pick
    seed_everything(0)
    dev = device()

Environment variables:
    COURSE_DEVICE  force a device ("cpu", "cuda", "cuda:1", "mps").
    COURSE_QUICK   "1" shrinks data and epochs so the whole course runs in CI
                   (``make test`` sets it); unset or "0" is the full course.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "device",
    "seed_everything",
    "is_quick",
    "QUICK",
    "pick",
    "eval_mode",
    "check_positive_int",
    "describe",
    "synchronize",
    "time_steps",
    "LOCK_FILE",
    "recorded_versions",
    "version_drift",
]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def is_quick() -> bool:
    """Whether quick mode is on (``COURSE_QUICK`` is 1/true/yes/on).

    Raises:
        ValueError: if the variable holds something that is neither true nor false.
    """
    raw = os.environ.get("COURSE_QUICK", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"COURSE_QUICK must be one of 1/0/true/false/yes/no, got {raw!r}")


QUICK: bool = is_quick()
"""Quick mode, read once at import: small data and few epochs for CI."""


def pick(full: T, quick: T) -> T:
    """Return ``quick`` in quick mode and ``full`` otherwise.

    Example: ``epochs = pick(full=20, quick=2)``.
    """
    return quick if is_quick() else full


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA if available, else Apple MPS, else CPU.

    Args:
        prefer: a device string to use instead of the automatic choice. When
            omitted, the ``COURSE_DEVICE`` environment variable is consulted.

    Raises:
        RuntimeError: if the requested device is not available on this machine.
    """
    choice = prefer if prefer is not None else os.environ.get("COURSE_DEVICE", "").strip()
    if choice:
        dev = torch.device(choice)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {choice!r} requested, but CUDA is not available here")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {choice!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        if dev.type == "mps" and not _mps_available():
            raise RuntimeError(f"device {choice!r} requested, but MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_positive_int(**values: object) -> None:
    """Check arguments that count something: ``TypeError`` unless an int (bool is not), ``ValueError`` below 1.

    Example: ``check_positive_int(num_heads=num_heads, max_len=max_len)``.
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` inside the block, and every sub-module's previous training/eval mode restored after,
    even on error.

    For evaluation and decoding in the middle of training (``lib.train.evaluate``,
    ``lib.decode``): dropout off, and the caller's modes untouched, each module's own
    (``model.train(was_training)`` would also switch a frozen, eval-mode encoder inside a
    training model back to training).  Gradients are not affected (combine with ``torch.no_grad()``).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so runs repeat.

    Args:
        seed: the seed.
        deterministic: also ask PyTorch for deterministic kernels (slower on GPU;
            raises at run time for operations that have no deterministic version).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def describe() -> dict[str, str]:
    """Versions and hardware, for the set-up notebook and bug reports."""
    import platform

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device()),
        "cuda": str(torch.cuda.is_available()),
        "threads": str(torch.get_num_threads()),
        "quick mode": str(is_quick()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def synchronize(dev: torch.device) -> None:
    """Wait until ``dev`` has finished its queued work (GPUs run asynchronously; a no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_steps(
    steps: Mapping[str, Callable[[], object]], dev: torch.device, *, warmup: int = 2, repeats: int = 10
) -> dict[str, float]:
    """Median milliseconds of each step, timed round-robin so that all share the machine's state.

    Benchmarks compare variants in one run: every round times each step once,
    after ``warmup`` untimed rounds, with the device synchronised around each
    call so that a GPU's asynchronous work is counted where it belongs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(dev)
            start = time.perf_counter()
            step()
            synchronize(dev)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


# ---------------------------------------------------------------------------
# Known-good versions: what the stored outputs of solutions/ were made with
# ---------------------------------------------------------------------------

LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements-lock.txt"
"""The course's lock (pip constraints) file, written by ``make lock`` (``tools/versions.py lock``)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def recorded_versions(path: Path | str | None = None) -> dict[str, str]:
    """The exact versions recorded in the lock file: ``{package: version}``.

    Raises:
        FileNotFoundError: if there is no lock file (``make lock`` writes one).
        ValueError: for a line that is not ``name==version``, a comment or blank.
    """
    path = Path(path) if path is not None else LOCK_FILE
    versions: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if match is None:
            raise ValueError(f"{path.name}, line {number}: expected 'name==version', got {raw!r}")
        versions[_canonical(match[1])] = match[2]
    return versions


def version_drift(path: Path | str | None = None, *, packages: Mapping[str, str] | None = None) -> list[str]:
    """One line per package whose installed version differs from the recorded one (empty: no drift).

    A difference is not an error: stored outputs are written to hold across the releases the
    course supports. The lines say where to look first when a notebook's output differs.

    Args:
        path: the lock file (default ``LOCK_FILE``).
        packages: ``{name: version}`` to compare instead of what this environment has installed.
    """
    recorded = recorded_versions(path)
    if packages is None:
        installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    else:
        installed = {_canonical(k): v for k, v in packages.items()}
    lines = []
    for name, version in sorted(recorded.items()):
        have = installed.get(name)
        if have is None:
            lines.append(f"{name}: recorded {version}, not installed")
        elif have.split("+")[0] != version.split("+")[0]:
            lines.append(f"{name}: recorded {version}, installed {have}")
    return lines
