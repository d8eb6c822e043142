"""The Transformer: residual connections, encoder and decoder blocks from injected sublayers, stacks.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    T   number of target (or encoder input) positions
    S   number of source positions (the encoder's output, the decoder's memory)
    D   d_model
    F   d_ff, the FFN hidden size
    V   vocabulary size
    L   number of layers

Each sub-layer (self-attention, cross-attention, FFN) is wrapped in one ``Residual``
whose layer-norm placement is fixed when it is built:

* post-norm (``norm_first=False``, the paper, d2l's ``AddNorm``):
  ``LayerNorm(x + Dropout(Sublayer(x)))`` -- Vaswani et al. (2017), section 5.4;
* pre-norm (``norm_first=True``, GPT-2, ViT, nanoGPT):
  ``x + Dropout(Sublayer(LayerNorm(x)))``, with one more LayerNorm after the
  last block.  Gradients flow through the identity path untouched, which makes
  deep stacks train without learning-rate warm-up (Xiong et al. 2020).

Blocks take their sublayers as modules (The Annotated Transformer's
``EncoderLayer(size, self_attn, feed_forward, dropout)``); the defaults build
``MultiHeadAttention`` and ``PositionWiseFFN``.  So a ViT block, a Synthesizer
block or a GPT block is an ``EncoderBlock`` given other sublayers (and, for GPT,
a causal mask), not a new class.

Masks are boolean, ``True`` = may attend, broadcastable to (B, H, Tq, Tk);
``lib.attention.padding_mask(valid_lens, T)`` makes one from d2l's ``valid_lens``.
Blocks and stacks return a Tensor; ``record=lib.attention.Record(...)`` collects
the attention weights (per call, in order) and carries the ``lib.attention.KVCache``
for incremental decoding (``Decoder`` / ``Transformer.decode`` feed only the new tokens).

Imports: lib.attention (masks, Record), lib.multihead (MultiHeadAttention),
lib.positional (the registry), lib.ffn (PositionWiseFFN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lib.attention import Record, causal_mask, check_sequence, padding_mask
from lib.ffn import Activation, PositionWiseFFN
from lib.multihead import MultiHeadAttention
from lib.positional import SCHEMES, AbsoluteEncoding, PositionalScheme, build

__all__ = [
    "RMSNorm",
    "NORMS",
    "make_norm",
    "Residual",
    "EncoderBlock",
    "DecoderBlock",
    "EncoderConfig",
    "Encoder",
    "DecoderConfig",
    "Decoder",
    "TransformerConfig",
    "Transformer",
    "masked_mean_pool",
]


# ---------------------------------------------------------------------------
# Norms and the residual connection
# ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square layer norm -- Zhang and Sennrich (2019), eq. (4): x / RMS(x) * g.

    LayerNorm subtracts the mean and divides by the standard deviation, then adds a bias;
    RMSNorm only divides by RMS(x) = sqrt(mean(x²) + eps) and scales: no centring, no bias,
    one reduction instead of two.  Llama, Mistral and T5 use it.  The statistic is computed
    in float32 whatever the input dtype (as Hugging Face's ``LlamaRMSNorm``), and the result
    cast back before the gain, so bf16 inputs lose no precision in the sum of squares.

    Args:
        d_model: feature size D (the gain's size).
        eps: added to the mean square (Llama: 1e-5 or 1e-6; ``torch.nn.RMSNorm``'s default
            ``None`` means the dtype's machine epsilon).

    Shapes:
        x (..., D) -> (..., D).
    """

    def __init__(self, d_model: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        if d_model < 1 or not eps >= 0:
            raise ValueError(f"RMSNorm needs d_model >= 1 and eps >= 0, got d_model={d_model}, eps={eps}")
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))  # the gain g, (D,)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"RMSNorm expects input (..., d_model={self.d_model}), got shape {tuple(x.shape)}")
        h = x.float()  # (..., D) in float32 for the statistic
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., D) / RMS over D
        return self.weight * h.to(x.dtype)  # (..., D)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


NORMS: dict[str, Callable[..., nn.Module]] = {
    "layer": nn.LayerNorm,  # the 2017 choice (Ba et al. 2016): centre, scale, gain and bias
    "rms": RMSNorm,  # today's (Zhang and Sennrich 2019): scale and gain only
}
"""Norms known by name; each is built as ``NORMS[name](d_model, eps=eps)``."""

