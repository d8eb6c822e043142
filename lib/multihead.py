"""Multi-head attention: many scaled dot-product attentions side by side.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads (query heads)
    G   number of key/value heads (grouped-query attention); default H
    Tq  number of queries          Tk  number of keys (= number of values)
    D   d_model, the query's feature size (and, by default, the output's)
    Dh  d_head, the per-head query/key size; default D // H
    Dv  the per-head value size (Keras ``value_dim``); default Dh
    Dk_in, Dv_in  feature sizes of the key and value inputs (torch ``kdim``/``vdim``)

Heads live in 4-D tensors (B, H, T, Dh), as in nanoGPT, timm and PyTorch's
``scaled_dot_product_attention``; d2l folds them into the batch instead
(B·H, T, Dh), which computes the same thing.

Masks are boolean, ``True`` = may attend, broadcastable to (B, H, Tq, Tk)
(``lib.attention.padding_mask``, ``lib.attention.causal_mask``). Additive
float biases (relative positions, ALiBi) travel separately as ``bias``.

The layer is projections, ``split_heads``, the core of ``lib.attention``
(``attend`` / ``scaled_dot_product_attention``), ``merge_heads`` and the output
projection.  Three things plug into it:

* ``positional=``: a ``PositionalScheme`` (defined here, the contract this layer
  calls; ``lib.positional`` holds the schemes), whose hooks rotate q/k, add a
  score bias or a value term;
* ``scores=``: another way to produce the logits (``DotProductScores`` here, the
  Synthesizer's in ``lib.synthesizer``);
* ``record=Record(cache=KVCache())`` (both from ``lib.attention``): incremental
  decoding.  Self-attention appends the new keys/values to its slot;
  cross-attention computes them once.

Converters (torch, d2l, Keras' argument names, weight copying) are functions in ``lib.interop``.

References:
    Vaswani et al. (2017), section 3.2.2: MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.attention import KVCache, Record, attend, dot_product_scores, scaled_dot_product_attention

__all__ = [
    "MultiHeadAttention",
    "DotProductScores",
    "PositionalScheme",
    "split_heads",
    "merge_heads",
]


# ---------------------------------------------------------------------------
# Head bookkeeping
# ---------------------------------------------------------------------------




def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, H·Dh) -> (B, H, T, Dh): give each head its own slice of the features.

    Head ``h`` gets features ``h·Dh .. (h+1)·Dh - 1`` (the same split as
    torch.nn.MultiheadAttention, timm and d2l's ``transpose_qkv``).
    """
    if x.dim() != 3:
        raise ValueError(f"split_heads expects (B, T, H*Dh), got shape {tuple(x.shape)}")
    B, T, F_ = x.shape
    if F_ % num_heads != 0:
        raise ValueError(f"feature size {F_} is not divisible by num_heads={num_heads} (shape {tuple(x.shape)})")
    return x.view(B, T, num_heads, F_ // num_heads).transpose(1, 2)  # (B, H, T, Dh)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, Dh) -> (B, T, H·Dh): concatenate the heads' outputs, the inverse of ``split_heads``."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads expects (B, H, T, Dh), got shape {tuple(x.shape)}")
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H*Dh)


def _packed_linear(x: Tensor, lins: tuple[nn.Linear, ...], memo: dict | None = None) -> tuple[Tensor, ...]:
    """``tuple(lin(x) for lin in lins)`` as one GEMM on the stacked weights, as torch's packed ``in_proj_weight``.

    Stacking copies the weights, which costs more than the GEMM itself when ``x`` is one token per
    row (a decoding step).  Outside autograd the stacked weights are kept in ``memo`` and reused
    until a weight changes (its version counter or its storage: an optimizer step, ``load_state_dict``,
    a move to another device).
    """
    params = [p for lin in lins for p in (lin.weight, lin.bias) if p is not None]
    reuse = memo is not None and not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params) if reuse else None
    if reuse and memo.get("key") == key:
        w, b = memo["w"], memo["b"]
    else:
        w = torch.cat([lin.weight for lin in lins])  # (sum of out_features, D)
        b = None if lins[0].bias is None else torch.cat([lin.bias for lin in lins])  # (sum of out_features,)
        if reuse:
            memo.update(key=key, w=w, b=b)
    return F.linear(x, w, b).split([lin.out_features for lin in lins], dim=-1)  # each (B, T, out_features)


