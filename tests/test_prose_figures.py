"""Prose that matches its runs: every figure a lesson's text states is shown by a stored output.

The prose of a lesson is written once and its notebook is rerun many times; a sentence such as
"post-norm reaches 0.662" silently goes stale when a rerun prints 0.655. This test reads every
markdown cell of ``solutions/NN/NN.ipynb``, picks out the *figures* (numbers with a decimal point,
numbers with thousands separators, and whole numbers followed by ``%``, ``×``, a time unit, "times"
or "points") and requires each to be

* shown by a stored output of the same notebook, at the precision the prose gives it
  (``0.817`` matches a printed ``0.8171``; ``81.7 %`` matches a printed ``0.817``), or
* a literal of the lesson's code (a hyperparameter the prose repeats: ``lr 1e-2``, ``0.05``), or
* listed below in ``DERIVED`` with the arithmetic that makes it from printed numbers
  (``"0.34": "88.34 - 88.00"``, the spread of a printed range): the test checks that every operand
  is shown by an output (or is a code literal or a small whole number) and that the arithmetic
  rounds to the figure, so a derived figure goes stale as loudly as a printed one, or
* listed below in ``NOT_FROM_A_RUN`` with the reason it is no run's figure (a paper's number,
  a dataset's size, a benchmark quoted from ``bench/``).

A figure that is none of these is one no stored output shows: the test fails and names it with its
sentence. Figures that are rendered by a code cell (printed from the run's variables) are outputs,
so they pass by construction. Section numbers, equation numbers and versions ("section 3.2",
"d2l 11.7", "arXiv:2005.00743", "PyTorch 2.5") are references, not figures, and are skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())

_UNIT = r"(?=\s?(?:%|\\%|×|x\b|s\b|min\b|minutes?\b|seconds?\b|hours?\b|times\b|points\b|-fold\b))"
FIGURE = re.compile(
    r"(?<![\w.,\\])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+" + _UNIT + r")(?![^\Wx]|x\w|\.\d)"
)
# what precedes a number that is a reference, not a figure
_REFERENCE = re.compile(
    r"(?:section|sections|§|eq\.|equation|arXiv:|d2l|PyTorch|torch|Python|version|table|figure|appendix|"
    r"chapter|fig\.|v|ch\.)\s*\(?$",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")

# Figures in the prose that no notebook run produces, with the reason. Keep it short: a figure
# that a run produces belongs in an output (print it) instead.
NOT_FROM_A_RUN: dict[str, dict[str, str]] = {
    "05_position_wise_ffn": {
        "128,000": "the source's Keras experiment (samples per epoch), quoted",
        "14.8": "the source's Keras timing on an RTX 2080, quoted",
        "18.2": "the source's Keras timing on an RTX 2080, quoted",
        "1.23": "the source's ratio 18.2 / 14.8, quoted",
        "4168.09": "bench/bench_ffn.py's printed table, quoted in a text block",
        "1042.02": "bench/bench_ffn.py's printed table, quoted in a text block",
        "5422.66": "bench/bench_ffn.py's printed table, quoted in a text block",
        "1355.67": "bench/bench_ffn.py's printed table, quoted in a text block",
        "5356.53": "bench/bench_ffn.py's printed table, quoted in a text block",
        "1339.13": "bench/bench_ffn.py's printed table, quoted in a text block",
        "1.30": "bench/bench_ffn.py's printed ratio, quoted in a text block",
        "1.29": "bench/bench_ffn.py's printed ratio, quoted in a text block",
        "1.08": "an earlier bench/bench_ffn.py run, quoted as such",
    },
    "06_transformer_encoder": {
        "6.3": "the stored run's wall time as `tools/nbtool.py build` reported it (not a cell output)",
        "160,000": "arithmetic: the embedding's 10,000 x 16 parameters",
        "0.029": "arithmetic: 0.05 / sqrt(3)",
        "88.4": "the source's Keras run after one epoch, quoted",
        "85.7": "the source's Keras run after three epochs, quoted",
        "2,540": "the validation split of bench/imdb_search.py (its printed size)",
    },
    "07_transformer_decoder": {
        "167,130": "the size of d2l's fra-eng (lib.data's registry entry)",
        "2,048": "the paper's batch size, quoted",
        "0.89": "arithmetic of BLEU's brevity penalty, e^(1 - 1/0.9), an example",
    },
    "08_vision_transformer": {
        "224": "the ViT paper's ImageNet resolution, quoted",
        "1,797": "the size of scikit-learn's digits",
        "25": "the digits split's test share (lib.data.load_digits_split), and the error of the runs without "
              "positions, 1 - 0.7467 and 1 - 0.7400, rounded",
        "10,000": "the size of Fashion-MNIST's test set",
        "28": "Fashion-MNIST's image size",
    },
    "09_synthesizer": {
        "25,000": "the size of IMDB's training set (lesson 06)",
        "88": "lesson 06's stored table (means of 88.02 to 88.22 %)",
    },
    "11_gpt": {
        "2,000": "nanoGPT's baby CPU model's step count (its README), quoted",
        "13": "the whole lesson's wall time in minutes, from the build's log (nbtool build printed 751.3 s)",
    },
}


# Figures the prose computes from printed numbers: figure -> the arithmetic, over printed numbers.
DERIVED: dict[str, dict[str, str]] = {
    "04_self_attention_and_positional_encoding": {
        "3.7": "413.55 / 110.65",  # the timing table: self-attention at n = 2048 over n = 1024
        "0.53": "(32 + (64 - 32) / 16) / 64",  # chance on the unseen positions: arithmetic of the text
    },
    "06_transformer_encoder": {
        "0.34": "88.34 - 88.00",  # the widest range of the table, model (d)
    },
    "07_transformer_decoder": {
        "0.0031": "0.6 * 128 ** -0.5 * 300 ** -0.5",  # the warm-up schedule's peak: scale / sqrt(D * warm-up)
        "1.7": "(1.017 - 1) * 100",  # greedy's length ratio, as a percentage longer
        "1.6": "(1 - 0.984) * 100",  # beam search's length ratios, as percentages shorter
        "0.4": "(1 - 0.996) * 100",
        "3.4": "(1 - 0.966) * 100",
        "5.4": "(1 - 0.946) * 100",
        "2.8": "(1 - 0.972) * 100",
        "1.2": "37.9 - 36.7",  # beam search's gain over greedy, in points
    },
    "08_vision_transformer": {
        "2.3": "200 * 43 * 16.0 / 60000",  # minutes per model: epochs x batches x ms per step (43 = 1,347 / 32)
        "24.7": "(0.9933 - 0.7467) * 100",  # what removing the positions costs, in points
        "0.4": "(0.9933 - 0.9889) * 100",  # class token vs mean pooling, in points
    },
    "09_synthesizer": {
        "3.5": "(0.817 - 0.782) * 100",  # the best synthesizer's distance to the dot product, in points
    },
    "11_gpt": {
        "7.4": "1800 * 32 * 128 / 1e6",  # training tokens, in millions: steps x batch x context
        "0.007": "1.978 - 1.971",  # the ablation: grouped-query (G = 2) against multi-head
        "0.75": "746752 / 1e6",  # the lesson's model's parameters, in millions
        "1,040": "16 + 1024",  # the prompt plus the longest generation
    },
}


def _outputs(nb: dict) -> str:
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                texts.append("".join(out["text"]))
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    texts.append("".join(value))
    return "\n".join(texts)


def figures(markdown: str) -> list[tuple[str, str]]:
    """(figure, its sentence) for every figure in a markdown text; references are skipped."""
    found = []
    for m in FIGURE.finditer(markdown):
        if _REFERENCE.search(markdown[max(0, m.start() - 12) : m.start()]):
            continue
        context = markdown[max(0, m.start() - 60) : m.end() + 40].replace("\n", " ")
        found.append((m.group(0), context))
    return found


def shown_by(figure: str, output_numbers: list[float]) -> bool:
    """Whether a printed number rounds to ``figure`` at its precision (also as a percentage)."""
    value = float(figure.replace(",", ""))
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    for y in output_numbers:
        for scaled in (y, 100 * y, y / 100):
            if round(scaled, decimals) == round(value, decimals):
                return True
    return False


def _in_code(figure: str, code: str) -> bool:
    """Whether the figure is a literal of the code (``4,000`` as ``4000`` or ``4_000``)."""
    spellings = {figure, figure.replace(",", ""), figure.replace(",", "_")}
    return any(re.search(rf"(?<![\w.]){re.escape(s)}(?![\w])", code) for s in spellings)


def _printed_numbers(nb: dict) -> list[float]:
    return [float(token.replace(",", "")) for token in _NUMBER.findall(_outputs(nb))]


def _code(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def derivation_problems(nb: dict, derived: dict[str, str]) -> list[str]:
    """What is wrong with ``derived``'s arithmetic: an operand no output shows, or a result that is not the figure."""
    numbers, code, problems = _printed_numbers(nb), _code(nb), []
    for figure, expression in derived.items():
        for operand in re.findall(r"\d+(?:\.\d+)?", expression):
            small = "." not in operand and (int(operand) <= 10 or operand in ("100", "1000"))
            if not (small or shown_by(operand, numbers) or _in_code(operand, code)):
                problems.append(f"{figure!r} = {expression}: no output shows {operand}")
        value = eval(expression, {"__builtins__": {}})  # the test's own arithmetic, not notebook input
        decimals = len(figure.split(".")[1]) if "." in figure else 0
        if round(value, decimals) != round(float(figure.replace(",", "")), decimals):
            problems.append(f"{figure!r} = {expression} = {value:.6g}, which does not round to {figure}")
    return problems