Norm = str | Callable[[int], nn.Module]


def make_norm(norm: Norm, d_model: int, eps: float = 1e-5) -> nn.Module:
    """A norm over the last axis of size ``d_model``: a name of ``NORMS`` or a factory ``d_model -> module``.

    A factory is called for every norm built (one module per place, never shared), e.g.
    ``lambda d: nn.LayerNorm(d, bias=False)``.
    """
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)} or pass a factory d_model -> module")
        return NORMS[norm](d_model, eps=eps)
    if not callable(norm) or isinstance(norm, nn.Module):
        raise TypeError(f"norm must be a name of NORMS or a factory d_model -> module (a new module per call), "
                        f"got {type(norm).__name__}")
    module = norm(d_model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the norm factory must return an nn.Module, got {type(module).__name__}")
    return module


class Residual(nn.Module):
    """A sub-layer's residual connection and norm, post-norm or pre-norm.

    ``Residual(d_model, norm_first=False)`` is d2l's ``AddNorm`` (called as
    ``residual(x, sublayer)`` instead of ``add_norm(x, sublayer(x))``), and
    ``norm_first`` is the switch of ``torch.nn.TransformerEncoderLayer``.

    Args:
        d_model: feature size D.
        norm_first: pre-norm (True) or post-norm (False). No default: say which.
        dropout: dropout on the sub-layer's output (the paper's "residual dropout").
        eps: the norm's epsilon.
        norm: "layer" (``nn.LayerNorm``, the paper), "rms" (``RMSNorm``), or a factory
            ``d_model -> module`` (see ``make_norm``).

    Shapes:
        x (B, T, D); ``sublayer`` maps (B, T, D) to (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model: int, *, norm_first: bool, dropout: float = 0.0, eps: float = 1e-5,
                 norm: Norm = "layer") -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = make_norm(norm, d_model, eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))  # (B, T, D)
        y = sublayer(x)  # (B, T, D)
        if y.shape != x.shape:
            raise ValueError(f"Residual adds the sub-layer output to its input: expected {tuple(x.shape)}, "
                             f"got {tuple(y.shape)}")
        return self.norm(x + self.dropout(y))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


def _default_attention(d_model: int, num_heads: int | None, d_head: int | None, bias: bool, dropout: float,
                       fast: bool, positional: PositionalScheme | None, who: str) -> MultiHeadAttention:
    if num_heads is None or num_heads < 1:
        raise ValueError(f"{who} builds its attention from num_heads: expected a positive number, got {num_heads}")
    if d_head is None and d_model % num_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}; pick sizes that divide "
                         "or give d_head (the per-head size) explicitly")
    return MultiHeadAttention(d_model, num_heads, d_head=d_head, bias=bias, dropout=dropout, fast=fast,
                              positional=positional)


def _default_ffn(d_model: int, d_ff: int | None, activation: Activation, dropout: float, bias: bool,
                 who: str) -> PositionWiseFFN:
    if d_ff is None:
        raise ValueError(f"{who} builds its FFN from d_ff: expected a positive number, got None")
    return PositionWiseFFN(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Self-attention, then the FFN, each in a ``Residual`` -- Vaswani et al. (2017), section 3.1.

    With the defaults it computes what ``torch.nn.TransformerEncoderLayer`` (``batch_first=True``)
    and d2l's ``TransformerEncoderBlock`` compute; dropout sits where torch puts it (attention
    weights, FFN hidden layer, each sub-layer's output).  Given a causal mask it is a GPT block.

    Args:
        d_model: feature size D.
        num_heads, d_ff: H and F of the default sublayers (not needed when both are given).
        attention: the self-attention module, called ``attention(x, mask=..., record=...)``;
            default ``MultiHeadAttention(d_model, num_heads, ...)``.
        ffn: the position-wise module (B, T, D) -> (B, T, D); default ``PositionWiseFFN``.
        dropout: residual dropout, and the default sublayers' dropout.
        norm_first: pre-norm (True) or post-norm (False, the paper).
        d_head, activation, bias, fast, positional: passed to the default sublayers.
        eps: the norms' epsilon.
        norm: the residual connections' norm: "layer", "rms" or a factory (``make_norm``).

    Shapes:
        x (B, T, D), mask bool broadcastable to (B, H, T, T) (True = may attend) -> (B, T, D).
    """

    def __init__(self, d_model: int, num_heads: int | None = None, d_ff: int | None = None, *,
                 attention: nn.Module | None = None, ffn: nn.Module | None = None, dropout: float = 0.0,
                 norm_first: bool = False, d_head: int | None = None, activation: Activation = "relu",
                 eps: float = 1e-5, bias: bool = True, fast: bool = False,
                 positional: PositionalScheme | None = None, norm: Norm = "layer") -> None:
        super().__init__()
        self.d_model, self.norm_first = d_model, norm_first
        self.attention = attention if attention is not None else _default_attention(
            d_model, num_heads, d_head, bias, dropout, fast, positional, "EncoderBlock")
        self.residual1 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps, norm=norm)
        self.ffn = ffn if ffn is not None else _default_ffn(d_model, d_ff, activation, dropout, bias, "EncoderBlock")
        self.residual2 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps, norm=norm)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, record: Record | None = None) -> Tensor:
        check_sequence(x, self.d_model, "EncoderBlock")
        x = self.residual1(x, lambda h: self.attention(h, mask=mask, record=record))  # (B, T, D)
        return self.residual2(x, self.ffn)  # (B, T, D)


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the memory, FFN, each in a ``Residual``.

    Vaswani et al. (2017), section 3.1 ("Decoder"); with the defaults it computes what
    ``torch.nn.TransformerDecoderLayer`` (``batch_first=True``) and d2l's
    ``TransformerDecoderBlock`` compute.  With a cache in ``record``, ``x`` holds only the
    new positions: self-attention appends their keys/values, cross-attention projects the
    memory once.

    Args:
        d_model, num_heads, d_ff: as ``EncoderBlock``.
        self_attention, cross_attention, ffn: the sublayers; defaults build
            ``MultiHeadAttention`` (``positional`` goes to self-attention only) and ``PositionWiseFFN``.
        dropout, norm_first, d_head, activation, eps, bias, fast, positional, norm: as ``EncoderBlock``.

    Shapes:
        x (B, T, D), memory (B, S, D), self_mask broadcastable to (B, H, T, Tk) (Tk counts cached
        positions), memory_mask broadcastable to (B, H, T, S) -> (B, T, D).
    """

    def __init__(self, d_model: int, num_heads: int | None = None, d_ff: int | None = None, *,
                 self_attention: nn.Module | None = None, cross_attention: nn.Module | None = None,
                 ffn: nn.Module | None = None, dropout: float = 0.0, norm_first: bool = False,
                 d_head: int | None = None, activation: Activation = "relu", eps: float = 1e-5, bias: bool = True,
                 fast: bool = False, positional: PositionalScheme | None = None, norm: Norm = "layer") -> None:
        super().__init__()
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attention = self_attention if self_attention is not None else _default_attention(
            d_model, num_heads, d_head, bias, dropout, fast, positional, "DecoderBlock")
        self.residual1 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps, norm=norm)
        self.cross_attention = cross_attention if cross_attention is not None else _default_attention(
            d_model, num_heads, d_head, bias, dropout, fast, None, "DecoderBlock")
        self.residual2 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps, norm=norm)
        self.ffn = ffn if ffn is not None else _default_ffn(d_model, d_ff, activation, dropout, bias, "DecoderBlock")
        self.residual3 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps, norm=norm)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, *, record: Record | None = None) -> Tensor:
        check_sequence(x, self.d_model, "DecoderBlock")
        if memory.dim() != 3 or memory.shape[0] != x.shape[0]:
            raise ValueError(f"DecoderBlock expects memory (B={x.shape[0]}, S, D), got {tuple(memory.shape)}")
        x = self.residual1(x, lambda h: self.self_attention(h, mask=self_mask, record=record))  # (B, T, D)
        x = self.residual2(x, lambda h: self.cross_attention(h, memory, memory, mask=memory_mask,
                                                             record=record))  # (B, T, D)
        return self.residual3(x, self.ffn)  # (B, T, D)


# ---------------------------------------------------------------------------
# Stacks and their configs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of a Transformer encoder (the paper's base model by default)."""

    vocab_size: int  # number of token ids V
    d_model: int = 512  # feature size D at every position
    num_heads: int = 8  # attention heads H (d_model must divide by it unless d_head is given)
    d_ff: int = 2048  # FFN hidden size F (4 D in the paper)
    num_layers: int = 6  # blocks L
    dropout: float = 0.1  # residual, attention and FFN dropout; also after embedding + positions
    max_len: int = 512  # positions with a learned embedding (sinusoidal: rows precomputed)
    norm_first: bool = False  # pre-norm (True) or post-norm (False, the paper)
    positional: str | None = "sinusoidal"  # a name of lib.positional.SCHEMES, or None
    activation: str = "relu"  # FFN activation: "relu" (the paper) or "gelu"
    d_head: int | None = None  # per-head query/key size; None = d_model // num_heads
    bias: bool = True  # biases in the attention projections and FFN
    eps: float = 1e-5  # LayerNorm epsilon
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d_model) (section 3.4)
    fast: bool = False  # PyTorch's fused attention kernel (when attention weights are not requested)
    max_distance: int = 16  # clipping distance K of the "shaw" and "relative_bias" schemes
    final_norm: bool | None = None  # LayerNorm after the last block; None = norm_first (torch.nn.Transformer: True)

    def __post_init__(self) -> None:
        if self.positional is not None and self.positional not in SCHEMES:
            raise ValueError(f"positional must be one of {sorted(SCHEMES)} or None, got {self.positional!r}")
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class _Stack(nn.Module):
    """What encoder and decoder share: token embedding, positions, blocks, final norm."""

    def __init__(self, c: EncoderConfig | DecoderConfig) -> None:
        super().__init__()
        self.config = c
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        if c.scale_embedding:
            # N(0, 1/D) as in tensor2tensor: times sqrt(D), each embedding entry has unit
            # variance, the scale of the positional encoding (nn.Embedding's N(0, 1) would give D).
            nn.init.normal_(self.embedding.weight, std=c.d_model**-0.5)
        sizes = dict(d_model=c.d_model, num_heads=c.num_heads, d_head=c.d_head, max_len=c.max_len,
                     dropout=c.dropout, max_distance=c.max_distance)
        scheme = build(c.positional, **sizes)
        # An absolute encoding adds its table (then dropout) to the input; a relative scheme
        # acts inside every self-attention layer (one instance per layer: Shaw's tables are per layer).
        self.positional = scheme if isinstance(scheme, AbsoluteEncoding) else nn.Dropout(c.dropout)
        self._relative = scheme is not None and not isinstance(scheme, AbsoluteEncoding)
        self._sizes = sizes
        final = c.norm_first if c.final_norm is None else c.final_norm
        self.final_norm = nn.LayerNorm(c.d_model, eps=c.eps) if final else nn.Identity()

    def _scheme(self) -> PositionalScheme | None:
        return build(self.config.positional, **self._sizes) if self._relative else None

    def embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """The first block's input: Dropout(Embedding(tokens) * sqrt(D) + P[offset:offset + T]), (B, T) -> (B, T, D)."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{type(self).__name__} expects token ids (B, T) of integer dtype, "
                             f"got {tuple(tokens.shape)} {tokens.dtype}")
        x = self.embedding(tokens)  # (B, T, D)
        if self.config.scale_embedding:
            x = x * math.sqrt(self.config.d_model)
        if isinstance(self.positional, AbsoluteEncoding):
            return self.positional(x, offset)  # (B, T, D)
        return self.positional(x)  # (B, T, D)


class Encoder(_Stack):
    """Token embedding, positions, and a stack of ``EncoderBlock``s -- Vaswani et al. (2017), section 3.1.

    The embedding is multiplied by sqrt(d_model) (section 3.4) so that it is not
    drowned by the positional encoding of magnitude ~1; with ``norm_first`` a final
    LayerNorm normalises the last block's output (the residual stream is never
    normalised otherwise).

    Shapes:
        tokens (B, T) int64; mask bool broadcastable to (B, H, T, T), or valid_lens (B,) -> (B, T, D).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(
            EncoderBlock(c.d_model, c.num_heads, c.d_ff, dropout=c.dropout, norm_first=c.norm_first,
                         d_head=c.d_head, activation=c.activation, eps=c.eps, bias=c.bias, fast=c.fast,
                         positional=self._scheme())
            for _ in range(c.num_layers)
        )

    def forward(self, tokens: Tensor, mask: Tensor | None = None, valid_lens: Tensor | None = None, *,
                record: Record | None = None) -> Tensor:
        """Encode token ids (B, T); ``valid_lens`` (B,) becomes a padding mask ANDed with ``mask``.

        ``record`` collects the weights; the encoder reads its whole input at once, so it never
        touches a cache the record carries (that is the decoder's).
        """
        if record is not None and record.cache is not None:
            record = Record(need_weights=record.need_weights, weights=record.weights)  # same list, no cache
        if valid_lens is not None:
            pad = padding_mask(valid_lens, tokens.shape[1])  # (B, 1, 1, T)
            mask = pad if mask is None else mask & pad
        x = self.embed(tokens)  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask=mask, record=record)  # (B, T, D)
        return self.final_norm(x)  # (B, T, D)


