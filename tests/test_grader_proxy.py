"""The grader process's proxies and the data-only wire format (tools/autograder/grader.py, wire.py).

The kernel side is the real agent (wire.py's source executed in a separate
namespace, as the grader installs it in a kernel), answering in this process; the
grading runs with real kernels are in test_grading.py and test_autograde_lessons.py.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.checks import check_causal, check_not_reference  # noqa: E402
from tools.autograder import wire  # noqa: E402
from tools.autograder.grader import GraderSession, Remote  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from grading_fixtures import SOL, TEST  # noqa: E402
from grading_fixtures import agent_session as _session  # noqa: E402


@pytest.mark.parametrize("make", [
    lambda: torch.randn(3, 4),
    lambda: torch.randn(2, 3, 5).transpose(1, 2),  # non-contiguous: the layout survives
    lambda: torch.randn(4, 1).expand(4, 3),
    lambda: torch.randn(1, dtype=torch.float64).expand(1, 1),  # one element, stride 0
    lambda: torch.randn(3).to(torch.bfloat16),
    lambda: torch.rand(2, 3) > 0.5,
    lambda: torch.tensor(2.5, dtype=torch.float64),
    lambda: torch.zeros(0, 3, dtype=torch.int64),
])
def test_tensors_round_trip(make):
    t = make()
    enc = wire.Encoder(lambda obj: pytest.fail(f"not data: {obj!r}"))
    header, blobs = wire.unpack(wire.pack({"v": enc(t)}, enc.blobs))
    back = wire.Decoder(blobs, None, wire.resolve_ref)(header["v"])
    assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)
    if t.dim() == 3:
        assert back.stride() == t.stride()


def test_values_round_trip():
    value = {"s": {1, "a"}, "f": frozenset({2}), "a": [1, 2.5, None, True, "x"], ("k", 1): (torch.ones(2), slice(1, None)), "d": torch.float16}
    enc = wire.Encoder(lambda obj: pytest.fail(f"not data: {obj!r}"))
    header, blobs = wire.unpack(wire.pack({"v": enc(value)}, enc.blobs))
    back = wire.Decoder(blobs, None, wire.resolve_ref)(header["v"])
    assert back["s"] == {1, "a"} and back["f"] == frozenset({2})
    assert back["a"] == value["a"] and back["d"] is torch.float16 and back[("k", 1)][1] == slice(1, None)
    assert torch.equal(back[("k", 1)][0], torch.ones(2))


@pytest.mark.parametrize("bad", [
    "not base64!",
    base64.b64encode(b"\x05\0\0\0\0\0\0\0{}").decode(),  # header length beyond the message
    base64.b64encode(struct.pack("<Q", 2) + b"{}").decode(),  # no blob sizes
    base64.b64encode(struct.pack("<Q", 30) + json.dumps({"blobs": [5]}).encode().ljust(30)).decode(),
])
def test_malformed_messages_are_refused(bad):
    with pytest.raises(wire.WireError):
        wire.unpack(bad)


@pytest.mark.parametrize("value", [
    {"X": 0, "dtype": "object", "shape": [1], "perm": [0]},  # no such dtype
    {"X": 0, "dtype": "float32", "shape": [4], "perm": [0]},  # data does not match the shape
    {"R": "os:system"},  # only lib, torch and math functions are named
    {"R": "lib.checks:__builtins__"},
    {"Q": 1},
])
def test_malformed_values_are_refused(value):
    with pytest.raises(wire.WireError):
        wire.Decoder([b"\0\0\0\0"], None, wire.resolve_ref)(value)


def test_student_objects_stay_in_the_kernel():
    s, _ = _session("class _Always:\n    __eq__ = lambda self, other: True\n"
                    "def add(a, b):\n    return _Always()\n",
                    [("def add(a, b):\n    return a + b", "ex1", SOL)])
    s.catch_up(1)
    got = s.ns["add"](1, 2)
    assert isinstance(got, Remote) and got != 3 and not (got == 3)  # a handle compares by identity only


def test_a_test_cell_runs_here_and_reports_its_error():
    s, user_ns = _session("def add(a, b):\n    print('from the student')\n    return a - b\n",
                          [("import math", None, {}), ("def add(a, b):\n    return a + b", "ex1", SOL),
                           ("assert add(1, 2) == 3, 'add(1, 2) should be 3'", "ex1_check", TEST)])
    out = s.run_test("ex1_check")
    assert [o["output_type"] for o in out] == ["error"]
    assert out[0]["ename"] == "AssertionError" and out[0]["evalue"] == "add(1, 2) should be 3"
    assert "from the student" not in json.dumps(out)
    assert "math" in s.ns and "math" not in user_ns  # the trusted cells ran here, not in the kernel


def test_gradients_flow_through_the_students_function():
    student = ("import torch\n"
               "def attend(x):\n"
               "    s = x @ x.transpose(-2, -1)\n"
               "    T = x.shape[1]\n"
               "    s = s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float('-inf'))\n"
               "    return torch.softmax(s, -1) @ x\n"
               "def leaky(x):\n"
               "    return torch.softmax(x @ x.transpose(-2, -1), -1) @ x\n")
    s, _ = _session(student, [("def attend(x): ...\ndef leaky(x): ...", "ex1", SOL)])
    s.catch_up(1)
    x = torch.randn(2, 5, 3)
    check_causal(s.ns["attend"], x, "attend")
    with pytest.raises(AssertionError, match="not causal"):
        check_causal(s.ns["leaky"], x, "leaky")


def test_a_students_module_trains_through_the_proxy():
    student = ("import torch\nfrom torch import nn\n"
               "class Enc(nn.Module):\n"
               "    def __init__(self, n, d):\n"
               "        super().__init__()\n"
               "        self.P = nn.Parameter(torch.randn(n, d))\n"
               "    def forward(self, x):\n"
               "        return x + self.P[: x.shape[1]]\n")
    s, _ = _session(student, [("class Enc: ...", "ex1", SOL)])
    s.catch_up(1)
    enc = s.ns["Enc"](4, 3)
    params = [p for p in enc.parameters() if p.requires_grad]
    assert len(params) == 1 and params[0].shape == (4, 3)
    x = torch.randn(2, 4, 3)
    before = enc(torch.zeros(1, 4, 3)).detach()
    opt = torch.optim.SGD(enc.parameters(), lr=1.0)
    enc(x).pow(2).sum().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    opt.step()  # the step reaches the kernel's parameter
    assert not torch.allclose(enc(torch.zeros(1, 4, 3)), before)
    assert torch.allclose(enc.P, params[0])


def test_references_are_recognised():
    """(In one process the kernel shares the grader's lib; graded kernels lack the lesson's references: withhold.py.)"""
    student = "import lib.attention as la\ndef my_softmax(s, m):\n    return la.masked_softmax(s, mask=m)\n" \
              "from lib.attention import masked_softmax as copied\n"
    s, _ = _session(student, [("def my_softmax(s, m): ...\ncopied = None", "ex1", SOL)])
    s.catch_up(1)
    scores, mask = torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool)
    assert s.ns["my_softmax"](scores, mask).shape == (2, 3)
    import lib.attention

    copied = s.ns["copied"]  # a handle, never this process's reference (which would compute the answers here)
    assert isinstance(copied, Remote) and copied is not lib.attention.masked_softmax
    assert copied == lib.attention.masked_softmax  # but it is recognised as lib's own object
    with pytest.raises(AssertionError, match="write it yourself"):
        check_not_reference(copied, lib.attention.masked_softmax, "copied")
    check_not_reference(s.ns["my_softmax"], lib.attention.masked_softmax, "my_softmax")


def test_torch_layers_are_sent_as_data():
    student = ("import torch\nfrom torch import nn\n"
               "def to_conv(linear):\n"
               "    conv = nn.Conv1d(linear.in_features, linear.out_features, 1)\n"
               "    with torch.no_grad():\n"
               "        conv.weight.copy_(linear.weight.unsqueeze(-1))\n"
               "        conv.bias.copy_(linear.bias)\n"
               "    return conv\n")
    s, _ = _session(student, [("def to_conv(linear): ...", "ex1", SOL)])
    s.catch_up(1)
    lin = torch.nn.Linear(6, 10)
    conv = s.ns["to_conv"](lin)
    assert isinstance(conv, torch.nn.Conv1d) and conv.kernel_size == (1,)
    x = torch.randn(2, 7, 6)
    assert torch.allclose(conv(x.transpose(1, 2)).transpose(1, 2), lin(x).detach(), atol=1e-6)



def test_lib_layers_are_sent_as_data():
    """lib's own layers (lesson 08 hands the student a PatchEmbed) travel as class, arguments and state."""
    from lib.vit import PatchEmbed

    student = ("def tokens(x, pe):\n"
               "    return pe.proj(x).flatten(2).transpose(1, 2) + 0 * pe.proj.bias.sum()\n")
    s, _ = _session(student, [("def tokens(x, pe): ...", "ex1", SOL)])
    s.catch_up(1)
    pe = PatchEmbed(img_size=(8, 12), patch_size=4, in_chans=3, d_model=5)
    x = torch.randn(2, 3, 8, 12)
    assert torch.allclose(s.ns["tokens"](x, pe), pe(x).detach(), atol=1e-6)

