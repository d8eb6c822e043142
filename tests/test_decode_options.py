"""lib.decode and the decoder side of lib.transformer: every option set away from its default, every state restored.

``tests/test_decode.py`` proves the search algorithms right with the arguments spelled out.
Here each default is checked to be the documented value and each non-default value to change
what comes out; decoding leaves every module's train/eval mode as it found it (also after an
error); a caller's mask and padding lengths, given together, both act; every field of the
configs reaches the layers it configures; and the cache gives the same logits for every
positional scheme, decoder-only or encoder-decoder.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.attention import KVCache, Record, causal_mask, padding_mask
from lib.decode import beam_search, greedy_decode, length_penalty
from lib.positional import SCHEMES, sinusoidal_table
from lib.transformer import (
    Decoder,
    DecoderBlock,
    DecoderConfig,
    Encoder,
    EncoderBlock,
    EncoderConfig,
    Transformer,
    TransformerConfig,
)

PAD, BOS, EOS = 0, 1, 2
A, B_ = 3, 4


class Markov(nn.Module):
    """p(y_t | y_<t) = table[y_{t-1}], one table for every source; records the length of each call."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)  # (V, V) log-probabilities
        self.drop = nn.Dropout(0.5)
        self.calls: list[int] = []
        self.rows: list[int] = []
        self.records: list[object] = []

    def encode(self, src, src_valid_lens=None):
        return src[:, :, None].float(), None

    def decode(self, tgt, memory, memory_mask=None, record=None):
        self.calls.append(tgt.shape[1])
        self.rows.append(tgt.shape[0])
        self.records.append(record)
        return self.table[tgt]  # (B, T, V)


def _table(rows: dict[int, dict[int, float]], V: int = 6) -> torch.Tensor:
    t = torch.full((V, V), 1e-6)
    for prev, row in rows.items():
        for tok, p in row.items():
            t[prev, tok] = p
    return (t / t.sum(1, keepdim=True)).log()


# From <bos>: a 0.5, b 0.4; after a: <eos> 0.4; after b: <eos> 0.9. Greedy: a <eos> (0.20); best: b <eos> (0.36).
TRAP = _table({BOS: {A: 0.5, B_: 0.4, EOS: 0.1}, A: {EOS: 0.4, B_: 0.3, 5: 0.3}, B_: {EOS: 0.9, 5: 0.1},
               5: {EOS: 1.0}})
# <eos> at once 0.3; a <eos> 0.7 * 0.42 = 0.294: without a length penalty the empty output wins.
SHORT_OR_LONG = _table({BOS: {EOS: 0.3, A: 0.7}, A: {EOS: 0.42, B_: 0.58}, B_: {EOS: 0.5, A: 0.5}})
NEVER_ENDS = _table({BOS: {A: 1.0}, A: {A: 0.6, B_: 0.4}, B_: {A: 0.5, B_: 0.5}})
SRC = torch.zeros(1, 2, dtype=torch.long)


# ---------------------------------------------------------------------------
# Modes: as found, per module, also after an error
# ---------------------------------------------------------------------------


def _tiny(norm_first=False, **kw):
    torch.manual_seed(0)
    base = dict(d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, num_decoder_layers=2, dropout=0.1,
                norm_first=norm_first, max_len=32)
    base.update(kw)
    return Transformer(TransformerConfig(11, 13, **base))


def _modes(model):
    return {name: m.training for name, m in model.named_modules()}


