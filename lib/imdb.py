"""The IMDB movie reviews of lesson 06 as padded index tensors, and a validation split by movie.

Shape legend: N number of examples, T sequence length (``maxlen``).

The pipeline is the classic one (d2l chapter 15, Keras' ``imdb.load_data``):
tokenize each review, keep the ``num_words`` most frequent tokens of the
*training* set, map everything else to ``<unk>``, pad or truncate every review
to ``maxlen`` tokens.

Relation to Keras' ``imdb.load_data(num_words=10000)``: Keras reserves index 0
for padding, 1 for a start-of-sequence marker, 2 for out-of-vocabulary words and
leaves 3 unused, then numbers words by frequency rank from 4 (``index_from=3``);
``num_words=10000`` keeps indices below 10,000, so 9,996 words.  Here index 0 is
``<pad>``, 1 is ``<unk>`` and the words ranked 1..9,998 get indices 2..9,999 (no
start marker).  Either way the embedding table has ``num_words`` = 10,000 rows,
so a model's parameter count is the same as its Keras twin's; the indices
themselves differ (Keras' tokenisation is its own, too).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lib import data
from lib.text import Vocab, pad_sequences, tokenize

__all__ = ["load_imdb_texts", "load_imdb", "imdb_movies", "movie_disjoint_split"]


def load_imdb_texts(root: Path | str | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """The raw reviews and labels (1 = positive), ``{"train": (texts, labels), "test": ...}``.

    Files are read in sorted order (negatives first), so the result is deterministic.
    """
    from tqdm.auto import tqdm

    root = Path(data.fetch("imdb") if root is None else root)
    out = {}
    for split in ("train", "test"):
        files = [(root / split / sub / name, label) for label, sub in ((0, "neg"), (1, "pos"))
                 for name in sorted(os.listdir(root / split / sub))]
        texts, labels = [], []
        for path, label in tqdm(files, desc=f"reading IMDB {split}", unit=" reviews", mininterval=1.0):
            texts.append(path.read_text(encoding="utf-8"))
            labels.append(label)
        out[split] = (texts, labels)
    return out


_CACHE_VERSION = 1


def _encode_all(num_words: int, maxlen: int, padding: str, truncating: str) -> dict:
    from tqdm.auto import tqdm

    texts = load_imdb_texts()
    tokens = {split: [tokenize(t) for t in tqdm(texts[split][0], desc=f"tokenizing IMDB {split}", unit=" reviews",
                                                 mininterval=1.0)]
              for split in texts}
    counter = Counter()
    for toks in tokens["train"]:
        counter.update(toks)
    vocab = Vocab(counter, max_size=num_words)
    result: dict = {"itos": vocab.itos}
    for split in ("train", "test"):
        encoded = [vocab.encode(t) for t in tqdm(tokens[split], desc=f"encoding IMDB {split}", unit=" reviews",
                                                 mininterval=1.0)]
        result[split] = {
            "x": pad_sequences(encoded, maxlen, padding=padding, truncating=truncating),
            "y": torch.tensor(texts[split][1], dtype=torch.long),
            "length": torch.tensor([min(len(t), maxlen) for t in encoded], dtype=torch.long),
        }
    return result


def _balanced_subset(y: Tensor, n: int, seed: int) -> Tensor:
    """Indices of ``n`` examples, ``n // 2`` per class (seeded), in a seeded random order."""
    if n < 2 or n % 2:
        raise ValueError(f"subset sizes must be even and at least 2 (half per class), got {n}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in (0, 1):
        idx = torch.nonzero(y == c).squeeze(1)
        if n // 2 > len(idx):
            raise ValueError(f"asked for {n // 2} examples of class {c}, only {len(idx)} exist")
        picks.append(idx[torch.randperm(len(idx), generator=g)[: n // 2]])
    both = torch.cat(picks)
    return both[torch.randperm(len(both), generator=g)]


def _interleaved_order(y: Tensor, seed: int) -> Tensor:
    """All indices in a seeded random order in which the two classes alternate pair by pair.

    Each class is shuffled; pair ``i`` holds the ``i``-th review of each class in a random
    order; the leftovers of the larger class (none in IMDB: 12,500 each) come last.  So
    every prefix of even length ``2k <= 2 * min(n0, n1)`` holds exactly ``k`` reviews of each
    class: ``x[:n]`` of the full set is never one class, as it was in the files' sorted order.
    """
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).squeeze(1) for c in (0, 1)]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    m = min(len(idx) for idx in per_class)
    pairs = torch.stack([per_class[0][:m], per_class[1][:m]], dim=1)  # (m, 2)
    swap = torch.randint(0, 2, (m,), generator=g).bool()
    pairs[swap] = pairs[swap].flip(1)  # a random class first within each pair
    rest = torch.cat([idx[m:] for idx in per_class])
    return torch.cat([pairs.reshape(-1), rest[torch.randperm(len(rest), generator=g)]])


def load_imdb(
    num_words: int = 10000,
    maxlen: int = 256,
    subset: int | tuple[int, int] | None = None,
    seed: int = 0,
    *,
    padding: str = "post",
    truncating: str = "pre",
    with_lengths: bool = False,
) -> tuple[TensorDataset, TensorDataset, Vocab]:
    """IMDB reviews as padded index tensors: ``(train, test, vocab)``.

    The first call tokenizes the 50,000 reviews (about a minute on one core) and
    saves the encoded tensors in the data cache (``data/imdb-*.pt``, keyed by
    the arguments that change them); later calls load that in a second or two.

    Args:
        num_words: vocabulary size including ``<pad>`` = 0 and ``<unk>`` = 1
            (see the module docstring for Keras' indices).
        maxlen: every review becomes exactly ``maxlen`` tokens.
        subset: ``None`` for all 25,000 + 25,000 reviews; an even ``n`` for ``n``
            training and ``n`` test reviews; ``(n_train, n_test)``.  Subsets are
            balanced (half positive) and chosen with ``seed``, so quick mode is
            deterministic.  The vocabulary always comes from the full training set.
            The full sets come in a seeded random order in which the classes
            alternate pair by pair (``_interleaved_order``), not in the files' order
            (all negatives, then all positives): any even-length prefix
            ``x[:n]`` is exactly half positive.
        seed: seed for the subset choice and the order of the full sets.
        padding, truncating: see ``pad_sequences`` (defaults: pad after, keep the end).
        with_lengths: add a third tensor, the number of real tokens per review.

    Returns:
        ``train``, ``test``: ``TensorDataset(x (N, T) int64, y (N,) int64 [, length (N,)])``
        with ``y = 1`` for positive reviews; ``vocab``.
    """
    key = json.dumps([_CACHE_VERSION, num_words, maxlen, padding, truncating])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = data.cache_dir() / f"imdb-{num_words}-{maxlen}-{padding}-{truncating}-{digest}.pt"
    if path.exists():
        enc = torch.load(path, weights_only=True)
    else:
        enc = _encode_all(num_words, maxlen, padding, truncating)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            torch.save(enc, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    vocab = Vocab.from_itos(enc["itos"])
    sizes = (subset, subset) if isinstance(subset, int) else subset
    datasets = []
    for i, split in enumerate(("train", "test")):
        x, y, length = enc[split]["x"], enc[split]["y"], enc[split]["length"]
        if sizes is not None:
            idx = _balanced_subset(y, sizes[i], seed + i)
        else:
            idx = _interleaved_order(y, seed + i)
        x, y, length = x[idx], y[idx], length[idx]
        tensors = (x, y, length) if with_lengths else (x, y)
        datasets.append(TensorDataset(*tensors))
    return datasets[0], datasets[1], vocab


# ---------------------------------------------------------------------------
# A validation split that shares no movie with the training reviews
# ---------------------------------------------------------------------------


def imdb_movies(split: str = "train", root: Path | str | None = None) -> list[str]:
    """The IMDB title id (``tt0012345``) of every review of ``split``, in ``load_imdb_texts``' order.

    Each folder of the dataset has ``urls_pos.txt`` / ``urls_neg.txt``: line ``i`` is the movie of
    review ``i_*.txt`` (Maas et al. 2011 keep every movie within one of the train and test sets).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data.fetch("imdb") if root is None else root) / split
    movies = []
    for sub in ("neg", "pos"):  # negatives first, files sorted by name: load_imdb_texts' order
        urls = (folder / f"urls_{sub}.txt").read_text(encoding="utf-8").split()
        for name in sorted(os.listdir(folder / sub)):
            url = urls[int(name.split("_")[0])]  # e.g. http://www.imdb.com/title/tt0453418/usercomments
            movies.append(url.split("/title/")[1].split("/")[0])
    return movies


def movie_disjoint_split(share: float = 0.1, seed: int = 123, *, order_seed: int = 0,
                         root: Path | str | None = None) -> Tensor:
    """Hold out every training review of a seeded ``share`` of the movies, for validation.

    IMDB's training and test sets share no movie; a random split of the training set would
    share them, and reward a model for remembering titles and actors, which the test set
    does not.  Here the held-out reviews and the rest have no movie in common.

    Args:
        share: the fraction of the distinct training movies held out.
        seed: the seed that picks them.
        order_seed: the ``seed`` of the ``load_imdb`` call whose full training set the mask indexes.
        root: the extracted dataset (default: ``lib.data.fetch("imdb")``).

    Returns:
        (N,) bool, True for the held-out reviews, over ``load_imdb(seed=order_seed)[0]`` (``subset=None``).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    movies = imdb_movies("train", root)
    folder = Path(data.fetch("imdb") if root is None else root) / "train"
    n_neg = len(os.listdir(folder / "neg"))
    labels = torch.tensor([0] * n_neg + [1] * (len(movies) - n_neg))  # (N,) in the files' order
    movie = [movies[i] for i in _interleaved_order(labels, order_seed).tolist()]  # load_imdb's order
    distinct = sorted(set(movie))
    g = torch.Generator().manual_seed(seed)
    held = {distinct[i] for i in torch.randperm(len(distinct), generator=g)[: int(len(distinct) * share)].tolist()}
    return torch.tensor([m in held for m in movie])
