"""Attention: pooling, scoring functions and masking.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads (absent for single-head code: scores are (B, Tq, Tk))
    Tq  number of queries          Tk  number of keys (= number of values)
    Dk  query/key feature size     Dv  value feature size

Masks are boolean with ``True`` meaning *may attend*, and broadcast to the
scores' shape, e.g. (B, H, Tq, Tk) or (B, Tq, Tk).  Additive float biases
(relative positions, ALiBi) travel separately as ``bias``.  A query whose row is
entirely masked gets all-zero weights (and a zero output), never NaN.

Every attention here has one core, ``attend(scores, v, ...)``: masked softmax of
the (already scaled) scores, dropout, weights @ v.  Modules return a Tensor;
whoever wants the weights (or a ``KVCache`` for ``lib.multihead``'s incremental
decoding) passes one ``Record`` that the call fills in.

References:
    Nadaraya (1964), Watson (1964): kernel regression (attention pooling).
    Bahdanau et al. (2015), eq. for the alignment model: additive attention.
    Vaswani et al. (2017), section 3.2.1, eq. (1): scaled dot-product attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Record",
    "KVCache",
    "attend",
    "causal_mask",
    "padding_mask",
    "masked_softmax",
    "dot_product_scores",
    "scaled_dot_product_attention",
    "AdditiveAttention",
    "DotProductAttention",
    "KERNELS",
    "nadaraya_watson",
    "NadarayaWatson",
    "check_sequence",
]


# ---------------------------------------------------------------------------
# What a call reports besides its output
# ---------------------------------------------------------------------------


@dataclass
class Record:
    """What an attention call reports besides its output, filled in place.

    Layers, blocks and stacks always return a Tensor; pass ``record=Record(...)``
    to get more::

        rec = Record(need_weights=True)
        out = encoder(tokens, mask=mask, record=rec)
        rec.weights  # one (B, [H,] Tq, Tk) tensor per attention call, in call order

    Attributes:
        need_weights: collect the attention weights (this forces the explicit path,
            since the fused kernel never forms them).
        cache: a ``KVCache`` for incremental decoding, or None.
        weights: the collected weights, appended by each attention call.
    """

    need_weights: bool = False
    cache: KVCache | None = None
    weights: list[Tensor] = field(default_factory=list)

    def keep(self, weights: Tensor | None) -> None:
        """Append one call's weights when they were asked for."""
        if self.need_weights:
            if weights is None:
                raise ValueError("need_weights=True but this call produced no weights (fast path)")
            self.weights.append(weights)


