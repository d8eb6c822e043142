"""Shared test set-up: every test starts from the same seed; d2l is the reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from lib.runtime import LOCK_FILE, version_drift


def pytest_report_header(config):
    """Drift from the recorded versions, at the top of `make test`'s output: where to look first."""
    try:
        drift = version_drift()
    except FileNotFoundError:
        return [f"versions: no {LOCK_FILE.name} (make lock writes it)"]
    if not drift:
        return [f"versions: as recorded in {LOCK_FILE.name}"]
    return [f"versions: {len(drift)} differ from {LOCK_FILE.name} (stored outputs should not depend on them):"] + [
        f"  {line}" for line in drift
    ]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def d2l():
    """d2l's PyTorch module. Missing d2l fails loudly: parity tests must never be skipped quietly."""
    try:
        return importlib.import_module("d2l.torch")
    except ImportError as err:  # pragma: no cover - the set-up installs it
        pytest.fail(f"d2l is not importable ({err}); `make env` installs d2l==1.0.3 with --no-deps")