def test_the_kernel_never_gets_the_test_source():
    seen: list[str] = []
    s, _ = _session("def add(a, b):\n    return a + b\n",
                    [("def add(a, b): ...", "ex1", SOL),
                     ("SECRET_CASES = [(10, -3, 7)]\nfor a, b, want in SECRET_CASES:\n    assert add(a, b) == want",
                      "ex1_hidden", TEST)])
    send = s.send
    s.send = lambda text: seen.append(text) or send(text)
    assert s.run_test("ex1_hidden") == []
    sent = "".join(base64.b64decode(t).decode("latin-1") for t in seen)
    assert seen and "SECRET" not in sent and "want" not in sent


def test_trusted_notebook_cells_come_from_the_source(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 41")])
    nbformat.write(nb, tmp_path / "n.ipynb")
    s = GraderSession(nbformat.read(tmp_path / "n.ipynb", as_version=4), lambda text: "")
    s.catch_up(1)
    assert s.ns["x"] == 41


def test_the_kernel_cannot_hand_the_grader_a_function_to_call():
    s, _ = _session("def f():\n    return 1\n", [("def f(): ...", "ex1", SOL)])
    for value in ({"R": "torch:save"}, {"M": "torch.nn.modules.linear:Linear"}):
        with pytest.raises(wire.WireError):
            s.decode(value, [])
