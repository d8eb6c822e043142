"""Tests of lib.transformer's decoder side: DecoderBlock, Decoder, Transformer, incremental decoding.

Parity with torch.nn.Transformer (copied weights, both norm placements, padding and causal
masks, forward and gradients) and with d2l's TransformerDecoderBlock (the book's class,
written out below since d2l 1.0.3 does not ship it), including d2l's own incremental
decoding; training mode with dropout against references written out; properties (causal,
padding invariance, cached = uncached decoding, also decoder-only and with RoPE); errors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import copy_, randomise_norms_, with_all_weights
from torch import nn

from lib.attention import KVCache, Record, causal_mask, padding_mask
from lib.interop import mha_from_d2l, mha_from_torch
from lib.transformer import (
    Decoder,
    DecoderBlock,
    DecoderConfig,
    Encoder,
    EncoderConfig,
    Transformer,
    TransformerConfig,
)

ATOL, RTOL = 1e-5, 1e-4


def _randomise_(module: nn.Module) -> None:
    """LayerNorms at weight 1, bias 0 and zero biases would hide a copy that forgets them."""
    randomise_norms_(module)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.normal_(0.0, 0.1)


# ---------------------------------------------------------------------------
# DecoderBlock against d2l's TransformerDecoderBlock (d2l.ai, section 11.7.4)
# ---------------------------------------------------------------------------


def _d2l_decoder_block(d2l, num_hiddens, ffn_num_hiddens, num_heads, dropout, i):
    class TransformerDecoderBlock(nn.Module):
        """The book's code, verbatim but for the class being local."""

        def __init__(self):
            super().__init__()
            self.i = i
            self.attention1 = d2l.MultiHeadAttention(num_hiddens, num_heads, dropout)
            self.addnorm1 = d2l.AddNorm(num_hiddens, dropout)
            self.attention2 = d2l.MultiHeadAttention(num_hiddens, num_heads, dropout)
            self.addnorm2 = d2l.AddNorm(num_hiddens, dropout)
            self.ffn = d2l.PositionWiseFFN(ffn_num_hiddens, num_hiddens)
            self.addnorm3 = d2l.AddNorm(num_hiddens, dropout)

        def forward(self, X, state):
            enc_outputs, enc_valid_lens = state[0], state[1]
            if state[2][self.i] is None:
                key_values = X
            else:
                key_values = torch.cat((state[2][self.i], X), dim=1)
            state[2][self.i] = key_values
            if self.training:
                batch_size, num_steps, _ = X.shape
                dec_valid_lens = torch.arange(1, num_steps + 1, device=X.device).repeat(batch_size, 1)
            else:
                dec_valid_lens = None
            X2 = self.attention1(X, key_values, key_values, dec_valid_lens)
            Y = self.addnorm1(X, X2)
            Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens)
            Z = self.addnorm2(Y, Y2)
            return self.addnorm3(Z, self.ffn(Z)), state

    return TransformerDecoderBlock()


def _ours_from_d2l(ref, D, H, F) -> DecoderBlock:
    ours = DecoderBlock(D, H, F)
    ours.self_attention = mha_from_d2l(ref.attention1)
    ours.cross_attention = mha_from_d2l(ref.attention2)
    copy_(ours.ffn.fc1, ref.ffn.dense1)
    copy_(ours.ffn.fc2, ref.ffn.dense2)
    for k in (1, 2, 3):
        copy_(getattr(ours, f"residual{k}").norm, getattr(ref, f"addnorm{k}").ln)
    return ours.train(ref.training)


