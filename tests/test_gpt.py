"""lib.gpt: the decoder-only model against Hugging Face's GPT-2 and Llama (built from configs, random weights,
no download), the key/value cache, grouped-query attention's cache size, generation past the context, errors.

transformers is a test-only reference, as d2l and timm are: logits, loss and gradients must agree in float32 with
a tight tolerance, and greedy generation must be token-identical to ``generate`` with its cache.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lib.attention import KVCache, Record
from lib.decode import generate
from lib.gpt import GPT, GPTConfig, gpt_from_hf_gpt2, gpt_from_hf_llama, swiglu_hidden_size

transformers = pytest.importorskip("transformers")

TOL = dict(atol=2e-5, rtol=1e-4)


def hf_gpt2(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, n_positions=40, n_embd=48, n_layer=3, n_head=4, bos_token_id=None, eos_token_id=None,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    with torch.no_grad():  # GPT-2 starts its biases and norm parameters at 0 and 1: randomise them so they count
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_llama(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
               num_key_value_heads=2, max_position_embeddings=40, rms_norm_eps=1e-6, bos_token_id=None,
               eos_token_id=None, pad_token_id=None, rope_theta=500000.0)
    cfg.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


CASES = {
    "gpt2": (hf_gpt2, gpt_from_hf_gpt2),
    "llama-gqa": (hf_llama, gpt_from_hf_llama),
    "llama-mqa-tied": (lambda: hf_llama(num_key_value_heads=1, tie_word_embeddings=True), gpt_from_hf_llama),
    "llama-mha-bias": (lambda: hf_llama(num_key_value_heads=8, attention_bias=True, mlp_bias=True), gpt_from_hf_llama),
}


class _Grads:
    """A stand-in Hugging Face model whose state dict holds the gradients: the converter maps them to lib's layout."""

    def __init__(self, hf: nn.Module) -> None:
        self.config = hf.config
        self._sd = {n: (t.grad if t.grad is not None else torch.zeros_like(t))
                    for n, t in hf.state_dict(keep_vars=True).items()}

    def state_dict(self) -> dict:
        return self._sd


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fast", [False, True])
def test_logits_loss_and_gradients_match_transformers(case, fast):
    make_hf, convert = CASES[case]
    hf = make_hf()
    ours = convert(hf, fast=fast)
    x = torch.randint(0, 97, (3, 21), generator=torch.Generator().manual_seed(1))
    hf_out = hf(x, labels=x)
    logits = ours(x)
    torch.testing.assert_close(logits, hf_out.logits, **TOL)
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())  # next-token targets
    torch.testing.assert_close(loss, hf_out.loss, **TOL)
    hf_out.loss.backward()
    loss.backward()
    expected = convert(_Grads(hf), fast=fast)  # hf's gradients, in lib's layout
    theirs = dict(expected.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], **TOL, msg=f"gradient of {name}")


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_is_token_identical_to_transformers_generate(case):
    make_hf, convert = CASES[case]
    hf = make_hf()
    ours = convert(hf)
    prompt = torch.randint(1, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=True)
    for use_cache in (True, False):
        mine = generate(ours, prompt, 30, temperature=0.0, use_cache=use_cache)
        assert torch.equal(mine, theirs), f"use_cache={use_cache}"


def test_the_converters_read_the_configs():
    m = gpt_from_hf_llama(hf_llama())
    c = m.config
    assert (c.num_heads, c.kv_heads, c.head_size, c.rope_base, c.norm, c.ffn, c.tie_weights) == \
        (8, 2, 8, 500000.0, "rms", "swiglu", False)
    assert m.blocks[0].attention.W_k.out_features == 2 * 8  # G x Dh: the keys of 2 heads only
    g = gpt_from_hf_gpt2(hf_gpt2())
    assert (g.config.positional, g.config.activation, g.config.bias, g.config.tie_weights) == \
        ("learned", "gelu_tanh", True, True)
    assert g.out.weight is g.embedding.weight
    with pytest.raises(ValueError, match="activation"):
        gpt_from_hf_llama(hf_llama(hidden_act="gelu"))


# ---------------------------------------------------------------------------
# The model on its own: causality, the cache, grouped-query attention, sizes
# ---------------------------------------------------------------------------


def small(**kw) -> GPTConfig:
    base = dict(vocab_size=23, context_len=16, d_model=32, num_layers=2, num_heads=4)
    base.update(kw)
    return GPTConfig(**base)


