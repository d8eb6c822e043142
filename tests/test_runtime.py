"""lib.runtime: device choice, seeding, quick mode."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lib import runtime


def test_device_defaults_to_an_available_device(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    dev = runtime.device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if runtime._mps_available() else "cpu")
    assert dev.type == expected
    torch.ones(2, device=dev)  # usable


def test_device_override(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")
    assert runtime.device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.device()


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    runtime.seed_everything(7)
    a = draw()
    runtime.seed_everything(7)
    b = draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("", False), ("no", False)])
def test_quick_mode_flag(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_QUICK", value)
    assert runtime.is_quick() is expected
    assert runtime.pick(full="full", quick="quick") == ("quick" if expected else "full")


def test_quick_mode_rejects_garbage(monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "maybe")
    with pytest.raises(ValueError, match="COURSE_QUICK must be one of"):
        runtime.is_quick()


def test_describe_names_versions():
    info = runtime.describe()
    assert info["torch"] == torch.__version__
    assert {"python", "device", "quick mode"} <= set(info)


def test_time_steps_times_every_step_round_robin():
    from lib.runtime import time_steps

    calls: list[str] = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ms = time_steps(steps, torch.device("cpu"), warmup=1, repeats=3)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls == ["a", "b"] * 4  # interleaved: 1 warm-up round + 3 timed rounds
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        time_steps(steps, torch.device("cpu"), repeats=0)


def test_recorded_versions_and_drift(tmp_path):
    from lib.runtime import recorded_versions, version_drift

    lock = tmp_path / "lock.txt"
    lock.write_text("# header\n\ntorch==2.15.0\nNumPy==2.4.6  # inline comment\nsome_pkg==1.0\n")
    assert recorded_versions(lock) == {"torch": "2.15.0", "numpy": "2.4.6", "some-pkg": "1.0"}
    drift = version_drift(lock, packages={"torch": "2.14.1+cu130", "numpy": "2.4.6", "Some.Pkg": "1.0"})
    assert drift == ["torch: recorded 2.15.0, installed 2.14.1+cu130"]
    assert version_drift(lock, packages={"torch": "2.15.0+cpu", "numpy": "2.4.6"}) == ["some-pkg: recorded 1.0, not installed"]
    lock.write_text("torch>=2.4\n")
    with pytest.raises(ValueError, match="line 1: expected 'name==version'"):
        recorded_versions(lock)


def test_the_committed_lock_names_the_course_stack():
    from lib.runtime import LOCK_FILE, recorded_versions

    recorded = recorded_versions(LOCK_FILE)
    for package in ("torch", "torchvision", "numpy", "matplotlib", "nbval", "nbgrader", "d2l"):
        assert package in recorded, f"{LOCK_FILE.name} does not record {package}: run `make lock`"


def test_check_positive_int_separates_types_from_values() -> None:
    runtime.check_positive_int(a=1, b=7)
    for bad in (2.0, True, "3", None):
        with pytest.raises(TypeError, match=r"num_heads must be a positive int, got \w+"):
            runtime.check_positive_int(num_heads=bad)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"max_len must be a positive int, got {bad}"):
            runtime.check_positive_int(ok=2, max_len=bad)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_on_error(training: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with runtime.eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training is training and model[1].training is training
    with pytest.raises(RuntimeError, match="boom"), runtime.eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training is training and model[1].training is training
