"""Text to tensors: a tokenizer, a vocabulary, padding, and the IMDB loader.

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
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["tokenize", "Vocab", "pad_sequences", "load_imdb_texts", "load_imdb", "PAD", "UNK"]

PAD, UNK = "<pad>", "<unk>"

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop ``<br />`` tags, split into words and punctuation marks.

    Words keep an apostrophe suffix (``don't``, ``film's``); every other
    non-space character that is not a letter or digit is a token of its own.

    >>> tokenize("A <br /><br />great film, isn't it?!")
    ['a', 'great', 'film', ',', "isn't", 'it', '?', '!']
    """
    return _TOKEN.findall(_BR.sub(" ", text.lower()))


class Vocab:
    """Token <-> index mapping over the most frequent tokens.

    Index 0 is ``<pad>``, 1 is ``<unk>``; the ``max_size - 2`` most frequent
    tokens follow in order of decreasing count (ties broken alphabetically, so
    the vocabulary is deterministic).

    Args:
        counter: token counts (e.g. ``Counter`` over a training set).
        max_size: total size including the two reserved tokens (Keras' ``num_words``).
        min_freq: drop tokens seen fewer times.
    """

    def __init__(self, counter: Counter | None = None, max_size: int | None = None, min_freq: int = 1) -> None:
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be at least 2 (room for <pad> and <unk>), got {max_size}")
        counter = counter or Counter()
        ranked = sorted((t for t, c in counter.items() if c >= min_freq and t not in (PAD, UNK)),
                        key=lambda t: (-counter[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        self.itos: list[str] = [PAD, UNK, *ranked]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_itos(cls, itos: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from its index-to-token list."""
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"itos must start with {PAD!r}, {UNK!r}, got {list(itos[:2])}")
        v = cls()
        v.itos = list(itos)
        v.stoi = {t: i for i, t in enumerate(v.itos)}
        return v

    pad_index = 0
    unk_index = 1

    def __len__(self) -> int:
        return len(self.itos)

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.unk_index)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Indices of ``tokens`` (unknown ones map to ``<unk>`` = 1)."""
        get = self.stoi.get
        return [get(t, 1) for t in tokens]

    def decode(self, indices: Iterable[int], skip_pad: bool = True) -> list[str]:
        """Tokens of ``indices`` (a list or a 1-D tensor); padding dropped by default."""
        if isinstance(indices, Tensor):
            indices = indices.tolist()
        return [self.itos[i] for i in indices if not (skip_pad and i == self.pad_index)]

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, first={self.itos[2:7]})"


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    maxlen: int,
    *,
    padding: str = "post",
    truncating: str = "pre",
    value: int = 0,
) -> Tensor:
    """Pad or truncate to ``maxlen`` (Keras ``pad_sequences`` semantics).

    Args:
        padding: ``"pre"`` puts the pad tokens before the sequence, ``"post"``
            after it.  Keras defaults to ``"pre"``; the course uses ``"post"``
            so that the real tokens start at position 0 (what a learned
            positional embedding and d2l's ``valid_lens`` assume).
        truncating: ``"pre"`` drops tokens from the start (keeps the end of a
            long review, where the verdict usually is; Keras' default),
            ``"post"`` drops them from the end.
        value: the pad index.

    Returns:
        Int64 tensor (N, maxlen).
    """
    if padding not in ("pre", "post") or truncating not in ("pre", "post"):
        raise ValueError(f"padding and truncating must be 'pre' or 'post', got {padding!r}, {truncating!r}")
    if maxlen < 1:
        raise ValueError(f"maxlen must be positive, got {maxlen}")
    out = torch.full((len(sequences), maxlen), value, dtype=torch.long)  # (N, T)
    for i, seq in enumerate(sequences):
        seq = seq[-maxlen:] if truncating == "pre" else seq[:maxlen]
        if len(seq) == 0:
            continue
        row = torch.as_tensor(seq, dtype=torch.long)
        if padding == "post":
            out[i, : len(row)] = row
        else:
            out[i, maxlen - len(row):] = row
    return out


def load_imdb_texts(root: Path | str | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """The raw reviews and labels (1 = positive), ``{"train": (texts, labels), "test": ...}``.

    Files are read in sorted order (negatives first), so the result is deterministic.
    """
    if root is None:
        from lib.data import fetch

        root = fetch("imdb")
    root = Path(root)
    out = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / split / sub
            for name in sorted(os.listdir(folder)):
                with open(folder / name, encoding="utf-8") as f:
                    texts.append(f.read())
                labels.append(label)
        out[split] = (texts, labels)
    return out


_CACHE_VERSION = 1


def _encode_all(num_words: int, maxlen: int, padding: str, truncating: str) -> dict:
    texts = load_imdb_texts()
    tokens = {split: [tokenize(t) for t in texts[split][0]] for split in texts}
    counter = Counter()
    for toks in tokens["train"]:
        counter.update(toks)
    vocab = Vocab(counter, max_size=num_words)
    result: dict = {"itos": vocab.itos}
    for split in ("train", "test"):
        encoded = [vocab.encode(t) for t in tokens[split]]
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
        seed: seed for the subset choice.
        padding, truncating: see ``pad_sequences`` (defaults: pad after, keep the end).
        with_lengths: add a third tensor, the number of real tokens per review.

    Returns:
        ``train``, ``test``: ``TensorDataset(x (N, T) int64, y (N,) int64 [, length (N,)])``
        with ``y = 1`` for positive reviews; ``vocab``.
    """
    from lib.data import cache_dir

    key = json.dumps([_CACHE_VERSION, num_words, maxlen, padding, truncating])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_dir() / f"imdb-{num_words}-{maxlen}-{padding}-{truncating}-{digest}.pt"
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
            x, y, length = x[idx], y[idx], length[idx]
        tensors = (x, y, length) if with_lengths else (x, y)
        datasets.append(TensorDataset(*tensors))
    return datasets[0], datasets[1], vocab
