"""Text to tensors, the pieces lessons 06 and 07 share: a tokenizer, a vocabulary, padding.

Shape legend: N number of examples, T sequence length (``maxlen``).

The datasets built from them live in their lessons' modules: ``lib.imdb`` (lesson 06's
movie reviews) and ``lib.translation`` (lesson 07's English-French pairs and BLEU).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["tokenize", "Vocab", "pad_sequences", "PAD", "UNK"]

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

    Index 0 is ``<pad>``, 1 is ``<unk>``, then the ``reserved`` tokens (e.g.
    ``<bos>``, ``<eos>``); the most frequent tokens follow in order of decreasing count (ties broken alphabetically, so
    the vocabulary is deterministic).

    Args:
        counter: token counts (e.g. ``Counter`` over a training set).
        max_size: total size including the two reserved tokens (Keras' ``num_words``).
        min_freq: drop tokens seen fewer times.
        reserved: more special tokens, given indices 2, 3, ... after ``<pad>`` and ``<unk>``.
    """

    def __init__(
        self,
        counter: Counter | None = None,
        max_size: int | None = None,
        min_freq: int = 1,
        reserved: Sequence[str] = (),
    ) -> None:
        head = [PAD, UNK, *reserved]
        if max_size is not None and max_size < len(head):
            raise ValueError(f"max_size must be at least {len(head)} (room for {head}), got {max_size}")
        counter = counter or Counter()
        ranked = sorted((t for t, c in counter.items() if c >= min_freq and t not in head),
                        key=lambda t: (-counter[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - len(head)]
        self.itos: list[str] = [*head, *ranked]
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