VARIANTS = {
    "today": small(),
    "gqa": small(n_kv_heads=2),
    "mqa": small(n_kv_heads=1),
    "2019": small(norm="layer", ffn="mlp", positional="learned", bias=True),
    "interleaved-rope": small(rope_interleaved=True, fast=False),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_causal_and_cached_equals_uncached(name):
    torch.manual_seed(0)
    model = GPT(VARIANTS[name]).eval()
    x = torch.randint(0, 23, (2, 12))
    full = model(x)  # (B, T, V)
    # no position sees the future: changing the last token changes only the last logits
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 23
    torch.testing.assert_close(model(y)[:, :-1], full[:, :-1])
    # feeding the tokens in chunks through the cache gives the same logits
    rec = Record(cache=KVCache())
    parts = [model(x[:, a:b], record=rec) for a, b in ((0, 5), (5, 6), (6, 12))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    assert model.cached_length(rec) == 12


@pytest.mark.parametrize("G", [4, 2, 1])
def test_the_cache_holds_the_key_value_heads_only(G):
    c = small(n_kv_heads=G, num_layers=3)
    model = GPT(c).eval()
    rec = Record(cache=KVCache())
    model(torch.zeros(2, 7, dtype=torch.long), record=rec)
    k, v = rec.cache.get(model.blocks[0].attention)
    assert k.shape == v.shape == (2, G, 7, 8)  # (B, G, T, Dh)
    held = sum(t.numel() * t.element_size() for blk in model.blocks for t in rec.cache.get(blk.attention))
    assert held == 2 * 7 * c.kv_cache_bytes_per_token()  # B x T x bytes per token
    assert c.kv_cache_bytes_per_token() == 2 * 3 * G * 8 * 4
    assert c.kv_cache_bytes_per_token(torch.bfloat16) * 2 == c.kv_cache_bytes_per_token()


def test_grouped_query_attention_shares_each_key_value_head_among_h_over_g_queries():
    """GQA equals multi-head attention whose key/value projections repeat each of the G heads H/G times."""
    torch.manual_seed(0)
    gqa = GPT(small(n_kv_heads=2)).eval()
    mha = GPT(small()).eval()
    state = gqa.state_dict()
    for i in range(2):
        for w in ("W_k", "W_v"):
            key = f"blocks.{i}.attention.{w}.weight"
            state[key] = state[key].view(2, 1, 8, 32).expand(2, 2, 8, 32).reshape(32, 32)  # heads 0,0,1,1
    mha.load_state_dict(state)
    x = torch.randint(0, 23, (2, 9))
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-4)
    n_gqa, n_mha = gqa.num_parameters(), mha.num_parameters()
    assert n_mha - n_gqa == 2 * 2 * (32 * 32 - 32 * 16)  # layers x (W_k, W_v) x the weights saved


def test_generation_past_the_context_slides_the_window():
    torch.manual_seed(0)
    for cfg in (small(context_len=8), small(context_len=8, positional="learned", norm="layer", ffn="mlp")):
        model = GPT(cfg)
        prompt = torch.randint(0, 23, (2, 3))
        cached, uncached = (generate(model, prompt, 20, generator=torch.Generator().manual_seed(5), use_cache=c)
                            for c in (True, False))
        assert cached.shape == (2, 23) and torch.equal(cached[:, :3], prompt)
        assert torch.equal(cached, uncached)
        assert model.training  # generate restores the mode
        # by hand: the token after position 20 is sampled from the logits of the last 8 tokens, read from position 0
        greedy = generate(model, prompt, 20, temperature=0.0)
        with torch.no_grad():
            for t in range(3, 23):
                window = greedy[:, max(0, t - 8):t]
                assert torch.equal(model.eval()(window)[:, -1].argmax(-1), greedy[:, t])
        long_prompt = torch.randint(0, 23, (1, 30))  # longer than the context: its last 8 tokens are read
        assert torch.equal(generate(model, long_prompt, 3, temperature=0.0)[:, 30:],
                           generate(model, long_prompt[:, -8:], 3, temperature=0.0)[:, 8:])


def test_forward_errors_name_the_context_and_the_shapes():
    model = GPT(small(context_len=8))
    with pytest.raises(ValueError, match="context_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    rec = Record(cache=KVCache())
    model(torch.zeros(1, 6, dtype=torch.long), record=rec)
    with pytest.raises(ValueError, match="6 cached"):
        model(torch.zeros(1, 3, dtype=torch.long), record=rec)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_kv_heads must divide"):
        small(n_kv_heads=3)
    with pytest.raises(ValueError, match="norm"):
        small(norm="batch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        small().d_model = 4


def test_sizes_init_and_tying():
    assert swiglu_hidden_size(384) == 1024 and swiglu_hidden_size(256) == 704
    c = small()
    assert c.hidden_size == swiglu_hidden_size(32) and small(ffn="mlp").hidden_size == 128
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, d_model=64, num_layers=8, num_heads=4))
    assert model.out.weight is model.embedding.weight
    assert abs(model.blocks[0].attention.W_q.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].attention.W_o.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 L)
    untied = GPT(GPTConfig(vocab_size=50, d_model=64, num_layers=1, num_heads=4, tie_weights=False))
    assert untied.num_parameters() - untied.num_parameters(embeddings=False) == 50 * 64


