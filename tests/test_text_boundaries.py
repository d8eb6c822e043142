"""lib.text, lib.imdb and lib.translation at their data boundaries: vocabularies from the training split only, batches and sizes at their exact limits.

A word that occurs only in the test split must be ``<unk>`` (a vocabulary built from more than
the training split leaks the test set into the model's input space); ranking and ``min_freq``
count training occurrences only. Batches of ``TranslationBatches`` are checked at the exact
token budget (a batch that fits exactly is kept whole; one more pair would exceed it), and sizes
such as ``max_size``, ``num_words``, ``num_train`` and ``maxlen`` at their exact values.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import serve_imdb

from lib import imdb
from lib.text import PAD, UNK, Vocab, pad_sequences, tokenize
from lib.translation import BOS, EOS, TranslationBatches, load_fra_eng

# ---------------------------------------------------------------------------
# IMDB: the vocabulary counts the training reviews only
# ---------------------------------------------------------------------------

REVIEWS = {
    "train/pos": ["good film , good acting", "good fun and a good cast"],
    "train/neg": ["bad film , dull", "bad bad plot"],
    # "zebra" fills the test split; "plot" is rare in training but frequent in the test split
    "test/pos": ["zebra zebra zebra plot plot plot plot good"],
    "test/neg": ["zebra zebra plot plot plot bad"],
}


@pytest.fixture
def toy_imdb(tmp_path, monkeypatch):
    return serve_imdb(tmp_path, monkeypatch, REVIEWS)[0]


def _train_counts() -> Counter:
    c = Counter()
    for sub in ("train/pos", "train/neg"):
        for t in REVIEWS[sub]:
            c.update(tokenize(t))
    return c


def test_imdb_vocabulary_comes_from_the_training_reviews_only(toy_imdb):
    train, test, vocab = imdb.load_imdb(num_words=100, maxlen=8)
    assert "zebra" not in vocab.stoi, "a word seen only in the test split is in the vocabulary"
    assert vocab.itos == Vocab(_train_counts(), max_size=100).itos
    x, y = test.tensors
    zebra_row = x[y == 1][0].tolist()
    assert zebra_row[:3] == [vocab.unk_index] * 3  # the test words unknown to training are <unk>
    assert zebra_row[3:7] == [vocab["plot"]] * 4
    # ranking by training counts only: "plot" (once in training) ranks below "bad" (3) and "good" (4)
    assert vocab.itos[2:4] == ["good", "bad"]
    assert vocab.itos.index("plot") > vocab.itos.index("film")


@pytest.mark.parametrize("num_words", [4, 5, 6])
def test_imdb_num_words_is_the_exact_vocabulary_size(toy_imdb, num_words):
    train, _, vocab = imdb.load_imdb(num_words=num_words, maxlen=8)
    assert len(vocab) == num_words
    assert int(train.tensors[0].max()) == num_words - 1  # every index fits an embedding of num_words rows


def test_imdb_subset_pairs_size_each_split(toy_imdb):
    train, test, _ = imdb.load_imdb(num_words=20, maxlen=8, subset=(4, 2))
    assert len(train) == 4 and len(test) == 2
    assert sorted(train.tensors[1].tolist()) == [0, 0, 1, 1] and sorted(test.tensors[1].tolist()) == [0, 1]


# ---------------------------------------------------------------------------
# fra-eng: the vocabularies count the training pairs only
# ---------------------------------------------------------------------------


def _pairs():
    pairs = []
    for i in range(12):  # 12 distinct English sentences, 1 or 2 translations each
        pairs.append((f"i see {i} .", f"je vois {i} ."))
        if i % 2:
            pairs.append((f"i see {i} .", f"je regarde {i} ."))
    return pairs


def test_fra_eng_vocabularies_come_from_the_training_pairs_only():
    pairs = _pairs()
    probe = load_fra_eng(3, pairs=pairs, min_freq=1)
    test_set = set(probe.test_sources)
    # a word pair that occurs only in the test split's sentences (many times, above min_freq)
    pairs = [(en + " zebra zebra zebra", fr + " zèbre zèbre zèbre") if en in test_set else (en, fr)
             for en, fr in pairs]
    data = load_fra_eng(3, pairs=pairs, min_freq=1)
    assert set(data.test_sources) == {s + " zebra zebra zebra" for s in test_set}  # the same split
    assert "zebra" not in data.src_vocab.stoi and "zèbre" not in data.tgt_vocab.stoi
    assert data.encode_source(data.test_sources[0])[-3:] == [data.src_vocab.unk_index] * 3
    train_src, train_tgt = Counter(), Counter()
    for en, fr in pairs:
        if en not in data.test_sources:
            train_src.update(en.split())
            train_tgt.update(fr.split())
    assert data.src_vocab.itos == Vocab(train_src, reserved=(BOS, EOS)).itos
    assert data.tgt_vocab.itos == Vocab(train_tgt, reserved=(BOS, EOS)).itos


@pytest.mark.parametrize("min_freq", [1, 2, 3])
def test_fra_eng_min_freq_counts_training_occurrences_at_its_exact_value(min_freq):
    pairs = [(f"a{i:02d} b .", f"x{i:02d} y .") for i in range(10)]
    test_set = set(load_fra_eng(2, pairs=pairs).test_sources)
    train_ids = [i for i, (en, _) in enumerate(pairs) if en not in test_set]
    test_id = next(i for i, (en, _) in enumerate(pairs) if en in test_set)
    # suffixes keep the sorted order of the sentences, so the split stays the same:
    # "rare" twice in training, three more times in a test sentence
    for i, extra in ((train_ids[0], " rare"), (train_ids[1], " rare"), (test_id, " rare rare rare")):
        pairs[i] = (pairs[i][0] + extra, pairs[i][1] + extra)
    data = load_fra_eng(2, pairs=pairs, min_freq=min_freq)
    assert set(data.test_sources) == {pairs[i][0] for i in range(10) if pairs[i][0].split()[0] in
                                      {s.split()[0] for s in test_set}}
    assert ("rare" in data.src_vocab.stoi) is (min_freq <= 2)
    assert ("rare" in data.tgt_vocab.stoi) is (min_freq <= 2)
    assert "b" in data.src_vocab.stoi and "y" in data.tgt_vocab.stoi  # 8 training occurrences


def test_fra_eng_num_train_takes_exactly_that_many_training_pairs_seeded():
    pairs = _pairs()
    full = load_fra_eng(3, pairs=pairs, min_freq=1)
    n = len(full.train)
    for k in (1, n - 1, n):
        some = load_fra_eng(3, pairs=pairs, min_freq=1, num_train=k)
        assert len(some.train) == k
        assert some.test_sources == full.test_sources and some.digest == full.digest  # the split does not move
        decoded = {" ".join(some.src_vocab.decode(s)) for s, _ in some.train}
        assert not decoded & set(full.test_sources)
    assert load_fra_eng(3, pairs=pairs, min_freq=1, num_train=4).train == load_fra_eng(
        3, pairs=pairs, min_freq=1, num_train=4).train
    with pytest.raises(ValueError, match="num_train"):
        load_fra_eng(3, pairs=pairs, num_train=n + 1)


def test_fra_eng_defaults():
    pairs = [(f"s{i} .", f"f{i} .") for i in range(2100)]
    default = load_fra_eng(pairs=pairs)
    assert len(default.test_sources) == 2000  # num_test 2000
    explicit = load_fra_eng(2000, seed=0, min_freq=3, num_train=None, pairs=pairs)
    assert default.digest == explicit.digest and default.train == explicit.train
    assert len(default.train) == 100  # num_train None: every training pair
    assert default.src_vocab.itos == [PAD, UNK, BOS, EOS, "."]  # min_freq 3 drops every word seen once
    assert load_fra_eng(pairs=pairs, seed=1).digest != default.digest


# ---------------------------------------------------------------------------
# TranslationBatches: the token budget at its exact value
# ---------------------------------------------------------------------------


def _same_length_pairs(n: int, width: int):
    return [([4] * (1 + i % 3), [5 + i] * (width - 1) + [3]) for i in range(n)]


@pytest.mark.parametrize("budget,per_batch", [(12, 3), (11, 2), (13, 3), (4, 1), (3, 1)])
def test_batches_fill_the_token_budget_exactly(budget, per_batch):
    pairs = _same_length_pairs(9, 4)
    batches = TranslationBatches(pairs, batch_tokens=budget, bos=2, shuffle=False)
    sizes = [len(b) for b in batches.batches]
    assert sizes == [per_batch] * (9 // per_batch) + ([9 % per_batch] if 9 % per_batch else [])
    assert sorted(i for b in batches.batches for i in b) == list(range(9))


def test_every_batch_is_as_large_as_the_budget_allows():
    g = torch.Generator().manual_seed(0)
    pairs = [([4] * int(torch.randint(1, 6, (1,), generator=g)), [5] * int(torch.randint(1, 9, (1,), generator=g)))
             for _ in range(80)]
    budget = 24
    batches = TranslationBatches(pairs, batch_tokens=budget, bos=2, shuffle=False)
    order = [i for b in batches.batches for i in b]
    assert order == sorted(range(80), key=lambda i: (len(pairs[i][1]), len(pairs[i][0]), i))
    for k, b in enumerate(batches.batches):
        width = max(len(pairs[i][1]) for i in b)
        assert width * len(b) <= budget or len(b) == 1
        if k + 1 < len(batches.batches):  # the next pair would not have fitted
            nxt = batches.batches[k + 1][0]
            assert max(width, len(pairs[nxt][1])) * (len(b) + 1) > budget
    _, tgt_in, _, tgt_out = batches.collate(batches.batches[-1])
    assert tgt_out.shape[1] == max(len(pairs[i][1]) for i in batches.batches[-1])


def test_batches_pad_with_their_pad_value_and_shuffle_with_their_seed():
    pairs = [([7] * (1 + i % 4), [8] * (1 + i % 5) + [3]) for i in range(40)]
    b = TranslationBatches(pairs, batch_tokens=12, bos=2, pad=9, shuffle=False)
    src, tgt_in, src_len, tgt_out = b.collate(b.batches[-1] + b.batches[0])
    assert set(src.unique().tolist()) <= {7, 9} and (src == 9).any()
    assert set(tgt_out.unique().tolist()) <= {8, 3, 9} and (tgt_out == 9).any()
    assert torch.equal((src != 9).sum(1), src_len)
    unshuffled = [t[3].tolist() for t in b]
    assert unshuffled == [t[3].tolist() for t in b] == [b.collate(x)[3].tolist() for x in b.batches]
    default = TranslationBatches(pairs, batch_tokens=12, bos=2)
    assert default.pad == 0 and default.seed == 0 and default.shuffle
    same = TranslationBatches(pairs, batch_tokens=12, bos=2, seed=0)
    other = TranslationBatches(pairs, batch_tokens=12, bos=2, seed=5)
    first = [t[3].tolist() for t in default]
    assert first == [t[3].tolist() for t in same]
    assert first != [t[3].tolist() for t in other]
    assert first != unshuffled


# ---------------------------------------------------------------------------
# Sizes at their exact values
# ---------------------------------------------------------------------------


def test_vocab_max_size_and_min_freq_at_their_exact_values():
    counts = Counter({"a": 5, "b": 4, "c": 3, "d": 3, "e": 1})
    for size in range(2, 8):
        assert len(Vocab(counts, max_size=size)) == min(size, 7)
    assert Vocab(counts, max_size=4).itos == [PAD, UNK, "a", "b"]
    assert Vocab(counts, min_freq=3).itos == [PAD, UNK, "a", "b", "c", "d"]  # count == min_freq is kept
    assert Vocab(counts, min_freq=4).itos == [PAD, UNK, "a", "b"]
    assert Vocab(counts, max_size=5, reserved=("<s>",)).itos == [PAD, UNK, "<s>", "a", "b"]


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_pad_sequences_at_exactly_maxlen_and_one_off(padding, truncating):
    seqs = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    out = pad_sequences(seqs, 3, padding=padding, truncating=truncating)
    assert out[0].tolist() == [1, 2, 3]  # exactly maxlen: untouched
    assert out[1].tolist() == ([5, 6, 7] if truncating == "pre" else [4, 5, 6])  # one more: one dropped
    assert out[2].tolist() == ([8, 9, 0] if padding == "post" else [0, 8, 9])  # one less: one pad
    assert pad_sequences([[], [1]], 1, padding=padding).tolist() == [[0], [1]]