SEARCHES = {
    "greedy": lambda m, s, **kw: greedy_decode(m, s, bos=BOS, eos=EOS, max_len=4, **kw),
    "beam": lambda m, s, **kw: beam_search(m, s, bos=BOS, eos=EOS, max_len=4, beam_size=2, **kw),
}


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_decoding_restores_every_modules_mode(search, start):
    model = _tiny()
    src = torch.randint(3, 11, (2, 5))
    if start == "eval":
        model.eval()
    elif start == "mixed":  # e.g. fine-tuning the decoder with a frozen, eval-mode encoder
        model.train()
        model.encoder.eval()
        model.decoder.blocks[0].eval()
    before = _modes(model)
    seen = []
    original = model.decode

    def spying_decode(*args, **kw):
        seen.append(any(m.training for m in model.modules()))
        return original(*args, **kw)

    model.decode = spying_decode
    SEARCHES[search](model, src)
    assert seen and not any(seen), "decoding must run with every module in eval mode (dropout off)"
    assert _modes(model) == before


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("training", [True, False])
def test_decoding_restores_the_mode_after_an_error(search, training):
    model = _tiny().train(training)

    def broken(*args, **kw):
        raise RuntimeError("out of memory, say")

    model.decode = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        SEARCHES[search](model, torch.randint(3, 11, (1, 4)))
    assert all(m.training is training for m in model.modules())


def test_decoding_does_not_record_gradients():
    model = _tiny()
    for search in SEARCHES.values():
        seen = []
        original = model.decode
        model.decode = lambda *a, _o=original, _seen=seen, **kw: _seen.append(torch.is_grad_enabled()) or _o(*a, **kw)
        search(model, torch.randint(3, 11, (1, 4)))
        model.decode = original
        assert seen and not any(seen)
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------------------
# Defaults: the documented value, and a non-default value changes the result
# ---------------------------------------------------------------------------


def test_beam_search_defaults_are_four_beams_and_alpha_0_6():
    model = Markov(SHORT_OR_LONG)
    default = beam_search(model, SRC, bos=BOS, eos=EOS, max_len=3)
    explicit = beam_search(model, SRC, bos=BOS, eos=EOS, max_len=3, beam_size=4, alpha=0.6, use_cache=True)
    assert (default.tokens, default.scores, default.finished) == (explicit.tokens, explicit.scores, explicit.finished)
    # alpha: 0 prefers the empty output, 0.6 (and 1) the longer one
    assert beam_search(model, SRC, bos=BOS, eos=EOS, max_len=3, alpha=0.0).tokens == [[]]
    assert default.tokens == [[A]]
    assert default.scores[0] == pytest.approx(math.log(0.7 * 0.42) / ((5 + 2) / 6) ** 0.6, abs=1e-4)
    # four beams per source: every step scores B * 4 rows
    counted = Markov(NEVER_ENDS)
    beam_search(counted, torch.zeros(3, 2, dtype=torch.long), bos=BOS, eos=EOS, max_len=3)
    assert counted.rows == [3 * 4] * 3
    # beam size: 1 falls into the trap, the default's 4 beams do not
    trap = Markov(TRAP)
    assert beam_search(trap, SRC, bos=BOS, eos=EOS, max_len=4, alpha=0.0).tokens == [[B_]]
    assert beam_search(trap, SRC, bos=BOS, eos=EOS, max_len=4, alpha=0.0, beam_size=1).tokens == [[A]]


