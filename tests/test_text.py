"""lib.text: tokenizer, vocabulary, padding (Keras semantics)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lib.text import PAD, UNK, Vocab, pad_sequences, tokenize


def test_tokenize_lowercases_strips_br_and_splits_punctuation():
    assert tokenize("A <br /><br />great film, isn't it?!") == ["a", "great", "film", ",", "isn't", "it", "?", "!"]
    assert tokenize("Best<br/>EVER<BR>10/10") == ["best", "ever", "10", "/", "10"]
    assert tokenize("") == []


def test_vocab_reserves_pad_and_unk_and_ranks_by_frequency():
    counts = Counter("b a c a b a d".split())
    v = Vocab(counts, max_size=4)
    assert v.itos == [PAD, UNK, "a", "b"]
    assert len(v) == 4 and v.pad_index == 0 and v.unk_index == 1
    assert v["a"] == 2 and v["zzz"] == 1
    assert v.encode(["a", "c", "b"]) == [2, 1, 3]
    assert v.decode(torch.tensor([2, 3, 0, 0])) == ["a", "b"]


def test_vocab_ties_are_broken_alphabetically_and_min_freq():
    v = Vocab(Counter({"y": 2, "x": 2, "z": 1}), min_freq=2)
    assert v.itos == [PAD, UNK, "x", "y"]
    assert Vocab.from_itos(v.itos).stoi == v.stoi


def test_vocab_errors():
    with pytest.raises(ValueError, match="at least 2"):
        Vocab(Counter(), max_size=1)
    with pytest.raises(ValueError, match="must start with"):
        Vocab.from_itos(["a", "b"])


def test_pad_sequences_matches_keras_semantics():
    seqs = [[1, 2, 3, 4, 5], [6, 7], []]
    post = pad_sequences(seqs, 3, padding="post", truncating="pre")
    assert post.tolist() == [[3, 4, 5], [6, 7, 0], [0, 0, 0]]
    pre = pad_sequences(seqs, 3, padding="pre", truncating="post")
    assert pre.tolist() == [[1, 2, 3], [0, 6, 7], [0, 0, 0]]
    assert post.dtype == torch.long


def test_pad_sequences_errors():
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        pad_sequences([[1]], 3, padding="left")
    with pytest.raises(ValueError, match="positive"):
        pad_sequences([[1]], 0)
