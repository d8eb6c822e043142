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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "tokenize", "Vocab", "pad_sequences", "load_imdb_texts", "load_imdb", "PAD", "UNK", "BOS", "EOS",
    "preprocess_nmt", "load_fra_eng_pairs", "load_fra_eng", "TranslationData", "TranslationBatches", "corpus_bleu",
]

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
        else:
            idx = _interleaved_order(y, seed + i)
        x, y, length = x[idx], y[idx], length[idx]
        tensors = (x, y, length) if with_lengths else (x, y)
        datasets.append(TensorDataset(*tensors))
    return datasets[0], datasets[1], vocab


# ---------------------------------------------------------------------------
# English-French translation pairs (d2l's fra-eng, from Tatoeba)
# ---------------------------------------------------------------------------

BOS, EOS = "<bos>", "<eos>"


def preprocess_nmt(text: str) -> str:
    """d2l's ``_preprocess`` (section 10.5): lower case, non-breaking spaces to spaces, a space before , . ! ?

    >>> preprocess_nmt("Go.\\u202fNow!")
    'go . now !'
    """
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return "".join(" " + c if i > 0 and c in ",.!?" and text[i - 1] != " " else c for i, c in enumerate(text))


def load_fra_eng_pairs(path: Path | str | None = None) -> list[tuple[str, str]]:
    """The 167,130 (English, French) pairs of ``fra.txt`` in file order, preprocessed with ``preprocess_nmt``."""
    if path is None:
        from lib.data import fetch

        path = fetch("fra-eng") / "fra.txt"
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                pairs.append((preprocess_nmt(parts[0]), preprocess_nmt(parts[1])))
    return pairs


@dataclass
class TranslationData:
    """fra-eng split by English sentence (``load_fra_eng``).

    Attributes:
        train: (source ids, target ids) per training pair; targets end with ``<eos>`` (no ``<bos>``).
        test_sources: the test split's distinct English sentences (preprocessed), in a seeded order.
        test_references: for each test sentence, all its French translations in ``fra.txt`` (preprocessed).
        test_indices: line numbers in ``fra.txt`` of every test pair (sorted).
        src_vocab, tgt_vocab: English and French vocabularies of the training pairs
            (``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3 in both).
        digest: sha256 of the sorted test sentences, one per line: equal digests, equal test sets.
    """

    train: list[tuple[list[int], list[int]]]
    test_sources: list[str]
    test_references: list[list[str]]
    test_indices: list[int]
    src_vocab: Vocab
    tgt_vocab: Vocab
    digest: str

    def encode_source(self, sentence: str) -> list[int]:
        """English text (raw or preprocessed) -> source ids."""
        return self.src_vocab.encode(preprocess_nmt(sentence).split())

    def decode_target(self, ids: Iterable[int]) -> str:
        """Target ids -> French text, stopping at ``<eos>``, dropping ``<pad>`` and ``<bos>``."""
        words = []
        for i in ids:
            token = self.tgt_vocab.itos[int(i)]
            if token == EOS:
                break
            if token not in (PAD, BOS):
                words.append(token)
        return " ".join(words)


