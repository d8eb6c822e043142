"""The Transformer: residual connections with layer norm, encoder (and, later, decoder) stacks.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    T   number of positions (Tq / Tk for queries / keys where they differ)
    D   d_model
    F   d_ff, the FFN hidden size
    V   vocabulary size
    L   number of layers

Each sub-layer (self-attention, FFN) is wrapped in a residual connection and a
layer norm.  Two placements exist, and every block here takes ``norm_first``
explicitly:

* post-norm (``norm_first=False``, the paper, d2l's ``AddNorm``):
  ``LayerNorm(x + Dropout(Sublayer(x)))`` -- Vaswani et al. (2017), section 5.4;
* pre-norm (``norm_first=True``, GPT-2, ViT, nanoGPT):
  ``x + Dropout(Sublayer(LayerNorm(x)))``, with one more LayerNorm after the
  last block.  Gradients flow through the identity path untouched, which makes
  deep stacks train without learning-rate warm-up (Xiong et al. 2020).

Masks are boolean, ``True`` = may attend, broadcastable to (B, H, T, T);
``lib.attention.padding_mask(valid_lens, T)`` makes one from d2l's ``valid_lens``.
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
from lib.positional import LearnedPositionalEmbedding, SinusoidalEncoding, sinusoidal_table

__all__ = [
    "AddNorm",
    "PreNormResidual",
    "Residual",
    "EncoderBlock",
    "EncoderConfig",
    "Encoder",
    "DecoderBlock",
    "DecoderConfig",
    "Decoder",
    "TransformerConfig",
    "Transformer",
]


# ---------------------------------------------------------------------------
# Residual connections: post-norm (AddNorm) and pre-norm
# ---------------------------------------------------------------------------


class AddNorm(nn.Module):
    """Post-norm residual: LayerNorm(x + Dropout(y)) -- Vaswani et al. (2017), section 3.1.

    The same as d2l's ``AddNorm(norm_shape, dropout)``, called the same way:
    ``add_norm(x, sublayer(x))``.

    Args:
        d_model: feature size D (the LayerNorm's shape).
        dropout: dropout on the sub-layer's output (the paper's "residual dropout").
        eps: LayerNorm epsilon.

    Shapes:
        x (B, T, D), y (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model: int, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(
                f"AddNorm adds the sub-layer output to its input: shapes must match, got x {tuple(x.shape)} "
                f"and y {tuple(y.shape)}"
            )
        return self.norm(x + self.dropout(y))  # (B, T, D)


class PreNormResidual(nn.Module):
    """Pre-norm residual: x + Dropout(sublayer(LayerNorm(x))) (GPT-2, ViT; Xiong et al. 2020).

    Args:
        d_model, dropout, eps: as ``AddNorm``.

    Shapes:
        x (B, T, D); ``sublayer`` maps (B, T, D) to (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model: int, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        return x + self.dropout(sublayer(self.norm(x)))  # (B, T, D)


class Residual(nn.Module):
    """A sub-layer's residual connection and layer norm, post-norm or pre-norm.

    ``Residual(d_model, norm_first=False)`` is ``AddNorm``; ``norm_first=True`` is
    ``PreNormResidual``.  The blocks use this one so that ``norm_first`` is one
    explicit switch (as in ``torch.nn.TransformerEncoderLayer``).

    Args:
        d_model: feature size D.
        norm_first: pre-norm (True) or post-norm (False). No default: say which.
        dropout: dropout on the sub-layer's output.
        eps: LayerNorm epsilon.

    Shapes:
        x (B, T, D); ``sublayer`` maps (B, T, D) to (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model: int, *, norm_first: bool, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))  # (B, T, D)
        return self.norm(x + self.dropout(sublayer(x)))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """One encoder layer: self-attention, then the position-wise FFN, each with a residual.

    Vaswani et al. (2017), section 3.1.  Computes what ``torch.nn.TransformerEncoderLayer``
    (``batch_first=True``) and d2l's ``TransformerEncoderBlock`` compute; dropout sits
    where torch puts it (attention weights, FFN hidden layer, each sub-layer's output).

    Args:
        d_model: feature size D.
        num_heads: number of heads H.
        d_ff: FFN hidden size F.
        dropout: dropout probability used everywhere in the block.
        norm_first: pre-norm (True) or post-norm (False, the paper).
        key_dim: per-head query/key size (Keras' ``key_dim``); default D // H.
        activation: FFN activation, "relu" (the paper), "gelu" or a callable.
        eps: LayerNorm epsilon.
        bias: biases in the attention projections and the FFN.
        fast: use PyTorch's fused attention kernel when weights are not requested.

    Shapes:
        x (B, T, D), mask bool broadcastable to (B, H, T, T) (True = may attend)
        -> (B, T, D), or ((B, T, D), weights (B, H, T, T)) with ``need_weights``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.0,
        norm_first: bool = False,
        key_dim: int | None = None,
        activation: Activation = "relu",
        eps: float = 1e-5,
        bias: bool = True,
        fast: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if key_dim is None and d_model % num_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}; pick sizes that divide "
                "or give key_dim (the per-head size) explicitly"
            )
        self.d_model = d_model
        self.norm_first = norm_first
        self.attention = MultiHeadAttention(
            d_model, num_heads, key_dim=key_dim, bias=bias, dropout=dropout, fast=fast
        )
        self.residual1 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps)
        self.ffn = PositionWiseFFN(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.residual2 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        check_sequence(x, self.d_model, "EncoderBlock")
        weights: Tensor | None = None

        def self_attention(h: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
            nonlocal weights
            if not need_weights:
                return self.attention(h, h, h, mask=mask)
            out, weights = self.attention(h, h, h, mask=mask, need_weights=True)  # weights (B, H, T, T)
            return out

        x = self.residual1(x, self_attention)  # (B, T, D)
        x = self.residual2(x, self.ffn)  # (B, T, D)
        return (x, weights) if need_weights else x


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of a Transformer encoder (the paper's base model by default)."""

    vocab_size: int  # number of token ids V
    d_model: int = 512  # feature size D at every position
    num_heads: int = 8  # attention heads H (d_model must divide by it unless key_dim is given)
    d_ff: int = 2048  # FFN hidden size F (4 D in the paper)
    num_layers: int = 6  # encoder blocks L
    dropout: float = 0.1  # residual, attention and FFN dropout; also after embedding + positions
    max_len: int = 512  # positions with a learned embedding (sinusoidal: rows precomputed)
    norm_first: bool = False  # pre-norm (True) or post-norm (False, the paper)
    positional: str | None = "sinusoidal"  # "sinusoidal" (fixed), "learned" (an embedding) or None
    activation: str = "relu"  # FFN activation: "relu" (the paper) or "gelu"
    key_dim: int | None = None  # per-head query/key size; None = d_model // num_heads
    bias: bool = True  # biases in the attention projections and FFN
    eps: float = 1e-5  # LayerNorm epsilon
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d_model) (section 3.4)
    fast: bool = False  # PyTorch's fused attention kernel (when attention weights are not requested)

    def __post_init__(self) -> None:
        if self.positional not in ("sinusoidal", "learned", None):
            raise ValueError(f"positional must be 'sinusoidal', 'learned' or None, got {self.positional!r}")
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Encoder(nn.Module):
    """Token embedding, positions, and a stack of ``EncoderBlock``s -- Vaswani et al. (2017), section 3.1.

    The embedding is multiplied by sqrt(d_model) (section 3.4) so that it is not
    drowned by the positional encoding of magnitude ~1; with ``norm_first`` a final
    LayerNorm normalises the last block's output (the residual stream is never
    normalised otherwise).

    Args:
        config: an ``EncoderConfig``.

    Shapes:
        tokens (B, T) int64; mask bool broadcastable to (B, H, T, T), or
        valid_lens (B,) -> (B, T, D), or ((B, T, D), [L x (B, H, T, T)]) with
        ``need_weights``.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        if c.scale_embedding:
            # N(0, 1/D) as in tensor2tensor: times sqrt(D), each embedding entry has unit
            # variance, the scale of the positional encoding (nn.Embedding's N(0, 1) would give D).
            nn.init.normal_(self.embedding.weight, std=c.d_model**-0.5)
        # Absolute positions from lib.positional; each adds its table, then applies dropout.
        self.positional: nn.Module
        if c.positional == "sinusoidal":
            self.positional = SinusoidalEncoding(c.d_model, c.max_len, c.dropout)
        elif c.positional == "learned":
            self.positional = LearnedPositionalEmbedding(c.max_len, c.d_model, c.dropout)
        else:
            self.positional = nn.Dropout(c.dropout)  # no positions: dropout only
        self.blocks = nn.ModuleList(
            EncoderBlock(
                c.d_model, c.num_heads, c.d_ff, dropout=c.dropout, norm_first=c.norm_first, key_dim=c.key_dim,
                activation=c.activation, eps=c.eps, bias=c.bias, fast=c.fast,
            )
            for _ in range(c.num_layers)
        )
        self.final_norm = nn.LayerNorm(c.d_model, eps=c.eps) if c.norm_first else nn.Identity()

    def embed(self, tokens: Tensor) -> Tensor:
        """The input of the first block: Dropout(Embedding(tokens) * sqrt(D) + P[:T]), (B, T) -> (B, T, D)."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Encoder expects token ids (B, T) of integer dtype, got {tuple(tokens.shape)} {tokens.dtype}")
        x = self.embedding(tokens)  # (B, T, D)
        if self.config.scale_embedding:
            x = x * math.sqrt(self.config.d_model)
        return self.positional(x)  # (B, T, D)

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor | None = None,
        valid_lens: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Encode token ids.

        Args:
            tokens: (B, T) integer ids.
            mask: bool, True = may attend, broadcastable to (B, H, T, T).
            valid_lens: (B,) lengths as in d2l; turned into a padding mask and
                combined with ``mask`` by AND.
            need_weights: also return each block's attention weights.

        Returns:
            (B, T, D), or ``(out, weights)`` with a list of L tensors (B, H, T, T).
        """
        if valid_lens is not None:
            pad = padding_mask(valid_lens, tokens.shape[1])  # (B, 1, 1, T)
            mask = pad if mask is None else mask & pad
        x = self.embed(tokens)  # (B, T, D)
        weights: list[Tensor] = []
        for block in self.blocks:
            if need_weights:
                x, w = block(x, mask=mask, need_weights=True)  # w (B, H, T, T)
                weights.append(w)
            else:
                x = block(x, mask=mask)  # (B, T, D)
        x = self.final_norm(x)  # (B, T, D)
        return (x, weights) if need_weights else x


# ---------------------------------------------------------------------------
# Decoder side.  NOTE: a stand-in written on branch `translate` for lesson 07, following
# the contract of /work/wt/API.md (DecoderBlock, Decoder, Transformer) on lib-core's
# MultiHeadAttention/Record/KVCache; branch `lib-core` owns the real one and replaces this.
# ---------------------------------------------------------------------------


class DecoderBlock(nn.Module):
    """One decoder layer: causal self-attention, cross-attention to the encoder output, FFN (section 3.1).

    Each sub-layer sits in a ``Residual`` with explicit ``norm_first``.

    Shapes:
        x (B, T, D), memory (B, S, D); self_mask broadcastable to (B, H, T, T_past + T),
        memory_mask to (B, H, T, S) (True = may attend) -> (B, T, D).
    """

    def __init__(
        self, d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.0, norm_first: bool = False,
        activation: Activation = "relu", eps: float = 1e-5, bias: bool = True, fast: bool = False,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model = d_model
        self.self_attention = MultiHeadAttention(d_model, num_heads, bias=bias, dropout=dropout, fast=fast)
        self.cross_attention = MultiHeadAttention(d_model, num_heads, bias=bias, dropout=dropout, fast=fast)
        self.ffn = PositionWiseFFN(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.residual1 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps)
        self.residual2 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps)
        self.residual3 = Residual(d_model, norm_first=norm_first, dropout=dropout, eps=eps)

    def forward(
        self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None, memory_mask: Tensor | None = None,
        *, record: Record | None = None,
    ) -> Tensor:
        check_sequence(x, self.d_model, "DecoderBlock")
        x = self.residual1(x, lambda h: self.self_attention(h, mask=self_mask, record=record))  # (B, T, D)
        x = self.residual2(x, lambda h: self.cross_attention(h, memory, mask=memory_mask, record=record))  # (B, T, D)
        return self.residual3(x, self.ffn)  # (B, T, D)


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a Transformer decoder (the paper's base model by default)."""

    vocab_size: int  # target vocabulary size V
    d_model: int = 512  # feature size D
    num_heads: int = 8  # attention heads H
    d_ff: int = 2048  # FFN hidden size F
    num_layers: int = 6  # decoder blocks L
    dropout: float = 0.1  # residual, attention, FFN and embedding dropout
    max_len: int = 512  # rows of the positional table precomputed
    norm_first: bool = False  # pre-norm (True) or post-norm (False, the paper)
    activation: str = "relu"  # FFN activation
    eps: float = 1e-5  # LayerNorm epsilon
    fast: bool = False  # PyTorch's fused attention kernel when weights are not requested