def test_decoder_block_matches_d2l_teacher_forcing_and_incremental(d2l):
    torch.manual_seed(0)
    B, T, S, D, H, F = 3, 5, 6, 16, 4, 32
    ref = _d2l_decoder_block(d2l, D, F, H, 0.0, 0)
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    enc_valid_lens = torch.tensor([6, 3, 1])
    ref.train()
    ref(x, [memory, enc_valid_lens, [None]])  # LazyLinear: one forward fixes the sizes
    _randomise_(ref)
    ours = _ours_from_d2l(ref, D, H, F)

    # training mode (dropout 0): d2l's causal valid_lens arange(1..T) = our causal mask
    expected, _ = ref(x, [memory, enc_valid_lens, [None]])
    got = ours(x, memory, causal_mask(T), padding_mask(enc_valid_lens, S))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)

    # eval mode: d2l decodes one token at a time, keeping past inputs in state[2]; ours keeps k/v in a cache
    ref.eval()
    ours.eval()
    state, cache, theirs, mine = [memory, enc_valid_lens, [None]], KVCache(), [], []
    for t in range(T):
        y, state = ref(x[:, t:t + 1], state)
        theirs.append(y)
        mine.append(ours(x[:, t:t + 1], memory, None, padding_mask(enc_valid_lens, S), record=Record(cache=cache)))
    torch.testing.assert_close(torch.cat(mine, 1), torch.cat(theirs, 1), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.cat(mine, 1), got, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_training_mode_dropout_matches_written_out_reference(norm_first):
    torch.manual_seed(1)
    D, H, F, p = 16, 2, 32, 0.3
    block = DecoderBlock(D, H, F, dropout=p, norm_first=norm_first).train()
    _randomise_(block)
    x, memory = torch.randn(2, 4, D), torch.randn(2, 5, D)
    self_mask, memory_mask = causal_mask(4), padding_mask(torch.tensor([5, 2]), 5)
    torch.manual_seed(9)
    got = block(x, memory, self_mask, memory_mask)

    torch.manual_seed(9)  # the same draws in the same order: attention weights, residual, ... FFN hidden, residual
    drop = nn.functional.dropout
    sa, ca, ffn = block.self_attention, block.cross_attention, block.ffn
    n1, n2, n3 = block.residual1.norm, block.residual2.norm, block.residual3.norm

    def res(h, norm, sub):
        return h + drop(sub(norm(h)), p) if norm_first else norm(h + drop(sub(h), p))

    h = res(x, n1, lambda t: sa(t, mask=self_mask))  # sa's own attention dropout draws first
    h = res(h, n2, lambda t: ca(t, memory, memory, mask=memory_mask))
    h = res(h, n3, lambda t: ffn.fc2(drop(ffn.act(ffn.fc1(t)), p)))
    torch.testing.assert_close(got, h)
    block.eval()
    torch.testing.assert_close(block(x, memory, self_mask, memory_mask), block(x, memory, self_mask, memory_mask))


# ---------------------------------------------------------------------------
# Transformer against torch.nn.Transformer
# ---------------------------------------------------------------------------


def _pair(norm_first: bool, dropout: float = 0.0):
    D, H, F = 16, 4, 40
    ref = nn.Transformer(D, H, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=F, dropout=dropout,
                         batch_first=True, norm_first=norm_first)
    _randomise_(ref)
    cfg = TransformerConfig(30, 40, d_model=D, num_heads=H, d_ff=F, num_encoder_layers=2, num_decoder_layers=2,
                            dropout=dropout, max_len=20, norm_first=norm_first, final_norm=True)  # torch: final norms
    ours = Transformer(cfg)
    for blk, layer in zip(ours.encoder.blocks, ref.encoder.layers, strict=True):
        blk.attention = mha_from_torch(layer.self_attn)
        for a, b in ((blk.ffn.fc1, layer.linear1), (blk.ffn.fc2, layer.linear2), (blk.residual1.norm, layer.norm1),
                     (blk.residual2.norm, layer.norm2)):
            copy_(a, b)
    for blk, layer in zip(ours.decoder.blocks, ref.decoder.layers, strict=True):
        blk.self_attention = mha_from_torch(layer.self_attn)
        blk.cross_attention = mha_from_torch(layer.multihead_attn)
        for a, b in ((blk.ffn.fc1, layer.linear1), (blk.ffn.fc2, layer.linear2), (blk.residual1.norm, layer.norm1),
                     (blk.residual2.norm, layer.norm2), (blk.residual3.norm, layer.norm3)):
            copy_(a, b)
    copy_(ours.encoder.final_norm, ref.encoder.norm)
    copy_(ours.decoder.final_norm, ref.decoder.norm)
    # Training mode (dropout 0) keeps torch off its inference fast path (zeros at padded positions).
    return ours.train(), ref.train()


def _reference_logits(ours, ref, src, tgt, src_lens, tgt_lens):
    S, T = src.shape[1], tgt.shape[1]
    src_pad = torch.arange(S)[None] >= src_lens[:, None]  # torch: True = padding
    tgt_pad = torch.arange(T)[None] >= tgt_lens[:, None]
    y = ref(ours.encoder.embed(src), ours.decoder.embed(tgt), tgt_mask=~causal_mask(T),  # torch: True = not allowed
            src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
    return ours.decoder.out(y)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch_forward_and_gradients(norm_first):
    torch.manual_seed(2)
    ours, ref = _pair(norm_first)
    ours.double(), ref.double()
    src, tgt = torch.randint(0, 30, (3, 7)), torch.randint(0, 40, (3, 5))
    src_lens, tgt_lens = torch.tensor([7, 4, 2]), torch.tensor([5, 5, 3])
    got = ours(src, tgt, src_lens, tgt_lens)
    expected = _reference_logits(ours, ref, src, tgt, src_lens, tgt_lens)
    torch.testing.assert_close(got, expected)
    # gradients: of a loss on every position, for our parameters and torch's copies of them
    w = torch.randn_like(got)
    (got * w).sum().backward()
    ours_grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    (expected * w).sum().backward()  # flows into ref's parameters and ours' embeddings/output layer
    torch.testing.assert_close(ours.encoder.embedding.weight.grad, ours_grads["encoder.embedding.weight"])
    torch.testing.assert_close(ours.decoder.out.weight.grad, ours_grads["decoder.out.weight"])
    l0, d0 = ref.decoder.layers[0], ours_grads
    torch.testing.assert_close(l0.linear1.weight.grad, d0["decoder.blocks.0.ffn.fc1.weight"])
    torch.testing.assert_close(l0.norm3.weight.grad, d0["decoder.blocks.0.residual3.norm.weight"])
    torch.testing.assert_close(l0.multihead_attn.out_proj.weight.grad, d0["decoder.blocks.0.cross_attention.W_o.weight"])
    q_grad = l0.self_attn.in_proj_weight.grad[:16]
    torch.testing.assert_close(q_grad, d0["decoder.blocks.0.self_attention.W_q.weight"])
    torch.testing.assert_close(ref.encoder.layers[1].norm2.weight.grad, d0["encoder.blocks.1.residual2.norm.weight"])
    torch.testing.assert_close(ref.encoder.norm.weight.grad, d0["encoder.final_norm.weight"])


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_training_mode_is_its_written_out_composition(norm_first):
    """Dropout > 0, training mode: the stack is embed-dropout, blocks, final norm, output, draw for draw.

    (torch.nn.Transformer cannot be reseeded draw for draw: its batch-first attention output is a
    transposed view, and dropout draws its mask in memory order.  The blocks' dropout placement is
    checked against written-out references in test_decoder_block_training_mode_... and test_transformer.py.)
    """
    torch.manual_seed(3)
    model = _tiny_transformer(norm_first=norm_first, dropout=0.2, positional="learned").train()
    src, tgt = torch.randint(0, 25, (2, 6)), torch.randint(0, 35, (2, 4))
    src_lens, tgt_lens = torch.tensor([6, 3]), torch.tensor([4, 2])
    torch.manual_seed(11)
    got = model(src, tgt, src_lens, tgt_lens)
    torch.manual_seed(11)
    enc, dec, drop = model.encoder, model.decoder, nn.functional.dropout
    src_mask, tgt_pad = padding_mask(src_lens, 6), padding_mask(tgt_lens, 4)
    h = drop(enc.embedding(src) * 4.0 + enc.positional.embedding.weight[:6], 0.2)  # sqrt(16) = 4
    for block in enc.blocks:
        h = block(h, src_mask)
    memory = enc.final_norm(h)
    y = drop(dec.embedding(tgt) * 4.0 + dec.positional.embedding.weight[:4], 0.2)
    for block in dec.blocks:
        y = block(y, memory, causal_mask(4) & tgt_pad, src_mask)
    torch.testing.assert_close(got, dec.out(dec.final_norm(y)))
    torch.manual_seed(12)
    assert not torch.allclose(model(src, tgt, src_lens, tgt_lens), got, atol=1e-3)  # dropout is really on
    model.eval()
    torch.testing.assert_close(model(src, tgt, src_lens, tgt_lens), model(src, tgt, src_lens, tgt_lens))


# ---------------------------------------------------------------------------
# Incremental decoding: cached = uncached
# ---------------------------------------------------------------------------


def _tiny_transformer(**kw) -> Transformer:
    base = dict(d_model=16, num_heads=4, d_ff=32, num_encoder_layers=2, num_decoder_layers=3, dropout=0.0, max_len=24)
    base.update(kw)
    return Transformer(TransformerConfig(25, 35, **base)).eval()


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope", "alibi", "shaw"])
@pytest.mark.parametrize("norm_first,fast", [(False, False), (True, True)])
def test_cached_decoding_equals_recomputing_the_prefix(positional, norm_first, fast):
    torch.manual_seed(4)
    model = _tiny_transformer(positional=positional, norm_first=norm_first, fast=fast, tie_weights=True)
    src, tgt = torch.randint(0, 25, (3, 8)), torch.randint(0, 35, (3, 7))
    memory, memory_mask = model.encode(src, torch.tensor([8, 5, 2]))
    full = model.decode(tgt, memory, memory_mask)  # (B, T, V), teacher forcing
    cache, steps = KVCache(), []
    for t in range(7):
        steps.append(model.decode(tgt[:, t:t + 1], memory, memory_mask, record=Record(cache=cache)))
    assert len(cache) == 2 * 3  # a self- and a cross-attention slot per layer
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=RTOL)
    # a prompt of 4 tokens at once, then one at a time
    cache = KVCache()
    first = model.decode(tgt[:, :4], memory, memory_mask, record=Record(cache=cache))
    rest = [model.decode(tgt[:, t:t + 1], memory, memory_mask, record=Record(cache=cache)) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "alibi"])