def unmatched_figures(nb: dict, exempt: dict[str, str] | None = None, derived: dict[str, str] | None = None) -> list[str]:
    """The prose's figures that no output shows, no code literal is, and neither ``exempt`` nor ``derived`` lists."""
    numbers, code = _printed_numbers(nb), _code(nb)
    listed = set(exempt or {}) | set(derived or {})
    missing = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for figure, context in figures("".join(cell["source"])):
            if figure in listed or shown_by(figure, numbers) or _in_code(figure, code):
                continue
            missing.append(f"{figure!r} in “…{context}…”")
    return missing


def _notebook(lesson: str) -> dict:
    return json.loads((ROOT / "solutions" / lesson / f"{lesson}.ipynb").read_text(encoding="utf-8"))


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_figure_in_the_prose_is_shown_by_a_stored_output(lesson):
    nb = _notebook(lesson)
    missing = unmatched_figures(nb, NOT_FROM_A_RUN.get(lesson), DERIVED.get(lesson))
    assert not missing, (
        f"{lesson}: the prose states figures that no stored output shows (rerun and match the text, print "
        f"the figure from the run, give its arithmetic in DERIVED or its reason in NOT_FROM_A_RUN):\n  "
        + "\n  ".join(missing)
    )
    problems = derivation_problems(nb, DERIVED.get(lesson, {}))
    assert not problems, f"{lesson}: derived figures that the stored outputs no longer give:\n  " + "\n  ".join(problems)