@pytest.mark.parametrize("search", list(SEARCHES))
def test_use_cache_defaults_to_one_new_token_per_step_with_a_cache(search):
    default, explicit, off = Markov(NEVER_ENDS), Markov(NEVER_ENDS), Markov(NEVER_ENDS)
    out = SEARCHES[search](default, SRC)
    SEARCHES[search](explicit, SRC, use_cache=True)
    SEARCHES[search](off, SRC, use_cache=False)
    assert default.calls == explicit.calls == [1, 1, 1, 1]
    assert all(r is not None and r.cache is not None for r in default.records)
    assert len({id(r) for r in default.records}) == 1, "one record (one cache) for the whole search"
    assert off.calls == [1, 2, 3, 4] and all(r is None for r in off.records)
    assert out.finished == [False] and len(out.tokens[0]) == 4


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.3])
def test_length_penalty_is_wu_et_als_formula(alpha):
    lengths = torch.arange(1, 12)
    expected = torch.tensor([((5 + n) / 6) ** alpha for n in range(1, 12)])
    torch.testing.assert_close(length_penalty(lengths, alpha), expected)
    assert float(length_penalty(1, alpha)) == pytest.approx(1.0)
    for n in range(1, 12):
        assert float(length_penalty(n, alpha)) == pytest.approx(((5 + n) / 6) ** alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_outputs_cut_at_max_len_are_scored_with_the_penalty_of_max_len(alpha):
    for max_len in (1, 3, 5):
        out = beam_search(Markov(NEVER_ENDS), SRC, bos=BOS, eos=EOS, max_len=max_len, beam_size=3, alpha=alpha)
        assert out.finished == [False] and len(out.tokens[0]) == max_len
        seq = [BOS, *out.tokens[0]]
        logp = sum(float(NEVER_ENDS[a, b]) for a, b in zip(seq[:-1], seq[1:], strict=True))
        assert out.scores[0] == pytest.approx(logp / ((5 + max_len) / 6) ** alpha, abs=1e-5)
        g = greedy_decode(Markov(NEVER_ENDS), SRC, bos=BOS, eos=EOS, max_len=max_len)
        assert g.finished == [False] and len(g.tokens[0]) == max_len


def test_greedy_scores_count_eos_and_stop_at_it():
    out = greedy_decode(Markov(TRAP), SRC, bos=BOS, eos=EOS, max_len=6)
    assert out.tokens == [[A]] and out.finished == [True]
    assert out.scores[0] == pytest.approx(math.log(0.5 * 0.4), abs=1e-4)  # <eos> counted, nothing after it


# ---------------------------------------------------------------------------
# Masks and lengths given together
# ---------------------------------------------------------------------------


def test_encoder_mask_and_valid_lens_given_together_both_act():
    torch.manual_seed(1)
    enc = Encoder(EncoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout=0.0, max_len=16)).eval()
    tokens = torch.randint(2, 20, (2, 6))
    lens = torch.tensor([6, 4])
    window = causal_mask(6)  # the caller's own mask
    both = enc(tokens, mask=window, valid_lens=lens)
    expected = enc(tokens, mask=window & padding_mask(lens, 6))
    torch.testing.assert_close(both, expected)
    assert not torch.allclose(both, enc(tokens, mask=window), atol=1e-4)  # the lengths act
    assert not torch.allclose(both, enc(tokens, valid_lens=lens), atol=1e-4)  # the mask acts
    # written out: the padded keys and the future are both invisible
    changed = tokens.clone()
    changed[1, 4:] = 7  # padding of row 1
    changed[0, 5] = (tokens[0, 5] + 1) % 20  # the future of position 4 of row 0
    again = enc(changed, mask=window, valid_lens=lens)
    torch.testing.assert_close(again[1, :4], both[1, :4])
    torch.testing.assert_close(again[0, :5], both[0, :5])


