"""Attention without the (Tq, Tk) matrix: key/value blocks and an online softmax.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    Tq  number of queries          Tk  number of keys (= number of values)
    Dk  query/key feature size     Dv  value feature size
    Bk  keys in one block          Bq  queries in one block

The explicit attention of ``lib.attention`` builds the scores and the weights,
two (B, H, Tq, Tk) tensors: memory quadratic in the sequence length.  The
softmax of a row can instead be computed *online*, one block of keys at a
time, keeping per query only a running maximum ``m``, a running sum ``l`` of
``exp(s - m)`` and an unnormalised output ``acc`` (Milakov & Gimelshein 2018;
FlashAttention, Dao et al. 2022, Algorithm 1).  When a block raises the
maximum from ``m_old`` to ``m_new``, everything accumulated so far was scaled
by ``exp(-m_old)`` and must be rescaled by ``exp(m_old - m_new)``::

    m_new = max(m_old, max_j s_j)
    p_j   = exp(s_j - m_new)                          # (B, H, Tq, Bk)
    l     = l * exp(m_old - m_new) + sum_j p_j
    acc   = acc * exp(m_old - m_new) + p @ v_block    # (B, H, Tq, Dv)
    out   = acc / l                                   # after the last block

The extra memory is one (B, H, Bq, Bk) block of scores instead of the whole
matrix: linear in T for fixed block sizes.  Masked keys get ``-inf``; a block
(or a whole row) with nothing to attend contributes nothing, and a row with
nothing to attend at all gives a zero output, as ``lib.attention`` does.

This is the forward pass in plain PyTorch, written to be read.  Autograd can
differentiate it, but then it saves every block for the backward pass, so the
memory saving holds for inference (``torch.no_grad()``); FlashAttention's
backward recomputes the blocks instead of saving them, from the output and one
log-sum-exp per query (``online_softmax_lse``, ``tiled_attention_backward``).

References:
    Milakov & Gimelshein (2018), "Online normalizer calculation for softmax", Algorithm 3.
    Dao et al. (2022), "FlashAttention", section 3.1, Algorithm 1 (forward) and Algorithm 4 (backward).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lib.runtime import check_positive_int

__all__ = ["OnlineSoftmaxState", "online_softmax_init", "online_softmax_update", "online_softmax_finish",
           "online_softmax_lse", "tiled_attention", "tiled_attention_backward"]

OnlineSoftmaxState = tuple[Tensor, Tensor, Tensor]
"""``(m, l, acc)``: running max (..., Tq, 1), running sum (..., Tq, 1), unnormalised output (..., Tq, Dv)."""


def online_softmax_init(q: Tensor, v: Tensor) -> OnlineSoftmaxState:
    """The state before any block: ``m = -inf``, ``l = 0``, ``acc = 0``.

    Shapes:
        q (..., Tq, Dk), v (..., Tk, Dv) -> m (..., Tq, 1), l (..., Tq, 1), acc (..., Tq, Dv).
    """
    batch = torch.broadcast_shapes(q.shape[:-2], v.shape[:-2])
    Tq, Dv = q.shape[-2], v.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)  # accumulate in at least fp32
    m = torch.full((*batch, Tq, 1), -math.inf, dtype=dtype, device=q.device)  # (..., Tq, 1)
    l = torch.zeros((*batch, Tq, 1), dtype=dtype, device=q.device)  # (..., Tq, 1)
    acc = torch.zeros((*batch, Tq, Dv), dtype=dtype, device=q.device)  # (..., Tq, Dv)
    return m, l, acc


def online_softmax_update(
    state: OnlineSoftmaxState, scores: Tensor, v: Tensor, mask: Tensor | None = None
) -> OnlineSoftmaxState:
    """Fold one block of keys into the running softmax -- Milakov & Gimelshein (2018), Algorithm 3.

    Args:
        state: ``(m, l, acc)`` from ``online_softmax_init`` or a previous update.
        scores: (..., Tq, Bk) scaled scores of this block (bias already added).
        v: (..., Bk, Dv) the block's values.
        mask: bool, True = may attend, broadcastable to ``scores``.

    Returns:
        The new ``(m, l, acc)``.  A block with every key masked leaves the state unchanged.
    """
    m_old, l_old, acc_old = state
    s = scores.to(m_old.dtype)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)  # masked keys: exp(-inf) = 0
    m_new = torch.maximum(m_old, s.amax(dim=-1, keepdim=True))  # (..., Tq, 1)
    # A row that has seen only masked keys keeps m = -inf; exp(-inf - (-inf)) would be NaN,
    # so subtract 0 there instead: p = exp(-inf) = 0 and alpha = exp(-inf) = 0.
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # (..., Tq, 1)
    p = torch.exp(s - m_safe)  # (..., Tq, Bk)
    alpha = torch.exp(m_old - m_safe)  # (..., Tq, 1): rescales what came before
    l_new = l_old * alpha + p.sum(dim=-1, keepdim=True)  # (..., Tq, 1)
    acc_new = acc_old * alpha + p @ v.to(p.dtype)  # (..., Tq, Dv)
    return m_new, l_new, acc_new


def online_softmax_finish(state: OnlineSoftmaxState, dtype: torch.dtype | None = None) -> Tensor:
    """``acc / l``, with zeros for rows that had nothing to attend (``l = 0``).

    Shapes:
        state (m, l, acc) -> (..., Tq, Dv).
    """
    _, l, acc = state
    out = torch.where(l > 0, acc / l.clamp_min(torch.finfo(l.dtype).tiny), torch.zeros_like(acc))  # (..., Tq, Dv)
    return out if dtype is None else out.to(dtype)


def online_softmax_lse(state: OnlineSoftmaxState) -> Tensor:
    """The log-sum-exp of each query's scores, ``m + log l``: all FlashAttention's backward keeps of the softmax.

    ``exp(s_j - lse)`` is then the weight of key ``j`` (the whole row's softmax), for any block of keys
    recomputed later.  A row with nothing to attend (``l = 0``) gets ``-inf``.

    Shapes:
        state (m (..., Tq, 1), l (..., Tq, 1), acc) -> (..., Tq).
    """
    m, l, _ = state
    return (m + torch.log(l)).squeeze(-1)  # (..., Tq); m = -inf and l = 0 give -inf, never NaN


def _check(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, block_size: int,
           query_block_size: int | None, causal: bool) -> tuple[int, ...]:
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"q, k, v must be at least 2-D (..., T, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys must share Dk: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values must be equally many (Tk): k has {k.shape[-2]}, v has {v.shape[-2]}")
    check_positive_int(**{name: size for name, size in (("block_size", block_size),
                                                        ("query_block_size", query_block_size)) if size is not None})
    Tq, Tk = q.shape[-2], k.shape[-2]
    if causal and Tk < Tq:
        raise ValueError(f"causal attention needs Tk >= Tq (queries are the last Tq positions), got Tq={Tq}, Tk={Tk}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"q, k, v batch axes do not broadcast: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        ) from None
    scores_shape = (*batch, Tq, Tk)
    for name, t in (("mask", mask), ("bias", bias)):
        if t is None:
            continue
        if name == "mask" and t.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may attend), got dtype {t.dtype}")
        if name == "bias" and not t.is_floating_point():
            raise ValueError(f"bias must be a float tensor added to the scores, got dtype {t.dtype}")
        try:
            ok = torch.broadcast_shapes(t.shape, scores_shape) == scores_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the scores' shape {scores_shape}")
    return scores_shape


def _block(t: Tensor | None, rows: slice, cols: slice) -> Tensor | None:
    """The (rows, cols) block of a mask or bias broadcastable to (..., Tq, Tk); size-1 axes stay size 1."""
    if t is None:
        return None
    r = rows if t.shape[-2] > 1 else slice(None)
    c = cols if t.shape[-1] > 1 else slice(None)
    return t[..., r, c]


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_size: int = 128,
    query_block_size: int | None = None,
) -> Tensor:
    """softmax(q kᵀ·scale + bias, masked) v, one block of keys at a time -- Dao et al. (2022), Algorithm 1.

    Equal (fp32 tolerance) to ``lib.attention.scaled_dot_product_attention`` and to
    ``torch.nn.functional.scaled_dot_product_attention`` without dropout, but never builds
    more than a (..., Bq, Bk) block of scores.

    Args:
        q: (..., Tq, Dk) queries, e.g. (B, H, Tq, Dk).
        k: (..., Tk, Dk) keys.
        v: (..., Tk, Dv) values.
        mask: bool, True = may attend, broadcastable to (..., Tq, Tk).
        bias: float, added to the scaled scores, broadcastable to (..., Tq, Tk).
        causal: query i sees keys j <= i + Tk - Tq (``lib.attention.causal_mask``); blocks
            entirely in the future are skipped, not computed.
        scale: multiplies the scores; default 1/√Dk.
        block_size: keys per block, Bk.
        query_block_size: queries per block, Bq; default all Tq at once.

    Returns:
        (..., Tq, Dv) in q's dtype; rows with nothing to attend are zero.
    """
    _check(q, k, v, mask, bias, block_size, query_block_size, causal)
    Tq, Tk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    Bq = Tq if query_block_size is None else query_block_size
    shift = Tk - Tq  # causal: query i is position i + shift
    outs = []
    for i0 in range(0, Tq, Bq):
        rows = slice(i0, min(i0 + Bq, Tq))
        qb = q[..., rows, :]  # (..., Bq, Dk)
        state = online_softmax_init(qb, v)
        last_row = rows.stop - 1 + shift  # the last key any query of this block may see
        for j0 in range(0, Tk, block_size):
            if causal and j0 > last_row:
                break  # every later block lies in the future of every query here
            cols = slice(j0, min(j0 + block_size, Tk))
            s = (qb @ k[..., cols, :].transpose(-2, -1)) * scale  # (..., Bq, Bk)
            b = _block(bias, rows, cols)
            if b is not None:
                s = s + b
            m = _block(mask, rows, cols)
            if causal:
                qi = torch.arange(rows.start, rows.stop, device=q.device).unsqueeze(-1) + shift  # (Bq, 1)
                kj = torch.arange(cols.start, cols.stop, device=q.device)  # (Bk,)
                visible = kj <= qi  # (Bq, Bk)
                m = visible if m is None else m & visible
            state = online_softmax_update(state, s, v[..., cols, :], m)
        outs.append(online_softmax_finish(state, q.dtype))  # (..., Bq, Dv)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)  # (..., Tq, Dv)


def tiled_attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    block_size: int = 128,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of attention with respect to q, k, v, recomputing the weights block by block --
    Dao et al. (2022), Algorithm 4 (without dropout).

    The backward pass of FlashAttention saves no (Tq, Tk) matrix.  From the forward pass it keeps
    only the output ``out`` and one number per query, ``lse = m + log l`` (``online_softmax_lse``);
    for each block of keys it recomputes the weights and uses them at once::

        p_j  = exp(q k_jᵀ·scale - lse)            # (..., Tq, Bk): the block's softmax weights
        dv_j = p_jᵀ dO                            # (..., Bk, Dv)
        dp_j = dO v_jᵀ                            # (..., Tq, Bk)
        ds_j = p_j ∘ (dp_j - D)                   # D = rowsum(dO ∘ out), (..., Tq, 1)
        dq  += ds_j k_j · scale,  dk_j = ds_jᵀ q · scale

    ``D`` is the softmax's ``rowsum(p ∘ dp)`` over *all* keys, which equals ``rowsum(dO ∘ out)``
    because ``out = p v``: so it is known before the loop, from (Tq, Dv) numbers.

    Args:
        q, k, v: (..., Tq, Dk), (..., Tk, Dk), (..., Tk, Dv), the forward pass's inputs (same batch axes).
        out: (..., Tq, Dv) the forward pass's output.
        lse: (..., Tq) the log-sum-exp of each query's scaled, masked scores (``-inf``: nothing to attend).
        dout: (..., Tq, Dv) the gradient of the loss with respect to ``out``.
        mask: bool, True = may attend, broadcastable to (..., Tq, Tk); the forward pass's mask.
        scale: multiplies the scores; default 1/√Dk.
        block_size: keys per block, Bk.

    Returns:
        ``(dq, dk, dv)`` in the dtypes of q, k, v.

    Raises:
        ValueError: shapes that do not fit together.
    """
    _check(q, k, v, mask, None, block_size, None, False)
    Tq, Tk = q.shape[-2], k.shape[-2]
    batch = q.shape[:-2]
    if k.shape[:-2] != batch or v.shape[:-2] != batch:
        raise ValueError(f"q, k, v must share their batch axes, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, t, shape in (("out", out, (*batch, Tq, v.shape[-1])), ("dout", dout, (*batch, Tq, v.shape[-1])),
                           ("lse", lse, (*batch, Tq))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)  # accumulate in at least fp32
    qf, kf, vf, of, dof = (t.to(dtype) for t in (q, k, v, out, dout))
    lse_f = lse.to(dtype).unsqueeze(-1)  # (..., Tq, 1)
    lse_f = torch.where(torch.isinf(lse_f), torch.zeros_like(lse_f), lse_f)  # rows with nothing to attend: p = 0 below
    delta = (dof * of).sum(dim=-1, keepdim=True)  # (..., Tq, 1) = rowsum(p ∘ dp) over all keys
    dq = torch.zeros_like(qf)  # (..., Tq, Dk)
    dk = torch.empty_like(kf)  # (..., Tk, Dk)
    dv = torch.empty_like(vf)  # (..., Tk, Dv)
    rows = slice(0, Tq)
    for j0 in range(0, Tk, block_size):
        cols = slice(j0, min(j0 + block_size, Tk))
        kb, vb = kf[..., cols, :], vf[..., cols, :]  # (..., Bk, Dk), (..., Bk, Dv)
        p = torch.exp((qf @ kb.transpose(-2, -1)) * scale - lse_f)  # (..., Tq, Bk): recomputed weights
        m = _block(mask, rows, cols)
        if m is not None:
            p = torch.where(m, p, torch.zeros_like(p))
        dv[..., cols, :] = p.transpose(-2, -1) @ dof  # (..., Bk, Dv)
        ds = p * (dof @ vb.transpose(-2, -1) - delta)  # (..., Tq, Bk)
        dq += (ds @ kb) * scale  # (..., Tq, Dk)
        dk[..., cols, :] = (ds.transpose(-2, -1) @ qf) * scale  # (..., Bk, Dk)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
