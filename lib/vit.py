"""The Vision Transformer: an image as a sequence of patches (Dosovitskiy et al. 2021).

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    C   image channels (1 for digits, 3 for RGB)
    H, W  image height and width in pixels
    P   patch size (square patches here: P x P pixels; ``Ph``, ``Pw`` where they differ)
    Gh, Gw  the grid of patches: Gh = H / Ph rows, Gw = W / Pw columns
    N   number of patches, Gh·Gw
    T   number of tokens the encoder sees: N, plus 1 with a class token
    D   d_model, the token size
    L   number of encoder blocks
    K   number of classes

The image is cut into non-overlapping P x P patches; each patch, flattened to
C·P·P numbers, is mapped to a D-vector by *one* linear map shared by all
patches (section 3.1, eq. (1)).  A ``Conv2d`` with kernel = stride = P computes
exactly that: each output position sees exactly one patch, and the kernel is the
linear map.  ``PatchEmbed`` is that convolution (as in timm);
``PatchEmbedLinear`` is the same map written as ``patchify`` (reshape + permute)
followed by an ``nn.Linear``, and the two convert into each other.

``ViT`` then prepends a learned class token (or not), adds position embeddings
(learned, or fixed 2-D sine-cosine), runs pre-norm encoder blocks
(``lib.transformer.EncoderBlock`` with a fused-qkv ``MultiHeadAttention`` and a
GELU ``PositionWiseFFN``) and classifies the class token's output or the mean
of the patch tokens.  Parameter names and the computation follow timm's
``VisionTransformer``; ``lib.interop.vit_from_timm`` copies a timm model's weights.

References:
    Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words", section 3.1, eqs. (1)-(4);
    appendix D.4 (position embeddings), figure 7 (their cosine similarity).
    Chen, Xie and He (2021), MoCo v3, section 4 / Beyer et al. (2022): fixed 2-D sine-cosine positions.
    timm (Wightman), ``timm.layers.PatchEmbed`` and ``timm.models.vision_transformer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.attention import Record
from lib.ffn import PositionWiseFFN
from lib.multihead import MultiHeadAttention
from lib.transformer import EncoderBlock

__all__ = [
    "patchify",
    "unpatchify",
    "pad_to_patches",
    "PatchEmbed",
    "PatchEmbedLinear",
    "conv_to_linear",
    "linear_to_conv",
    "sincos_2d_table",
    "vit_block",
    "ViTConfig",
    "ViT",
]


def _pair(x: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(x, int):
        x = (x, x)
    if not isinstance(x, (tuple, list)) or any(isinstance(v, bool) or not isinstance(v, int) for v in x):
        raise TypeError(f"{name} must be a positive int or a pair of them, got {x!r}")
    if len(x) != 2 or any(v < 1 for v in x):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {x!r}")
    return int(x[0]), int(x[1])


# ---------------------------------------------------------------------------
# Patches by hand
# ---------------------------------------------------------------------------


def _check_image(x: Tensor, patch: tuple[int, int], who: str) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"{who} expects images (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    Ph, Pw = patch
    if H % Ph or W % Pw:
        raise ValueError(
            f"{who}: an image of H x W = {H} x {W} does not divide into {Ph} x {Pw} patches "
            f"(H % {Ph} = {H % Ph}, W % {Pw} = {W % Pw}); crop or resize it, or pad it "
            "(pad_to_patches, or PatchEmbed(..., dynamic_img_pad=True))"
        )
    return B, C, H, W


def pad_to_patches(x: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Zero-pad (B, C, H, W) on the bottom and right up to multiples of the patch size (timm's ``dynamic_img_pad``)."""
    Ph, Pw = _pair(patch_size, "patch_size")
    H, W = x.shape[-2:]
    pad_h = (Ph - H % Ph) % Ph
    pad_w = (Pw - W % Pw) % Pw
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x  # (B, C, H', W')


