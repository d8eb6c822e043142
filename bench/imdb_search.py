"""The bounded search behind lesson 06's IMDB training recipe, chosen without the test set.

    python bench/imdb_search.py validation '[{"name": "a", "lr": 1e-2}, {"name": "c", "epochs": 2, "emb_drop": 0.2}]'
    python bench/imdb_search.py test '[{"name": "a", "lr": 1e-2, "seed": 1}]'

Each JSON object is one run: ``name`` (model a-d), and optionally ``lr``, ``epochs``, ``batch``
(the lesson's recipe by default), ``emb_drop`` (dropout on the embeddings, 0) and ``seed`` (0).
Each run is the lesson's own ``train_once`` (Adam, the learning rate decaying linearly to zero).
One JSON line per run is printed.

``validation`` trains on the training reviews of 90 % of the movies and evaluates on the
reviews of the other 10 % (``lib.imdb.movie_disjoint_split``: IMDB's training and test sets
share no movie, and a random split of the training set would reward remembering titles and
names). ``test`` trains on all 25,000 training reviews and evaluates on the test set.

The models, data, pooling and training loop are the lesson's own: the script runs the code
cells of ``solutions/06_transformer_encoder/06_transformer_encoder.py`` in order, up to and
including the cell that defines ``train_once`` (the recipe), as a reader would, and stops
before the cells that train. So it cannot drift from what the lesson trains.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.imdb import movie_disjoint_split  # noqa: E402
from tools.nbtool import from_text, source_path  # noqa: E402

LESSON = "06_transformer_encoder"
RECIPE = "train_once"  # the function the search calls; its cell is the last one run


def defines(source: str, name: str) -> bool:
    """Whether a cell's code defines a top-level function ``name``."""
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.parse(source).body)


def lesson_namespace() -> dict:
    """The lesson's names after its code cells up to the one that defines ``RECIPE``."""
    cells = [c.source for c in from_text(source_path(LESSON).read_text(encoding="utf-8")).cells
             if c.cell_type == "code"]
    last = next((i for i, src in enumerate(cells) if defines(src, RECIPE)), None)
    if last is None:
        raise SystemExit(f"{LESSON} has no code cell that defines {RECIPE}(): update RECIPE")
    namespace = {"__name__": "lesson06"}
    with contextlib.redirect_stdout(sys.stderr):  # the lesson's own prints; stdout is one JSON line per run
        for i, src in enumerate(cells[: last + 1]):
            exec(compile(src, f"{LESSON}, code cell {i}", "exec"), namespace)  # noqa: S102
    return namespace


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("validation", "test"):
        raise SystemExit(__doc__)
    mode, runs = sys.argv[1], json.loads(sys.argv[2])
    os.environ.setdefault("MPLBACKEND", "Agg")
    lesson = lesson_namespace()
    x, y = lesson["train_ds"].tensors[:2]
    if mode == "validation":
        held = movie_disjoint_split(0.1, seed=123)  # over load_imdb(seed=0)'s full training set, the lesson's
        if held.shape != y.shape:
            raise SystemExit(f"the lesson's training set has {len(y)} reviews, the movie split {len(held)}: "
                             "run it in full mode (COURSE_QUICK unset)")
        print(f"{int(held.sum())} reviews of held-out movies", file=sys.stderr)
        train, evaluation = TensorDataset(x[~held], y[~held]), TensorDataset(x[held], y[held])
    else:
        train, evaluation = lesson["train_ds"], lesson["test_ds"]
    eval_loader = DataLoader(evaluation, batch_size=512)
    build = lesson["build"]
    print(f"{mode}: {len(train)} training reviews, {len(evaluation)} evaluated", file=sys.stderr)

    for run in runs:
        cfg = {"lr": lesson["LR"], "epochs": lesson["EPOCHS"], "batch": lesson["BATCH"], "emb_drop": 0.0, "seed": 0,
               **run}

        def build_with_dropout(name, p=cfg["emb_drop"]):  # the lesson's model, dropout on its embeddings
            model = build(name)
            if p:
                model.embedding.register_forward_hook(lambda m, i, out: F.dropout(out, p, m.training))
            return model

        lesson["build"] = build_with_dropout  # train_once looks `build` up in the lesson's namespace
        start = time.perf_counter()
        model, _ = lesson["train_once"](cfg["name"], cfg["seed"], data=train, lr=cfg["lr"], epochs=cfg["epochs"],
                                        batch=cfg["batch"])
        seconds = time.perf_counter() - start
        _, accuracy = lesson["evaluate"](model, eval_loader, lesson["loss_fn"])
        print(json.dumps({"mode": mode, **cfg, "accuracy": round(float(accuracy), 4),
                          "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