class KVCache:
    """Keys and values of the positions seen so far, one slot per attention layer.

    Pass it as ``record=Record(cache=cache)``; each ``lib.multihead.MultiHeadAttention``
    keeps its slot under its own identity.  Self-attention appends the new
    (B, H, T_new, Dh) keys and values; cross-attention stores the memory's once and reuses them.

    Appending does not copy what is cached: outside autograd each slot lives in a buffer with
    room to spare (doubled when full, as a Python list grows), the new keys are written after
    the old ones and a view of the filled part is returned, so a decoding step costs the new
    token's keys, not the whole history (``torch.cat`` would copy all of it at every step).
    When the keys need gradients, appending concatenates (a differentiable copy).
    """

    def __init__(self) -> None:
        self._slots: dict[nn.Module, tuple[Tensor, Tensor]] = {}  # the filled part of each layer's buffers
        self._buffers: dict[nn.Module, tuple[Tensor, Tensor]] = {}  # (B, H, capacity, D) each, where preallocated

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, layer: nn.Module) -> bool:
        return layer in self._slots

    def length(self, layer: nn.Module) -> int:
        """Number of cached positions of ``layer`` (0 before its first call)."""
        return self._slots[layer][0].shape[-2] if layer in self._slots else 0

    def append(self, layer: nn.Module, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new keys/values (B, H, T_new, Dh) to ``layer``'s slot; return all of them (B, H, Tk, Dh)."""
        if layer not in self._slots:
            self._slots[layer] = (k, v)
            self._buffers.pop(layer, None)
            return k, v
        k_old, v_old = self._slots[layer]
        if k_old.shape[:2] != k.shape[:2]:
            raise ValueError(f"cached keys {tuple(k_old.shape)} and new keys {tuple(k.shape)} differ in (B, H)")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or k_old.requires_grad):
            self._buffers.pop(layer, None)
            k, v = torch.cat([k_old, k], dim=-2), torch.cat([v_old, v], dim=-2)  # (B, H, Tk, Dh), (B, H, Tk, Dv)
        else:
            k, v = self._write(layer, k_old, v_old, k, v)
        self._slots[layer] = (k, v)
        return k, v

    def _write(self, layer: nn.Module, k_old: Tensor, v_old: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v after the ``T_old`` cached positions in the layer's buffers (grown if full); views of [0, Tk)."""
        t_old, tk = k_old.shape[-2], k_old.shape[-2] + k.shape[-2]
        buffers = self._buffers.get(layer)
        if buffers is None or tk > buffers[0].shape[-2] or buffers[0].dtype != k.dtype or buffers[0].device != k.device:
            capacity = max(tk, 2 * t_old)  # doubling: appending N positions one by one copies O(N) in all
            buffers = tuple(t.new_empty((*t.shape[:-2], capacity, t.shape[-1])) for t in (k_old, v_old))
            for buf, old in zip(buffers, (k_old, v_old)):
                buf[..., :t_old, :].copy_(old)
            self._buffers[layer] = buffers
        for buf, new in zip(buffers, (k, v)):
            buf[..., t_old:tk, :].copy_(new)
        return buffers[0][..., :tk, :], buffers[1][..., :tk, :]  # (B, H, Tk, Dh), (B, H, Tk, Dv)

    def get(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """``layer``'s cached keys and values (B, H, Tk, Dh), (B, H, Tk, Dv)."""
        if layer not in self._slots:
            raise ValueError(f"the cache has no slot for this {type(layer).__name__} yet")
        return self._slots[layer]

    def static(self, layer: nn.Module, compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``layer``'s keys/values, computed by ``compute()`` on the first call only (cross-attention)."""
        if layer not in self._slots:
            self._slots[layer] = compute()
        return self._slots[layer]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B_new,) in every slot, e.g. the surviving beams of a beam search."""
        self._slots = {m: (k.index_select(0, index), v.index_select(0, index)) for m, (k, v) in self._slots.items()}
        self._buffers = {}  # the selected rows are new tensors: the next append starts new buffers


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def causal_mask(Tq: int, Tk: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """Boolean causal mask: query ``i`` may attend to keys ``j <= i``.

    When ``Tk > Tq`` (queries are the last ``Tq`` of ``Tk`` positions, as with a
    key/value cache) the diagonal is shifted so query ``i`` sees keys up to
    ``i + Tk - Tq``.

    Returns:
        Bool tensor of shape (Tq, Tk), broadcastable to (B, H, Tq, Tk).
    """
    Tk = Tq if Tk is None else Tk
    if Tq < 1 or Tk < 1:
        raise ValueError(f"causal_mask needs positive lengths, got Tq={Tq}, Tk={Tk}")
    if Tk < Tq:
        raise ValueError(f"causal_mask needs Tk >= Tq (queries are the last Tq positions), got Tq={Tq}, Tk={Tk}")
    ones = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=Tk - Tq)  # (Tq, Tk)


def padding_mask(valid_lens: Tensor, Tk: int, *, ndim: int = 4) -> Tensor:
    """Turn d2l-style ``valid_lens`` into a boolean key-padding mask.

    Args:
        valid_lens: (B,) one length per sequence, or (B, Tq) one per query.
            Key ``j`` is visible when ``j < valid_len``.
        Tk: number of keys.
        ndim: rank of the scores the mask will meet: 4 for (B, H, Tq, Tk)
            (the default) or 3 for single-head (B, Tq, Tk).

    Returns:
        Bool mask of shape (B, 1, 1, Tk) or (B, 1, Tq, Tk) for ``ndim=4``;
        (B, 1, Tk) or (B, Tq, Tk) for ``ndim=3``.
    """
    if valid_lens.dim() not in (1, 2):
        raise ValueError(
            f"valid_lens must have shape (B,) or (B, Tq), got {tuple(valid_lens.shape)}"
        )
    if ndim not in (3, 4):
        raise ValueError(f"ndim must be 3 (B, Tq, Tk) or 4 (B, H, Tq, Tk), got {ndim}")
    if valid_lens.is_floating_point() and not torch.equal(valid_lens, valid_lens.round()):
        raise ValueError("valid_lens must hold whole numbers of positions")
    positions = torch.arange(Tk, device=valid_lens.device)  # (Tk,)
    mask = positions < valid_lens.unsqueeze(-1)  # (B, Tk) or (B, Tq, Tk)
    if valid_lens.dim() == 1:
        mask = mask.unsqueeze(1)  # (B, 1, Tk)
    if ndim == 4:
        mask = mask.unsqueeze(1)  # (B, 1, 1, Tk) or (B, 1, Tq, Tk)
    return mask


def check_sequence(x: Tensor, d_model: int, who: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of sequences (B, T, D) with D = ``d_model``."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{who} expects input (B, T, D={d_model}), got shape {tuple(x.shape)}")


def _check_mask(mask: Tensor, scores: Tensor) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; "
            "pass additive float biases as `bias`"
        )
    try:
        shape = torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        shape = None
    if shape != scores.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores.shape)} (expected something like (B, 1, 1, Tk), (B, 1, Tq, Tk) or (Tq, Tk))"
        )


def _check_bias(bias: Tensor, scores: Tensor) -> None:
    if not bias.is_floating_point():
        raise ValueError(f"bias must be a float tensor added to the scores, got dtype {bias.dtype}")
    try:
        shape = torch.broadcast_shapes(bias.shape, scores.shape)
    except RuntimeError:
        shape = None
    if shape != scores.shape:
        raise ValueError(
            f"bias of shape {tuple(bias.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores.shape)} (expected something like (H, Tq, Tk) or (B, H, Tq, Tk))"
        )


def combine_masks(mask: Tensor | None, valid_lens: Tensor | None, ndim: int, Tk: int) -> Tensor | None:
    """AND a boolean mask with the padding mask made from ``valid_lens``."""
    if valid_lens is None:
        return mask
    pad = padding_mask(valid_lens, Tk, ndim=ndim)
    return pad if mask is None else mask & pad


def masked_softmax(
    scores: Tensor,
    mask: Tensor | None = None,
    valid_lens: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Softmax over the last axis that gives masked keys zero weight.

    Args:
        scores: (..., Tq, Tk) attention scores, e.g. (B, Tq, Tk) or (B, H, Tq, Tk).
        mask: boolean, True = may attend, broadcastable to ``scores``.
        valid_lens: (B,) or (B, Tq) as in d2l; combined with ``mask`` by AND.
        bias: float, added to the scores before masking (broadcastable).

    Returns:
        Weights of the scores' shape; each row sums to 1, or is all zeros when
        every key in that row is masked (d2l gives a uniform row instead).
    """
    if scores.dim() < 2:
        raise ValueError(f"scores must have shape (..., Tq, Tk), got {tuple(scores.shape)}")
    if bias is not None:
        _check_bias(bias, scores)
        scores = scores + bias
    if valid_lens is not None:
        if scores.dim() not in (3, 4):
            raise ValueError(f"valid_lens needs scores (B, Tq, Tk) or (B, H, Tq, Tk), got {tuple(scores.shape)}")
        if valid_lens.shape[0] != scores.shape[0]:
            raise ValueError(
                f"valid_lens has {valid_lens.shape[0]} rows but the scores' batch size is {scores.shape[0]}"
            )
        mask = combine_masks(mask, valid_lens, scores.dim(), scores.shape[-1])
    if mask is None:
        return F.softmax(scores, dim=-1)
    _check_mask(mask, scores)
    # The most negative finite number of the dtype: exp() underflows to 0
    # without the inf - inf = NaN that -inf would give on fully masked rows.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(filled, dim=-1)
    # Fully masked rows came out uniform; give them (and every masked key) zero.
    return weights.masked_fill(~mask, 0.0)


# ---------------------------------------------------------------------------
# Scaled dot-product attention: the teaching path and the fast path
# ---------------------------------------------------------------------------


def attend(
    scores: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    value_term: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The core every attention shares: weights = masked_softmax(scores + bias); out = dropout(weights) @ v.

    Args:
        scores: (..., Tq, Tk) logits, already scaled (dot products, additive, synthesized...).
        v: (..., Tk, Dv) values.
        mask: boolean, True = may attend, broadcastable to the scores.
        bias: float, added to the scores before masking.
        dropout_p: dropout on the weights, applied whenever > 0 (modules pass
            ``p if self.training else 0.0``).
        value_term: optional ``f(dropped_weights) -> (..., Tq, Dv)`` added to the
            output (Shaw et al.'s relative values); it sees the same dropped weights as ``v``.

    Returns:
        ``(output, weights)``: (..., Tq, Dv) and (..., Tq, Tk), the weights before dropout.
    """
    if scores.dim() < 2 or v.dim() < 2 or scores.shape[-1] != v.shape[-2]:
        raise ValueError(
            f"attend expects scores (..., Tq, Tk) and values (..., Tk, Dv) with the same Tk, got scores "
            f"{tuple(scores.shape)} and values {tuple(v.shape)}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    weights = masked_softmax(scores, mask=mask, bias=bias)  # (..., Tq, Tk)
    attn = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights  # (..., Tq, Tk)
    out = attn @ v  # (..., Tq, Dv)
    if value_term is not None:
        out = out + value_term(attn)  # (..., Tq, Dv)
    return out, weights


def dot_product_scores(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    """The scaled scores q kᵀ · scale, (..., Tq, Dk) and (..., Tk, Dk) -> (..., Tq, Tk); scale defaults to 1/√Dk.

    The one place the course computes them: ``scaled_dot_product_attention``'s explicit
    path and ``lib.multihead.DotProductScores`` call it.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q @ k.transpose(-2, -1) * scale  # (..., Tq, Tk)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    scale: float | None = None,
    fast: bool = False,
    value_term: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q kᵀ / √Dk + bias, masked) v  -- Vaswani et al. (2017), eq. (1).

    Args:
        q: (..., Tq, Dk) queries, e.g. (B, H, Tq, Dk).
        k: (..., Tk, Dk) keys.
        v: (..., Tk, Dv) values.
        mask: boolean, True = may attend, broadcastable to (..., Tq, Tk).
        bias: float, added to the scaled scores (relative positions, ALiBi).
        dropout_p: dropout on the attention weights. Applied whenever > 0, as
            in ``torch.nn.functional.scaled_dot_product_attention``: modules
            pass ``p if self.training else 0.0``.
        scale: multiplies the scores; defaults to 1/√Dk.
        fast: the one switch between the two paths. False: ``attend(q kᵀ · scale, v, ...)``,
            the explicit math. True: PyTorch's fused kernel (flash / memory-efficient /
            math, chosen by PyTorch), which never materialises the weights, so the
            second return value is ``None``.
        value_term: as in ``attend`` (Shaw et al.'s relative values); explicit path only.

    Returns:
        ``(output, weights)``: output (..., Tq, Dv) and weights (..., Tq, Tk),
        the attention distribution before dropout (``None`` when ``fast``).
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"q, k, v must be at least 2-D (..., T, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries and keys must share their feature size Dk: q has {q.shape[-1]}, k has {k.shape[-1]} "
            f"(q {tuple(q.shape)}, k {tuple(k.shape)})"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"keys and values must be equally many (Tk): k has {k.shape[-2]}, v has {v.shape[-2]} "
            f"(k {tuple(k.shape)}, v {tuple(v.shape)})"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if fast and value_term is not None:
        raise ValueError("the fused kernel has no value term: pass fast=False with value_term")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if fast:
        return _sdpa_fast(q, k, v, mask, bias, dropout_p, scale), None
    scores = dot_product_scores(q, k, scale)  # (..., Tq, Tk)
    return attend(scores, v, mask, bias, dropout_p, value_term=value_term)  # (..., Tq, Dv), (..., Tq, Tk)


_SDPA_GROUPS = torch.__version__ >= (2, 5)  # F.scaled_dot_product_attention(..., enable_gqa=) exists


def _sdpa_fast(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, dropout_p: float, scale: float
) -> Tensor:
    """PyTorch's fused attention with this module's mask and bias semantics.

    Keys and values with fewer heads than the queries (grouped-query attention, (B, G, Tk, D)
    with G dividing H) go to the kernel as they are, ``enable_gqa=True`` (torch >= 2.5), so the
    G heads are never copied H/G times.
    """
    grouped = q.dim() >= 3 and k.dim() >= 3 and k.shape[-3] != q.shape[-3]
    attn_mask: Tensor | None = None
    if mask is not None or bias is not None:  # (validation only: nothing to check on the cached one-token step)
        lead = q.shape[:-2] if grouped else torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        scores = torch.empty((*lead, q.shape[-2], k.shape[-2]), device="meta")  # (..., Tq, Tk)
        if mask is not None:
            _check_mask(mask, scores)
        if bias is not None:
            _check_bias(bias, scores)
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, torch.finfo(q.dtype).min)
    elif mask is not None:
        attn_mask = mask
    extra = {}
    if grouped and _SDPA_GROUPS:
        extra = {"enable_gqa": True}
    elif grouped:  # torch 2.4: no enable_gqa, repeat each key/value head for its H/G query heads
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)  # (..., H, Tk, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale, **extra)
    if mask is not None:
        # PyTorch returns NaN (or garbage) for rows with nothing to attend;
        # the course's contract is a zero output there.
        empty_row = ~mask.any(dim=-1, keepdim=True)  # (..., Tq, 1)
        out = out.masked_fill(empty_row, 0.0)
    return out


# ---------------------------------------------------------------------------
# Scoring modules
# ---------------------------------------------------------------------------


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention: a(q, k) = w_vᵀ tanh(W_q q + W_k k).

    Works for queries and keys of different sizes. d2l calls the hidden size
    ``num_hiddens`` and uses lazy layers; here every size is explicit.

    Args:
        d_query: query feature size.
        d_key: key feature size.
        d_hidden: size of the hidden layer that scores each (query, key) pair.
        dropout: dropout on the attention weights (a float, as in every attention layer: the core takes ``dropout_p``).

    Shapes:
        queries (B, Tq, d_query), keys (B, Tk, d_key), values (B, Tk, Dv)
        -> output (B, Tq, Dv); weights (B, Tq, Tk) into ``record`` when asked.
    """

    def __init__(self, d_query: int, d_key: int, d_hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.W_q = nn.Linear(d_query, d_hidden, bias=False)
        self.W_k = nn.Linear(d_key, d_hidden, bias=False)
        self.w_v = nn.Linear(d_hidden, 1, bias=False)
        self.dropout = dropout

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        valid_lens: Tensor | None = None,
        *,
        record: Record | None = None,
    ) -> Tensor:
        if queries.dim() != 3 or keys.dim() != 3 or values.dim() != 3:
            raise ValueError(
                "AdditiveAttention expects (B, Tq, d_query), (B, Tk, d_key), (B, Tk, Dv); got "
                f"{tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}"
            )
        if queries.shape[-1] != self.W_q.in_features or keys.shape[-1] != self.W_k.in_features:
            raise ValueError(
                f"expected d_query={self.W_q.in_features} and d_key={self.W_k.in_features}, got queries "
                f"{tuple(queries.shape)} and keys {tuple(keys.shape)}"
            )
        if keys.shape[1] != values.shape[1]:
            raise ValueError(f"keys and values must be equally many: {tuple(keys.shape)} vs {tuple(values.shape)}")
        q, k = self.W_q(queries), self.W_k(keys)  # (B, Tq, h), (B, Tk, h)
        features = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))  # (B, Tq, Tk, h)
        scores = self.w_v(features).squeeze(-1)  # (B, Tq, Tk)
        mask = combine_masks(mask, valid_lens, 3, keys.shape[1])
        dropout_p = self.dropout if self.training else 0.0
        out, weights = attend(scores, values, mask, dropout_p=dropout_p)  # (B, Tq, Dv), (B, Tq, Tk)
        if record is not None:
            record.keep(weights)
        return out

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


class DotProductAttention(nn.Module):
    """Dot-product attention, scaled (Vaswani et al.) or Keras-style.

    ``DotProductAttention()`` is softmax(q kᵀ/√Dk) v, d2l's class of the same
    name.  ``DotProductAttention(scaled=False, use_scale=True)`` is the Keras
    ``Attention`` layer: raw dot products times one trainable scalar
    (initialised to 1), its only parameter.

    Args:
        dropout: dropout on the attention weights.
        scaled: divide the scores by √Dk.
        use_scale: multiply the scores by a learnable scalar (Keras ``use_scale``).

    Shapes:
        queries (B, [H,] Tq, Dk), keys (B, [H,] Tk, Dk), values (B, [H,] Tk, Dv)
        -> output (B, [H,] Tq, Dv); weights (B, [H,] Tq, Tk) into ``record`` when asked.
    """

    def __init__(self, dropout: float = 0.0, *, scaled: bool = True, use_scale: bool = False) -> None:
        super().__init__()
        self.dropout = dropout
        self.scaled = scaled
        self.scale = nn.Parameter(torch.ones(())) if use_scale else None

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        valid_lens: Tensor | None = None,
        *,
        record: Record | None = None,
    ) -> Tensor:
        scale = 1.0 / math.sqrt(queries.shape[-1]) if self.scaled else 1.0
        if self.scale is not None:
            queries = queries * self.scale  # the same as scaling the scores
        if valid_lens is not None:
            mask = combine_masks(mask, valid_lens, queries.dim(), keys.shape[-2])
        out, weights = scaled_dot_product_attention(
            queries, keys, values, mask=mask, dropout_p=self.dropout if self.training else 0.0, scale=scale
        )  # (B, [H,] Tq, Dv), (B, [H,] Tq, Tk)
        if record is not None:
            record.keep(weights)
        return out

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, scaled={self.scaled}, use_scale={self.scale is not None}"


# ---------------------------------------------------------------------------
# Nadaraya-Watson attention pooling
# ---------------------------------------------------------------------------


def _gaussian(u: Tensor) -> Tensor:
    return torch.exp(-(u**2) / 2)


def _boxcar(u: Tensor) -> Tensor:
    return (u.abs() < 1.0).to(u.dtype)


def _constant(u: Tensor) -> Tensor:
    return torch.ones_like(u)


def _laplace(u: Tensor) -> Tensor:
    return torch.exp(-u.abs())


def _epanechnikov(u: Tensor) -> Tensor:
    return torch.clamp(1 - u**2, min=0.0)


KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "gaussian": _gaussian,
    "boxcar": _boxcar,
    "constant": _constant,
    "laplace": _laplace,
    "epanechnikov": _epanechnikov,
}
"""Similarity kernels k(u) of the scaled distance u = (q - x) / h, unnormalised."""


def nadaraya_watson(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    kernel: str | Callable[[Tensor], Tensor] = "gaussian",
    bandwidth: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Non-parametric attention pooling: f(q) = Σ_i k((q - x_i)/h) y_i / Σ_j k((q - x_j)/h).

    Args:
        queries: (..., Tq) scalar queries.
        keys: (..., Tk) scalar keys (the training inputs x_i).
        values: (..., Tk) or (..., Tk, Dv) values (the training targets y_i).
        kernel: a name from ``KERNELS`` or a function of the scaled distance.
        bandwidth: h > 0, the kernel width.

    Returns:
        ``(output, weights)``: (..., Tq) or (..., Tq, Dv), and (..., Tq, Tk).
        A query that no key reaches (compact kernels) gets zero weights.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    if isinstance(kernel, str) and kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    fn = KERNELS[kernel] if isinstance(kernel, str) else kernel
    if keys.shape[-1] != values.shape[-1 if values.dim() == keys.dim() else -2]:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must be equally many")
    u = (queries.unsqueeze(-1) - keys.unsqueeze(-2)) / bandwidth  # (..., Tq, Tk)
    k = fn(u)
    total = k.sum(dim=-1, keepdim=True)  # (..., Tq, 1)
    weights = torch.where(total > 0, k / total.clamp_min(torch.finfo(k.dtype).tiny), torch.zeros_like(k))
    if values.dim() == keys.dim():
        return (weights @ values.unsqueeze(-1)).squeeze(-1), weights  # (..., Tq)
    return weights @ values, weights  # (..., Tq, Dv)


class NadarayaWatson(nn.Module):
    """Parametric Nadaraya-Watson pooling with a learnable Gaussian width.

    weights = softmax(-((q - x) · w)² / 2) over the keys: a Gaussian kernel of
    bandwidth 1/w, with w learned by gradient descent (d2l, section 11.2).

    Args:
        w: initial inverse bandwidth.

    Shapes:
        queries (..., Tq), keys (..., Tk), values (..., Tk) -> output (..., Tq);
        weights (..., Tq, Tk) into ``record`` when asked. ``mask`` (bool, broadcastable to (..., Tq, Tk))
        hides keys, e.g. each training point's own key.
    """

    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None, *,
        record: Record | None = None,
    ) -> Tensor:
        scores = -(((queries.unsqueeze(-1) - keys.unsqueeze(-2)) * self.w) ** 2) / 2  # (..., Tq, Tk)
        out, weights = attend(scores, values.unsqueeze(-1), mask)  # (..., Tq, 1), (..., Tq, Tk)
        if record is not None:
            record.keep(weights)
        return out.squeeze(-1)  # (..., Tq)
