"""Converters between this course's layers and other codebases' (PyTorch, d2l, Keras, timm).

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    Tq  number of queries          Tk  number of keys
    D   d_model (torch's ``embed_dim``, d2l's ``num_hiddens`` input)
    Dh  d_head, the per-head query/key size (Keras ``key_dim``)

The layers in ``lib`` are what the lessons teach; the code here only moves weights
and conventions across, so it lives beside them, below every layer it converts
to (timm keeps its converters as module-level functions too).  Every converter
from another codebase is here, named ``<ours>_from_<theirs>``:

* ``mha_from_torch`` / ``mha_from_d2l``: a ``lib.multihead.MultiHeadAttention`` that
  computes exactly what ``torch.nn.MultiheadAttention`` / d2l's ``MultiHeadAttention`` compute;
* ``mha_from_keras``: the layer Keras' ``MultiHeadAttention(num_heads, key_dim, ...)`` builds,
  from Keras' argument names (the only place ``key_dim`` is spelled);
* ``vit_from_timm`` / ``vit_config_from_timm``: a ``lib.vit.ViT`` with a timm
  ``VisionTransformer``'s sizes and weights;
* ``qkv_parameters``, ``load_qkv``, ``copy_mha_weights``: the projections, whichever
  layout (fused ``qkv`` or separate ``W_q``/``W_k``/``W_v``) holds them;
* ``masks_from_torch``: PyTorch's masks (True = *ignore*) into ours (True = *may attend*);
* ``keras_parameter_count``: the parameter count Keras' ``summary()`` prints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lib.multihead import MultiHeadAttention
from lib.vit import ViT, ViTConfig

__all__ = [
    "mha_from_torch",
    "mha_from_d2l",
    "mha_from_keras",
    "vit_from_timm",
    "vit_config_from_timm",
    "qkv_parameters",
    "load_qkv",
    "copy_mha_weights",
    "masks_from_torch",
    "keras_parameter_count",
]


# ---------------------------------------------------------------------------
# Keras: its argument names, its parameter count
# ---------------------------------------------------------------------------


def mha_from_keras(d_model: int, num_heads: int, key_dim: int, value_dim: int | None = None,
                   out_dim: int | None = None, **kwargs: object) -> MultiHeadAttention:
    """The layer Keras' ``MultiHeadAttention(num_heads, key_dim, value_dim, output_shape)`` builds on D inputs.

    ``key_dim`` is Keras' name for Dh (``MultiHeadAttention``'s ``d_head``); ``out_dim`` is
    Keras' ``output_shape``; other keyword arguments go to ``MultiHeadAttention``.
    """
    return MultiHeadAttention(d_model, num_heads, d_head=key_dim, value_dim=value_dim, out_dim=out_dim, **kwargs)



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
# Projection weights, whichever layout holds them
# ---------------------------------------------------------------------------


def qkv_parameters(mha: MultiHeadAttention) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None]:
    """``(W_q, b_q, W_k, b_k, W_v, b_v)`` of ``mha`` (``nn.Linear`` layout (out, in)), fused or not."""
    if mha.scores is not None:
        raise ValueError(f"this MultiHeadAttention gets its scores from {type(mha.scores).__name__}: it has no W_q/W_k")
    if mha.fused_qkv:
        w = mha.qkv.weight.chunk(3, dim=0)  # 3 x (H*Dh, D)
        b = mha.qkv.bias.chunk(3, dim=0) if mha.qkv.bias is not None else (None, None, None)
        return w[0], b[0], w[1], b[1], w[2], b[2]
    return mha.W_q.weight, mha.W_q.bias, mha.W_k.weight, mha.W_k.bias, mha.W_v.weight, mha.W_v.bias


@torch.no_grad()
def load_qkv(mha: MultiHeadAttention, W_q: Tensor, b_q: Tensor | None, W_k: Tensor, b_k: Tensor | None,
             W_v: Tensor, b_v: Tensor | None) -> None:
    """Copy q/k/v projection weights (``nn.Linear`` layout (out, in)) into ``mha``, fused or not."""
    if mha.fused_qkv:
        mha.qkv.weight.copy_(torch.cat([W_q, W_k, W_v], dim=0))  # (3*H*Dh, D)
        if mha.qkv.bias is not None:
            mha.qkv.bias.copy_(torch.cat([b_q, b_k, b_v], dim=0))  # (3*H*Dh,)
        return
    for lin, w, b in ((mha.W_q, W_q, b_q), (mha.W_k, W_k, b_k), (mha.W_v, W_v, b_v)):
        lin.weight.copy_(w)
        if lin.bias is not None:
            lin.bias.copy_(b)


@torch.no_grad()
def copy_mha_weights(dst: MultiHeadAttention, src: MultiHeadAttention) -> MultiHeadAttention:
    """Copy all projections of ``src`` into ``dst`` (same sizes, either layout); returns ``dst``."""
    load_qkv(dst, *qkv_parameters(src))
    dst.W_o.load_state_dict(src.W_o.state_dict())
    return dst


# ---------------------------------------------------------------------------
# From torch.nn.MultiheadAttention and d2l's MultiHeadAttention
# ---------------------------------------------------------------------------


@torch.no_grad()
def mha_from_torch(module: nn.MultiheadAttention, *, fused_qkv: bool = False, fast: bool = False) -> MultiHeadAttention:
    """A ``MultiHeadAttention`` computing exactly what ``module`` computes (in its train/eval mode).

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
        raise TypeError(f"mha_from_torch expects torch.nn.MultiheadAttention, got {type(module).__name__}")
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
    ours = MultiHeadAttention(
        module.embed_dim, module.num_heads, kdim=module.kdim, vdim=module.vdim, bias=has_bias,
        dropout=module.dropout, fused_qkv=fused_qkv, fast=fast,
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
    load_qkv(ours, W_q, b_q, W_k, b_k, W_v, b_v)
    ours.W_o.weight.copy_(module.out_proj.weight)
    if module.out_proj.bias is not None:
        ours.W_o.bias.copy_(module.out_proj.bias)
    ours.train(module.training)
    return ours


@torch.no_grad()
def mha_from_d2l(module: nn.Module, *, fast: bool = False) -> MultiHeadAttention:
    """Convert d2l's ``d2l.MultiHeadAttention`` (torch edition), in its train/eval mode.

    d2l builds its projections with ``LazyLinear``: call it once on inputs
    of the right sizes before converting so their shapes exist. Its
    ``valid_lens`` become ``mask=lib.attention.padding_mask(valid_lens, Tk)``.
    """
    for name in ("W_q", "W_k", "W_v", "W_o"):
        lin = getattr(module, name, None)
        if lin is None or not hasattr(lin, "weight"):
            raise TypeError(f"mha_from_d2l expects d2l's MultiHeadAttention with {name}; got {type(module).__name__}")
        if isinstance(lin.weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                "d2l's MultiHeadAttention uses LazyLinear layers that are not initialised yet: "
                "call it once on (queries, keys, values, valid_lens) before converting"
            )
    H = module.num_heads
    hidden = module.W_q.out_features
    if hidden % H != 0:
        raise ValueError(f"num_hiddens={hidden} is not divisible by num_heads={H}")
    dropout = float(getattr(getattr(module, "attention", None), "dropout", nn.Dropout(0.0)).p)
    ours = MultiHeadAttention(
        module.W_q.in_features, H, d_head=hidden // H, value_dim=module.W_v.out_features // H,
        out_dim=module.W_o.out_features, kdim=module.W_k.in_features, vdim=module.W_v.in_features,
        bias=module.W_q.bias is not None, dropout=dropout, fast=fast,
    )
    ours.to(device=module.W_q.weight.device, dtype=module.W_q.weight.dtype)
    for name in ("W_q", "W_k", "W_v", "W_o"):
        getattr(ours, name).load_state_dict(getattr(module, name).state_dict())
    ours.train(module.training)
    return ours


# ---------------------------------------------------------------------------
# From timm's VisionTransformer
# ---------------------------------------------------------------------------


def vit_config_from_timm(model: nn.Module) -> ViTConfig:
    """The ``ViTConfig`` of a timm ``VisionTransformer`` (plain ViT: LayerNorm, GELU, no layer scale)."""
    pe = model.patch_embed
    blk = model.blocks[0]
    has_pos = model.pos_embed is not None
    if pe.img_size[0] != pe.img_size[1] or pe.patch_size[0] != pe.patch_size[1]:
        raise ValueError(f"only square images and patches, got img_size {pe.img_size}, patch {pe.patch_size}")
    if getattr(model, "reg_token", None) is not None or getattr(model, "no_embed_class", False):
        raise ValueError("register tokens and no_embed_class are not supported")
    if model.global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {model.global_pool!r}")
    return ViTConfig(
        img_size=pe.img_size[0], patch_size=pe.patch_size[0], in_chans=pe.proj.in_channels,
        num_classes=model.head.out_features, d_model=model.embed_dim, num_layers=len(model.blocks),
        num_heads=blk.attn.num_heads, d_ff=blk.mlp.fc1.out_features, class_token=model.cls_token is not None,
        global_pool=model.global_pool, pos_embed="learn" if has_pos else "none",
        dropout=blk.attn.proj_drop.p, attn_dropout=blk.attn.attn_drop.p, pos_dropout=model.pos_drop.p,
        eps=blk.norm1.eps,
    )


@torch.no_grad()
def vit_from_timm(model: nn.Module) -> ViT:
    """A ``ViT`` with the sizes and a copy of the weights of a timm ``VisionTransformer``."""
    new = ViT(vit_config_from_timm(model)).to(next(model.parameters()).device)
    new.patch_embed.proj.load_state_dict(model.patch_embed.proj.state_dict())
    if new.cls_token is not None:
        new.cls_token.copy_(model.cls_token)
    if new.pos_embed is not None:
        new.pos_embed.copy_(model.pos_embed)
    for ours, theirs in zip(new.blocks, model.blocks, strict=True):  # pre-norm EncoderBlocks, fused qkv
        ours.residual1.norm.load_state_dict(theirs.norm1.state_dict())
        ours.attention.qkv.load_state_dict(theirs.attn.qkv.state_dict())
        ours.attention.W_o.load_state_dict(theirs.attn.proj.state_dict())
        ours.residual2.norm.load_state_dict(theirs.norm2.state_dict())
        ours.ffn.fc1.load_state_dict(theirs.mlp.fc1.state_dict())
        ours.ffn.fc2.load_state_dict(theirs.mlp.fc2.state_dict())
    new.norm.load_state_dict(model.norm.state_dict())
    new.fc_norm.load_state_dict(model.fc_norm.state_dict())
    new.head.load_state_dict(model.head.state_dict())
    return new
