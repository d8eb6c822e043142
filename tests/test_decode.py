"""Tests of lib.decode: greedy search, beam search, one beam step, the length penalty.

Hand-made models give exact answers: ``Markov`` picks the next-token distribution from
the source's first id and the last target token, so every sequence's probability is a
product we can enumerate.  The cache tests (cached = recomputing the prefix) run on
``lib.transformer.Transformer``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from lib.decode import beam_search, beam_step, greedy_decode, length_penalty

PAD, BOS, EOS = 0, 1, 2


class Markov(nn.Module):
    """p(y_t | y_<t, x) = table[x_0, y_{t-1}]: a bigram model per source; ignores the cache."""

    def __init__(self, log_probs: Tensor) -> None:  # (num_sources, V, V), rows are log-distributions
        super().__init__()
        self.register_buffer("table", log_probs)
        self.calls: list[int] = []

    def encode(self, src: Tensor, src_valid_lens: Tensor | None = None) -> tuple[Tensor, None]:
        return src[:, :1, None].float(), None  # memory (B, 1, 1) carries the source id

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None, record=None) -> Tensor:
        self.calls.append(tgt.shape[1])
        rows = memory[:, 0, 0].long()  # (B,)
        return self.table[rows[:, None], tgt]  # (B, T, V)


def _table(*rows: dict[int, float], V: int = 6) -> Tensor:
    """One source's (V, V) log-probability table from {token: prob} rows (missing rows: uniform)."""
    t = torch.full((V, V), 1.0 / (V - 3))
    t[:, PAD] = t[:, BOS] = 0.0
    t[:, EOS] = 1.0 / (V - 3)
    t = t / t.sum(1, keepdim=True)
    for prev, row in rows:
        t[prev] = 0.0
        for tok, p in row.items():
            t[prev, tok] = p
    return t.log()


A, B_, C = 3, 4, 5
# From <bos>: a 0.5, b 0.4, <eos> 0.1; after a: <eos> 0.4, b 0.3, c 0.3; after b: <eos> 0.9, c 0.1.
# Greedy takes a (0.5) and then <eos>: 0.5 * 0.4 = 0.20.  The best sequence is b <eos>: 0.4 * 0.9 = 0.36.
TRAP = _table((BOS, {A: 0.5, B_: 0.4, EOS: 0.1}), (A, {EOS: 0.4, B_: 0.3, C: 0.3}), (B_, {EOS: 0.9, C: 0.1}),
              (C, {EOS: 1.0}))


def _score(table: Tensor, seq: list[int], alpha: float, eos: bool = True) -> float:
    """Penalised log-probability of ``seq`` (+ <eos>) under one (V, V) table."""
    full = [BOS, *seq] + ([EOS] if eos else [])
    logp = sum(float(table[a, b]) for a, b in zip(full[:-1], full[1:], strict=True))
    return logp / float(length_penalty(len(full) - 1, alpha))


def _brute_force(table: Tensor, max_len: int, alpha: float) -> tuple[list[int], float]:
    """The best penalised sequence: every output that ends in <eos> within max_len, or is cut at max_len."""
    V = table.shape[0]
    words = [w for w in range(V) if w not in (PAD, BOS, EOS)]
    best: tuple[list[int], float] = ([], -math.inf)
    for n in range(max_len + 1):
        for seq in itertools.product(words, repeat=n):
            cands = [_score(table, list(seq), alpha)] if n < max_len else []
            if n == max_len:
                cands.append(_score(table, list(seq), alpha, eos=False))
            for s in cands:
                if s > best[1] + 1e-9:
                    best = (list(seq), s)
    return best


def _random_tables(n: int, V: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, V, V, generator=g) * 2
    logits[..., PAD] = logits[..., BOS] = -math.inf
    return torch.log_softmax(logits, dim=-1)


def test_greedy_falls_into_the_trap_and_beam_search_does_not():
    model = Markov(TRAP[None])
    src = torch.zeros(1, 3, dtype=torch.long)
    greedy = greedy_decode(model, src, bos=BOS, eos=EOS, max_len=5, use_cache=False)
    beam = beam_search(model, src, bos=BOS, eos=EOS, max_len=5, beam_size=2, alpha=0.0, use_cache=False)
    assert greedy.tokens == [[A]] and greedy.finished == [True]
    assert greedy.scores[0] == pytest.approx(math.log(0.5 * 0.4), abs=1e-5)
    assert beam.tokens == [[B_]] and beam.finished == [True]
    assert beam.scores[0] == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)
    assert beam.tokens[0] == _brute_force(TRAP, 5, 0.0)[0]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_wide_beam_finds_the_brute_force_optimum(alpha):
    """With K at least the number of live prefixes, beam search is exhaustive: it must find the best."""
    tables = _random_tables(3, 5, seed=1)
    max_len = 4
    src = torch.arange(3)[:, None]  # (B, 1): source b uses table b
    out = beam_search(Markov(tables), src, bos=BOS, eos=EOS, max_len=max_len, beam_size=27, alpha=alpha,
                      use_cache=False)
    for b in range(3):
        seq, score = _brute_force(tables[b], max_len, alpha)
        assert out.tokens[b] == seq
        assert out.scores[b] == pytest.approx(score, abs=1e-4)


