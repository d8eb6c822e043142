"""English-French translation for lesson 07: d2l's fra-eng pairs, a split by English sentence, batches, BLEU.

Shape legend: B batch size, S source length, T target length.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lib import data
from lib.text import PAD, Vocab, pad_sequences

__all__ = ["BOS", "EOS", "preprocess_nmt", "load_fra_eng_pairs", "load_fra_eng", "TranslationData",
           "TranslationBatches", "corpus_bleu"]

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
        path = data.fetch("fra-eng") / "fra.txt"
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