def test_decoder_only_cached_equals_uncached(positional):
    torch.manual_seed(5)
    lm = Decoder(DecoderConfig(40, d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout=0.0, max_len=16,
                               norm_first=True, positional=positional, cross_attention=False, tie_weights=True)).eval()
    tokens = torch.randint(0, 40, (2, 9))
    full = lm(tokens)
    cache = KVCache()
    steps = [lm(tokens[:, t:t + 1], record=Record(cache=cache)) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=RTOL)
    assert lm.out.weight is lm.embedding.weight


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_is_causal(norm_first):
    """Output t does not depend on target token t+1 or later: zero gradient into later embeddings."""
    torch.manual_seed(6)
    model = _tiny_transformer(norm_first=norm_first, dropout=0.0)
    src, T = torch.randint(0, 25, (1, 6)), 6
    memory, _ = model.encode(src)
    x = model.decoder.embed(torch.randint(0, 35, (1, T))).detach().requires_grad_(True)
    h = x
    for block in model.decoder.blocks:
        h = block(h, memory, causal_mask(T))
    t = 2
    model.decoder.out(model.decoder.final_norm(h))[0, t].sum().backward()
    assert x.grad[0, t + 1:].abs().max() == 0, "output t depends on a later target position"
    assert x.grad[0, : t + 1].abs().sum() > 0