class Decoder(nn.Module):
    """Target embedding, sinusoidal positions, a stack of ``DecoderBlock``s (section 3.1).

    With ``record.cache`` the positions continue after the cached ones and only the new tokens are fed.

    Shapes:
        tokens (B, T), memory (B, S, D) -> (B, T, D).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embedding.weight, std=c.d_model**-0.5)
        self.register_buffer("P", sinusoidal_table(c.max_len, c.d_model), persistent=False)  # (max_len, D)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(c.d_model, c.num_heads, c.d_ff, dropout=c.dropout, norm_first=c.norm_first,
                         activation=c.activation, eps=c.eps, fast=c.fast)
            for _ in range(c.num_layers)
        )
        self.final_norm = nn.LayerNorm(c.d_model, eps=c.eps) if c.norm_first else nn.Identity()

    def forward(
        self, tokens: Tensor, memory: Tensor, memory_mask: Tensor | None = None, *,
        valid_lens: Tensor | None = None, record: Record | None = None,
    ) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"Decoder expects token ids (B, T), got {tuple(tokens.shape)}")
        cache = record.cache if record is not None else None
        past = cache.length(self.blocks[0].self_attention) if cache is not None else 0
        T = tokens.shape[1]
        if past + T > self.config.max_len:
            raise ValueError(f"Decoder has positions up to max_len={self.config.max_len}, asked for {past + T}")
        x = self.embedding(tokens) * math.sqrt(self.config.d_model) + self.P[past:past + T]  # (B, T, D)
        x = self.dropout(x)
        self_mask = causal_mask(T, past + T, device=tokens.device)  # (T, past + T)
        if valid_lens is not None:
            self_mask = self_mask & padding_mask(valid_lens, past + T)  # (B, 1, T, past + T)
        for block in self.blocks:
            x = block(x, memory, self_mask, memory_mask, record=record)  # (B, T, D)
        return self.final_norm(x)  # (B, T, D)


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the encoder-decoder Transformer (Vaswani et al. 2017, table 3, base)."""

    src_vocab_size: int  # source vocabulary size
    tgt_vocab_size: int  # target vocabulary size
    d_model: int = 512  # feature size D
    num_heads: int = 8  # attention heads H
    d_ff: int = 2048  # FFN hidden size F
    num_encoder_layers: int = 6  # encoder blocks
    num_decoder_layers: int = 6  # decoder blocks
    dropout: float = 0.1  # everywhere dropout applies
    max_len: int = 512  # positions
    norm_first: bool = False  # pre-norm (True) or post-norm (False, the paper)
    tie_embeddings: bool = True  # output projection shares the target embedding's weights (section 3.4)
    fast: bool = False  # PyTorch's fused attention kernel when weights are not requested