@pytest.mark.parametrize("norm_first", [False, True])
def test_target_padding_and_the_causal_mask_act_together(norm_first):
    model = _tiny(norm_first, dropout=0.0).eval()
    src = torch.randint(3, 11, (2, 5))
    tgt = torch.randint(3, 13, (2, 6))
    tgt_lens = torch.tensor([6, 3])
    logits = model(src, tgt, torch.tensor([5, 4]), tgt_lens)
    memory, mmask = model.encode(src, torch.tensor([5, 4]))
    expected = model.decode(tgt, memory, mmask, tgt_mask=padding_mask(tgt_lens, 6))
    torch.testing.assert_close(logits, expected)
    # the real positions of row 1 are what its 3 tokens alone give: padding and the future both unseen
    alone = model(src[1:], tgt[1:, :3], torch.tensor([4]))
    torch.testing.assert_close(logits[1, :3], alone[0], atol=1e-5, rtol=1e-5)
    # a pad key matters only once both masks let it through: for padded queries the causal mask alone acts
    no_pad = model.decode(tgt, memory, mmask)
    torch.testing.assert_close(logits[0], no_pad[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[1, 3:], no_pad[1, 3:], atol=1e-4)


# ---------------------------------------------------------------------------
# Configs: every field reaches the layers it configures
# ---------------------------------------------------------------------------

NON_DEFAULT = {
    "d_model": 24, "num_heads": 3, "d_ff": 40, "dropout": 0.25, "max_len": 20, "norm_first": True,
    "positional": "shaw", "activation": "gelu", "key_dim": 5, "d_head": 5, "bias": False, "eps": 1e-3,
    "scale_embedding": False, "fast": True, "max_distance": 3, "final_norm": False, "tie_weights": True,
    "num_encoder_layers": 2, "num_decoder_layers": 3,
}


def test_every_transformer_config_field_reaches_both_stacks():
    fields = [f for f in dataclasses.fields(TransformerConfig) if f.name not in ("src_vocab_size", "tgt_vocab_size")]
    unknown = [f.name for f in fields if f.name not in NON_DEFAULT]
    assert not unknown, f"new TransformerConfig fields {unknown}: give them a non-default value here"
    for f in fields:
        value = NON_DEFAULT[f.name]
        assert value != f.default
        cfg = TransformerConfig(7, 9, **{f.name: value})
        enc, dec = cfg.encoder(), cfg.decoder()
        assert (enc.vocab_size, dec.vocab_size) == (7, 9)
        if f.name == "num_encoder_layers":
            assert enc.num_layers == value and dec.num_layers == TransformerConfig(7, 9).num_decoder_layers
        elif f.name == "num_decoder_layers":
            assert dec.num_layers == value and enc.num_layers == TransformerConfig(7, 9).num_encoder_layers
        elif f.name == "tie_weights":
            assert dec.tie_weights is True
        else:
            assert getattr(enc, f.name) == value and getattr(dec, f.name) == value, f.name
    # and every EncoderConfig field has a twin in TransformerConfig
    names = {f.name for f in fields}
    assert {f.name for f in dataclasses.fields(EncoderConfig)} - {"vocab_size", "num_layers"} <= names


def test_config_defaults_are_torch_nn_transformers():
    """The paper's base model, as torch.nn.Transformer's defaults spell it: compared with torch directly."""
    import inspect

    torch_defaults = {k: p.default for k, p in inspect.signature(nn.Transformer.__init__).parameters.items()}
    same_as = {"d_model": "d_model", "num_heads": "nhead", "d_ff": "dim_feedforward", "dropout": "dropout",
               "eps": "layer_norm_eps", "norm_first": "norm_first", "bias": "bias",
               "num_encoder_layers": "num_encoder_layers", "num_decoder_layers": "num_decoder_layers"}
    ours = TransformerConfig(7, 9)
    for name, theirs in same_as.items():
        assert getattr(ours, name) == torch_defaults[theirs], name
    assert torch_defaults["activation"] is F.relu and ours.activation == "relu"
    for cfg in (EncoderConfig(7), DecoderConfig(7)):
        for name in ("d_model", "num_heads", "d_ff", "dropout", "eps", "norm_first", "bias", "activation"):
            assert getattr(cfg, name) == getattr(ours, name), name
        assert cfg.num_layers == torch_defaults["num_encoder_layers"]
    # the parameter count of a default model (at a small width) is torch's, embeddings and output layer aside:
    # the same layers (6 + 6), biases, LayerNorms; torch always ends both stacks with a LayerNorm
    model = Transformer(TransformerConfig(7, 9, d_model=16, d_ff=32))
    ref = nn.Transformer(d_model=16, dim_feedforward=32, batch_first=True)
    extra = 7 * 16 + 9 * 16 + 9 * 16 + 9  # two embeddings, the output projection
    final_norms = sum(isinstance(m, nn.LayerNorm) for m in (model.encoder.final_norm, model.decoder.final_norm))
    ours_count = sum(p.numel() for p in model.parameters())
    assert ours_count - extra == sum(p.numel() for p in ref.parameters()) - (2 - final_norms) * 2 * 16


def _layer_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.LayerNorm)]