@pytest.mark.parametrize("G", [4, 2])
def test_to_hf_llama_round_trips_and_matches(G):
    from lib.gpt import to_hf_llama

    torch.manual_seed(0)
    ours = GPT(small(n_kv_heads=G, rope_base=5000.0)).eval()
    with torch.no_grad():
        for blk in ours.blocks:
            blk.residual1.norm.weight.normal_()
    kwargs, state = to_hf_llama(ours)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, bos_token_id=None, eos_token_id=None)).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    x = torch.randint(0, 23, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), **TOL)
    back = gpt_from_hf_llama(hf)
    c = ours.config
    assert back.config == dataclasses.replace(c, fast=True, d_head=c.head_size, d_ff=c.hidden_size)
    with pytest.raises(ValueError, match="Llama-style"):
        to_hf_llama(GPT(small(norm="layer")))


@pytest.mark.parametrize("G", [2, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_the_fused_kernel_takes_grouped_keys_as_they_are(G, masked, monkeypatch):
    """fast=True hands the G key/value heads to PyTorch's kernel (enable_gqa, or a repeat before torch 2.5);
    it must equal the explicit path, which repeats them, with and without a mask, and with a cache."""
    import lib.attention as attention
    from lib.multihead import MultiHeadAttention
    from lib.positional import RotaryEmbedding

    torch.manual_seed(0)
    slow = MultiHeadAttention(32, 4, n_kv_heads=G, fast=False, positional=RotaryEmbedding(8)).eval()
    fast = MultiHeadAttention(32, 4, n_kv_heads=G, fast=True, positional=RotaryEmbedding(8)).eval()
    fast.load_state_dict(slow.state_dict())
    x = torch.randn(2, 7, 32)
    mask = torch.rand(2, 1, 7, 7) > 0.3 if masked else None
    want = slow(x, mask=mask)
    for groups_in_kernel in (True, False):  # torch >= 2.5, and the fallback of torch 2.4
        monkeypatch.setattr(attention, "_SDPA_GROUPS", groups_in_kernel and attention._SDPA_GROUPS)
        torch.testing.assert_close(fast(x, mask=mask), want, atol=1e-5, rtol=1e-4)
        rec = Record(cache=KVCache())
        steps = [fast(x[:, :4], mask=torch.ones(4, 4, dtype=torch.bool).tril(), record=rec)]
        steps += [fast(x[:, t:t + 1], record=rec) for t in range(4, 7)]
        causal = torch.ones(7, 7, dtype=torch.bool).tril()
        torch.testing.assert_close(torch.cat(steps, dim=1), slow(x, mask=causal), atol=1e-5, rtol=1e-4)
        assert rec.cache.get(fast)[0].shape == (2, G, 7, 8)  # the cache keeps G heads


def test_rope_table_equals_the_angles_computed_on_the_fly():
    from lib.positional import RotaryEmbedding

    for interleaved in (False, True):
        table = RotaryEmbedding(8, base=500.0, interleaved=interleaved, max_len=64)
        fly = RotaryEmbedding(8, base=500.0, interleaved=interleaved)
        pos = torch.tensor([63, 0, 17, 5])
        for a, b in zip(table.cos_sin(pos), fly.cos_sin(pos)):
            assert torch.equal(a, b)
        x = torch.randn(2, 3, 4, 8)
        assert torch.equal(table.rotate(x, pos), fly.rotate(x, pos))
        assert torch.equal(table.rotate(x.double(), pos), fly.rotate(x.double(), pos))  # float64: computed
        half = RotaryEmbedding(8, base=500.0, interleaved=interleaved, max_len=64).to(torch.bfloat16)
        half_fly = RotaryEmbedding(8, base=500.0, interleaved=interleaved).to(torch.bfloat16)
        assert torch.equal(half.rotate(x.bfloat16(), pos), half_fly.rotate(x.bfloat16(), pos))  # not the cast table
    assert "cos_table" not in table.state_dict()  # derived, not a weight: checkpoints do not change
    with pytest.raises(ValueError, match="max_len=64.*position 64"):
        table.rotate(torch.randn(1, 2, 8), torch.tensor([3, 64]))


def test_generated_tokens_can_train_the_model():
    """generate runs in inference mode; what it returns must be an ordinary tensor that a training step accepts."""
    torch.manual_seed(0)
    model = GPT(small())
    out = generate(model, torch.randint(0, 23, (2, 3)), 5)
    assert not out.is_inference() and not out.requires_grad
    logits = model(out[:, :-1])
    nn.functional.cross_entropy(logits.flatten(0, 1), out[:, 1:].flatten()).backward()  # embedding saves the ids
    assert model.embedding.weight.grad is not None