class Transformer(nn.Module):
    """Encoder, decoder and output projection to target-vocabulary logits (section 3).

    ``forward(src, tgt, src_valid_lens)`` is teacher forcing: ``tgt`` is the target shifted right
    (``<bos>`` first), logits (B, T, V) predict the target.  ``encode`` / ``decode`` are the two
    halves that ``lib.decode`` calls at inference.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(EncoderConfig(
            c.src_vocab_size, c.d_model, c.num_heads, c.d_ff, c.num_encoder_layers, c.dropout, c.max_len,
            c.norm_first, fast=c.fast,
        ))
        self.decoder = Decoder(DecoderConfig(
            c.tgt_vocab_size, c.d_model, c.num_heads, c.d_ff, c.num_decoder_layers, c.dropout, c.max_len,
            c.norm_first, fast=c.fast,
        ))
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size)
        if c.tie_embeddings:
            self.output.weight = self.decoder.embedding.weight

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """(B, S) ids -> memory (B, S, D)."""
        return self.encoder(src, mask=src_mask)  # (B, S, D)

    def decode(
        self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None, *,
        record: Record | None = None, tgt_valid_lens: Tensor | None = None,
    ) -> Tensor:
        """(B, T) target ids (only the new ones with a cache) -> logits (B, T, V)."""
        h = self.decoder(tgt, memory, memory_mask, valid_lens=tgt_valid_lens, record=record)  # (B, T, D)
        return self.output(h)  # (B, T, V)

    def forward(self, src: Tensor, tgt: Tensor, src_valid_lens: Tensor | None = None, *,
                record: Record | None = None) -> Tensor:
        src_mask = padding_mask(src_valid_lens, src.shape[1]) if src_valid_lens is not None else None  # (B, 1, 1, S)
        memory = self.encode(src, src_mask)  # (B, S, D)
        return self.decode(tgt, memory, src_mask, record=record)  # (B, T, V)