def test_padding_invariance():
    torch.manual_seed(7)
    model = _tiny_transformer()
    src, tgt = torch.randint(0, 25, (2, 7)), torch.randint(0, 35, (2, 5))
    src_lens, tgt_lens = torch.tensor([7, 3]), torch.tensor([5, 2])
    out = model(src, tgt, src_lens, tgt_lens)
    src2, tgt2 = src.clone(), tgt.clone()
    src2[1, 3:] = torch.randint(0, 25, (4,))  # new tokens in the source padding
    tgt2[1, 2:] = torch.randint(0, 35, (3,))  # and in the target padding
    out2 = model(src2, tgt2, src_lens, tgt_lens)
    torch.testing.assert_close(out2[1, :2], out[1, :2])
    torch.testing.assert_close(out2[0], out[0])
    assert not torch.allclose(model(src2, tgt2)[1, :2], out[1, :2], atol=1e-4)  # without masks it would leak


def test_weights_are_recorded_per_call_in_order():
    model = _tiny_transformer()
    src, tgt = torch.randint(0, 25, (2, 7)), torch.randint(0, 35, (2, 5))
    _, weights = with_all_weights(model, src, tgt, torch.tensor([7, 3]))
    # 2 encoder self-attentions, then per decoder layer: self (T x T), cross (T x S)
    assert [tuple(w.shape[-2:]) for w in weights] == [(7, 7)] * 2 + [(5, 5), (5, 7)] * 3
    assert torch.all(weights[3][1, :, :, 3:] == 0)  # cross-attention ignores the source padding
    assert torch.all(weights[2][0].triu(1) == 0)  # causal self-attention