def _per_head_size(d_model: int, num_heads: int, d_head: int | None) -> int:
    """Dh: ``d_head`` when given, else D // H (which must divide)."""
    if d_model <= 0 or num_heads <= 0:
        raise ValueError(f"d_model and num_heads must be positive, got d_model={d_model}, num_heads={num_heads}")
    if d_head is not None:
        return d_head
    if d_model % num_heads != 0:
        raise ValueError(
            f"d_model={d_model} is not divisible by num_heads={num_heads}; "
            "choose sizes that divide or pass d_head explicitly"
        )
    return d_model // num_heads


# ---------------------------------------------------------------------------
# The contract of positional schemes (the schemes themselves: lib.positional)
# ---------------------------------------------------------------------------


class PositionalScheme(nn.Module):
    """Relative positions inside attention: the hooks ``MultiHeadAttention`` calls.

    Every hook is a no-op by default; a scheme overrides the ones it needs.
    Positions are integer tensors: the queries' (Tq,) and the keys' (Tk,).
    Without a cache both count from 0; with one, new tokens come after the cached.

    * ``rotate(x, positions) -> x``: applied to q (B, H, Tq, Dh) and to the *new*
      keys (B, H, Tk_new, Dh) right after the head split (RoPE).  Keys enter the
      cache already rotated, so they are rotated exactly once.
    * ``score_bias(q, q_positions, k_positions) -> Tensor | None``: added to the
      scaled scores, broadcastable to (B, H, Tq, Tk) (ALiBi, Shaw's keys, T5-style bias).
    * ``value_term(weights, q_positions, k_positions) -> Tensor``: (B, H, Tq, Dv)
      added to ``dropout(weights) @ v`` (Shaw's values).  Used only when the
      property ``has_value_term`` is True (it forces the explicit path).
    """

    @property
    def has_value_term(self) -> bool:
        return False

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def score_bias(self, q: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        return None

    def value_term(self, weights: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value term (has_value_term is False)")


# ---------------------------------------------------------------------------
# Dot-product scores as a module (for scores=, e.g. in a Synthesizer mixture)
# ---------------------------------------------------------------------------


class DotProductScores(nn.Module):
    """The scaled dot-product logits q kᵀ / √Dh per head, with their own W_q and W_k.

    What ``MultiHeadAttention`` computes when ``scores=None``, as a module of its
    own so that it can be mixed with other scores (Tay et al. 2020, section 3.3).

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in) -> logits (B, H, Tq, Tk).
    """

    def __init__(self, d_model: int, num_heads: int, *, d_head: int | None = None, kdim: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.d_head = num_heads, _per_head_size(d_model, num_heads, d_head)
        self.W_q = nn.Linear(d_model, num_heads * self.d_head, bias=bias)
        self.W_k = nn.Linear(d_model if kdim is None else kdim, num_heads * self.d_head, bias=bias)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        q = split_heads(self.W_q(query), self.num_heads)  # (B, H, Tq, Dh)
        k = split_heads(self.W_k(key), self.num_heads)  # (B, H, Tk, Dh)
        return dot_product_scores(q, k)  # (B, H, Tq, Tk)


# ---------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2), batch-first.

        q, k, v = split_heads(W_q(query)), split_heads(W_k(key)), split_heads(W_v(value))  # (B, H, T, Dh)
        o = softmax(q kᵀ/√Dh + bias, mask) v    # the core, lib.attention      (B, H, Tq, Dv)
        out = W_o(merge_heads(o))               # (B, Tq, out_dim)

    Args (``kdim``/``vdim`` mirror ``torch.nn.MultiheadAttention``; ``value_dim`` and ``out_dim``
    Keras' ``value_dim``/``output_shape``; ``lib.interop.mha_from_keras`` takes Keras' ``key_dim``):
        d_model: feature size D of the query input.
        num_heads: number of heads H.
        d_head, value_dim: per-head sizes Dh (default D // H) and Dv (default Dh).
        n_kv_heads: G, the number of key/value heads (grouped-query attention, Ainslie et al. 2023);
            default H (multi-head), 1 is multi-query attention (Shazeer 2019).  G must divide H;
            W_k and W_v project to G heads, the cache stores G heads.
        out_dim: output feature size; default D.
        kdim, vdim: feature sizes of the key and value inputs; default D.
        bias: biases on all projections.
        dropout: dropout on the attention weights (training only).
        fused_qkv: one ``qkv`` Linear for self-attention (timm's layout: q | k | v stacked
            along the output features, as torch's ``in_proj_weight``); needs kdim = vdim = D
            and value_dim = d_head.
        fast: PyTorch's fused kernel, unless weights are asked for or the positional
            scheme has a value term (then the explicit path).
        positional: a ``PositionalScheme`` (RoPE, ALiBi, Shaw...), or None.
        scores: a module ``scores(query, key) -> (B, H, Tq, Tk)`` logits, already scaled,
            used instead of W_q/W_k (the Synthesizer); always the explicit path.

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in), value (B, Tk, Dv_in) -> (B, Tq, out_dim);
        weights (B, H, Tq, Tk) into ``record`` when asked.
    """

    def __init__(self, d_model: int, num_heads: int, *, d_head: int | None = None, value_dim: int | None = None,
                 out_dim: int | None = None, kdim: int | None = None, vdim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, fused_qkv: bool = False, fast: bool = False,
                 positional: PositionalScheme | None = None, scores: nn.Module | None = None,
                 n_kv_heads: int | None = None) -> None:
        super().__init__()
        d_head = _per_head_size(d_model, num_heads, d_head)
        n_kv_heads = num_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or num_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads must divide num_heads={num_heads} (each key/value head serves "
                             f"num_heads / n_kv_heads query heads), got {n_kv_heads}")
        if n_kv_heads != num_heads and (fused_qkv or scores is not None):
            raise ValueError("grouped-query attention (n_kv_heads < num_heads) needs separate W_q, W_k, W_v: "
                             "no fused_qkv, no scores module")
        value_dim = d_head if value_dim is None else value_dim
        out_dim, kdim, vdim = (d_model if s is None else s for s in (out_dim, kdim, vdim))
        for name, size in (("d_head", d_head), ("value_dim", value_dim), ("out_dim", out_dim), ("kdim", kdim),
                           ("vdim", vdim)):
            if size <= 0:
                raise ValueError(f"{name} must be positive, got {size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if fused_qkv and (kdim != d_model or vdim != d_model or value_dim != d_head or scores is not None):
            raise ValueError(
                "fused_qkv=True is for dot-product self-attention with equal sizes: needs kdim = vdim = d_model, "
                f"value_dim = d_head and no scores module, got d_model={d_model}, kdim={kdim}, vdim={vdim}, "
                f"d_head={d_head}, value_dim={value_dim}, scores={type(scores).__name__}"
            )
        if positional is not None and not isinstance(positional, PositionalScheme):
            raise TypeError(f"positional must be a lib.positional scheme (PositionalScheme) or None, "
                            f"got {type(positional).__name__}")
        if positional is not None and scores is not None:
            raise ValueError("positional= acts on dot-product q/k; with a scores= module, give it the positions")
        self.d_model, self.num_heads, self.d_head, self.value_dim = d_model, num_heads, d_head, value_dim
        self.out_dim, self.kdim, self.vdim, self.dropout = out_dim, kdim, vdim, dropout
        self.fused_qkv, self.fast, self.positional, self.scores = fused_qkv, fast, positional, scores
        self._packed: dict = {}  # the stacked W_q, W_k, W_v of the fast path, kept while no weight changes
        self.n_kv_heads = n_kv_heads
        H, G = num_heads, n_kv_heads
        if fused_qkv:
            self.qkv = nn.Linear(d_model, 3 * H * d_head, bias=bias)  # q | k | v stacked
        else:
            if scores is None:
                self.W_q = nn.Linear(d_model, H * d_head, bias=bias)
                self.W_k = nn.Linear(kdim, G * d_head, bias=bias)  # G key heads (G = H: multi-head)
            self.W_v = nn.Linear(vdim, G * value_dim, bias=bias)  # G value heads
        self.W_o = nn.Linear(H * value_dim, out_dim, bias=bias)

    def repeat_kv(self, x: Tensor) -> Tensor:
        """(B, G, T, Dh) -> (B, H, T, Dh): key/value head g serves query heads g·H/G .. (g+1)·H/G - 1.

        Grouped-query attention (Ainslie et al. 2023, section 2.2); multi-query for G = 1 (Shazeer 2019).
        The cache stores the G heads; they are repeated only for the product with the queries.
        """
        rep = self.num_heads // self.n_kv_heads
        return x if rep == 1 else x.repeat_interleave(rep, dim=1)  # (B, H, T, Dh)

    def extra_repr(self) -> str:
        gqa = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.num_heads else ""
        return (f"d_model={self.d_model}, num_heads={self.num_heads}{gqa}, d_head={self.d_head}, "
                f"value_dim={self.value_dim}, out_dim={self.out_dim}, kdim={self.kdim}, vdim={self.vdim}, "
                f"dropout={self.dropout}, fused_qkv={self.fused_qkv}, fast={self.fast}")

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, self_attention: bool) -> None:
        for name, t, size, dim in (("query", query, self.d_model, "d_model"), ("key", key, self.kdim, "kdim"),
                                   ("value", value, self.vdim, "vdim")):
            if t.dim() != 3 or t.shape[-1] != size:
                raise ValueError(f"{name}: expected shape (B, T, {dim}={size}), got {tuple(t.shape)} "
                                 "(inputs are batch-first)")
        if key.shape[:2] != value.shape[:2] or query.shape[0] != key.shape[0]:
            raise ValueError(f"query, key, value must share B and key, value Tk: query {tuple(query.shape)}, "
                             f"key {tuple(key.shape)}, value {tuple(value.shape)}")
        if self.fused_qkv and (not self_attention or value is not query):
            raise ValueError("fused_qkv=True computes self-attention only: call it with the query alone "
                             f"(got key {tuple(key.shape)} and value {tuple(value.shape)} as other tensors)")

    def project_qkv(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The per-head projections: (B, T, D) inputs -> q (B, H, T, Dh), k and v (B, G, T, Dh)."""
        H, G = self.num_heads, self.n_kv_heads
        if self.fused_qkv:
            return tuple(split_heads(t, H) for t in self.qkv(query).chunk(3, dim=-1))  # 3 x (B, H, Tq, Dh)
        if self.fast and key is query and value is query:  # one GEMM instead of three (bench_encoder.py)
            q, k, v = _packed_linear(query, (self.W_q, self.W_k, self.W_v), self._packed)  # (B, T, H*Dh), 2 x (B, T, G*Dh)
            return split_heads(q, H), split_heads(k, G), split_heads(v, G)
        return split_heads(self.W_q(query), H), split_heads(self.W_k(key), G), split_heads(self.W_v(value), G)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None, bias: Tensor | None = None, *, record: Record | None = None) -> Tensor:
        """Attend from ``query`` (B, Tq, D) to ``key`` (B, Tk, Dk_in) / ``value`` (B, Tk, Dv_in).

        ``key=None`` (or ``query`` itself) is self-attention; ``value`` defaults to ``key``.
        ``mask`` (bool, True = may attend) and ``bias`` (float, added to the scaled scores)
        broadcast to (B, H, Tq, Tk), Tk counting cached positions too.  ``record`` collects
        the weights (B, H, Tq, Tk) and holds the ``KVCache``.  Returns (B, Tq, out_dim).
        """
        self_attention = key is None or key is query
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value, self_attention)
        if self.scores is not None:
            out, weights = self._attend_scores_module(query, key, value, mask, bias, record)
        else:
            out, weights = self._attend_dot_product(query, key, value, mask, bias, record, self_attention)
        if record is not None:
            record.keep(weights)
        return self.W_o(merge_heads(out))  # (B, Tq, out_dim)

    # -- the two paths of forward -------------------------------------------------

    def _attend_scores_module(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                              bias: Tensor | None, record: Record | None) -> tuple[Tensor, Tensor]:
        """``scores=``: the module's logits (B, H, Tq, Tk) replace q kᵀ/√Dh; values as usual."""
        if record is not None and record.cache is not None:
            raise ValueError("a scores= module has no key/value cache: call it on the whole sequence")
        expected = (query.shape[0], self.num_heads, query.shape[1], key.shape[1])  # (B, H, Tq, Tk)
        logits = self.scores(query, key)  # (B, H, Tq, Tk)
        if logits.shape != expected:
            raise ValueError(f"scores module returned {tuple(logits.shape)}, expected (B, H, Tq, Tk) = {expected}")
        v = split_heads(self.W_v(value), self.num_heads)  # (B, H, Tk, Dv)
        return attend(logits, v, mask, bias, self._dropout_p())  # (B, H, Tq, Dv), (B, H, Tq, Tk)

    def _attend_dot_product(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                            bias: Tensor | None, record: Record | None,
                            self_attention: bool) -> tuple[Tensor, Tensor | None]:
        """Projected q, k, v (through the cache), the positional hooks, then the one core of lib.attention."""
        cache = None if record is None else record.cache
        past = cache.length(self) if cache is not None and self_attention else 0
        q_pos = torch.arange(past, past + query.shape[1], device=query.device)  # (Tq,)
        q, k, v = self._queries_keys_values(query, key, value, cache, self_attention, q_pos)
        value_term = None
        if self.positional is not None:
            q, bias, value_term = self._apply_positions(q, k, q_pos, bias)
        fast = self.fast and value_term is None and not (record is not None and record.need_weights)
        if not fast:  # the fused kernel takes the G key/value heads as they are (grouped-query)
            k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, Tk, Dh): each of the G heads serves H/G queries
        return scaled_dot_product_attention(q, k, v, mask, bias, self._dropout_p(), fast=fast, value_term=value_term)

    # -- its steps ------------------------------------------------------------------

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def _queries_keys_values(self, query: Tensor, key: Tensor, value: Tensor, cache: KVCache | None,
                             self_attention: bool, q_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, Tq, Dh) and every key/value attended to (B, H, Tk, Dh/Dv), cached ones included.

        New keys are rotated (RoPE) once, before they enter the cache; cross-attention
        projects the memory's keys/values on its first cached call only.
        """
        H = self.num_heads
        if cache is not None and not self_attention and self in cache:  # the memory's k, v: computed once
            k, v = cache.get(self)  # (B, H, Tk, Dh), (B, H, Tk, Dv)
            return split_heads(self.W_q(query), H), k, v
        q, k, v = self.project_qkv(query, key, value)  # (B, H, Tq, Dh), (B, H, Tk, Dh), (B, H, Tk, Dv)
        if self.positional is not None:
            k_pos = q_pos if self_attention else torch.arange(key.shape[1], device=key.device)  # (Tk_new,)
            k = self.positional.rotate(k, k_pos)  # (B, H, Tk_new, Dh)
        if cache is not None:
            k, v = cache.append(self, k, v) if self_attention else cache.static(self, lambda: (k, v))
        return q, k, v

    def _apply_positions(self, q: Tensor, k: Tensor, q_pos: Tensor, bias: Tensor | None
                         ) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor] | None]:
        """The scheme's hooks: rotated q, ``bias`` plus the scheme's score bias, and its value term (or None)."""
        pos = self.positional
        k_pos = torch.arange(k.shape[-2], device=k.device)  # (Tk,)
        q = pos.rotate(q, q_pos)  # (B, H, Tq, Dh)
        extra = pos.score_bias(q, q_pos, k_pos)  # broadcastable to (B, H, Tq, Tk), or None
        bias = extra if bias is None else bias if extra is None else bias + extra
        if not pos.has_value_term:
            return q, bias, None

        def value_term(attn: Tensor) -> Tensor:
            return pos.value_term(attn, q_pos, k_pos)  # (B, H, Tq, Dv)

        return q, bias, value_term