def test_beam_size_one_is_greedy():
    tables = _random_tables(8, 7, seed=2)
    src = torch.arange(8)[:, None]
    greedy = greedy_decode(Markov(tables), src, bos=BOS, eos=EOS, max_len=6, use_cache=False)
    beam = beam_search(Markov(tables), src, bos=BOS, eos=EOS, max_len=6, beam_size=1, alpha=0.0, use_cache=False)
    assert beam.tokens == greedy.tokens
    assert beam.finished == greedy.finished
    assert beam.scores == pytest.approx(greedy.scores, abs=1e-5)


def test_length_penalty_turns_the_choice_to_the_longer_output():
    # <eos> at once: 0.3 (log -1.204).  a <eos>: 0.7 * 0.42 = 0.294 (log -1.224), over lp(2) = 7/6 when alpha = 1: -1.049.
    table = _table((BOS, {EOS: 0.3, A: 0.7}), (A, {EOS: 0.42, B_: 0.58}), (B_, {EOS: 0.5, A: 0.5}))
    src = torch.zeros(1, 1, dtype=torch.long)
    short = beam_search(Markov(table[None]), src, bos=BOS, eos=EOS, max_len=3, beam_size=3, alpha=0.0, use_cache=False)
    long = beam_search(Markov(table[None]), src, bos=BOS, eos=EOS, max_len=3, beam_size=3, alpha=1.0, use_cache=False)
    assert short.tokens == [[]] == [_brute_force(table, 3, 0.0)[0]]
    assert long.tokens == [[A]] == [_brute_force(table, 3, 1.0)[0]]
    assert long.scores[0] == pytest.approx(math.log(0.294) / (7 / 6), abs=1e-5)
    assert float(length_penalty(1, 0.7)) == pytest.approx(1.0)
    assert float(length_penalty(7, 1.0)) == pytest.approx(2.0)


def test_eos_ends_rows_separately_and_max_len_cuts_the_rest():
    never = _table((BOS, {A: 1.0}), (A, {A: 1.0}))  # <eos> impossible
    once = _table((BOS, {A: 0.9, EOS: 0.1}), (A, {EOS: 0.99, A: 0.01}))
    tables = torch.stack([never, once])
    src = torch.tensor([[0], [1]])
    for out in (greedy_decode(Markov(tables), src, bos=BOS, eos=EOS, max_len=4, use_cache=False),
                beam_search(Markov(tables), src, bos=BOS, eos=EOS, max_len=4, beam_size=2, use_cache=False)):
        assert out.tokens == [[A, A, A, A], [A]]
        assert out.finished == [False, True]
    model = Markov(tables)
    greedy_decode(model, src[1:], bos=BOS, eos=EOS, max_len=10, use_cache=False)
    assert model.calls == [1, 2], "greedy search must stop once every row has produced <eos>"


def test_a_batch_decodes_as_its_sources_one_by_one():
    tables = _random_tables(5, 6, seed=3)
    src = torch.arange(5)[:, None]
    for decode in (lambda s: greedy_decode(Markov(tables), s, bos=BOS, eos=EOS, max_len=5, use_cache=False),
                   lambda s: beam_search(Markov(tables), s, bos=BOS, eos=EOS, max_len=5, beam_size=3, alpha=0.6,
                                         use_cache=False)):
        together = decode(src)
        alone = [decode(src[b:b + 1]) for b in range(5)]
        assert together.tokens == [a.tokens[0] for a in alone]
        assert together.scores == pytest.approx([a.scores[0] for a in alone], abs=1e-5)


def _beam_step_reference(scores: Tensor, log_probs: Tensor, eos: int):
    """Every candidate listed and sorted in Python."""
    B, K, V = log_probs.shape
    out = []
    for b in range(B):
        cands = sorted(((float(scores[b, i] + log_probs[b, i, w]), i, w) for i in range(K) for w in range(V)),
                       key=lambda c: -c[0])
        finished = [(s, i) if w == eos else (-math.inf, None) for s, i, w in cands[:K]]
        live = [c for c in cands if c[2] != eos][:K]
        out.append((live, finished))
    return out