def test_every_exemption_is_still_in_its_prose():
    for lesson in set(NOT_FROM_A_RUN) | set(DERIVED):
        exempt = {**NOT_FROM_A_RUN.get(lesson, {}), **DERIVED.get(lesson, {})}
        assert lesson in LESSONS, f"NOT_FROM_A_RUN names {lesson}, which is no lesson"
        prose = "\n".join("".join(c["source"]) for c in _notebook(lesson)["cells"] if c["cell_type"] == "markdown")
        stated = {f for f, _ in figures(prose)}
        stale = sorted(set(exempt) - stated)
        assert not stale, f"{lesson}: NOT_FROM_A_RUN lists {stale}, which the prose no longer states"


def _fake(prose: str, printed: str, code: str = "") -> dict:
    return {"cells": [
        {"cell_type": "code", "source": code, "outputs": [{"output_type": "stream", "text": printed}]},
        {"cell_type": "markdown", "source": prose},
    ]}


def test_a_figure_no_output_shows_is_caught():
    nb = _fake("Dot-product attention is best (0.817); the synthesizers reach 0.747 to 0.782.",
               "dot 0.8172\nrandom 0.7471\ndense 0.7700\n")
    assert [m.split()[0] for m in unmatched_figures(nb, {})] == ["'0.782'"]
    assert unmatched_figures(nb, {"0.782": "quoted"}) == []


def test_a_derived_figure_is_checked_against_the_outputs():
    nb = _fake("Dense is 4.7 points behind the dot product.", "dot 0.817\ndense 0.770\n")
    assert derivation_problems(nb, {"4.7": "(0.817 - 0.770) * 100"}) == []
    assert "does not round" in derivation_problems(nb, {"4.6": "(0.817 - 0.770) * 100"})[0]  # a stale figure
    assert "no output shows 0.775" in derivation_problems(nb, {"4.2": "(0.817 - 0.775) * 100"})[0]


def test_percentages_times_and_precision():
    nb = _fake("It reaches 81.7 % in 12 s, 3.5 times faster; 2,000 reviews; section 3.1 says so.",
               "accuracy 0.8171, 12.4 s, ratio 3.46, n=2000\n")
    assert unmatched_figures(nb, {}) == []
    nb = _fake("It reaches 81.8 % in 13 s.", "accuracy 0.8171, 12.4 s\n")
    assert len(unmatched_figures(nb, {})) == 2


def test_code_literals_count_as_stated_by_the_lesson():
    nb = _fake("Adam at 0.003 with warm-up over 4,000 steps.", "", code="lr = 0.003\nwarmup = 4_000\n")
    assert unmatched_figures(nb, {}) == []
