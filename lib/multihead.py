"""Multi-head attention: many scaled dot-product attentions side by side.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    Tq  number of queries          Tk  number of keys (= number of values)
    D   d_model, the query's feature size (and, by default, the output's)
    Dh  d_head, the per-head query/key size (Keras ``key_dim``); default D // H
    Dv  the per-head value size (Keras ``value_dim``); default Dh
    Dk_in, Dv_in  feature sizes of the key and value inputs (torch ``kdim``/``vdim``)

Heads live in 4-D tensors (B, H, T, Dh), as in nanoGPT, timm and PyTorch's
``scaled_dot_product_attention``; d2l folds them into the batch instead
(B·H, T, Dh), which computes the same thing.

Masks are boolean, ``True`` = may attend, broadcastable to (B, H, Tq, Tk)
(``lib.attention.padding_mask``, ``lib.attention.causal_mask``). Additive
float biases (relative positions, ALiBi) travel separately as ``bias``.
``masks_from_torch`` converts PyTorch's conventions (``key_padding_mask`` with
True = *ignore*, boolean ``attn_mask`` with True = *not allowed*) into these.

References:
    Vaswani et al. (2017), section 3.2.2: MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.attention import scaled_dot_product_attention

__all__ = [
    "MultiHeadAttention",
    "split_heads",
    "merge_heads",
    "masks_from_torch",
    "keras_parameter_count",
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


# ---------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------


def keras_parameter_count(
    d_model: int,
    num_heads: int,
    key_dim: int,
    value_dim: int | None = None,
    out_dim: int | None = None,
    *,
    kdim: int | None = None,
    vdim: int | None = None,
    bias: bool = True,
) -> int:
    """Parameters of Keras' ``MultiHeadAttention(num_heads, key_dim, value_dim, output_shape)``.

    Each projection is a dense layer ``in_features x (H * per_head) + bias``::

        query : D     * (H*key_dim)   + H*key_dim
        key   : Dk_in * (H*key_dim)   + H*key_dim
        value : Dv_in * (H*value_dim) + H*value_dim
        output: (H*value_dim) * out   + out

    E.g. D=16, H=2, key_dim=2: 3 * (16*4 + 4) + (4*16 + 16) = 204 + 80 = 284;
    with output size 20 the output layer has 4*20 + 20 = 100, total 304.
    """
    value_dim = key_dim if value_dim is None else value_dim
    out_dim = d_model if out_dim is None else out_dim
    kdim = d_model if kdim is None else kdim
    vdim = d_model if vdim is None else vdim
    b = 1 if bias else 0
    qk = num_heads * key_dim
    hv = num_heads * value_dim
    return (d_model * qk + b * qk) + (kdim * qk + b * qk) + (vdim * hv + b * hv) + (hv * out_dim + b * out_dim)


# ---------------------------------------------------------------------------
# Masks in PyTorch's conventions
# ---------------------------------------------------------------------------


def masks_from_torch(
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    *,
    num_heads: int | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Convert torch.nn.MultiheadAttention's masks into this course's ``(mask, bias)``.

    PyTorch's conventions are the opposite of ours for booleans:

    * ``key_padding_mask`` (B, Tk): bool ``True`` = *ignore this key*; or float, added.
    * ``attn_mask`` (Tq, Tk) or (B·H, Tq, Tk): bool ``True`` = *not allowed*; or float, added.

    Ours: ``mask`` bool ``True`` = *may attend*, ``bias`` float added to the scaled scores.
    ``-inf`` entries of a float mask become ``False`` in ``mask`` (so a row with
    nothing to attend gives zeros instead of PyTorch's NaN) and 0 in ``bias``.

    Args:
        key_padding_mask: (B, Tk), bool or float.
        attn_mask: (Tq, Tk) or (B·H, Tq, Tk), bool or float.
        num_heads: needed only for a 3-D ``attn_mask`` (rows are batch-major: b·H + h).

    Returns:
        ``(mask, bias)``: mask bool (B, 1, 1, Tk), (Tq, Tk) or (B, H, Tq, Tk), or None;
        bias float of a shape broadcastable to (B, H, Tq, Tk), or None.
    """
    mask: Tensor | None = None
    bias: Tensor | None = None

    def add(m: Tensor | None, b: Tensor | None, t: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if t.dtype == torch.bool:
            allowed = ~t
            return (allowed if m is None else m & allowed), b
        if not t.is_floating_point():
            raise ValueError(f"torch masks are bool or float, got dtype {t.dtype}")
        blocked = torch.isneginf(t)
        if blocked.any():
            allowed = ~blocked
            m = allowed if m is None else m & allowed
            t = t.masked_fill(blocked, 0.0)
        return m, (t if b is None else b + t)

    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2:
            raise ValueError(f"key_padding_mask must have shape (B, Tk), got {tuple(key_padding_mask.shape)}")
        mask, bias = add(mask, bias, key_padding_mask[:, None, None, :])  # (B, 1, 1, Tk)
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            if num_heads is None:
                raise ValueError(
                    f"a 3-D attn_mask {tuple(attn_mask.shape)} is (B*H, Tq, Tk): pass num_heads to split it"
                )
            BH, Tq, Tk = attn_mask.shape
            if BH % num_heads != 0:
                raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)}: {BH} rows are not B*H with H={num_heads}")
            attn_mask = attn_mask.view(BH // num_heads, num_heads, Tq, Tk)  # (B, H, Tq, Tk)
        elif attn_mask.dim() != 2:
            raise ValueError(f"attn_mask must have shape (Tq, Tk) or (B*H, Tq, Tk), got {tuple(attn_mask.shape)}")
        mask, bias = add(mask, bias, attn_mask)
    return mask, bias


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2), batch-first.

    Project queries, keys and values once per head, attend in every head in
    parallel, concatenate the heads and project back::

        q = split_heads(W_q(query))           # (B, H, Tq, Dh)
        k = split_heads(W_k(key))             # (B, H, Tk, Dh)
        v = split_heads(W_v(value))           # (B, H, Tk, Dv)
        o = softmax(q kᵀ/√Dh + bias, mask) v  # (B, H, Tq, Dv)
        out = W_o(merge_heads(o))             # (B, Tq, out_dim)

    ``key_dim``, ``value_dim`` and ``out_dim`` mirror Keras'
    ``MultiHeadAttention(num_heads, key_dim, value_dim, output_shape)``, so
    parameter counts agree with Keras' ``summary()``; ``kdim``/``vdim`` mirror
    ``torch.nn.MultiheadAttention``'s input sizes of key and value.

    Args:
        d_model: feature size D of the query input.
        num_heads: number of heads H.
        key_dim: per-head query/key size Dh (Keras ``key_dim``); default D // H.
        value_dim: per-head value size Dv (Keras ``value_dim``); default ``key_dim``.
        out_dim: output feature size (Keras ``output_shape``); default D.
        kdim: feature size of the key input; default D (torch ``kdim``).
        vdim: feature size of the value input; default D (torch ``vdim``).
        bias: biases on all four projections.
        dropout: dropout on the attention weights (training only).
        fused_qkv: one ``qkv`` Linear for self-attention (timm's layout:
            q, k, v stacked along the output features, as torch's ``in_proj_weight``).
            Needs kdim = vdim = D and value_dim = key_dim.
        fast: use PyTorch's fused ``scaled_dot_product_attention`` kernel. The
            explicit path is still used when weights are asked for or when the
            positional module has a ``value_term``.
        positional: optional module with any of ``rotate(q, k)``,
            ``score_bias(q, Tk)``, ``value_term(weights)`` (see ``forward``).

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in), value (B, Tk, Dv_in)
        -> output (B, Tq, out_dim), weights (B, H, Tq, Tk).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        key_dim: int | None = None,
        value_dim: int | None = None,
        out_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        fused_qkv: bool = False,
        fast: bool = False,
        positional: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model and num_heads must be positive, got d_model={d_model}, num_heads={num_heads}")
        if key_dim is None:
            if d_model % num_heads != 0:
                raise ValueError(
                    f"d_model={d_model} is not divisible by num_heads={num_heads}; "
                    "choose sizes that divide or pass key_dim explicitly"
                )
            key_dim = d_model // num_heads
        value_dim = key_dim if value_dim is None else value_dim
        out_dim = d_model if out_dim is None else out_dim
        kdim = d_model if kdim is None else kdim
        vdim = d_model if vdim is None else vdim
        for name, size in (("key_dim", key_dim), ("value_dim", value_dim), ("out_dim", out_dim), ("kdim", kdim), ("vdim", vdim)):
            if size <= 0:
                raise ValueError(f"{name} must be positive, got {size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if fused_qkv and (kdim != d_model or vdim != d_model or value_dim != key_dim):
            raise ValueError(
                "fused_qkv=True is for self-attention with equal sizes: needs kdim = vdim = d_model and "
                f"value_dim = key_dim, got d_model={d_model}, kdim={kdim}, vdim={vdim}, "
                f"key_dim={key_dim}, value_dim={value_dim}"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.key_dim = key_dim  # Dh
        self.value_dim = value_dim  # Dv
        self.out_dim = out_dim
        self.kdim = kdim
        self.vdim = vdim
        self.dropout = dropout
        self.fused_qkv = fused_qkv
        self.fast = fast
        self.positional = positional

        H = num_heads
        if fused_qkv:
            self.qkv = nn.Linear(d_model, 3 * H * key_dim, bias=bias)  # q | k | v stacked
        else:
            self.W_q = nn.Linear(d_model, H * key_dim, bias=bias)
            self.W_k = nn.Linear(kdim, H * key_dim, bias=bias)
            self.W_v = nn.Linear(vdim, H * value_dim, bias=bias)
        self.W_o = nn.Linear(H * value_dim, out_dim, bias=bias)

    @property
    def d_head(self) -> int:
        """Per-head query/key size Dh (the paper's d_k; Keras' ``key_dim``)."""
        return self.key_dim

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, key_dim={self.key_dim}, "
            f"value_dim={self.value_dim}, out_dim={self.out_dim}, kdim={self.kdim}, vdim={self.vdim}, "
            f"dropout={self.dropout}, fused_qkv={self.fused_qkv}, fast={self.fast}"
        )

    # -- forward ------------------------------------------------------------

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query: expected shape (B, Tq, d_model={self.d_model}), got {tuple(query.shape)} "
                "(inputs are batch-first)"
            )
        if key.dim() != 3 or key.shape[-1] != self.kdim:
            raise ValueError(f"key: expected shape (B, Tk, kdim={self.kdim}), got {tuple(key.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.vdim:
            raise ValueError(f"value: expected shape (B, Tk, vdim={self.vdim}), got {tuple(value.shape)}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(
                f"key and value must share (B, Tk): key {tuple(key.shape)}, value {tuple(value.shape)}"
            )
        if query.shape[0] != key.shape[0]:
            raise ValueError(f"query and key batch sizes differ: query {tuple(query.shape)}, key {tuple(key.shape)}")

    def project_qkv(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The per-head projections: (B, T, D) inputs -> q, k, v of shape (B, H, T, Dh)."""
        B, Tq, _ = query.shape
        Tk = key.shape[1]
        H = self.num_heads
        if self.fused_qkv:
            # timm: one matmul, then split. Axis 2 of the 5-D view picks q/k/v,
            # axis 3 the head; permute brings them to the front:
            # (B, N, 3, H, Dh) -> (3, B, H, N, Dh) with indices (2, 0, 3, 1, 4).
            qkv = self.qkv(query).reshape(B, Tq, 3, H, self.key_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, Tq, Dh)
            q, k, v = qkv.unbind(0)  # each (B, H, Tq, Dh)
            return q, k, v
        q = self.W_q(query).view(B, Tq, H, self.key_dim).transpose(1, 2)  # (B, H, Tq, Dh)
        k = self.W_k(key).view(B, Tk, H, self.key_dim).transpose(1, 2)  # (B, H, Tk, Dh)
        v = self.W_v(value).view(B, Tk, H, self.value_dim).transpose(1, 2)  # (B, H, Tk, Dv)
        return q, k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``query`` to ``key``/``value`` in every head.

        Args:
            query: (B, Tq, D).
            key: (B, Tk, Dk_in); defaults to ``query`` (self-attention).
            value: (B, Tk, Dv_in); defaults to ``key``.
            mask: bool, True = may attend, broadcastable to (B, H, Tq, Tk).
            bias: float, added to the scaled scores, broadcastable to (B, H, Tq, Tk).
            need_weights: also return the attention weights.

        The ``positional`` module's hooks, when it has them:
            ``rotate(q, k) -> (q, k)`` right after the head split (RoPE);
            ``score_bias(q, Tk)`` added to the scaled scores, like ``bias`` (ALiBi, Shaw's keys);
            ``value_term(weights)`` (B, H, Tq, Dv) added to weights @ v (Shaw's values).

        Returns:
            output (B, Tq, out_dim), or ``(output, weights)`` with weights
            (B, H, Tq, Tk), the attention distribution before dropout.
        """
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value)
        if self.fused_qkv and (key is not query or value is not query):
            raise ValueError(
                "fused_qkv=True computes self-attention only: call it with the query alone "
                f"(got query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)} as other tensors)"
            )
        B, Tq, _ = query.shape
        Tk = key.shape[1]

        q, k, v = self.project_qkv(query, key, value)  # (B, H, Tq, Dh), (B, H, Tk, Dh), (B, H, Tk, Dv)

        pos = self.positional
        rotate = getattr(pos, "rotate", None)
        score_bias = getattr(pos, "score_bias", None)
        value_term = getattr(pos, "value_term", None)
        if rotate is not None:
            q, k = rotate(q, k)  # (B, H, Tq, Dh), (B, H, Tk, Dh)
        if score_bias is not None:
            extra = score_bias(q, Tk)  # broadcastable to (B, H, Tq, Tk)
            bias = extra if bias is None else bias + extra

        dropout_p = self.dropout if self.training else 0.0
        explicit = need_weights or value_term is not None or not self.fast
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, bias, 0.0 if value_term is not None else dropout_p, fast=not explicit
        )  # (B, H, Tq, Dv), (B, H, Tq, Tk) or None
        if value_term is not None:
            attn = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights  # (B, H, Tq, Tk)
            if dropout_p > 0:
                out = attn @ v  # (B, H, Tq, Dv)
            out = out + value_term(attn)  # (B, H, Tq, Dv)

        out = out.transpose(1, 2).reshape(B, Tq, self.num_heads * self.value_dim)  # (B, Tq, H*Dv)
        out = self.W_o(out)  # (B, Tq, out_dim)
        return (out, weights) if need_weights else out

    # -- parameters -----------------------------------------------------------

    def parameter_count(self) -> int:
        """Number of parameters; equals Keras' count for the same sizes (see ``keras_parameter_count``)."""
        return sum(p.numel() for p in self.parameters())

    def qkv_parameters(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(W_q, b_q, W_k, b_k, W_v, b_v)`` as tensors, whichever layout (fused or not) holds them."""
        if self.fused_qkv:
            w = self.qkv.weight.chunk(3, dim=0)
            b = self.qkv.bias.chunk(3, dim=0) if self.qkv.bias is not None else (None, None, None)
            return w[0], b[0], w[1], b[1], w[2], b[2]
        return (self.W_q.weight, self.W_q.bias, self.W_k.weight, self.W_k.bias, self.W_v.weight, self.W_v.bias)

    @torch.no_grad()
    def load_qkv(
        self, W_q: Tensor, b_q: Tensor | None, W_k: Tensor, b_k: Tensor | None, W_v: Tensor, b_v: Tensor | None
    ) -> None:
        """Copy q/k/v projection weights (``nn.Linear`` layout: (out, in)) into this module."""
        if self.fused_qkv:
            self.qkv.weight.copy_(torch.cat([W_q, W_k, W_v], dim=0))
            if self.qkv.bias is not None:
                self.qkv.bias.copy_(torch.cat([b_q, b_k, b_v], dim=0))
            return
        for lin, w, b in ((self.W_q, W_q, b_q), (self.W_k, W_k, b_k), (self.W_v, W_v, b_v)):
            lin.weight.copy_(w)
            if lin.bias is not None:
                lin.bias.copy_(b)

    @torch.no_grad()
    def copy_weights_from(self, other: MultiHeadAttention) -> MultiHeadAttention:
        """Copy all projections from another ``MultiHeadAttention`` of the same sizes (fused or not)."""
        self.load_qkv(*other.qkv_parameters())
        self.W_o.load_state_dict(other.W_o.state_dict())
        return self

    # -- converters -----------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_torch(
        cls, module: nn.MultiheadAttention, *, fused_qkv: bool = False, fast: bool = False
    ) -> MultiHeadAttention:
        """A ``MultiHeadAttention`` computing exactly what ``module`` computes.

        Ours is always batch-first. For a module built with ``batch_first=False``
        (the default), which takes (T, B, D), transpose around the call::

            out = ours(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)

        Convert its masks with ``masks_from_torch``. ``fused_qkv=True`` is possible
        when the module has kdim = vdim = embed_dim (its ``in_proj_weight`` layout).

        Raises:
            NotImplementedError: for ``add_bias_kv`` or ``add_zero_attn``, which
                append a learned (or zero) key/value to every sequence.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"from_torch expects torch.nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.bias_v is not None:
            raise NotImplementedError(
                "add_bias_kv=True appends a learned key/value to every sequence; MultiHeadAttention has no "
                "equivalent (append it to key/value yourself, or use torch.nn.MultiheadAttention)"
            )
        if module.add_zero_attn:
            raise NotImplementedError(
                "add_zero_attn=True appends an all-zero key/value to every sequence; MultiHeadAttention has no "
                "equivalent (append zeros to key/value yourself, or use torch.nn.MultiheadAttention)"
            )
        has_bias = module.in_proj_bias is not None
        ours = cls(
            module.embed_dim,
            module.num_heads,
            kdim=module.kdim,
            vdim=module.vdim,
            bias=has_bias,
            dropout=module.dropout,
            fused_qkv=fused_qkv,
            fast=fast,
        )
        ref = module.in_proj_weight if module.in_proj_weight is not None else module.q_proj_weight
        ours.to(device=ref.device, dtype=ref.dtype)
        E = module.embed_dim
        if module.in_proj_weight is not None:
            W_q, W_k, W_v = module.in_proj_weight.split(E, dim=0)  # each (E, E)
        else:
            W_q, W_k, W_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        b_q = b_k = b_v = None
        if has_bias:
            b_q, b_k, b_v = module.in_proj_bias.split(E, dim=0)  # each (E,)
        ours.load_qkv(W_q, b_q, W_k, b_k, W_v, b_v)
        ours.W_o.weight.copy_(module.out_proj.weight)
        if module.out_proj.bias is not None:
            ours.W_o.bias.copy_(module.out_proj.bias)
        ours.train(module.training)
        return ours

    @classmethod
    @torch.no_grad()
    def from_d2l(cls, module: nn.Module, *, fast: bool = False) -> MultiHeadAttention:
        """Convert d2l's ``d2l.MultiHeadAttention`` (torch edition).

        d2l builds its projections with ``LazyLinear``: call it once on inputs
        of the right sizes before converting so their shapes exist. Its
        ``valid_lens`` become ``mask=lib.attention.padding_mask(valid_lens, Tk)``.
        """
        for name in ("W_q", "W_k", "W_v", "W_o"):
            lin = getattr(module, name, None)
            if lin is None or not hasattr(lin, "weight"):
                raise TypeError(f"from_d2l expects d2l's MultiHeadAttention with {name}; got {type(module).__name__}")
            if isinstance(lin.weight, nn.parameter.UninitializedParameter):
                raise ValueError(
                    "d2l's MultiHeadAttention uses LazyLinear layers that are not initialised yet: "
                    "call it once on (queries, keys, values, valid_lens) before converting"
                )
        H = module.num_heads
        hidden = module.W_q.out_features
        if hidden % H != 0:
            raise ValueError(f"num_hiddens={hidden} is not divisible by num_heads={H}")
        has_bias = module.W_q.bias is not None
        dropout = float(getattr(getattr(module, "attention", None), "dropout", nn.Dropout(0.0)).p)
        ours = cls(
            module.W_q.in_features,
            H,
            key_dim=hidden // H,
            value_dim=module.W_v.out_features // H,
            out_dim=module.W_o.out_features,
            kdim=module.W_k.in_features,
            vdim=module.W_v.in_features,
            bias=has_bias,
            dropout=dropout,
            fast=fast,
        )
        ours.to(device=module.W_q.weight.device, dtype=module.W_q.weight.dtype)
        for name in ("W_q", "W_k", "W_v", "W_o"):
            getattr(ours, name).load_state_dict(getattr(module, name).state_dict())
        ours.train(module.training)
        return ours
