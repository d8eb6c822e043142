"""A decoder-only language model (GPT) built from the course's blocks, and converters from Hugging Face layouts.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    T   number of positions fed in this call (all of them, or the new ones with a cache)
    Tk  number of key positions (cached + new)
    D   d_model
    H   query heads          G   key/value heads (G = H: multi-head, 1 < G < H: grouped-query, G = 1: multi-query)
    Dh  d_head
    F   d_ff, the FFN hidden size
    V   vocabulary size
    L   number of blocks

A GPT is the Transformer's decoder without cross-attention: token embedding, positions,
L pre-norm blocks of causal self-attention and FFN, a final norm, and an output layer
that scores every token of the vocabulary as the next one (Radford et al. 2018, 2019).
Every block is an ``lib.transformer.EncoderBlock`` given a causal mask and its sublayers,
so the choices that changed between 2019 and today are fields of one config:

============  ===========================  ===================================
field         GPT-2 (2019)                 Llama (2023) and most models since
============  ===========================  ===================================
norm          "layer" (LayerNorm)          "rms" (RMSNorm)
ffn           "mlp", activation "gelu"     "swiglu" (F about 8D/3)
positional    "learned" (added to input)   "rope" (rotates q and k)
n_kv_heads    = num_heads                  < num_heads (grouped-query attention)
bias          True                         False
tie_weights   True                         False (large models), True (small ones)
============  ===========================  ===================================

``GPT.forward(tokens, record=Record(cache=KVCache()))`` takes only the new tokens once the
cache holds the earlier ones (``lib.decode.generate``); positions continue after the cached.

``gpt_from_hf_gpt2`` and ``gpt_from_hf_llama`` build the ``GPT`` that computes what a
Hugging Face ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` computes, from its config and
state dict (duck-typed: lib does not import ``transformers``; the tests do).

Imports: lib.attention (Record, causal_mask), lib.multihead, lib.positional, lib.ffn, lib.transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lib.attention import Record, causal_mask
from lib.ffn import PositionWiseFFN, SwiGLU
from lib.multihead import MultiHeadAttention
from lib.positional import LearnedPositionalEmbedding, RotaryEmbedding
from lib.transformer import EncoderBlock, make_norm

__all__ = ["GPTConfig", "GPT", "swiglu_hidden_size", "gpt_from_hf_gpt2", "gpt_from_hf_llama", "to_hf_llama"]


def swiglu_hidden_size(d_model: int, multiple_of: int = 32) -> int:
    """F for a SwiGLU FFN with as many parameters as a 4D GELU FFN: 2/3 of 4D, rounded up to ``multiple_of``.

    Three (D, F) matrices against two (D, 4D): 3F = 8D gives F = 8D/3 (Shazeer 2020, section 2;
    Llama rounds up to a multiple of 256 for fast kernels).
    """
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of a decoder-only language model (today's recipe by default)."""

    vocab_size: int  # number of token ids V
    context_len: int = 256  # the most positions the model reads at once (nanoGPT's block_size)
    d_model: int = 256  # feature size D
    num_layers: int = 4  # blocks L
    num_heads: int = 4  # query heads H
    n_kv_heads: int | None = None  # key/value heads G (divides H); None = H (multi-head), 1 = multi-query
    d_head: int | None = None  # per-head size Dh; None = D // H
    d_ff: int | None = None  # FFN hidden size F; None = 4D ("mlp") or swiglu_hidden_size(D) ("swiglu")
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm): every block's norms and the final one
    ffn: str = "swiglu"  # "swiglu" (gated, Shazeer 2020) or "mlp" (PositionWiseFFN with `activation`)
    activation: str = "gelu"  # the "mlp" FFN's activation ("gelu", "gelu_tanh" for GPT-2, "relu")
    positional: str = "rope"  # "rope" (rotary, inside attention) or "learned" (added to the embeddings)
    rope_base: float = 10000.0  # RoPE's base (Llama 3: 500000)
    rope_interleaved: bool = False  # RoPE's pairing: halves (False: Llama, GPT-NeoX) or (2i, 2i+1) (the paper)
    bias: bool = False  # biases in attention and FFN projections (GPT-2: True)
    dropout: float = 0.0  # embedding, attention-weight, FFN and residual dropout
    eps: float = 1e-5  # the norms' epsilon
    tie_weights: bool = True  # the output layer shares the token embedding (Press and Wolf 2017)
    fast: bool = True  # PyTorch's fused attention kernel (False: the explicit math)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_len", "d_model", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_head is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                             "pick sizes that divide or give d_head")
        G = self.kv_heads
        if G < 1 or self.num_heads % G:
            raise ValueError(f"n_kv_heads must divide num_heads={self.num_heads} (each key/value head serves "
                             f"num_heads / n_kv_heads query heads), got {self.n_kv_heads}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.ffn not in ("swiglu", "mlp"):
            raise ValueError(f"ffn must be 'swiglu' or 'mlp', got {self.ffn!r}")
        if self.positional not in ("rope", "learned"):
            raise ValueError(f"positional must be 'rope' or 'learned', got {self.positional!r}")

    @property
    def head_size(self) -> int:
        """Dh."""
        return self.d_model // self.num_heads if self.d_head is None else self.d_head

    @property
    def kv_heads(self) -> int:
        """G."""
        return self.num_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_size(self) -> int:
        """F."""
        if self.d_ff is not None:
            return self.d_ff
        return swiglu_hidden_size(self.d_model) if self.ffn == "swiglu" else 4 * self.d_model

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes the key/value cache grows by per token and sequence: 2 (k and v) x L x G x Dh x bytes per element."""
        return 2 * self.num_layers * self.kv_heads * self.head_size * torch.empty(0, dtype=dtype).element_size()


class GPT(nn.Module):
    """Decoder-only language model: logits of the next token at every position (Radford et al. 2019, section 2.3).

    x = Embedding(tokens) [+ P]; then L pre-norm blocks  x = x + Attn(Norm(x)),  x = x + FFN(Norm(x))
    (causal self-attention); logits = Norm(x) W_outᵀ.  Weights start as GPT-2's: N(0, 0.02²), the
    projections into the residual stream (W_o, the FFN's last layer) N(0, (0.02 / sqrt(2L))²), so the
    stream's variance does not grow with depth (Radford et al. 2019, section 2.3).

    Shapes:
        tokens (B, T) int64 -> logits (B, T, V); with a cache in ``record``, T counts the new tokens
        and Tk = cached + T must stay <= ``context_len``.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        D, H, G, Dh = c.d_model, c.num_heads, c.kv_heads, c.head_size
        self.embedding = nn.Embedding(c.vocab_size, D)
        self.positional = (LearnedPositionalEmbedding(max_len=c.context_len, d_model=D, dropout=c.dropout)
                           if c.positional == "learned" else nn.Dropout(c.dropout))
        blocks = []
        for _ in range(c.num_layers):
            rope = (RotaryEmbedding(d_head=Dh, base=c.rope_base, interleaved=c.rope_interleaved, max_len=c.context_len)
                    if c.positional == "rope" else None)
            attention = MultiHeadAttention(D, H, d_head=Dh, bias=c.bias, dropout=c.dropout, fast=c.fast,
                                           positional=rope, n_kv_heads=G)
            ffn = (SwiGLU(D, c.hidden_size, dropout=c.dropout, bias=c.bias) if c.ffn == "swiglu"
                   else PositionWiseFFN(D, c.hidden_size, activation=c.activation, dropout=c.dropout, bias=c.bias))
            blocks.append(EncoderBlock(D, attention=attention, ffn=ffn, dropout=c.dropout, norm_first=True,
                                       norm=c.norm, eps=c.eps))
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = make_norm(c.norm, D, c.eps)
        self.out = nn.Linear(D, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # the projections into the residual stream
            for lin in (block.attention.W_o, block.ffn.down_proj if c.ffn == "swiglu" else block.ffn.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c.num_layers))
        if c.tie_weights:
            self.out.weight = self.embedding.weight  # (V, D), one parameter

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def cached_length(self, record: Record | None) -> int:
        """Number of positions already in ``record``'s cache (0 without one)."""
        if record is None or record.cache is None:
            return 0
        return record.cache.length(self.blocks[0].attention)

    def forward(self, tokens: Tensor, *, record: Record | None = None) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"GPT expects token ids (B, T) of integer dtype, got {tuple(tokens.shape)} {tokens.dtype}")
        past, T = self.cached_length(record), tokens.shape[1]
        if past + T > self.config.context_len:
            raise ValueError(f"GPT reads at most context_len={self.config.context_len} positions, got {past} cached "
                             f"+ {T} new; crop the input (lib.decode.generate slides a window)")
        x = self.embedding(tokens)  # (B, T, D)
        x = self.positional(x, past) if isinstance(self.positional, LearnedPositionalEmbedding) else self.positional(x)
        # one new token is the last position: it may attend to every key, so no mask is needed
        mask = None if T == 1 else causal_mask(T, past + T, device=tokens.device)  # (T, Tk)
        for block in self.blocks:
            x = block(x, mask=mask, record=record)  # (B, T, D)
        return self.out(self.final_norm(x))  # (B, T, V)

    def num_parameters(self, *, embeddings: bool = True) -> int:
        """Number of parameters (a tied weight counted once); ``embeddings=False`` leaves out the token and
        position tables (the count Kaplan et al. 2020 relate to the loss)."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.embedding.weight.numel()
            if isinstance(self.positional, LearnedPositionalEmbedding):
                n -= self.positional.embedding.weight.numel()
        return n


# ---------------------------------------------------------------------------
# Converters from Hugging Face's layouts (config + state dict; transformers is not imported)
# ---------------------------------------------------------------------------


def _copy(dst: Tensor, src: Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def gpt_from_hf_gpt2(hf: nn.Module, *, fast: bool = True) -> GPT:
    """The ``GPT`` computing what a Hugging Face ``GPT2LMHeadModel`` computes (eval mode; dropout not copied).

    GPT-2 stores its projections as ``Conv1D`` with weights (in, out), the transpose of a Linear's,
    and q, k, v stacked in one ``c_attn`` (D, 3D): split along the output features.
    """
    hc, sd = hf.config, hf.state_dict()
    if getattr(hc, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"unsupported GPT-2 activation {hc.activation_function!r}")
    act = "gelu" if hc.activation_function == "gelu" else "gelu_tanh"
    D = hc.n_embd
    c = GPTConfig(vocab_size=hc.vocab_size, context_len=hc.n_positions, d_model=D, num_layers=hc.n_layer,
                  num_heads=hc.n_head, d_ff=hc.n_inner or 4 * D, norm="layer", ffn="mlp", activation=act,
                  positional="learned", bias=True, eps=hc.layer_norm_epsilon,
                  tie_weights=bool(getattr(hc, "tie_word_embeddings", True)), fast=fast)
    model = GPT(c).eval()
    _copy(model.embedding.weight, sd["transformer.wte.weight"], "wte")
    _copy(model.positional.embedding.weight, sd["transformer.wpe.weight"], "wpe")
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        w_q, w_k, w_v = sd[p + "attn.c_attn.weight"].split(D, dim=1)  # 3 x (D, D), (in, out)
        b_q, b_k, b_v = sd[p + "attn.c_attn.bias"].split(D)
        att = block.attention
        for lin, w, b in ((att.W_q, w_q, b_q), (att.W_k, w_k, b_k), (att.W_v, w_v, b_v),
                          (att.W_o, sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"]),
                          (block.ffn.fc1, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]),
                          (block.ffn.fc2, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])):
            _copy(lin.weight, w.T, f"layer {i} Conv1D weight (transposed)")
            _copy(lin.bias, b, f"layer {i} bias")
        for res, ln in ((block.residual1, "ln_1"), (block.residual2, "ln_2")):
            _copy(res.norm.weight, sd[p + ln + ".weight"], ln)
            _copy(res.norm.bias, sd[p + ln + ".bias"], ln)
    _copy(model.final_norm.weight, sd["transformer.ln_f.weight"], "ln_f")
    _copy(model.final_norm.bias, sd["transformer.ln_f.bias"], "ln_f")
    if not c.tie_weights:
        _copy(model.out.weight, sd["lm_head.weight"], "lm_head")
    return model


def gpt_from_hf_llama(hf: nn.Module, *, fast: bool = True) -> GPT:
    """The ``GPT`` computing what a Hugging Face ``LlamaForCausalLM`` computes (grouped-query attention included).

    Llama's parts map one to one: RMSNorm, q/k/v/o projections without bias (k and v with
    ``num_key_value_heads`` heads), SwiGLU (``gate_proj``, ``up_proj``, ``down_proj``), RoPE with
    the halves pairing and base ``rope_theta``.
    """
    hc, sd = hf.config, hf.state_dict()
    if getattr(hc, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported Llama activation {hc.hidden_act!r}")
    rope = getattr(hc, "rope_parameters", None) or {}
    base = rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only the default RoPE is supported, got rope_type={rope.get('rope_type')!r}")
    H = hc.num_attention_heads
    c = GPTConfig(vocab_size=hc.vocab_size, context_len=hc.max_position_embeddings, d_model=hc.hidden_size,
                  num_layers=hc.num_hidden_layers, num_heads=H, n_kv_heads=hc.num_key_value_heads or H,
                  d_head=getattr(hc, "head_dim", None) or hc.hidden_size // H, d_ff=hc.intermediate_size,
                  norm="rms", ffn="swiglu", positional="rope", rope_base=float(base), rope_interleaved=False,
                  bias=bool(getattr(hc, "attention_bias", False)), eps=hc.rms_norm_eps,
                  tie_weights=bool(getattr(hc, "tie_word_embeddings", False)), fast=fast)
    if bool(getattr(hc, "mlp_bias", False)) != c.bias:
        raise ValueError("lib's GPT has one bias switch: attention_bias and mlp_bias must agree")
    model = GPT(c).eval()
    _copy(model.embedding.weight, sd["model.embed_tokens.weight"], "embed_tokens")
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        att, ffn = block.attention, block.ffn
        pairs = ((att.W_q, "self_attn.q_proj"), (att.W_k, "self_attn.k_proj"), (att.W_v, "self_attn.v_proj"),
                 (att.W_o, "self_attn.o_proj"), (ffn.gate_proj, "mlp.gate_proj"), (ffn.up_proj, "mlp.up_proj"),
                 (ffn.down_proj, "mlp.down_proj"))
        for lin, name in pairs:
            _copy(lin.weight, sd[p + name + ".weight"], p + name)
            if lin.bias is not None:
                _copy(lin.bias, sd[p + name + ".bias"], p + name)
        _copy(block.residual1.norm.weight, sd[p + "input_layernorm.weight"], "input_layernorm")
        _copy(block.residual2.norm.weight, sd[p + "post_attention_layernorm.weight"], "post_attention_layernorm")
    _copy(model.final_norm.weight, sd["model.norm.weight"], "norm")
    if not c.tie_weights:
        _copy(model.out.weight, sd["lm_head.weight"], "lm_head")
    return model


def to_hf_llama(model: GPT) -> tuple[dict, dict[str, Tensor]]:
    """The ``LlamaConfig`` keyword arguments and the ``LlamaForCausalLM`` state dict of a Llama-style ``GPT``.

    The inverse of ``gpt_from_hf_llama``: ``LlamaForCausalLM(LlamaConfig(**kwargs))`` then
    ``load_state_dict(state)`` computes what ``model`` computes (RMSNorm, SwiGLU, RoPE with halves).
    """
    c = model.config
    if (c.norm, c.ffn, c.positional, c.rope_interleaved) != ("rms", "swiglu", "rope", False):
        raise ValueError("only a Llama-style GPT converts: norm='rms', ffn='swiglu', positional='rope' with "
                         f"halves, got norm={c.norm!r}, ffn={c.ffn!r}, positional={c.positional!r}, "
                         f"rope_interleaved={c.rope_interleaved}")
    kwargs = dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.hidden_size,
                  num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
                  head_dim=c.head_size, max_position_embeddings=c.context_len, rms_norm_eps=c.eps,
                  rope_theta=c.rope_base, attention_bias=c.bias, mlp_bias=c.bias, tie_word_embeddings=c.tie_weights,
                  hidden_act="silu")
    state = {"model.embed_tokens.weight": model.embedding.weight, "model.norm.weight": model.final_norm.weight,
             "lm_head.weight": model.out.weight}
    for i, block in enumerate(model.blocks):
        p, att, ffn = f"model.layers.{i}.", block.attention, block.ffn
        for lin, name in ((att.W_q, "self_attn.q_proj"), (att.W_k, "self_attn.k_proj"), (att.W_v, "self_attn.v_proj"),
                          (att.W_o, "self_attn.o_proj"), (ffn.gate_proj, "mlp.gate_proj"),
                          (ffn.up_proj, "mlp.up_proj"), (ffn.down_proj, "mlp.down_proj")):
            state[p + name + ".weight"] = lin.weight
            if lin.bias is not None:
                state[p + name + ".bias"] = lin.bias
        state[p + "input_layernorm.weight"] = block.residual1.norm.weight
        state[p + "post_attention_layernorm.weight"] = block.residual2.norm.weight
    return kwargs, {k: v.detach().clone() for k, v in state.items()}