@pytest.mark.parametrize("B,K,V", [(1, 1, 5), (3, 4, 9), (2, 3, 3)])
def test_beam_step_matches_listing_every_candidate(B, K, V):
    g = torch.Generator().manual_seed(B * 100 + K * 10 + V)
    log_probs = torch.log_softmax(torch.randn(B, K, V, generator=g) * 3, dim=-1)
    scores = -torch.rand(B, K, generator=g) * 5
    if K > 1:
        scores[0, 1:] = -math.inf  # the first step: one live beam
    eos = 1
    log_probs[:, :, eos] += 2.0  # make <eos> candidates frequent
    step = beam_step(scores, log_probs, eos)
    for b, (live, finished) in enumerate(_beam_step_reference(scores, log_probs, eos)):
        assert step.scores[b].tolist() == pytest.approx([c[0] for c in live], abs=1e-6)
        live_pairs = [(c[1], c[2]) for c in live if c[0] > -math.inf]
        assert list(zip(step.beams[b].tolist(), step.tokens[b].tolist(), strict=True))[: len(live_pairs)] == live_pairs
        assert step.finished_scores[b].tolist() == pytest.approx([f[0] for f in finished], abs=1e-6)
        for j, (s, i) in enumerate(finished):
            if s > -math.inf:
                assert int(step.finished_beams[b, j]) == i
        assert (step.tokens[b] != eos).all()


def test_errors_name_what_was_expected():
    model = Markov(TRAP[None])
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        greedy_decode(model, torch.zeros(3, dtype=torch.long), bos=BOS, eos=EOS, max_len=3)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, torch.zeros(1, 2, dtype=torch.long), bos=BOS, eos=EOS, max_len=0)
    with pytest.raises(ValueError, match="src_valid_lens"):
        beam_search(model, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), bos=BOS, eos=EOS, max_len=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, torch.zeros(1, 2, dtype=torch.long), bos=BOS, eos=EOS, max_len=3, beam_size=0)
    with pytest.raises(ValueError, match=r"scores \(B, K\)"):
        beam_step(torch.zeros(2, 3), torch.zeros(2, 4, 5), eos=1)


# --- the real model: cached decoding = recomputing the prefix ------------------------------------


def _transformer(norm_first: bool, V: int = 13):
    from lib.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=11, tgt_vocab_size=V, d_model=16, num_heads=2, d_ff=32,
                            num_encoder_layers=2, num_decoder_layers=2, dropout=0.1, norm_first=norm_first)
    model = Transformer(cfg)
    with torch.no_grad():  # a random output layer, sharp enough that beams differ and switch parents
        model.decoder.out.weight.normal_(0, 1.0)
        model.decoder.out.bias.zero_()
        model.decoder.out.bias[EOS] = -1.0  # outputs of several tokens
    return model.train()  # decode must switch to eval mode (dropout off) itself


def _sources():
    g = torch.Generator().manual_seed(5)
    src = torch.randint(1, 11, (4, 6), generator=g)
    lens = torch.tensor([6, 3, 1, 5])
    src[torch.arange(6)[None] >= lens[:, None]] = 0
    return src, lens


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_logits_equal_recomputing_the_prefix(norm_first):
    from lib.attention import KVCache, Record

    model = _transformer(norm_first).eval()
    src, lens = _sources()
    tgt = torch.randint(3, 13, (4, 7))
    memory, mask = model.encode(src, lens)
    full = model.decode(tgt, memory, mask)  # (B, T, V)
    rec = Record(cache=KVCache())
    steps = [model.decode(tgt[:, t:t + 1], memory, mask, record=rec) for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # a cache fed the wrong positions (all from 0) must not match: the test can tell
    wrong = [model.decode(tgt[:, t:t + 1], memory, mask) for t in range(7)]
    assert not torch.allclose(torch.cat(wrong, dim=1), full, atol=1e-3)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_is_token_identical_to_uncached(norm_first):
    model = _transformer(norm_first)
    src, mask = _sources()
    for search in (lambda c: greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=9, use_cache=c),
                   lambda c: beam_search(model, src, mask, bos=BOS, eos=EOS, max_len=9, beam_size=3, alpha=0.6,
                                         use_cache=c)):
        cached, uncached = search(True), search(False)
        assert cached.tokens == uncached.tokens
        assert cached.scores == pytest.approx(uncached.scores, abs=1e-4)
        assert sum(len(set(t)) > 2 for t in cached.tokens) >= 2, "the outputs should be varied sentences"
    assert model.training, "decoding restores the training mode"


