"""lib.text: tokenizer, vocabulary, padding (Keras semantics), the IMDB loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from lib import text
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


def test_balanced_subset_is_balanced_and_seeded():
    y = torch.tensor([0] * 30 + [1] * 20)
    a = text._balanced_subset(y, 10, seed=3)
    assert len(set(a.tolist())) == 10 and y[a].sum().item() == 5
    assert torch.equal(a, text._balanced_subset(y, 10, seed=3))
    assert not torch.equal(a, text._balanced_subset(y, 10, seed=4))
    with pytest.raises(ValueError, match="even"):
        text._balanced_subset(y, 7, seed=0)
    with pytest.raises(ValueError, match="only 20"):
        text._balanced_subset(y, 60, seed=0)


def make_imdb(root: Path) -> None:
    reviews = {
        "train/pos": ["Great film!<br /><br />Great acting.", "great great fun"],
        "train/neg": ["Awful film.", "awful, boring"],
        "test/pos": ["great"],
        "test/neg": ["boring film, truly awful and long"],
    }
    for sub, texts in reviews.items():
        (root / sub).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / sub / f"{i}_5.txt").write_text(t)


def test_load_imdb_on_a_toy_tree_and_its_cache(tmp_path, monkeypatch):
    root = tmp_path / "aclImdb"
    make_imdb(root)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr("lib.data.fetch", lambda name, **kw: calls.append(name) or root)
    train, test, vocab = text.load_imdb(num_words=6, maxlen=4)
    x, y = train.tensors
    assert x.shape == (4, 4) and y.tolist() == [0, 0, 1, 1]  # negatives first
    assert vocab.itos[:3] == [PAD, UNK, "great"]  # the most frequent training word
    assert x[2].tolist() == vocab.encode(["!", "great", "acting", "."])  # the end is kept
    xt, yt = test.tensors
    assert xt.shape == (2, 4) and yt.tolist() == [0, 1]
    assert xt[1].tolist()[1:] == [0, 0, 0]  # padded after the one real token
    # second call: from the cache, no reading of the reviews
    train2, _, _ = text.load_imdb(num_words=6, maxlen=4)
    assert calls == ["imdb"] and torch.equal(train2.tensors[0], x)
    # lengths and subsets
    tr, te, _ = text.load_imdb(num_words=6, maxlen=4, subset=(2, 2), with_lengths=True)
    assert len(tr) == 2 and tr.tensors[1].sum().item() == 1 and len(tr.tensors) == 3
    assert tr.tensors[2].tolist() == (tr.tensors[0] != 0).sum(1).tolist()
