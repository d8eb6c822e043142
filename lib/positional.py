"""Positional information for attention: absolute encodings and relative schemes.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    T   sequence length     Tq / Tk  number of queries / keys
    D   d_model             Dh       d_head (feature size of one head)
    K   max_distance (Shaw et al.: relative distances are clipped to [-K, K])

Self-attention is permutation equivariant: without positional information it
cannot tell "dog bites man" from "man bites dog".  Two families fix that, and
this module gives each one interface:

* **Absolute** encodings (``AbsoluteEncoding``) add a position vector to every
  input token: ``module(x, offset=0) -> dropout(x + P[offset:offset + T])`` with
  ``x`` of shape (B, T, D); ``offset`` is the number of tokens already decoded.
  ``SinusoidalEncoding`` (fixed) and ``LearnedPositionalEmbedding`` (trained).

* **Relative** schemes (``PositionalScheme``, the contract that
  ``lib.multihead.MultiHeadAttention(positional=...)`` calls; defined there,
  re-exported here) leave the input alone and act inside attention through
  three documented hooks, each a no-op by default:

  - ``rotate(x, positions) -> x`` on q (B, H, Tq, Dh) and on the new keys,
    after the head split (``RotaryEmbedding``); cached keys are not re-rotated;
  - ``score_bias(q, q_positions, k_positions) -> Tensor | None`` broadcastable
    to (B, H, Tq, Tk), ADDED to the already scaled scores (``ALiBi``,
    ``RelativePosition``, ``RelativePositionBias``);
  - ``value_term(weights, q_positions, k_positions) -> Tensor`` (B, H, Tq, Dh),
    ADDED to ``dropout(weights) @ v`` when ``has_value_term`` (``RelativePosition``
    with ``values=True``).

* One registry by name, ``SCHEMES`` / ``build(name, ...)``, used by every config:
  "sinusoidal", "learned" (absolute), "shaw", "relative_bias", "rope", "alibi"
  (relative), or None.

References:
    Vaswani et al. (2017), section 3.5: sinusoidal positional encoding.
    Devlin et al. (2019), BERT, section 3: learned position embeddings.
    Shaw, Uszkoreit and Vaswani (2018), section 3, eqs. (3)-(5): relative position representations.
    Huang et al. (2018), Music Transformer, section 3.4: the memory-efficient "skewing" of relative logits.
    Su et al. (2021), RoFormer, section 3.4, eqs. (13)-(16): rotary position embedding (RoPE).
    Press, Smith and Lewis (2022), ALiBi, section 3: attention with linear biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lib.attention import check_sequence
from lib.multihead import PositionalScheme
from lib.runtime import check_positive_int

__all__ = [
    "AbsoluteEncoding",
    "PositionalScheme",
    "SCHEMES",
    "build",
    "sinusoidal_table",
    "SinusoidalEncoding",
    "LearnedPositionalEmbedding",
    "relative_distances",
    "RelativePosition",
    "RelativePositionBias",
    "rotate_half",
    "rotate_interleaved",
    "apply_rotary",
    "RotaryEmbedding",
    "alibi_slopes",
    "ALiBi",
]


def _check_heads(t: Tensor, who: str, name: str = "q", *, d_head: int | None = None,
                 num_heads: int | None = None) -> None:
    if t.dim() != 4:
        raise ValueError(f"{who} expects {name} of shape (B, H, T, Dh), got {tuple(t.shape)}")
    if d_head is not None and t.shape[-1] != d_head:
        raise ValueError(f"{who} expects {name} with d_head={d_head} features, got {tuple(t.shape)}")
    if num_heads is not None and t.shape[1] != num_heads:
        raise ValueError(f"{who} expects {name} with H={num_heads} heads, got {tuple(t.shape)}")


def _query_positions(Tq: int, Tk: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """Positions of the queries (the last Tq of Tk, as after a key/value cache) and of the keys."""
    if Tq < 1 or Tk < 1 or Tq > Tk:
        raise ValueError(f"need 1 <= Tq <= Tk (queries are the last Tq of Tk positions), got Tq={Tq}, Tk={Tk}")
    i = torch.arange(Tk - Tq, Tk, device=device)  # (Tq,)
    j = torch.arange(Tk, device=device)  # (Tk,)
    return i, j


def _check_positions(positions: Tensor, n: int, who: str, name: str) -> None:
    if positions.dim() != 1 or positions.shape[0] != n or positions.is_floating_point():
        raise ValueError(f"{who} expects {name} as integer positions ({n},), got {tuple(positions.shape)} "
                         f"{positions.dtype}")


def _distances(q_positions: Tensor, k_positions: Tensor, max_distance: int) -> Tensor:
    """clip(j - i, -K, K) + K for query positions i (Tq,) and key positions j (Tk,): (Tq, Tk) in [0, 2K]."""
    rel = k_positions.unsqueeze(0) - q_positions.unsqueeze(1)  # (Tq, Tk): j - i
    return rel.clamp(-max_distance, max_distance) + max_distance  # (Tq, Tk)


# ---------------------------------------------------------------------------
# Absolute encodings: x -> x + P[offset:offset + T]
# ---------------------------------------------------------------------------


class AbsoluteEncoding(nn.Module):
    """Adds one vector per position to the input: ``dropout(x + table(offset + T)[offset:])``.

    Subclasses give ``table(T) -> (T, D)`` and set ``d_model`` and ``dropout``.
    ``offset`` is the position of the first token of ``x``: 0 for a whole
    sequence, the number of tokens already decoded in incremental decoding.

    Shapes:
        x (B, T, D) -> (B, T, D).
    """

    d_model: int
    dropout: nn.Dropout

    def table(self, T: int) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_sequence(x, self.d_model, type(self).__name__)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        P = self.table(offset + x.shape[1])[offset:].to(x.dtype)  # (T, D)
        return self.dropout(x + P)  # (B, T, D)


def sinusoidal_table(
    T: int,
    d_model: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The fixed sinusoidal table of Vaswani et al. (2017), section 3.5.

    P[i, 2j] = sin(i / base^(2j/D)),  P[i, 2j+1] = cos(i / base^(2j/D)).
    Column pair (2j, 2j+1) is a point turning on the unit circle at angular
    frequency ω_j = base^(-2j/D): high frequencies in the first columns, low
    ones in the last (the analogue of the low and high bits of a binary count).

    Args:
        T: number of positions 0 .. T-1.
        d_model: D, must be even (sines and cosines come in pairs).
        base: the wavelength scale, 10000 in the paper.

    Returns:
        (T, D) table, identical to ``d2l.PositionalEncoding``'s ``P[0, :T]``.
    """
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be even and >= 2 (sin/cos pairs), got {d_model}")
    # Computed in float32 as d2l does, so the two tables agree to the last bit.
    pos = torch.arange(T, dtype=torch.float32, device=device).reshape(-1, 1)  # (T, 1)
    freq = torch.pow(base, torch.arange(0, d_model, 2, dtype=torch.float32, device=device) / d_model)  # (D/2,)
    angles = pos / freq  # (T, D/2)
    P = torch.zeros(T, d_model, device=device)  # (T, D)
    P[:, 0::2] = torch.sin(angles)
    P[:, 1::2] = torch.cos(angles)
    return P.to(dtype)