def test_configs_tying_and_errors():
    cfg = TransformerConfig(25, 35, d_model=16, num_heads=4, d_ff=32, tie_weights=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]
    assert cfg.encoder() == EncoderConfig(25, d_model=16, num_heads=4, d_ff=32)
    model = Transformer(cfg)
    assert model.decoder.out.weight is model.decoder.embedding.weight and model.decoder.out.bias is None
    untied = Transformer(dataclasses.replace(cfg, tie_weights=False))
    V, D = 35, 16
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == V * D + V
    dec = Decoder(cfg.decoder())
    with pytest.raises(ValueError, match="pass memory"):
        dec(torch.randint(0, 35, (1, 3)))
    lm = Decoder(DecoderConfig(35, d_model=16, num_heads=4, d_ff=32, cross_attention=False))
    with pytest.raises(ValueError, match="takes no memory"):
        lm(torch.randint(0, 35, (1, 3)), torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match=r"memory \(B=1, S, D\), got \(2, 4, 16\)"):
        DecoderBlock(16, 4, 32)(torch.randn(1, 3, 16), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="from num_heads"):
        DecoderBlock(16, d_ff=32)
    with pytest.raises(ValueError, match="from d_ff"):
        DecoderBlock(16, 4)
    with pytest.raises(ValueError, match="positional must be one of"):
        DecoderConfig(35, positional="rotary")


def test_encoder_ignores_the_cache_and_blocks_take_injected_sublayers():
    from lib.ffn import PositionWiseFFN
    from lib.multihead import MultiHeadAttention
    from lib.transformer import EncoderBlock

    enc = Encoder(EncoderConfig(25, d_model=16, num_heads=4, d_ff=32, num_layers=2, dropout=0.0)).eval()
    cache, tokens = KVCache(), torch.randint(0, 25, (2, 5))
    torch.testing.assert_close(enc(tokens, record=Record(cache=cache)), enc(tokens))
    assert len(cache) == 0
    vit_like = EncoderBlock(16, attention=MultiHeadAttention(16, 4, fused_qkv=True),
                            ffn=PositionWiseFFN(16, 64, activation="gelu"), norm_first=True, eps=1e-6)
    assert vit_like.attention.fused_qkv and vit_like.residual1.norm.eps == 1e-6
    assert vit_like(torch.randn(2, 5, 16)).shape == (2, 5, 16)