@dataclass(frozen=True)
class DecoderConfig(EncoderConfig):
    """Hyper-parameters of a Transformer decoder; ``cross_attention=False`` makes it decoder-only (GPT)."""

    cross_attention: bool = True  # attend to an encoder's memory (False: a decoder-only language model)
    tie_weights: bool = False  # output layer shares the token embedding's weight (Press and Wolf 2017)


class Decoder(_Stack):
    """Target embedding, positions, ``DecoderBlock``s (or causal ``EncoderBlock``s), output projection.

    The self-attention is always causal.  With ``record=Record(cache=KVCache())`` the call
    takes only the new tokens: positions continue after the cached ones and each layer's
    keys/values are reused (cross-attention's are computed on the first call).

    Shapes:
        tokens (B, T) int64, memory (B, S, D) (None when decoder-only), memory_mask bool
        broadcastable to (B, H, T, S), tgt_mask bool broadcastable to (B, H, T, Tk) (e.g. the
        target's key padding (B, 1, 1, Tk), Tk = cached + T) -> logits (B, T, V).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        c = config
        kw = dict(dropout=c.dropout, norm_first=c.norm_first, d_head=c.d_head, activation=c.activation, eps=c.eps,
                  bias=c.bias, fast=c.fast)
        block = DecoderBlock if c.cross_attention else EncoderBlock
        self.blocks = nn.ModuleList(block(c.d_model, c.num_heads, c.d_ff, positional=self._scheme(), **kw)
                                    for _ in range(c.num_layers))
        self.out = nn.Linear(c.d_model, c.vocab_size, bias=not c.tie_weights)
        if c.tie_weights:
            self.out.weight = self.embedding.weight  # (V, D), one parameter

    def cached_length(self, record: Record | None) -> int:
        """Number of target positions already in ``record``'s cache (0 without one)."""
        if record is None or record.cache is None:
            return 0
        first = self.blocks[0]
        return record.cache.length(first.self_attention if isinstance(first, DecoderBlock) else first.attention)

    def forward(self, tokens: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None, *,
                tgt_mask: Tensor | None = None, record: Record | None = None) -> Tensor:
        cross = self.config.cross_attention
        if cross and memory is None:
            raise ValueError("this Decoder has cross-attention: pass memory (B, S, D) (or build it with "
                             "cross_attention=False for a decoder-only model)")
        if not cross and (memory is not None or memory_mask is not None):
            raise ValueError("this Decoder is decoder-only (cross_attention=False): it takes no memory")
        past = self.cached_length(record)
        T = tokens.shape[-1]
        self_mask = causal_mask(T, past + T, device=tokens.device)  # (T, Tk)
        if tgt_mask is not None:
            self_mask = self_mask & tgt_mask  # (B, 1, T, Tk) or broadcastable
        x = self.embed(tokens, offset=past)  # (B, T, D)
        for block in self.blocks:
            if cross:
                x = block(x, memory, self_mask, memory_mask, record=record)  # (B, T, D)
            else:
                x = block(x, mask=self_mask, record=record)  # (B, T, D)
        return self.out(self.final_norm(x))  # (B, T, V)


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the encoder-decoder Transformer (the paper's base model by default)."""

    src_vocab_size: int  # source token ids
    tgt_vocab_size: int  # target token ids (the output layer's size)
    d_model: int = 512  # feature size D
    num_heads: int = 8  # attention heads H
    d_ff: int = 2048  # FFN hidden size F
    num_encoder_layers: int = 6  # encoder blocks
    num_decoder_layers: int = 6  # decoder blocks
    dropout: float = 0.1  # everywhere, as in the paper (P_drop = 0.1)
    max_len: int = 512  # positions of the absolute table
    norm_first: bool = False  # pre-norm (True) or post-norm (False, the paper)
    positional: str | None = "sinusoidal"  # a name of lib.positional.SCHEMES, or None
    activation: str = "relu"  # FFN activation
    d_head: int | None = None  # per-head query/key size; None = d_model // num_heads
    bias: bool = True  # biases in the attention projections and FFN
    eps: float = 1e-5  # LayerNorm epsilon
    scale_embedding: bool = True  # embeddings times sqrt(d_model) (section 3.4)
    fast: bool = False  # PyTorch's fused attention kernel
    max_distance: int = 16  # K of the "shaw" and "relative_bias" schemes
    final_norm: bool | None = None  # LayerNorm after each stack; None = norm_first
    tie_weights: bool = False  # decoder's output layer shares the target embedding (section 3.4)

    def _shared(self) -> dict:
        names = ("d_model", "num_heads", "d_ff", "dropout", "max_len", "norm_first", "positional", "activation",
                 "d_head", "bias", "eps", "scale_embedding", "fast", "max_distance", "final_norm")
        return {n: getattr(self, n) for n in names}

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(self.src_vocab_size, num_layers=self.num_encoder_layers, **self._shared())

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(self.tgt_vocab_size, num_layers=self.num_decoder_layers, tie_weights=self.tie_weights,
                             **self._shared())


class Transformer(nn.Module):
    """Encoder, decoder and output projection -- Vaswani et al. (2017), section 3, figure 1.

    ``forward`` is teacher forcing (the whole shifted target at once); ``encode`` then
    ``decode`` with ``record=Record(cache=KVCache())`` is incremental decoding, one new
    token per call.

    Shapes:
        src (B, S), tgt (B, T) int64; src_valid_lens / tgt_valid_lens (B,) -> logits (B, T, V).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder())
        self.decoder = Decoder(config.decoder())

    def encode(self, src: Tensor, src_valid_lens: Tensor | None = None, *,
               record: Record | None = None) -> tuple[Tensor, Tensor | None]:
        """(memory (B, S, D), memory_mask (B, 1, 1, S) or None) for the source tokens."""
        mask = None if src_valid_lens is None else padding_mask(src_valid_lens, src.shape[1])  # (B, 1, 1, S)
        return self.encoder(src, mask=mask, record=record), mask

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None, *,
               tgt_mask: Tensor | None = None, record: Record | None = None) -> Tensor:
        """Logits (B, T, V) of the next tokens; with a cache in ``record`` pass only the new tokens."""
        return self.decoder(tgt, memory, memory_mask, tgt_mask=tgt_mask, record=record)

    def forward(self, src: Tensor, tgt: Tensor, src_valid_lens: Tensor | None = None,
                tgt_valid_lens: Tensor | None = None, *, record: Record | None = None) -> Tensor:
        memory, memory_mask = self.encode(src, src_valid_lens, record=record)  # (B, S, D)
        tgt_mask = None if tgt_valid_lens is None else padding_mask(tgt_valid_lens, tgt.shape[1])  # (B, 1, 1, T)
        return self.decode(tgt, memory, memory_mask, tgt_mask=tgt_mask, record=record)  # (B, T, V)


# ---------------------------------------------------------------------------
# Pooling a sequence into one vector (lesson 06's classifier head)
# ---------------------------------------------------------------------------


def masked_mean_pool(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``x`` over the real positions only (lesson 06, exercise 1).

    A row with no real position gives zeros, not NaN; padded positions get zero gradient.

    Args:
        x: the sequence, (B, T, D).
        keep: boolean (B, T), True at real tokens.

    Returns:
        (B, D), in ``x``'s dtype.
    """
    if keep.shape != x.shape[:2] or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a boolean (B, T) = {tuple(x.shape[:2])} tensor, "
                         f"got {keep.dtype} {tuple(keep.shape)}")
    weights = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
