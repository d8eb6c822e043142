"""lib.translation: d2l's preprocessing, the split by English sentence, batches, BLEU."""

from __future__ import annotations

import pytest
import torch

from lib.translation import BOS, EOS, TranslationBatches, corpus_bleu, load_fra_eng, preprocess_nmt


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