class SinusoidalEncoding(AbsoluteEncoding):
    """Add the fixed sinusoidal encoding to the input (Vaswani et al. 2017, section 3.5).

    Same table as ``d2l.PositionalEncoding`` (d2l calls the size ``num_hiddens``).
    The table is a buffer of ``max_len`` rows; longer inputs get rows computed on
    the fly, since the formula is defined for every position.

    Args:
        d_model: D, even.
        max_len: rows precomputed (keyword-only, like every size after D).
        dropout: dropout applied to the sum, as in the paper.
        base: wavelength scale (10000 in the paper).

    Shapes:
        x (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model: int, *, max_len: int = 1000, dropout: float = 0.0, base: float = 10000.0) -> None:
        super().__init__()
        self.d_model, self.max_len, self.base = d_model, max_len, base
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("P", sinusoidal_table(max_len, d_model, base=base), persistent=False)  # (max_len, D)

    def table(self, T: int) -> Tensor:
        """The first T rows of the table, (T, D)."""
        if T <= self.max_len:
            return self.P[:T]
        return sinusoidal_table(T, self.d_model, base=self.base, device=self.P.device)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, base={self.base:g}"


class LearnedPositionalEmbedding(AbsoluteEncoding):
    """Add a trained vector per position, as BERT and GPT-2 do (Devlin et al. 2019, section 3).

    One row of an ``nn.Embedding(max_len, d_model)`` per position, initialised
    N(0, 0.02²) like BERT.  Positions beyond ``max_len`` were never trained, so
    they raise instead of silently reading garbage.

    Args:
        d_model: D.
        max_len: the number of positions that have an embedding (keyword-only, like every size after D).
        dropout: dropout applied to the sum.

    Shapes:
        x (B, T, D) -> (B, T, D), offset + T <= max_len.
    """

    def __init__(self, d_model: int, *, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.d_model, self.max_len = d_model, max_len
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def table(self, T: int) -> Tensor:
        """The first T embeddings, (T, D)."""
        if T > self.max_len:
            raise ValueError(
                f"sequence length {T} exceeds max_len={self.max_len}: learned positions exist only for "
                f"0..{self.max_len - 1}; build the module with a larger max_len"
            )
        return self.embedding.weight[:T]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


# ---------------------------------------------------------------------------
# Relative positions: learned embeddings of clipped distances (Shaw et al. 2018)
# ---------------------------------------------------------------------------


def relative_distances(Tq: int, Tk: int, max_distance: int, *, device: torch.device | str | None = None) -> Tensor:
    """Index of the clipped distance j - i for every (query i, key j) pair.

    clip(j - i, -K, K) + K, an integer in [0, 2K] that picks a row of a
    (2K + 1)-row embedding table (Shaw et al. 2018, eqs. (4)-(5)).
    Queries are the last Tq of Tk positions.

    Returns:
        (Tq, Tk) long tensor.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    i, j = _query_positions(Tq, Tk, torch.device(device) if device is not None else None)
    return _distances(i, j, max_distance)  # (Tq, Tk) in [0, 2K]


