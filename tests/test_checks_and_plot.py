"""lib.checks (exercise feedback) and lib.plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import lib.attention  # noqa: E402
from lib.checks import (  # noqa: E402
    check_causal,
    check_close,
    check_not_reference,
    check_permutation_equivariance,
    check_shape,
    forbid,
    passed,
)
from lib.plot import plot_curves, show_heatmaps  # noqa: E402


def test_check_close_reports_where_and_how_much():
    a = torch.zeros(2, 3)
    b = a.clone()
    b[1, 2] = 0.5
    check_close(a, a.clone(), "same")
    with pytest.raises(AssertionError, match=r"largest difference 0.5 at index \(1, 2\)"):
        check_close(a, b, "x")
    with pytest.raises(AssertionError, match=r"expected shape \(3, 2\), got \(2, 3\)"):
        check_close(a, b.T, "x")
    nan = a.clone()
    nan[0, 1] = float("nan")
    with pytest.raises(AssertionError, match=r"contains NaN \(first at index \(0, 1\)\)"):
        check_close(nan, a, "x")
    with pytest.raises(AssertionError, match="expected a torch.Tensor, got list"):
        check_close([0.0], a, "x")


def _attention_weights(scores, mask):
    return lib.attention.masked_softmax(scores, mask)


def _weights_variants(scores, mask, d):
    """Typical mistakes in softmax(q kᵀ / √d) with a mask, computed from the reference."""
    return {
        "with the mask inverted (True means *may attend*)": lambda: _attention_weights(scores / d**0.5, ~mask),
        "without the 1/√d scale": lambda: _attention_weights(scores, mask),
        "with the scores transposed": _attention_weights(scores.transpose(-2, -1) / d**0.5, mask),
    }


def test_check_close_names_each_matched_variant():
    torch.manual_seed(0)
    d = 16
    scores = torch.randn(2, 5, 5) * 3
    mask = torch.rand(2, 5, 5) > 0.3
    mask[..., 0] = True  # no row fully masked, either way round
    mask[..., 1] = False
    expected = _attention_weights(scores / d**0.5, mask)
    variants = _weights_variants(scores, mask, d)
    check_close(expected.clone(), expected, "weights", variants=variants)  # a correct answer passes
    for description, wrong in variants.items():
        answer = wrong() if callable(wrong) else wrong
        with pytest.raises(AssertionError) as info:
            check_close(answer, expected, "weights", variants=variants)
        assert str(info.value) == f"weights: values differ; your result matches the expected one {description}"


def test_check_close_variant_of_another_shape_is_named():
    x = torch.arange(6.0).reshape(2, 3)
    with pytest.raises(AssertionError, match=r"expected shape \(2, 3\), got \(3, 2\); your result matches the expected one transposed"):
        check_close(x.T.clone(), x, "y", variants={"transposed": x.T})
    with pytest.raises(AssertionError, match=r"expected shape \(2, 3\), got \(3, 2\)$"):  # shape named, no variant matches
        check_close(x.T + 1, x, "y", variants={"transposed": x.T})


def test_check_close_without_a_matching_variant_gives_the_plain_difference():
    a = torch.zeros(2, 3)
    b = a.clone()
    b[1, 2] = 0.5
    with pytest.raises(AssertionError, match=r"^x: values differ; largest difference 0.5 at index \(1, 2\)"):
        check_close(b, a, "x", variants={"negated": -torch.ones(2, 3), "plus one": lambda: a + 1})
    nan = a.clone()
    nan[0, 1] = float("nan")
    with pytest.raises(AssertionError, match=r"contains NaN"):
        check_close(nan, a, "x", variants={"plus one": a + 1})


def test_check_close_ignores_variants_that_coincide_with_the_reference():
    # A mask with no False entry: the "inverted mask" variant cannot be told apart from the
    # scale, and a symmetric input makes "transposed" equal to the reference; neither is reported.
    x = torch.eye(3) + 1.0
    wrong = x * 2
    calls = []

    def lazy():
        calls.append(1)
        return x * 2

    with pytest.raises(AssertionError, match="matches the expected one doubled"):
        check_close(wrong, x, "y", variants={"transposed": x.T, "doubled": lazy})
    with pytest.raises(AssertionError, match="largest difference"):
        check_close(x.T.clone() + 0.5, x, "y", variants={"transposed": x.T})
    # the wrong answer equals a variant that equals the reference: it passes as correct, never "named"
    check_close(x.T.clone(), x, "y", variants={"transposed": x.T})
    calls.clear()
    check_close(x.clone(), x, "y", variants={"doubled": lazy})
    assert calls == [], "a lazy variant is computed only when the check fails"


def test_check_close_variant_must_be_a_tensor():
    with pytest.raises(TypeError, match="variant 'bad'"):
        check_close(torch.ones(2), torch.zeros(2), "y", variants={"bad": lambda: [1.0, 2.0]})


def test_check_shape():
    check_shape(torch.zeros(2, 3), (2, 3))
    with pytest.raises(AssertionError, match=r"out: expected shape \(2, 4\), got \(2, 3\)"):
        check_shape(torch.zeros(2, 3), (2, 4), "out")
    with pytest.raises(AssertionError, match="got NoneType"):
        check_shape(None, (1,))


def test_check_causal_detects_a_leak_and_accepts_causal_code():
    x = torch.randn(2, 5, 3)
    check_causal(lambda x: x.cumsum(1), x)
    with pytest.raises(AssertionError, match="output position 0 depends on later input positions"):
        check_causal(lambda x: x.flip(1).cumsum(1).flip(1), x)


def test_check_permutation_equivariance():
    x = torch.randn(2, 6, 3)
    check_permutation_equivariance(lambda x: x * 2, x)
    with pytest.raises(AssertionError, match="f\\(permuted x\\)"):
        check_permutation_equivariance(lambda x: x.cumsum(1), x)


def test_forbid_blocks_the_reference_and_restores_it():
    def student(scores):
        return lib.attention.masked_softmax(scores)

    with forbid("lib.attention.masked_softmax"), pytest.raises(AssertionError, match="implement it yourself"):
        student(torch.zeros(2, 2))
    assert student(torch.zeros(1, 2)).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not exist"), forbid("lib.attention.nope"):
        pass


def test_forbid_also_refuses_aliases_in_the_notebook_namespace(monkeypatch):
    import lib.checks

    namespace = {"sm": lib.attention.masked_softmax, "_private": lib.attention.masked_softmax}
    monkeypatch.setattr(lib.checks, "_user_namespace", lambda: namespace)

    def student(scores):  # what `from lib.attention import masked_softmax as sm` then sm(...) does
        return namespace["sm"](scores)

    with forbid("lib.attention.masked_softmax"):
        with pytest.raises(AssertionError, match="implement it yourself"):
            student(torch.zeros(2, 2))
        namespace["defined_inside"] = 1
    assert namespace["sm"] is lib.attention.masked_softmax  # restored
    assert namespace["defined_inside"] == 1  # the block's own names survive
    assert namespace["_private"] is lib.attention.masked_softmax


def test_check_not_reference():
    with pytest.raises(AssertionError, match="write it yourself"):
        check_not_reference(lib.attention.causal_mask, lib.attention.causal_mask, "causal_mask")
    check_not_reference(lambda T: None, lib.attention.causal_mask, "causal_mask")


def test_passed_prints_one_line(capsys):
    passed("ok")
    assert capsys.readouterr().out == "✔ ok\n"


def test_show_heatmaps_grid_and_errors():
    fig = show_heatmaps(torch.rand(2, 3, 4, 5), titles=["a", "b", "c"])
    assert len(fig.axes) == 2 * 3 + 1  # panels + colour bar
    assert len(show_heatmaps(torch.rand(4, 4), colorbar=False).axes) == 1
    with pytest.raises(ValueError, match="2-, 3- or 4-D"):
        show_heatmaps(torch.rand(4))
    with pytest.raises(ValueError, match="titles"):
        show_heatmaps(torch.rand(2, 4, 4), titles=["only one"])


def test_show_heatmaps_ticks_are_whole_positions():
    # one query row (Tq = 1) used to get ticks at -0.5, 0.0 and 0.5
    fig = show_heatmaps(torch.rand(2, 1, 10), colorbar=False)
    fig.canvas.draw()
    for ax in fig.axes:
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert all(float(t).is_integer() for t in ticks), ticks


def test_plot_curves():
    fig = plot_curves({"train": [3, 2, 1], "val": [3.5, 2.5]}, ylabel="loss", logy=True)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["train", "val"]
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="at least one curve"):
        plot_curves({})


def test_yours_or_reference_falls_back_only_for_unwritten_code(capsys):
    from lib.checks import yours_or_reference

    def unwritten(x):
        raise NotImplementedError

    def written(x):
        return x + 1

    def buggy(x):
        raise IndexError("off by one")

    probe = lambda f: f(torch.zeros(1))  # noqa: E731
    assert yours_or_reference(written, torch.neg, "f", exercise="exercise 1", probe=probe) is written
    assert capsys.readouterr().out == ""
    assert yours_or_reference(unwritten, torch.neg, "my_f", exercise="exercise 3", probe=probe) is torch.neg
    out = capsys.readouterr().out
    assert "my_f is not written yet" in out and "finish exercise 3" in out and "reference" in out
    with pytest.raises(IndexError, match="off by one"):  # a bug is the student's to see, not hidden
        yours_or_reference(buggy, torch.neg, "f", exercise="exercise 1", probe=probe)


def test_yours_or_reference_falls_back_when_the_check_fails(capsys):
    from lib.checks import check_close, yours_or_reference

    x = torch.randn(3)
    check = lambda f: check_close(f(x), torch.neg(x), "my_f(x)")  # noqa: E731
    probe = lambda f: f(x)  # noqa: E731
    wrong = lambda t: t  # runs, but is wrong  # noqa: E731
    assert yours_or_reference(wrong, torch.neg, "my_f", exercise="exercise 2", probe=probe, check=check) is torch.neg
    out = capsys.readouterr().out
    assert "your my_f does not pass exercise 2's check yet (my_f(x): values differ" in out and "reference" in out
    right = lambda t: -t  # noqa: E731
    assert yours_or_reference(right, torch.neg, "my_f", exercise="exercise 2", probe=probe, check=check) is right
    assert capsys.readouterr().out == ""

    def crashes(t):
        return t @ torch.ones(5)  # a shape mistake: a raw torch error

    assert yours_or_reference(crashes, torch.neg, "my_f", exercise="exercise 2", probe=probe, check=check) is torch.neg
    assert "(RuntimeError: " in capsys.readouterr().out

    def unwritten(t):
        raise NotImplementedError

    assert yours_or_reference(unwritten, torch.neg, "my_f", exercise="exercise 2", probe=probe, check=check) is torch.neg
    assert "is not written yet" in capsys.readouterr().out


def test_call_explained_turns_a_raw_error_into_an_explanation():
    from lib.checks import call_explained

    x, keep = torch.randn(3, 6, 4), torch.ones(3, 6, dtype=torch.bool)
    assert torch.equal(call_explained(torch.mul, x, 2, name="f", hint="h"), x * 2)
    with pytest.raises(AssertionError, match=r"^pool\(x, keep\) raised RuntimeError: The size of tensor a .*\. keep is \(B, T\)"):
        call_explained(lambda a, b: a * b, x, keep, name="pool(x, keep)", hint="keep is (B, T)")

    def unwritten():
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        call_explained(unwritten, name="f", hint="h")


def test_show_heatmaps_scales_each_panel_on_request():
    from lib.plot import show_heatmaps

    peaked, flat = torch.eye(4), torch.full((4, 4), 0.25) + 0.01 * torch.arange(4.0)
    shared = show_heatmaps(torch.stack([peaked, flat]))
    assert [im.get_clim() for ax in shared.axes[:2] for im in ax.get_images()] == [(0.0, 1.0), (0.0, 1.0)]
    own = show_heatmaps(torch.stack([peaked, flat]), share_scale=False)
    panels = [ax for ax in own.axes if ax.get_images()]
    lows_highs = [ax.get_images()[0].get_clim() for ax in panels]
    assert lows_highs[0] == (0.0, 1.0) and lows_highs[1] == pytest.approx((0.25, 0.28))
    assert len(own.axes) == 4  # two panels, each with its colour bar
    matplotlib.pyplot.close("all")
