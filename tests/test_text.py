"""lib.text: tokenizer, vocabulary, padding (Keras semantics), the IMDB loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from lib import text
from lib.text import (
    BOS,
    EOS,
    PAD,
    UNK,
    TranslationBatches,
    Vocab,
    corpus_bleu,
    load_fra_eng,
    pad_sequences,
    preprocess_nmt,
    tokenize,
)


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


def test_interleaved_order_makes_every_even_prefix_balanced():
    y = torch.tensor([0] * 500 + [1] * 500 + [1] * 7)  # sorted by class, like the files; 7 extra positives
    order = text._interleaved_order(y, seed=0)
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation
    shuffled = y[order]
    counts = shuffled[:1000].cumsum(0)[1::2]  # positives among the first 2, 4, ..., 1000
    assert torch.equal(counts, torch.arange(1, 501))
    assert shuffled[1000:].eq(1).all()  # the larger class's leftovers come last
    assert not torch.equal(shuffled[:1000:2], shuffled[:1000:2].sort().values)  # which class comes first varies
    assert not torch.equal(order, text._interleaved_order(y, seed=1))  # the seed is used
    assert torch.equal(order, text._interleaved_order(y, seed=0))  # and repeats


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
    assert x.shape == (4, 4) and sorted(y.tolist()) == [0, 0, 1, 1]
    assert y[:2].sum() == 1 and y[2:].sum() == 1  # classes alternate pair by pair, not negatives first
    assert vocab.itos[:3] == [PAD, UNK, "great"]  # the most frequent training word
    first = vocab.encode(["!", "great", "acting", "."])  # the end is kept
    assert sum(row.tolist() == first for row in x) == 1
    xt, yt = test.tensors
    assert xt.shape == (2, 4) and sorted(yt.tolist()) == [0, 1]
    assert xt[yt == 1][0].tolist()[1:] == [0, 0, 0]  # padded after the one real token
    # second call: from the cache, no reading of the reviews
    train2, _, _ = text.load_imdb(num_words=6, maxlen=4)
    assert calls == ["imdb"] and torch.equal(train2.tensors[0], x)
    # lengths and subsets
    tr, te, _ = text.load_imdb(num_words=6, maxlen=4, subset=(2, 2), with_lengths=True)
    assert len(tr) == 2 and tr.tensors[1].sum().item() == 1 and len(tr.tensors) == 3
    assert tr.tensors[2].tolist() == (tr.tensors[0] != 0).sum(1).tolist()


# --- fra-eng: preprocessing, the split by English sentence, batches, BLEU -------------------------



def test_preprocess_nmt_is_d2ls(d2l):
    raw = "Go.\tVa !\nI'm home.\tJe suis chez moi.\nWait!\u202fNow,\xa0please?\tAttends\u202f!"
    mt = d2l.MTFraEng.__new__(d2l.MTFraEng)
    assert "\n".join(preprocess_nmt(line) for line in raw.split("\n")) == mt._preprocess(raw)


def _toy_pairs():
    english = [f"s{i} ." for i in range(30)]
    return [(en, f"f{i}{j} ! {'x' * (i % 3)}".strip()) for i, en in enumerate(english) for j in range(1 + i % 3)]


def test_fra_eng_split_is_by_english_sentence_seeded_and_keeps_every_reference():
    pairs = _toy_pairs()
    data = load_fra_eng(5, pairs=pairs, min_freq=1)
    train_sources = {" ".join(data.src_vocab.decode(s)) for s, _ in data.train}
    assert not train_sources & set(data.test_sources), "a test sentence leaked into training"
    assert len(data.test_sources) == 5 == len(set(data.test_sources))
    assert len(data.train) + len(data.test_indices) == len(pairs)
    for en, refs in zip(data.test_sources, data.test_references, strict=True):
        assert sorted(refs) == sorted(fr for e, fr in pairs if e == en)
    assert [pairs[i][0] in data.test_sources for i in data.test_indices] == [True] * len(data.test_indices)
    again = load_fra_eng(5, pairs=pairs, min_freq=1)
    other = load_fra_eng(5, pairs=pairs, min_freq=1, seed=1)
    assert again.digest == data.digest and again.test_sources == data.test_sources
    assert other.digest != data.digest
    assert data.src_vocab.itos[:4] == data.tgt_vocab.itos[:4] == ["<pad>", "<unk>", BOS, EOS]
    assert all(t[-1] == data.tgt_vocab[EOS] for _, t in data.train)
    assert data.decode_target([*data.train[0][1], 7, 8]) == " ".join(data.tgt_vocab.decode(data.train[0][1][:-1]))
    with pytest.raises(ValueError, match="num_test"):
        load_fra_eng(30, pairs=pairs)


def test_translation_batches_shift_the_target_and_group_by_length():
    pairs = [([5] * (1 + i % 4), [6 + i % 5] * (1 + i % 7) + [3]) for i in range(50)]
    batches = TranslationBatches(pairs, batch_tokens=24, bos=2, seed=0)
    seen = []
    for src, tgt_in, src_len, tgt_out in batches:
        assert tgt_in.shape == tgt_out.shape and src.shape[0] == tgt_in.shape[0] == len(src_len)
        assert tgt_out.numel() <= 24 or tgt_out.shape[0] == 1
        assert (tgt_in[:, 0] == 2).all(), "the decoder input starts with <bos>"
        real = tgt_out != 0
        assert torch.equal(tgt_in[:, 1:][real[:, 1:]], tgt_out[:, :-1][real[:, 1:]]), "input = target shifted by one"
        assert torch.equal((src != 0).sum(1), src_len)
        seen += [tuple(r[r != 0].tolist()) for r in tgt_out]
    assert sorted(seen) == sorted(tuple(t) for _, t in pairs)
    first = [b[3].shape for b in batches]
    second = [b[3].shape for b in batches]
    assert sorted(first) == sorted(second) and first != second, "each pass shuffles the batch order"


def test_corpus_bleu_is_sacrebleus_with_variable_references():
    import sacrebleu

    hyps = ["le chat est sur le tapis .", "il fait beau ."]
    refs = [["le chat est sur le tapis ."], ["il fait beau aujourd'hui .", "le temps est beau ."]]
    score, signature = corpus_bleu(hyps, refs)
    expected = sacrebleu.corpus_bleu(hyps, [[refs[0][0], refs[1][0]], ["", refs[1][1]]])
    assert score.score == pytest.approx(expected.score)
    assert "nrefs:var" in signature and "tok:13a" in signature
    with pytest.raises(ValueError, match="reference"):
        corpus_bleu(hyps, refs[:1])