class RelativePosition(PositionalScheme):
    """Relative position representations of Shaw et al. (2018), section 3.

    Learned vectors a^K_ij and a^V_ij of size Dh for the clipped distance
    j - i ∈ [-K, K] (beyond K all distances share one vector, eq. (5)).  They
    enter attention as

        e_ij = q_i · (k_j + a^K_ij) / √Dh          (eq. 4)  ->  ``score_bias``
        z_i  = Σ_j α_ij (v_j + a^V_ij)              (eq. 3)  ->  ``value_term``

    so ``score_bias(q, i, j)`` returns q_i · a^K_ij / √Dh, to be added to the
    scaled scores, and ``value_term(weights, i, j)`` returns Σ_j α_ij a^V_ij, to be
    added to ``weights @ v``.  As in the paper the tables are shared by all
    heads; pass ``num_heads`` to give each head its own.

    Args:
        d_head: Dh.
        max_distance: K, the clipping distance (the paper uses 16 or smaller).
        num_heads: None to share the tables across heads, else H per-head tables.
        values: also learn a^V (``value_term``); Shaw et al. found it optional.
            With ``values=False``, ``has_value_term`` is False and the layer
            skips that hook (and may use the fused kernel).

    Shapes:
        score_bias: q (B, H, Tq, Dh), positions (Tq,), (Tk,) -> (B, H, Tq, Tk).
        value_term: weights (B, H, Tq, Tk), positions (Tq,), (Tk,) -> (B, H, Tq, Dh).
    """

    def __init__(self, d_head: int, max_distance: int, *, num_heads: int | None = None, values: bool = True) -> None:
        super().__init__()
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.d_head, self.max_distance, self.num_heads = d_head, max_distance, num_heads
        shape = (2 * max_distance + 1, d_head) if num_heads is None else (num_heads, 2 * max_distance + 1, d_head)
        self.rel_k = nn.Parameter(torch.randn(shape) * d_head**-0.5)  # ([H,] 2K+1, Dh): a^K
        self.rel_v = nn.Parameter(torch.randn(shape) * d_head**-0.5) if values else None  # a^V

    @property
    def has_value_term(self) -> bool:
        return self.rel_v is not None

    def _table(self, table: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        idx = _distances(q_positions.to(table.device), k_positions.to(table.device), self.max_distance)  # (Tq, Tk)
        if self.num_heads is None:
            return table[idx]  # (Tq, Tk, Dh)
        return table[:, idx]  # (H, Tq, Tk, Dh)

    def key_embeddings(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """a^K_ij for every pair: (Tq, Tk, Dh), or (H, Tq, Tk, Dh) per head."""
        return self._table(self.rel_k, q_positions, k_positions)

    def value_embeddings(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """a^V_ij for every pair: (Tq, Tk, Dh), or (H, Tq, Tk, Dh) per head."""
        if self.rel_v is None:
            raise ValueError("this RelativePosition was built with values=False: it has no a^V")
        return self._table(self.rel_v, q_positions, k_positions)

    def score_bias(self, q: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """q_i · a^K_ij / √Dh, added to the scaled scores.  q (B, H, Tq, Dh) -> (B, H, Tq, Tk)."""
        _check_heads(q, "RelativePosition.score_bias", d_head=self.d_head, num_heads=self.num_heads)
        _check_positions(q_positions, q.shape[2], "RelativePosition.score_bias", "q_positions")
        a = self.key_embeddings(q_positions, k_positions).to(q.dtype)  # ([H,] Tq, Tk, Dh)
        if self.num_heads is None:
            logits = torch.einsum("bhqd,qkd->bhqk", q, a)  # (B, H, Tq, Tk)
        else:
            logits = torch.einsum("bhqd,hqkd->bhqk", q, a)  # (B, H, Tq, Tk)
        return logits / math.sqrt(self.d_head)

    def value_term(self, weights: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """Σ_j α_ij a^V_ij, added to ``weights @ v``.  weights (B, H, Tq, Tk) -> (B, H, Tq, Dh)."""
        _check_heads(weights, "RelativePosition.value_term", "weights", num_heads=self.num_heads)
        _check_positions(k_positions, weights.shape[3], "RelativePosition.value_term", "k_positions")
        a = self.value_embeddings(q_positions, k_positions).to(weights.dtype)  # ([H,] Tq, Tk, Dh)
        if self.num_heads is None:
            return torch.einsum("bhqk,qkd->bhqd", weights, a)  # (B, H, Tq, Dh)
        return torch.einsum("bhqk,hqkd->bhqd", weights, a)  # (B, H, Tq, Dh)

    def extra_repr(self) -> str:
        heads = "shared" if self.num_heads is None else self.num_heads
        return f"d_head={self.d_head}, max_distance={self.max_distance}, heads={heads}, values={self.rel_v is not None}"


class RelativePositionBias(PositionalScheme):
    """One learned scalar per head and clipped distance, added to the scores.

    The simplest relative scheme: b_h(clip(j - i, -K, K)).  It is what Shaw et
    al.'s a^K reduces to when the query is ignored, and T5's relative bias
    (Raffel et al. 2020, section 2.1) without its logarithmic buckets.

    Args:
        num_heads: H.
        max_distance: K.

    Shapes:
        score_bias: q (B, H, Tq, Dh), positions (Tq,), (Tk,) -> (H, Tq, Tk).
    """

    def __init__(self, num_heads: int, max_distance: int) -> None:
        super().__init__()
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.num_heads, self.max_distance = num_heads, max_distance
        self.bias = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))  # (H, 2K+1)

    def score_bias(self, q: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        _check_heads(q, "RelativePositionBias.score_bias", num_heads=self.num_heads)
        _check_positions(q_positions, q.shape[2], "RelativePositionBias.score_bias", "q_positions")
        idx = _distances(q_positions, k_positions, self.max_distance).to(self.bias.device)  # (Tq, Tk)
        return self.bias[:, idx].to(q.dtype)  # (H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_distance={self.max_distance}"


# ---------------------------------------------------------------------------
# Rotary position embedding (RoPE)
# ---------------------------------------------------------------------------


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis (GPT-NeoX / LLaMA-HF pairing)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., Dh/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., Dh)


def rotate_interleaved(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent pairs (paper / GPT-J pairing)."""
    x = x.unflatten(-1, (-1, 2))  # (..., Dh/2, 2)
    x1, x2 = x.unbind(-1)  # (..., Dh/2) each
    return torch.stack((-x2, x1), dim=-1).flatten(-2)  # (..., Dh)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, *, interleaved: bool = False) -> Tensor:
    """x·cos + rot(x)·sin: rotate every feature pair of x by its angle (Su et al. 2021, eq. (34)).

    Args:
        x: (..., T, Dh).
        cos, sin: (T, Dh), each angle repeated for both members of its pair.
    """
    rot = rotate_interleaved(x) if interleaved else rotate_half(x)
    return x * cos + rot * sin  # (..., T, Dh)


class RotaryEmbedding(PositionalScheme):
    """Rotary position embedding, RoPE (Su et al. 2021, RoFormer, section 3.4).

    Feature pair p of the query at position m is rotated by the angle m·θ_p,
    θ_p = base^(-2p/Dh); so is the key at position n.  Rotations compose, so

        (R_m q) · (R_n k) = q · R_(n-m) k

    and the score depends on the positions only through n - m: relative
    position without any extra parameter or bias.

    Two pairings exist and give the same model up to a permutation of the
    features (so weights must be converted when switching):

    * ``interleaved=False`` (default): pair p is (p, p + Dh/2), the "rotate
      half" layout of GPT-NeoX and Hugging Face LLaMA;
    * ``interleaved=True``: pair p is (2p, 2p + 1), the paper's and GPT-J's.

    Args:
        d_head: Dh, even.
        base: 10000 in the paper.
        interleaved: the pairing, see above.

    Shapes:
        rotate: x (..., T, Dh), positions (T,) (default 0 .. T-1) -> (..., T, Dh).
        ``MultiHeadAttention`` rotates q and the new keys, each by its own
        positions, so keys in a cache are rotated once.
    """

    def __init__(self, d_head: int, base: float = 10000.0, interleaved: bool = False, *,
                 max_len: int | None = None) -> None:
        super().__init__()
        if d_head < 2 or d_head % 2:
            raise ValueError(f"RotaryEmbedding needs an even d_head >= 2, got {d_head}")
        self.d_head, self.base, self.interleaved = d_head, base, interleaved
        theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)  # (Dh/2,)
        self.register_buffer("theta", theta, persistent=False)
        self.max_len = max_len
        if max_len is not None:  # cos and sin of every position once, looked up after (a decoding step is short)
            check_positive_int(max_len=max_len)
            cos, sin = self.cos_sin(torch.arange(max_len))  # (max_len, Dh) each, float32
            self.register_buffer("cos_table", cos, persistent=False)
            self.register_buffer("sin_table", sin, persistent=False)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles m·θ_p, each (T, Dh) in this module's pairing layout.

        Computed in ``dtype`` (float32 at least: half precision cannot hold large angles); with
        ``max_len`` float32 values are read from the table built at construction.
        """
        dtype = torch.promote_types(dtype, torch.float32)
        table = getattr(self, "cos_table", None)
        if table is not None and table.dtype == dtype == torch.float32:  # (a model cast to bf16 casts the table)
            try:
                return table[positions], self.sin_table[positions]  # (T, Dh) each
            except IndexError:
                raise ValueError(f"RotaryEmbedding(max_len={self.max_len}) got position {int(positions.max())}; "
                                 "build it with a larger max_len (or none: angles computed on the fly)") from None
        angles = positions.to(dtype).unsqueeze(-1) * self.theta.to(dtype)  # (T, Dh/2)
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)  # (T, Dh): θ0 θ0 θ1 θ1 ...
        else:
            angles = torch.cat((angles, angles), dim=-1)  # (T, Dh): θ0 θ1 ... θ0 θ1 ...
        return angles.cos(), angles.sin()

    def rotate(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate x (..., T, Dh) by its positions (T,), default 0 .. T-1."""
        if x.dim() < 2 or x.shape[-1] != self.d_head:
            raise ValueError(f"RotaryEmbedding expects (..., T, Dh={self.d_head}), got {tuple(x.shape)}")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)  # (T,)
        _check_positions(positions, x.shape[-2], "RotaryEmbedding.rotate", "positions")
        cos, sin = self.cos_sin(positions.to(x.device), x.dtype)  # (T, Dh)
        return apply_rotary(x.to(cos.dtype), cos, sin, interleaved=self.interleaved).to(x.dtype)

    def extra_repr(self) -> str:
        table = "" if self.max_len is None else f", max_len={self.max_len}"
        return f"d_head={self.d_head}, base={self.base:g}, interleaved={self.interleaved}{table}"


# ---------------------------------------------------------------------------
# ALiBi: attention with linear biases
# ---------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> Tensor:
    """The head slopes m_h of Press et al. (2022), section 3.

    For H a power of two: the geometric sequence starting at 2^(-8/H) with
    ratio 2^(-8/H), so 8 heads get 1/2, 1/4, ..., 1/256.  Otherwise (the
    paper's reference code): the slopes of the closest smaller power of two
    2^a, followed by every other slope of 2^(a+1) heads until H are filled.

    Returns:
        (H,) float tensor.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PositionalScheme):
    """Attention with linear biases (Press, Smith and Lewis 2022, section 3).

    No position is added to the input.  Instead head h penalises each score by
    its distance: bias_h[i, j] = -m_h · |i - j|, with fixed slopes m_h from
    ``alibi_slopes``.  Heads with large slopes look locally, small slopes far.

    Variants:

    * **causal** (the paper, for language models): combine with a causal mask;
      for j <= i the bias is -m_h · (i - j), exactly the paper's.  (Its
      reference code adds m_h · j instead, which differs by a constant per row
      and so gives the same softmax.)
    * **symmetric** (encoders, no mask): the same -m_h · |i - j| on both sides.

    Both variants are this one formula; what makes it causal is the mask.

    Args:
        num_heads: H.

    Shapes:
        score_bias: q (B, H, Tq, Dh), positions (Tq,), (Tk,) -> (H, Tq, Tk).
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)  # (H,)

    def bias(self, Tq: int, Tk: int | None = None) -> Tensor:
        """The (H, Tq, Tk) bias -m_h·|i - j|, queries the last Tq of Tk positions."""
        Tk = Tq if Tk is None else Tk
        return self._bias(*_query_positions(Tq, Tk, self.slopes.device))  # (H, Tq, Tk)

    def _bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        dist = (k_positions.unsqueeze(0) - q_positions.unsqueeze(1)).abs().float()  # (Tq, Tk)
        return -self.slopes.view(-1, 1, 1) * dist.to(self.slopes.device)  # (H, Tq, Tk)

    def score_bias(self, q: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        _check_heads(q, "ALiBi.score_bias", num_heads=self.num_heads)
        _check_positions(q_positions, q.shape[2], "ALiBi.score_bias", "q_positions")
        return self._bias(q_positions, k_positions).to(q.dtype)  # (H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"


# ---------------------------------------------------------------------------
# One registry by name
# ---------------------------------------------------------------------------


SCHEMES: dict[str, Callable[..., nn.Module]] = {
    "sinusoidal": lambda *, d_model, max_len, dropout, **_: SinusoidalEncoding(d_model, max_len=max_len,
                                                                               dropout=dropout),
    "learned": lambda *, d_model, max_len, dropout, **_: LearnedPositionalEmbedding(d_model, max_len=max_len,
                                                                                     dropout=dropout),
    "shaw": lambda *, d_head, max_distance, **_: RelativePosition(d_head, max_distance),
    "relative_bias": lambda *, num_heads, max_distance, **_: RelativePositionBias(num_heads, max_distance),
    "rope": lambda *, d_head, **_: RotaryEmbedding(d_head),
    "alibi": lambda *, num_heads, **_: ALiBi(num_heads),
}
"""Positional schemes by name: absolute ones (``AbsoluteEncoding``) act on the embedded
input, relative ones (``PositionalScheme``) inside every attention layer."""


def build(
    name: str | None,
    *,
    d_model: int,
    num_heads: int,
    d_head: int | None = None,
    max_len: int = 1024,
    dropout: float = 0.0,
    max_distance: int = 16,
) -> AbsoluteEncoding | PositionalScheme | None:
    """The positional scheme called ``name`` (a key of ``SCHEMES``) for these sizes, or None for None.

    Args:
        name: "sinusoidal", "learned", "shaw", "relative_bias", "rope", "alibi" or None.
        d_model, num_heads: the model's D and H.
        d_head: Dh; default D // H.
        max_len: rows of an absolute table.
        dropout: dropout after adding an absolute encoding.
        max_distance: K, the clipping distance of "shaw" and "relative_bias".
    """
    if name is None:
        return None
    if name not in SCHEMES:
        raise ValueError(f"unknown positional scheme {name!r}; expected one of {sorted(SCHEMES)} or None")
    d_head = d_model // num_heads if d_head is None else d_head
    return SCHEMES[name](d_model=d_model, num_heads=num_heads, d_head=d_head, max_len=max_len, dropout=dropout,
                         max_distance=max_distance)
