"""The bounded search behind lesson 06's IMDB training recipe, chosen without the test set.

    python tools/imdb_search.py validation '[{"name": "a", "lr": 1e-2}, {"name": "c", "epochs": 2, "emb_drop": 0.2}]'
    python tools/imdb_search.py test '[{"name": "a", "lr": 1e-2, "seed": 1}]'

Each JSON object is one run: ``name`` (model a-d), and optionally ``lr``, ``epochs``, ``batch``
(the lesson's recipe by default), ``emb_drop`` (dropout on the embeddings, 0) and ``seed`` (0).
Each run is the lesson's own ``train_once`` (Adam, the learning rate decaying linearly to zero).
One JSON line per run is printed.

``validation`` trains on the training reviews of 90 % of the movies and evaluates on the
reviews of the other 10 % (seeded). IMDB's training and test sets share no movie; a random
split of the training set would share them and reward remembering titles and names, which the
test set does not. ``test`` trains on all 25,000 training reviews and evaluates on the test set.

The models, data, pooling and training loop come from the lesson itself: its text source is
executed up to its first training cell, so this script cannot drift from what the lesson trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "solutions" / "06_transformer_encoder" / "06_transformer_encoder.py"
FIRST_TRAINING_CELL = 'train_and_test("a")'


def movie_disjoint_split(labels, seed: int = 123, share: float = 0.1):
    """Boolean mask over ``load_imdb``'s training order: True for reviews of the held-out movies."""
    from lib.data import fetch
    from lib.text import _interleaved_order

    root = Path(fetch("imdb")) / "train"
    movies = []  # in load_imdb_texts' order: negatives then positives, files sorted by name
    for sub in ("neg", "pos"):
        urls = (root / f"urls_{sub}.txt").read_text().split()  # line i: the movie of review i_*.txt
        movies += [urls[int(name.split("_")[0])].split("/title/")[1].split("/")[0]
                   for name in sorted(os.listdir(root / sub))]
    files_y = torch.tensor([0] * (len(movies) // 2) + [1] * (len(movies) // 2))
    order = _interleaved_order(files_y, 0)  # load_imdb(seed=0)'s order of the training set
    if not torch.equal(files_y[order], labels):
        raise SystemExit("the training set's order is not load_imdb(seed=0)'s: cannot map reviews to movies")
    movie = [movies[i] for i in order.tolist()]
    distinct = sorted(set(movie))
    g = torch.Generator().manual_seed(seed)
    held = {distinct[i] for i in torch.randperm(len(distinct), generator=g)[: int(len(distinct) * share)].tolist()}
    print(f"{len(distinct)} movies, {len(held)} held out", file=sys.stderr)
    return torch.tensor([m in held for m in movie])


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("validation", "test"):
        raise SystemExit(__doc__)
    mode, runs = sys.argv[1], json.loads(sys.argv[2])
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(ROOT))

    source = LESSON.read_text()
    if FIRST_TRAINING_CELL not in source:
        raise SystemExit(f"{LESSON.name} has no cell {FIRST_TRAINING_CELL!r}: update FIRST_TRAINING_CELL")
    lesson = {"__name__": "lesson06"}
    with contextlib.redirect_stdout(sys.stderr):  # the lesson's own prints; stdout is one JSON line per run
        exec(compile(source.split(FIRST_TRAINING_CELL)[0], str(LESSON), "exec"), lesson)  # noqa: S102
    x, y = lesson["train_ds"].tensors[:2]
    if mode == "validation":
        held = movie_disjoint_split(y)
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