def load_fra_eng(
    num_test: int = 2000,
    *,
    seed: int = 0,
    min_freq: int = 3,
    num_train: int | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> TranslationData:
    """English -> French pairs with a fixed, seeded split **by English sentence**.

    Many English sentences occur several times in ``fra.txt`` with different French
    translations.  A random split of *pairs* would put some of those English sentences in
    both splits, so the test set would partly measure memorisation.  Here the distinct
    English sentences are sorted, shuffled with ``seed``, and the first ``num_test`` form
    the test set: none of them occurs in training, and all their French translations
    are references for BLEU.  The vocabularies count training pairs only (``min_freq``).

    Args:
        num_test: number of distinct English test sentences.
        seed: the shuffle's seed (fixed: the digest identifies the test set).
        min_freq: words seen fewer times in training become ``<unk>``.
        num_train: keep only this many training pairs (seeded), e.g. for quick mode; None = all.
        pairs: preprocessed (English, French) pairs instead of ``fra.txt`` (for tests).

    Returns:
        ``TranslationData``.
    """
    if pairs is None:
        pairs = load_fra_eng_pairs()
    by_source: dict[str, list[int]] = {}
    for i, (en, _fr) in enumerate(pairs):
        by_source.setdefault(en, []).append(i)
    sources = sorted(by_source)
    if not 0 < num_test < len(sources):
        raise ValueError(f"num_test must be between 1 and {len(sources) - 1} (distinct English sentences), got {num_test}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(sources), generator=g).tolist()
    test_sources = [sources[j] for j in order[:num_test]]
    test_set = set(test_sources)
    train_idx = [i for i, (en, _fr) in enumerate(pairs) if en not in test_set]
    if num_train is not None:
        if not 0 < num_train <= len(train_idx):
            raise ValueError(f"num_train must be between 1 and {len(train_idx)}, got {num_train}")
        pick = torch.randperm(len(train_idx), generator=g)[:num_train].sort().values.tolist()
        train_idx = [train_idx[j] for j in pick]
    src_counts, tgt_counts = Counter(), Counter()
    for i in train_idx:
        src_counts.update(pairs[i][0].split())
        tgt_counts.update(pairs[i][1].split())
    src_vocab = Vocab(src_counts, min_freq=min_freq, reserved=(BOS, EOS))
    tgt_vocab = Vocab(tgt_counts, min_freq=min_freq, reserved=(BOS, EOS))
    eos = tgt_vocab[EOS]
    train = [(src_vocab.encode(pairs[i][0].split()), [*tgt_vocab.encode(pairs[i][1].split()), eos]) for i in train_idx]
    digest = hashlib.sha256("\n".join(sorted(test_sources)).encode()).hexdigest()
    return TranslationData(
        train=train,
        test_sources=test_sources,
        test_references=[[pairs[i][1] for i in by_source[s]] for s in test_sources],
        test_indices=sorted(i for s in test_sources for i in by_source[s]),
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        digest=digest,
    )


class TranslationBatches:
    """Batches of (source, source lengths, decoder input, decoder target), grouped by length.

    Pairs are sorted by (target length, source length) and cut into batches of at most
    ``batch_tokens`` target tokens, so a batch holds sentences of similar length and little
    padding (as the paper's "batched together by approximate sequence length", section 5.1).
    Each pass shuffles the order of the batches with ``seed`` plus the pass number.

    The decoder input is the target shifted right by one with ``<bos>`` in front
    (**teacher forcing**): position t sees the reference tokens before t and is trained to predict token t.

    Yields:
        ``(src (B, S), tgt_in (B, T), src_len (B,), tgt_out (B, T))``, int64, padded with ``pad``: the
        first three are the inputs of ``lib.transformer.Transformer(src, tgt_in, src_len)``, the last its target.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        batch_tokens: int,
        bos: int,
        pad: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        self.pairs, self.bos, self.pad, self.seed, self.shuffle = pairs, bos, pad, seed, shuffle
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][1]), len(pairs[i][0]), i))
        self.batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = len(pairs[i][1])  # the longest so far: targets come in increasing length
            if current and width * (len(current) + 1) > batch_tokens:
                self.batches.append(current)
                current = []
            current.append(i)
        if current:
            self.batches.append(current)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches)

    def collate(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pad the pairs ``idx`` into one batch (see the class docstring)."""
        src = [self.pairs[i][0] for i in idx]
        tgt = [self.pairs[i][1] for i in idx]
        S, T = max(len(s) for s in src), max(len(t) for t in tgt)
        src_t = pad_sequences(src, S, value=self.pad)  # (B, S)
        tgt_out = pad_sequences(tgt, T, value=self.pad, truncating="post")  # (B, T)
        tgt_in = torch.cat([torch.full((len(idx), 1), self.bos), tgt_out[:, :-1]], dim=1)  # (B, T): shifted right
        return src_t, tgt_in, torch.tensor([len(s) for s in src]), tgt_out

    def __iter__(self):  # noqa: ANN204
        order = list(range(len(self.batches)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).tolist()
        self.epoch += 1
        for j in order:
            yield self.collate(self.batches[j])


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]):  # noqa: ANN201
    """sacrebleu's corpus BLEU with a variable number of references per sentence.

    Args:
        hypotheses: one output string per test sentence.
        references: for each test sentence, its list of reference strings (any number >= 1).

    Returns:
        ``(score, signature)``: sacrebleu's ``BLEUScore`` (``.score``, ``.sys_len``, ``.ref_len``, ...)
        and the signature string that says how it was computed.
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(len(r) == 0 for r in references):
        raise ValueError("every sentence needs at least one reference")
    n = max(len(r) for r in references)
    streams = [[r[j] if j < len(r) else None for r in references] for j in range(n)]  # (n refs, N sentences)
    # force=True: the course scores d2l-tokenized text (spaces before punctuation) on purpose;
    # sacreBLEU's 13a tokenizer leaves it as it is, so its "not detokenized" warning does not apply.
    bleu = sacrebleu.metrics.BLEU(force=True)
    score = bleu.corpus_score(list(hypotheses), streams)
    return score, str(bleu.get_signature())