def test_transformer_batch_with_padding_decodes_as_one_by_one_and_k1_is_greedy():
    model = _transformer(False)
    src, lens = _sources()
    mask = lens
    together = beam_search(model, src, mask, bos=BOS, eos=EOS, max_len=8, beam_size=4, alpha=0.8)
    greedy = greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=8)
    k1 = beam_search(model, src, mask, bos=BOS, eos=EOS, max_len=8, beam_size=1, alpha=0.0)
    assert k1.tokens == greedy.tokens
    for b in range(4):
        one = src[b:b + 1, : int(lens[b])]  # no padding at all
        alone = beam_search(model, one, None, bos=BOS, eos=EOS, max_len=8, beam_size=4, alpha=0.8)
        assert alone.tokens[0] == together.tokens[b]
        assert greedy_decode(model, one, None, bos=BOS, eos=EOS, max_len=8).tokens[0] == greedy.tokens[b]


# ---------------------------------------------------------------------------
# Sampling (lesson 11): top-k, top-p, temperature, generate with and without the cache
# ---------------------------------------------------------------------------


def _nucleus_by_definition(probs: list[float], p: float) -> set[int]:
    """The smallest set of tokens whose mass reaches p, found by trying every size in order of probability."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    for n in range(1, len(probs) + 1):
        if sum(probs[i] for i in order[:n]) >= p - 1e-12:
            return set(order[:n])
    return set(order)


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    from lib.decode import top_p_filter

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        V = int(torch.randint(2, 12, (1,), generator=g))
        logits = torch.randn(V, generator=g, dtype=torch.float64) * 2
        p = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        kept = set(torch.nonzero(top_p_filter(logits, p) > -torch.inf).flatten().tolist())
        probs = torch.softmax(logits, -1).tolist()
        assert kept == _nucleus_by_definition(probs, p), (probs, p)
        assert sum(probs[i] for i in kept) >= p - 1e-12
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert torch.equal(top_p_filter(logits, 1.0), logits)  # p = 1 keeps everything
    assert (top_p_filter(logits, 1e-6) > -torch.inf).sum(-1).tolist() == [1, 1]  # the most probable always stays
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_top_k_keeps_the_k_largest():
    from lib.decode import top_k_filter

    logits = torch.tensor([[0.5, 2.0, -1.0, 3.0], [1.0, 1.0, 0.0, -2.0]])
    assert (top_k_filter(logits, 2) > -torch.inf).tolist() == [[False, True, False, True], [True, True, False, False]]
    assert torch.equal(top_k_filter(logits, 9), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_frequencies_match_the_softmax(temperature):
    """A chi-square goodness-of-fit test with a fixed seed: at temperature t the draws follow softmax(logits / t)."""
    from scipy.stats import chisquare

    from lib.decode import sample_next

    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0])
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), temperature=temperature, generator=g)
    counts = torch.bincount(draws, minlength=5).double()
    expected = torch.softmax(logits.double() / temperature, -1) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    wrong = torch.softmax(logits.double(), -1) * n if temperature != 1.0 else torch.full((5,), n / 5.0)
    assert chisquare(counts.numpy(), wrong.numpy()).pvalue < 1e-6  # the test can tell distributions apart


def test_sample_next_filters_before_drawing_and_is_greedy_at_zero():
    from lib.decode import sample_next

    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]]).expand(500, -1)
    g = torch.Generator().manual_seed(1)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {1, 2}
    assert set(sample_next(logits, top_p=0.3, generator=g).tolist()) == {1}
    assert sample_next(logits, temperature=0.0).tolist() == [1] * 500
    a = sample_next(logits, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, sample_next(logits, generator=torch.Generator().manual_seed(4)))  # seeded
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1.0)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample_next(logits[0])


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=5),
                                dict(top_p=0.9)])
def test_generate_with_the_cache_is_token_identical_to_recomputing(kw):
    from lib.decode import generate
    from lib.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, context_len=64, d_model=32, num_layers=2, num_heads=4, n_kv_heads=2))
    prompt = torch.randint(0, 30, (3, 4))
    out = {c: generate(model, prompt, 40, generator=torch.Generator().manual_seed(9), use_cache=c, **kw)
           for c in (True, False)}
    assert out[True].shape == (3, 44)
    assert torch.equal(out[True], out[False])
    with pytest.raises(ValueError, match="prompt"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, -1)