@pytest.mark.parametrize("norm_first", [False, True])
def test_stack_config_fields_reach_their_layers(norm_first):
    kw = dict(d_model=16, num_heads=2, d_ff=24, num_layers=2, max_len=16, norm_first=norm_first, eps=1e-3,
              dropout=0.3, activation="gelu", bias=False, fast=True)
    for stack in (Encoder(EncoderConfig(20, **kw)), Decoder(DecoderConfig(20, **kw))):
        norms = _layer_norms(stack)
        assert norms and all(n.eps == 1e-3 for n in norms)
        drops = [m.p for m in stack.modules() if isinstance(m, nn.Dropout)]
        assert drops and all(p == 0.3 for p in drops)
        attn = [m for m in stack.modules() if hasattr(m, "W_o")]
        assert attn and all(a.fast for a in attn) and all(getattr(a, "dropout", None) is None or
                                                           getattr(a.dropout, "p", a.dropout) == 0.3 for a in attn)
        for m in stack.modules():
            if isinstance(m, nn.Linear) and m is not getattr(stack, "out", None):
                assert m.bias is None, "bias=False reaches every projection"
        x = torch.randn(2, 5, 16)
        ffn = stack.blocks[0].ffn
        ffn.eval()
        torch.testing.assert_close(ffn(x), ffn.fc2(F.gelu(ffn.fc1(x))))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("final_norm", [None, True, False])
def test_final_norm_is_built_and_applied(norm_first, final_norm):
    torch.manual_seed(2)
    cfg = EncoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=1, dropout=0.0, max_len=16,
                        norm_first=norm_first, final_norm=final_norm, eps=1e-3)
    enc = Encoder(cfg).eval()
    wanted = norm_first if final_norm is None else final_norm
    assert isinstance(enc.final_norm, nn.LayerNorm) is wanted
    tokens = torch.randint(0, 20, (2, 6))
    x = enc.embed(tokens)
    for block in enc.blocks:
        x = block(x)
    expected = F.layer_norm(x, (16,), eps=1e-3) if wanted else x
    with torch.no_grad():
        if wanted:
            enc.final_norm.weight.fill_(1.0)
            enc.final_norm.bias.fill_(0.0)
    torch.testing.assert_close(enc(tokens), expected)
    dec = Decoder(DecoderConfig(20, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                       if f.name != "vocab_size"})).eval()
    assert isinstance(dec.final_norm, nn.LayerNorm) is wanted
    h = dec.embed(tokens)
    memory = torch.randn(2, 4, 16)
    for block in dec.blocks:
        h = block(h, memory, causal_mask(6))
    expected = dec.out(dec.final_norm(h))
    torch.testing.assert_close(dec(tokens, memory), expected)
    if wanted:
        assert not torch.allclose(dec(tokens, memory), dec.out(h), atol=1e-4)


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_scale_embedding_and_its_initialisation(scale_embedding):
    D = 64
    cfg = EncoderConfig(500, d_model=D, num_heads=4, d_ff=32, num_layers=1, dropout=0.0, max_len=16,
                        scale_embedding=scale_embedding)
    enc = Encoder(cfg)
    tokens = torch.randint(0, 500, (2, 6))
    factor = math.sqrt(D) if scale_embedding else 1.0
    torch.testing.assert_close(enc.embed(tokens), enc.embedding(tokens) * factor + sinusoidal_table(6, D))
    std = enc.embedding.weight.std().item()
    # scaled: N(0, 1/D), so that entries times sqrt(D) have unit variance; unscaled: nn.Embedding's N(0, 1)
    assert std == pytest.approx(D**-0.5 if scale_embedding else 1.0, rel=0.05)
    assert (enc.embedding.weight * factor).std().item() == pytest.approx(1.0, rel=0.05)