def patchify(x: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Cut images into non-overlapping patches, each flattened in (C, Ph, Pw) order.

    The same as ``F.unfold(x, P, stride=P).transpose(1, 2)``; the order of each
    patch's C·Ph·Pw numbers matches a ``Conv2d`` kernel's ``weight.flatten(1)``, and
    patches come row by row (the order of ``conv(x).flatten(2)``).

    Shapes:
        x (B, C, H, W) -> (B, N, C·Ph·Pw), N = (H / Ph)·(W / Pw).
    """
    Ph, Pw = _pair(patch_size, "patch_size")
    B, C, H, W = _check_image(x, (Ph, Pw), "patchify")
    Gh, Gw = H // Ph, W // Pw
    x = x.reshape(B, C, Gh, Ph, Gw, Pw)  # (B, C, Gh, Ph, Gw, Pw): split each axis into (patch index, pixel in patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, Gh, Gw, C, Ph, Pw): patch indices first, then one patch's pixels
    return x.reshape(B, Gh * Gw, C * Ph * Pw)  # (B, N, C*Ph*Pw)


def unpatchify(patches: Tensor, patch_size: int | tuple[int, int], img_size: int | tuple[int, int], in_chans: int) -> Tensor:
    """The inverse of ``patchify``: (B, N, C·Ph·Pw) -> (B, C, H, W)."""
    Ph, Pw = _pair(patch_size, "patch_size")
    H, W = _pair(img_size, "img_size")
    B, N, F_ = patches.shape
    Gh, Gw = H // Ph, W // Pw
    if N != Gh * Gw or F_ != in_chans * Ph * Pw:
        raise ValueError(
            f"unpatchify: expected (B, N={Gh * Gw}, C*Ph*Pw={in_chans * Ph * Pw}) for a {H} x {W} image with "
            f"{in_chans} channel(s) and {Ph} x {Pw} patches, got {tuple(patches.shape)}"
        )
    x = patches.reshape(B, Gh, Gw, in_chans, Ph, Pw).permute(0, 3, 1, 4, 2, 5)  # (B, C, Gh, Ph, Gw, Pw)
    return x.reshape(B, in_chans, H, W)  # (B, C, H, W)


# ---------------------------------------------------------------------------
# Patch embedding: the convolution, and its reshape + Linear twin
# ---------------------------------------------------------------------------


class _PatchEmbedBase(nn.Module):
    """Size bookkeeping and input checks shared by both patch embeddings (timm's rules)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        d_model: int = 768,
        *,
        norm: bool = False,
        eps: float = 1e-6,
        flatten: bool = True,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
    ) -> None:
        super().__init__()
        if in_chans < 1 or d_model < 1:
            raise ValueError(f"in_chans and d_model must be positive, got in_chans={in_chans}, d_model={d_model}")
        if norm and not flatten:
            raise ValueError("norm=True normalises each token's D features: it needs flatten=True (tokens (B, N, D))")
        self.patch_size = _pair(patch_size, "patch_size")
        self.in_chans, self.d_model = in_chans, d_model
        self.flatten = flatten
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.img_size: tuple[int, int] | None = None
        self.grid_size: tuple[int, int] | None = None
        self.num_patches: int | None = None
        if img_size is not None:
            self.img_size = _pair(img_size, "img_size")
            (H, W), (Ph, Pw) = self.img_size, self.patch_size
            if not dynamic_img_pad and (H % Ph or W % Pw):
                raise ValueError(
                    f"img_size {H} x {W} does not divide into {Ph} x {Pw} patches "
                    f"(H % {Ph} = {H % Ph}, W % {Pw} = {W % Pw}); pick sizes that divide, "
                    "or pass dynamic_img_pad=True to zero-pad the bottom and right"
                )
            self.grid_size = (math.ceil(H / Ph), math.ceil(W / Pw))  # (Gh, Gw)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.norm: nn.Module = nn.LayerNorm(d_model, eps=eps) if norm else nn.Identity()
        self.proj = self._projection(bias)

    def _projection(self, bias: bool) -> nn.Module:
        raise NotImplementedError

    def _twin(self, cls: type[_PatchEmbedBase], proj: nn.Module) -> _PatchEmbedBase:
        """A ``cls`` with these sizes and options, the projection ``proj`` and a copy of the norm."""
        new = cls(**self.init_kwargs())
        new.proj = proj
        new.norm.load_state_dict(self.norm.state_dict())
        return new.to(self.proj.weight.device)

    def _prepare(self, x: Tensor) -> Tensor:
        """Check (B, C, H, W) against the sizes; pad when asked."""
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{name} expects images (B, C={self.in_chans}, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self.img_size is not None and self.strict_img_size and (H, W) != self.img_size:
            raise ValueError(
                f"{name} was built for {self.img_size[0]} x {self.img_size[1]} images, got {H} x {W} "
                "(pass strict_img_size=False to accept other sizes)"
            )
        if self.dynamic_img_pad:
            return pad_to_patches(x, self.patch_size)  # (B, C, H', W')
        _check_image(x, self.patch_size, name)
        return x

    def _finish(self, x: Tensor) -> Tensor:
        """(B, D, Gh, Gw) -> tokens (B, N, D) (normalised when asked), or the grid itself with flatten=False."""
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches row by row
        return self.norm(x)

    def init_kwargs(self) -> dict:
        """The constructor arguments that, with the ``state_dict``, rebuild this layer.

        Its presence says the layer travels as data between the grader and a student's kernel
        (``tools/autograder/wire.py``): a test may hand one to the student's code."""
        return {"img_size": self.img_size, "patch_size": self.patch_size, "in_chans": self.in_chans,
                "d_model": self.d_model, "norm": isinstance(self.norm, nn.LayerNorm),
                "eps": getattr(self.norm, "eps", 1e-6), "flatten": self.flatten, "bias": self.proj.bias is not None,
                "strict_img_size": self.strict_img_size, "dynamic_img_pad": self.dynamic_img_pad}

    def extra_repr(self) -> str:
        return (
            f"img_size={self.img_size}, patch_size={self.patch_size}, in_chans={self.in_chans}, "
            f"d_model={self.d_model}, flatten={self.flatten}, strict_img_size={self.strict_img_size}, "
            f"dynamic_img_pad={self.dynamic_img_pad}"
        )


class PatchEmbed(_PatchEmbedBase):
    """Image to patch tokens with one ``Conv2d`` whose kernel and stride equal the patch (ViT eq. (1); timm).

    Each output position of the convolution sees exactly one patch (the stride
    skips to the next one), and the kernel is the same at every position: a
    per-patch linear map E of size D x (C·P·P), plus a bias.

    Args:
        img_size: the image size the model is built for (int or (H, W)); None
            accepts any size that divides into patches.
        patch_size: P (int or (Ph, Pw)).
        in_chans: C.
        d_model: D, the token size (timm's ``embed_dim``).
        norm: a LayerNorm on each token after the projection (timm's ``norm_layer``).
        eps: its epsilon.
        flatten: return tokens (B, N, D); False returns the grid (B, D, Gh, Gw).
        bias: a bias in the projection.
        strict_img_size: with ``img_size``, refuse other image sizes (timm's default).
        dynamic_img_pad: zero-pad the bottom and right of images that do not divide
            into patches, instead of refusing them.

    Shapes:
        x (B, C, H, W) -> (B, N, D), N = ceil(H / Ph)·ceil(W / Pw); or (B, D, Gh, Gw).

    Raises:
        ValueError: the image's channels or size do not match, or it does not divide
            into patches (without ``dynamic_img_pad``); the message names the sizes.
    """

    def _projection(self, bias: bool) -> nn.Conv2d:
        return nn.Conv2d(self.in_chans, self.d_model, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self._prepare(x)  # (B, C, H, W)
        return self._finish(self.proj(x))  # (B, D, Gh, Gw) -> (B, N, D)

    def to_linear(self) -> PatchEmbedLinear:
        """The same map as ``patchify`` + ``nn.Linear`` (a copy of the weights, same device)."""
        return self._twin(PatchEmbedLinear, conv_to_linear(self.proj))


class PatchEmbedLinear(_PatchEmbedBase):
    """``PatchEmbed`` written out: ``patchify`` (reshape + permute), then one ``nn.Linear`` (ViT eq. (1)).

    ``proj`` is ``nn.Linear(C·Ph·Pw, D)``; its weight is the convolution's kernel
    flattened, ``conv.weight.reshape(D, C·Ph·Pw)``.  Same arguments as ``PatchEmbed``.

    Shapes:
        x (B, C, H, W) -> (B, N, D), or (B, D, Gh, Gw) with ``flatten=False``.
    """

    def _projection(self, bias: bool) -> nn.Linear:
        Ph, Pw = self.patch_size
        return nn.Linear(self.in_chans * Ph * Pw, self.d_model, bias=bias)  # E: (D, C*Ph*Pw)

    def forward(self, x: Tensor) -> Tensor:
        x = self._prepare(x)  # (B, C, H, W)
        Gh, Gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        tokens = self.proj(patchify(x, self.patch_size))  # (B, N, C*Ph*Pw) -> (B, N, D)
        grid = tokens.transpose(1, 2).reshape(x.shape[0], self.d_model, Gh, Gw)  # (B, D, Gh, Gw)
        return self._finish(grid)  # (B, N, D) or (B, D, Gh, Gw)

    def to_conv(self) -> PatchEmbed:
        """The same map as one strided ``Conv2d`` (a copy of the weights, same device)."""
        return self._twin(PatchEmbed, linear_to_conv(self.proj, self.in_chans, self.patch_size))


@torch.no_grad()
def conv_to_linear(conv: nn.Conv2d) -> nn.Linear:
    """A patch convolution (kernel = stride) as the ``nn.Linear`` on flattened patches; weights copied."""
    if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), 0) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError(
            "conv_to_linear needs a patch convolution: kernel_size = stride, no padding, groups = dilation = 1; "
            f"got kernel_size={conv.kernel_size}, stride={conv.stride}, padding={conv.padding}, "
            f"groups={conv.groups}, dilation={conv.dilation}"
        )
    D = conv.out_channels
    linear = nn.Linear(conv.weight[0].numel(), D, bias=conv.bias is not None).to(conv.weight)
    linear.weight.copy_(conv.weight.reshape(D, -1))  # (D, C, Ph, Pw) -> (D, C*Ph*Pw)
    if conv.bias is not None:
        linear.bias.copy_(conv.bias)
    return linear


@torch.no_grad()
def linear_to_conv(linear: nn.Linear, in_chans: int, patch_size: int | tuple[int, int]) -> nn.Conv2d:
    """The inverse of ``conv_to_linear``: a Linear on (C, Ph, Pw)-flattened patches as a strided Conv2d."""
    Ph, Pw = _pair(patch_size, "patch_size")
    if linear.in_features != in_chans * Ph * Pw:
        raise ValueError(
            f"linear_to_conv: the Linear takes {linear.in_features} inputs, but a {Ph} x {Pw} patch with "
            f"{in_chans} channel(s) has {in_chans * Ph * Pw}"
        )
    D = linear.out_features
    conv = nn.Conv2d(in_chans, D, kernel_size=(Ph, Pw), stride=(Ph, Pw), bias=linear.bias is not None)
    conv = conv.to(linear.weight)
    conv.weight.copy_(linear.weight.reshape(D, in_chans, Ph, Pw))  # (D, C*Ph*Pw) -> (D, C, Ph, Pw)
    if linear.bias is not None:
        conv.bias.copy_(linear.bias)
    return conv


# ---------------------------------------------------------------------------
# Fixed 2-D positions
# ---------------------------------------------------------------------------


def sincos_2d_table(grid_size: int | tuple[int, int], d_model: int, *, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings of a Gh x Gw grid (MoCo v3, MAE; timm's layout).

    A quarter of the features encode the row y, a quarter the column x, each with
    D/4 frequencies w_i = 1 / temperature^(i / (D/4)), laid out as
    ``[sin(y w), sin(x w), cos(y w), cos(x w)]`` (timm's ``build_sincos2d_pos_embed``).

    Shapes:
        -> (N, D), rows in patch order (row by row).
    """
    Gh, Gw = _pair(grid_size, "grid_size")
    if d_model % 4 != 0:
        raise ValueError(f"2-D sine-cosine positions need d_model divisible by 4 (y, x, sin, cos), got {d_model}")
    q = d_model // 4
    omega = 1.0 / temperature ** (torch.arange(q, dtype=torch.float32) / q)  # (D/4,)
    y, x = torch.meshgrid(torch.arange(Gh, dtype=torch.float32), torch.arange(Gw, dtype=torch.float32), indexing="ij")
    yx = torch.stack([y.flatten(), x.flatten()], dim=1)  # (N, 2)
    angles = yx[:, :, None] * omega  # (N, 2, D/4)
    return torch.cat([angles.sin(), angles.cos()], dim=1).flatten(1)  # (N, 2*2, D/4) -> (N, D)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


def vit_block(
    d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.0, attn_dropout: float = 0.0, eps: float = 1e-6,
    fast: bool = False,
) -> EncoderBlock:
    """A ViT encoder block: pre-norm, fused-qkv attention, GELU FFN (ViT eq. (2)-(3); timm's ``Block``).

    ``x = x + Dropout(MHA(LN(x)));  x = x + Dropout(FFN(LN(x)))``; dropout on the attention
    weights is ``attn_dropout`` (timm's ``attn_drop_rate``), the FFN's hidden dropout and
    the two residual dropouts are ``dropout`` (timm's ``proj_drop_rate``).
    """
    return EncoderBlock(  # the generic pre-norm block with the sub-layers a ViT uses injected
        d_model,
        attention=MultiHeadAttention(d_model, num_heads, dropout=attn_dropout, fused_qkv=True, fast=fast),
        ffn=PositionWiseFFN(d_model, d_ff, activation="gelu", dropout=dropout),
        dropout=dropout, norm_first=True, eps=eps,
    )


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a Vision Transformer (defaults: a small model for 8 x 8 digits)."""

    img_size: int = 8  # image height = width in pixels
    patch_size: int = 2  # P: patches of P x P pixels
    in_chans: int = 1  # image channels C
    num_classes: int = 10  # K
    d_model: int = 64  # token size D (timm's embed_dim)
    num_layers: int = 4  # encoder blocks L (timm's depth)
    num_heads: int = 4  # attention heads H
    d_ff: int = 128  # FFN hidden size (timm: mlp_ratio * D)
    class_token: bool = True  # prepend a learned class token
    global_pool: str = "token"  # "token": classify the class token; "avg": the mean of the patch tokens
    pos_embed: str = "learn"  # "learn" (trained), "sincos" (fixed 2-D sine-cosine) or "none"
    dropout: float = 0.0  # FFN hidden and residual dropout (timm's proj_drop_rate)
    attn_dropout: float = 0.0  # dropout on the attention weights (timm's attn_drop_rate)
    pos_dropout: float = 0.0  # dropout after adding positions (timm's pos_drop_rate)
    eps: float = 1e-6  # LayerNorm epsilon (timm's)
    fast: bool = False  # PyTorch's fused attention kernel (when attention weights are not requested)

    def __post_init__(self) -> None:
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' classifies the class token: it needs class_token=True")
        if self.pos_embed not in ("learn", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none', got {self.pos_embed!r}")
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "d_model", "num_layers", "num_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} does not divide into patches of {self.patch_size}: "
                f"{self.img_size} % {self.patch_size} = {self.img_size % self.patch_size}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

    @property
    def num_patches(self) -> int:
        """N = (img_size / patch_size)²."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """T = N, plus one with a class token."""
        return self.num_patches + int(self.class_token)


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021, eqs. (1)-(4)); timm's ``VisionTransformer``, same names.

    z_0 = [x_class; x_1 E; ...; x_N E] + E_pos  (eq. 1)
    z_l = pre-norm encoder block(z_{l-1})        (eqs. 2-3)
    y   = head(LN(z_L^0))  with the class token ("token");  head(LN(mean_i z_L^i)) with "avg" (eq. 4)

    As in timm, "token" pooling normalises every token after the last block (``norm``)
    and reads the class token; "avg" averages the patch tokens (never the class token)
    and normalises the mean (``fc_norm``).

    Args:
        config: a ``ViTConfig``.

    Shapes:
        images (B, C, H, W) -> logits (B, K).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.class_token else None
        self.pos_embed: nn.Parameter | None = None
        if c.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.d_model))  # (1, T, D)
        elif c.pos_embed == "sincos":
            table = sincos_2d_table(c.img_size // c.patch_size, c.d_model)  # (N, D)
            if c.class_token:
                table = torch.cat([torch.zeros(1, c.d_model), table])  # the class token gets no position
            self.register_buffer("pos_table", table[None], persistent=False)  # (1, T, D)
        self.pos_drop = nn.Dropout(c.pos_dropout)
        self.blocks = nn.ModuleList(
            vit_block(c.d_model, c.num_heads, c.d_ff, dropout=c.dropout, attn_dropout=c.attn_dropout, eps=c.eps,
                      fast=c.fast)
            for _ in range(c.num_layers)
        )
        avg = c.global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(c.d_model, eps=c.eps)
        self.fc_norm = nn.LayerNorm(c.d_model, eps=c.eps) if avg else nn.Identity()
        self.head = nn.Linear(c.d_model, c.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's default initialisation: truncated N(0, 0.02²) for Linear weights and learned positions,
        zero biases, N(0, 1e-6²) for the class token; the patch convolution keeps PyTorch's default."""
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def positions(self) -> Tensor | None:
        """The position embeddings added to the tokens, (1, T, D), or None."""
        if self.pos_embed is not None:
            return self.pos_embed
        return getattr(self, "pos_table", None)

    def embed(self, images: Tensor) -> Tensor:
        """z_0: patch tokens, the class token in front, plus positions (eq. 1). (B, C, H, W) -> (B, T, D)."""
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D): one copy per image
            x = torch.cat([cls, x], dim=1)  # (B, T, D)
        pos = self.positions()
        if pos is not None:
            x = x + pos  # (B, T, D) + (1, T, D)
        return self.pos_drop(x)  # (B, T, D)

    def forward_features(self, images: Tensor, *, record: Record | None = None) -> Tensor:
        """All tokens after the last block (normalised with "token" pooling), (B, T, D).

        ``record=Record(need_weights=True)`` collects each block's attention weights.
        """
        x = self.embed(images)  # (B, T, D)
        for block in self.blocks:
            x = block(x, record=record)  # (B, T, D)
        return self.norm(x)  # (B, T, D)

    def pool(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, D): the class token, or the mean over the patch tokens (axis 1)."""
        if self.config.global_pool == "token":
            return x[:, 0]  # (B, D)
        return x[:, int(self.config.class_token):].mean(dim=1)  # (B, D): patches only, never the class token

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, T, D) -> logits (B, K)."""
        return self.head(self.fc_norm(self.pool(x)))  # (B, K)

    def forward(self, images: Tensor, *, record: Record | None = None) -> Tensor:
        return self.forward_head(self.forward_features(images, record=record))  # (B, K)

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> list[Tensor]:
        """The attention weights of every block, L tensors (B, H, T, T) (row = query token)."""
        record = Record(need_weights=True)
        self.forward_features(images, record=record)
        return record.weights
