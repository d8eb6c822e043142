"""lib.imdb: balanced subsets, the interleaved order, the loader and its cache, the split by movie."""

from __future__ import annotations

import pytest
import torch
from helpers import serve_imdb, write_imdb

from lib import imdb
from lib.text import PAD, UNK


def test_balanced_subset_is_balanced_and_seeded():
    y = torch.tensor([0] * 30 + [1] * 20)
    a = imdb._balanced_subset(y, 10, seed=3)
    assert len(set(a.tolist())) == 10 and y[a].sum().item() == 5
    assert torch.equal(a, imdb._balanced_subset(y, 10, seed=3))
    assert not torch.equal(a, imdb._balanced_subset(y, 10, seed=4))
    with pytest.raises(ValueError, match="even"):
        imdb._balanced_subset(y, 7, seed=0)
    with pytest.raises(ValueError, match="only 20"):
        imdb._balanced_subset(y, 60, seed=0)


def test_interleaved_order_makes_every_even_prefix_balanced():
    y = torch.tensor([0] * 500 + [1] * 500 + [1] * 7)  # sorted by class, like the files; 7 extra positives
    order = imdb._interleaved_order(y, seed=0)
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation
    shuffled = y[order]
    counts = shuffled[:1000].cumsum(0)[1::2]  # positives among the first 2, 4, ..., 1000
    assert torch.equal(counts, torch.arange(1, 501))
    assert shuffled[1000:].eq(1).all()  # the larger class's leftovers come last
    assert not torch.equal(shuffled[:1000:2], shuffled[:1000:2].sort().values)  # which class comes first varies
    assert not torch.equal(order, imdb._interleaved_order(y, seed=1))  # the seed is used
    assert torch.equal(order, imdb._interleaved_order(y, seed=0))  # and repeats


TOY_REVIEWS = {
    "train/pos": ["Great film!<br /><br />Great acting.", "great great fun"],
    "train/neg": ["Awful film.", "awful, boring"],
    "test/pos": ["great"],
    "test/neg": ["boring film, truly awful and long"],
}


def test_load_imdb_on_a_toy_tree_and_its_cache(tmp_path, monkeypatch):
    root, calls = serve_imdb(tmp_path, monkeypatch, TOY_REVIEWS)
    train, test, vocab = imdb.load_imdb(num_words=6, maxlen=4)
    x, y = train.tensors
    assert x.shape == (4, 4) and sorted(y.tolist()) == [0, 0, 1, 1]
    assert y[:2].sum() == 1 and y[2:].sum() == 1  # classes alternate pair by pair, not negatives first
    assert vocab.itos[:3] == [PAD, UNK, "great"]  # the most frequent training word
    first = vocab.encode(["!", "great", "acting", "."])  # the end is kept
    assert sum(row.tolist() == first for row in x) == 1
    xt, yt = test.tensors
    assert xt.shape == (2, 4) and sorted(yt.tolist()) == [0, 1]
    assert xt[yt == 1][0].tolist()[1:] == [0, 0, 0]  # padded after the one real token
    # second call: from the cache, no reading of the reviews
    train2, _, _ = imdb.load_imdb(num_words=6, maxlen=4)
    assert calls == ["imdb"] and torch.equal(train2.tensors[0], x)
    # lengths and subsets
    tr, te, _ = imdb.load_imdb(num_words=6, maxlen=4, subset=(2, 2), with_lengths=True)
    assert len(tr) == 2 and tr.tensors[1].sum().item() == 1 and len(tr.tensors) == 3
    assert tr.tensors[2].tolist() == (tr.tensors[0] != 0).sum(1).tolist()


def reviews_of(movies: dict[str, list[str]]) -> dict[str, list[str]]:
    """Training reviews whose ``urls_*.txt`` line ``i`` names ``movies[sub][i]``; one test review per class."""
    reviews = {sub: [f"review {i}" for i in range(len(ids))] for sub, ids in movies.items()}
    return {**reviews, "test/neg": ["a test review"], "test/pos": ["a test review"]}


def test_imdb_movies_reads_the_url_lists_in_the_files_order(tmp_path):
    root = tmp_path / "aclImdb"
    neg = [f"tt{i:07d}" for i in range(12)]  # 12 reviews: sorted names put 10_ and 11_ before 2_
    movies = {"train/neg": neg, "train/pos": ["tt9"] * 12}
    write_imdb(root, reviews_of(movies), movies)
    names = sorted(p.name for p in (root / "train/neg").iterdir())
    assert imdb.imdb_movies(root=root)[:12] == [neg[int(n.split("_")[0])] for n in names]
    assert imdb.imdb_movies("train", root) == imdb.imdb_movies(root=root)  # default split "train"
    with pytest.raises(ValueError, match="'train' or 'test'"):
        imdb.imdb_movies("validation", root)


def test_movie_disjoint_split_shares_no_movie_and_follows_load_imdbs_order(tmp_path, monkeypatch):
    movies = {"train/neg": [f"m{i % 20}" for i in range(40)], "train/pos": [f"m{(i * 7) % 20}" for i in range(40)]}
    root, _ = serve_imdb(tmp_path, monkeypatch, reviews_of(movies), movies)
    held = imdb.movie_disjoint_split(0.25, seed=5, root=root)
    train, _, _ = imdb.load_imdb(num_words=10, maxlen=4)
    assert held.shape == (len(train),) and held.dtype == torch.bool
    files_movie = imdb.imdb_movies(root=root)
    order = imdb._interleaved_order(torch.tensor([0] * 40 + [1] * 40), 0)  # load_imdb(seed=0)'s order
    movie = [files_movie[i] for i in order.tolist()]
    held_movies = {m for m, h in zip(movie, held.tolist(), strict=True) if h}
    kept_movies = {m for m, h in zip(movie, held.tolist(), strict=True) if not h}
    assert len(held_movies) == 5 and not held_movies & kept_movies  # a quarter of 20 movies, disjoint
    assert torch.equal(held, imdb.movie_disjoint_split(0.25, seed=5))  # root defaults to fetch("imdb")
    assert torch.equal(held, imdb.movie_disjoint_split(0.25, 5, order_seed=0, root=root))
    assert torch.equal(imdb.movie_disjoint_split(root=root), imdb.movie_disjoint_split(0.1, 123, root=root))
    assert not torch.equal(held, imdb.movie_disjoint_split(0.25, seed=6, root=root))
    with pytest.raises(ValueError, match="share"):
        imdb.movie_disjoint_split(1.0, root=root)