def test_tie_weights_shares_one_parameter_and_drops_the_bias():
    tied = Decoder(DecoderConfig(30, d_model=16, num_heads=2, d_ff=32, num_layers=1, tie_weights=True))
    untied = Decoder(DecoderConfig(30, d_model=16, num_heads=2, d_ff=32, num_layers=1))
    assert tied.out.weight is tied.embedding.weight and tied.out.bias is None
    assert untied.out.weight is not untied.embedding.weight and untied.out.bias is not None
    n = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert n == 30 * 16 + 30


@pytest.mark.parametrize("name", ["shaw", "relative_bias"])
def test_max_distance_reaches_every_relative_scheme(name):
    for stack in (Encoder(EncoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=2, positional=name,
                                        max_distance=3)),
                  Decoder(DecoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=2, positional=name,
                                        max_distance=3))):
        schemes = [m.positional for m in stack.modules() if getattr(m, "positional", None) is not None
                   and hasattr(m.positional, "max_distance")]
        assert len(schemes) == 2 and all(s.max_distance == 3 for s in schemes)
        assert schemes[0] is not schemes[1], "one table per layer"


def test_decoder_only_blocks_and_memory_errors():
    lm = Decoder(DecoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=2, cross_attention=False))
    assert all(type(b) is EncoderBlock for b in lm.blocks)
    seq2seq = Decoder(DecoderConfig(20, d_model=16, num_heads=2, d_ff=32, num_layers=2))
    assert all(type(b) is DecoderBlock for b in seq2seq.blocks)
    with pytest.raises(ValueError, match="memory"):
        seq2seq(torch.randint(0, 20, (1, 3)))
    with pytest.raises(ValueError, match="decoder-only"):
        lm(torch.randint(0, 20, (1, 3)), torch.randn(1, 2, 16))


# ---------------------------------------------------------------------------
# The cache, for every positional scheme, decoder-only and encoder-decoder
# ---------------------------------------------------------------------------

ATOL, RTOL = 2e-5, 2e-5


@pytest.mark.parametrize("positional", [*SCHEMES, None])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_only_cached_equals_uncached_for_every_scheme(positional, norm_first):
    torch.manual_seed(5)
    lm = Decoder(DecoderConfig(40, d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout=0.0, max_len=16,
                               norm_first=norm_first, positional=positional, cross_attention=False,
                               max_distance=3)).eval()
    with torch.no_grad():  # relative_bias starts at zero: make it matter
        for m in lm.modules():
            if hasattr(m, "bias") and isinstance(m.bias, nn.Parameter) and m.bias.dim() == 2:
                m.bias.normal_()
    tokens = torch.randint(0, 40, (2, 9))
    full = lm(tokens)
    cache = KVCache()
    steps = [lm(tokens[:, t:t + 1], record=Record(cache=cache)) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=RTOL)
    cache = KVCache()
    prompt = lm(tokens[:, :5], record=Record(cache=cache))
    rest = [lm(tokens[:, t:t + 1], record=Record(cache=cache)) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([prompt, *rest], 1), full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("positional", ["relative_bias", "learned", None])
def test_cached_search_equals_uncached_for_the_schemes_test_decode_leaves_out(positional):
    model = _tiny(positional=positional, max_distance=2)
    with torch.no_grad():
        model.decoder.out.weight.normal_(0, 1.0)
        for m in model.modules():
            if hasattr(m, "bias") and isinstance(m.bias, nn.Parameter) and m.bias.dim() == 2:
                m.bias.normal_()
    src = torch.randint(3, 11, (3, 6))
    lens = torch.tensor([6, 2, 4])
    for search in (greedy_decode, beam_search):
        cached = search(model, src, lens, bos=BOS, eos=EOS, max_len=7, use_cache=True)
        uncached = search(model, src, lens, bos=BOS, eos=EOS, max_len=7, use_cache=False)
        assert cached.tokens == uncached.tokens
        assert cached.scores == pytest.approx(uncached.scores, abs=1e-4)
