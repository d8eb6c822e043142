"""lib.vit: patch embedding (conv and reshape + Linear twins), 2-D positions, ViT; timm is the reference.

timm builds its models from code here (random initialisation, no weights downloaded);
the parity tests copy a timm model's weights into ``lib.vit`` and compare outputs and gradients.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.interop import vit_from_timm
from lib.vit import (
    PatchEmbed,
    ViT,
    ViTConfig,
    conv_to_linear,
    linear_to_conv,
    pad_to_patches,
    patchify,
    sincos_2d_table,
    unpatchify,
)


@pytest.fixture(scope="module")
def timm():
    """timm, the reference implementation. Missing timm fails loudly: parity tests must never be skipped."""
    try:
        return importlib.import_module("timm")
    except ImportError as err:  # pragma: no cover - the dev extras install it
        pytest.fail(f"timm is not importable ({err}); it is in the dev extras (pip install timm)")


def close(a, b, what, atol=1e-5, rtol=1e-5):
    assert a.shape == b.shape, f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------
# patchify
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("B,C,H,W,P", [(2, 1, 8, 8, 2), (3, 3, 12, 8, 4), (1, 2, 6, 9, 3), (2, 3, 16, 16, 16)])
def test_patchify_equals_unfold_and_inverts(B, C, H, W, P):
    x = torch.randn(B, C, H, W)
    p = patchify(x, P)
    assert p.shape == (B, (H // P) * (W // P), C * P * P)
    close(p, F.unfold(x, P, stride=P).transpose(1, 2), "patchify vs F.unfold")
    assert torch.equal(unpatchify(p, P, (H, W), C), x)


def test_patchify_first_patch_is_the_top_left_corner():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    p = patchify(x, 2)  # (1, 6, 8)
    assert torch.equal(p[0, 0], x[0, :, :2, :2].flatten())
    assert torch.equal(p[0, 1], x[0, :, :2, 2:4].flatten())  # the next patch is to the right (row by row)
    assert torch.equal(p[0, 3], x[0, :, 2:4, :2].flatten())


def test_patchify_rejects_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match=r"10 x 8 does not divide into 4 x 4 patches"):
        patchify(torch.randn(1, 1, 10, 8), 4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        patchify(torch.randn(8, 8), 4)


def test_pad_to_patches_pads_bottom_and_right_only():
    x = torch.randn(2, 3, 10, 7)
    y = pad_to_patches(x, 4)
    assert y.shape == (2, 3, 12, 8)
    assert torch.equal(y[..., :10, :7], x) and y[..., 10:, :].abs().sum() == 0 and y[..., 7:].abs().sum() == 0
    assert pad_to_patches(x[..., :8, :4], 4) is not None and pad_to_patches(x[..., :8, :4], 4).shape == (2, 3, 8, 4)


# ---------------------------------------------------------------------------
# PatchEmbed: the conv and its twin
# ---------------------------------------------------------------------------

SIZES = [  # img_size, patch, C, D
    (8, 2, 1, 16),
    ((12, 8), 4, 3, 8),
    (32, 8, 3, 24),
    (9, 3, 2, 6),
]


@pytest.mark.parametrize("img,P,C,D", SIZES)
@pytest.mark.parametrize("norm", [False, True])
def test_conv_and_linear_twins_agree_in_outputs_and_gradients(img, P, C, D, norm):
    conv = PatchEmbed(img, P, C, D, norm=norm)
    if norm:  # a non-trivial affine LayerNorm
        nn.init.normal_(conv.norm.weight)
        nn.init.normal_(conv.norm.bias)
    lin = conv.to_linear()
    assert isinstance(lin.proj, nn.Linear) and lin.proj.weight.shape == (D, C * P * P)
    H, W = (img, img) if isinstance(img, int) else img
    x = torch.randn(3, C, H, W, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y1, y2 = conv(x), lin(x2)
    close(y1, y2, "PatchEmbed vs PatchEmbedLinear")
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    close(x.grad, x2.grad, "input gradients")
    close(conv.proj.weight.grad.reshape(D, -1), lin.proj.weight.grad, "weight gradients (kernel flattened)")
    close(conv.proj.bias.grad, lin.proj.bias.grad, "bias gradients")
    back = lin.to_conv()
    assert torch.equal(back.proj.weight, conv.proj.weight) and torch.equal(back.proj.bias, conv.proj.bias)
    close(back(x), y1, "round trip conv -> linear -> conv")


def test_twins_without_flatten_return_the_grid():
    conv = PatchEmbed(8, 2, 3, 5, flatten=False)
    lin = conv.to_linear()
    x = torch.randn(2, 3, 8, 8)
    assert conv(x).shape == (2, 5, 4, 4)
    close(conv(x), lin(x), "flatten=False")


def test_conv_to_linear_rejects_overlapping_kernels_and_bad_sizes():
    with pytest.raises(ValueError, match="kernel_size = stride"):
        conv_to_linear(nn.Conv2d(3, 4, kernel_size=3, stride=1))
    with pytest.raises(ValueError, match="has 12"):
        linear_to_conv(nn.Linear(10, 4), 3, 2)


@pytest.mark.parametrize("img,P,C,D", SIZES)
@pytest.mark.parametrize("flatten", [True, False])
def test_patch_embed_matches_timm(timm, img, P, C, D, flatten):
    from timm.layers import PatchEmbed as TimmPatchEmbed

    ref = TimmPatchEmbed(img_size=img, patch_size=P, in_chans=C, embed_dim=D, flatten=flatten)
    ours = PatchEmbed(img, P, C, D, flatten=flatten)
    ours.load_state_dict(ref.state_dict())  # same parameter names: proj.weight, proj.bias
    assert ours.grid_size == ref.grid_size and ours.num_patches == ref.num_patches
    H, W = (img, img) if isinstance(img, int) else img
    x = torch.randn(2, C, H, W, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x2)
    close(y, y_ref, "PatchEmbed vs timm")
    y.square().sum().backward()
    y_ref.square().sum().backward()
    close(x.grad, x2.grad, "input gradients vs timm")
    close(ours.proj.weight.grad, ref.proj.weight.grad, "weight gradients vs timm")


def test_patch_embed_norm_matches_timm(timm):
    from timm.layers import PatchEmbed as TimmPatchEmbed

    ref = TimmPatchEmbed(img_size=8, patch_size=2, in_chans=3, embed_dim=12, norm_layer=nn.LayerNorm)
    nn.init.normal_(ref.norm.weight)
    nn.init.normal_(ref.norm.bias)
    ours = PatchEmbed(8, 2, 3, 12, norm=True, eps=ref.norm.eps)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 8, 8)
    close(ours(x), ref(x), "PatchEmbed(norm=True) vs timm's norm_layer=LayerNorm")
    close(ours.to_linear()(x), ref(x), "the Linear twin of timm's PatchEmbed")


@pytest.mark.parametrize("H,W", [(10, 10), (9, 13), (8, 8)])
def test_dynamic_padding_matches_timm(timm, H, W):
    from timm.layers import PatchEmbed as TimmPatchEmbed

    ref = TimmPatchEmbed(img_size=10, patch_size=4, in_chans=2, embed_dim=6, strict_img_size=False,
                         dynamic_img_pad=True)
    ours = PatchEmbed(10, 4, 2, 6, strict_img_size=False, dynamic_img_pad=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, H, W)
    close(ours(x), ref(x), f"dynamic_img_pad on {H} x {W}")
    close(ours.to_linear()(x), ref(x), f"the Linear twin, dynamic_img_pad on {H} x {W}")
    assert ours.grid_size == (3, 3)


def test_non_strict_size_accepts_other_divisible_images(timm):
    from timm.layers import PatchEmbed as TimmPatchEmbed

    ref = TimmPatchEmbed(img_size=8, patch_size=2, in_chans=1, embed_dim=4, strict_img_size=False)
    ours = PatchEmbed(8, 2, 1, 4, strict_img_size=False)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 12, 6)
    close(ours(x), ref(x), "a 12 x 6 image through an 8 x 8 model, non-strict")
    with pytest.raises(ValueError, match=r"11 x 6 does not divide into 2 x 2 patches"):
        ours(torch.randn(1, 1, 11, 6))


def test_patch_embed_errors_name_the_sizes():
    with pytest.raises(ValueError, match=r"img_size 10 x 10 does not divide into 4 x 4 patches.*dynamic_img_pad"):
        PatchEmbed(10, 4, 1, 8)
    pe = PatchEmbed(8, 2, 3, 8)
    with pytest.raises(ValueError, match=r"built for 8 x 8 images, got 6 x 8"):
        pe(torch.randn(1, 3, 6, 8))
    with pytest.raises(ValueError, match=r"C=3"):
        pe(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="flatten"):
        PatchEmbed(8, 2, 3, 8, norm=True, flatten=False)


# ---------------------------------------------------------------------------
# positions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("grid,D", [((4, 4), 16), ((3, 5), 8), ((14, 14), 64)])
def test_sincos_table_matches_timm(timm, grid, D):
    from timm.layers import build_sincos2d_pos_embed

    close(sincos_2d_table(grid, D), build_sincos2d_pos_embed(list(grid), dim=D), "2-D sine-cosine table")


def test_sincos_table_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_table(4, 6)


def test_sincos_positions_are_fixed_and_the_class_token_gets_none():
    m = ViT(ViTConfig(pos_embed="sincos", d_model=16, num_heads=2, d_ff=32, num_layers=1))
    assert m.pos_embed is None and not any("pos" in n for n, _ in m.named_parameters())
    pos = m.positions()
    assert pos.shape == (1, 17, 16) and pos[0, 0].abs().sum() == 0
    close(pos[0, 1:], sincos_2d_table(4, 16), "patch rows")


# ---------------------------------------------------------------------------
# ViT vs timm
# ---------------------------------------------------------------------------


def timm_vit(timm, *, img=8, P=2, C=1, D=32, L=2, H=4, mlp_ratio=2.0, K=10, **kw):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=img, patch_size=P, in_chans=C, num_classes=K, embed_dim=D, depth=L,
                              num_heads=H, mlp_ratio=mlp_ratio, **kw)
    with torch.no_grad():  # timm zero-initialises the head and keeps LayerNorms at (1, 0): make them all count
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("head") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    for m in model.modules():  # the explicit attention path (its dropout draws the same masks as ours)
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


VARIANTS = [
    dict(global_pool="token", class_token=True),
    dict(global_pool="avg", class_token=False),
    dict(global_pool="avg", class_token=True),
    dict(global_pool="token", class_token=True, pos_embed="none"),
    dict(global_pool="avg", class_token=False, img=12, P=4, C=3, D=24, L=3, H=3, mlp_ratio=4.0, K=5),
]


def _compare_with_timm(ref: nn.Module, ours: ViT, x: torch.Tensor, seed: int | None = None):
    xr = x.detach().clone().requires_grad_(True)
    xo = x.detach().clone().requires_grad_(True)
    if seed is not None:
        torch.manual_seed(seed)
    y_ref = ref(xr)
    if seed is not None:
        torch.manual_seed(seed)
    y = ours(xo)
    close(y, y_ref, "logits vs timm")
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    close(xo.grad, xr.grad, "input gradients vs timm")
    close(ours.patch_embed.proj.weight.grad, ref.patch_embed.proj.weight.grad, "patch embedding gradients")
    if ref.pos_embed is not None:
        close(ours.pos_embed.grad, ref.pos_embed.grad, "position embedding gradients")
    if ref.cls_token is not None:
        close(ours.cls_token.grad, ref.cls_token.grad, "class token gradients", atol=1e-6)
    for i, (b, rb) in enumerate(zip(ours.blocks, ref.blocks, strict=True)):
        close(b.attention.qkv.weight.grad, rb.attn.qkv.weight.grad, f"block {i} qkv gradients")
        close(b.ffn.fc2.weight.grad, rb.mlp.fc2.weight.grad, f"block {i} fc2 gradients")
    close(ours.head.weight.grad, ref.head.weight.grad, "head gradients")


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_vit_matches_timm_in_eval_mode(timm, kw):
    ref = timm_vit(timm, **kw).eval()
    ours = vit_from_timm(ref).eval()
    c = ours.config
    assert (c.global_pool, c.class_token) == (ref.global_pool, ref.cls_token is not None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(5, c.in_chans, c.img_size, c.img_size)
    _compare_with_timm(ref, ours, x)


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=["token", "avg", "avg-with-class-token"])
def test_vit_matches_timm_in_training_mode_with_dropout(timm, kw):
    ref = timm_vit(timm, proj_drop_rate=0.2, attn_drop_rate=0.3, pos_drop_rate=0.1, **kw).train()
    ours = vit_from_timm(ref).train()
    assert (ours.config.dropout, ours.config.attn_dropout, ours.config.pos_dropout) == (0.2, 0.3, 0.1)
    x = torch.randn(4, 1, 8, 8)
    _compare_with_timm(ref, ours, x, seed=7)
    # and dropout really acts: another seed gives other logits
    torch.manual_seed(8)
    assert not torch.allclose(ours(x), ref.eval()(x), atol=1e-3)


def test_from_timm_rejects_what_it_cannot_express(timm):
    with pytest.raises(ValueError, match="register tokens"):
        vit_from_timm(timm_vit(timm, reg_tokens=2))


# ---------------------------------------------------------------------------
# ViT properties
# ---------------------------------------------------------------------------


def test_vit_config_errors():
    with pytest.raises(ValueError, match="needs class_token=True"):
        ViTConfig(global_pool="token", class_token=False)
    with pytest.raises(ValueError, match="global_pool"):
        ViTConfig(global_pool="max")
    with pytest.raises(ValueError, match="pos_embed"):
        ViTConfig(pos_embed="rope")
    with pytest.raises(ValueError, match=r"img_size=8 does not divide into patches of 3"):
        ViTConfig(patch_size=3)
    cfg = ViTConfig()
    with pytest.raises(AttributeError):
        cfg.d_model = 3  # frozen


def test_class_token_is_shared_by_the_batch_and_comes_first():
    m = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, pos_embed="none"))
    x = torch.randn(3, 1, 8, 8)
    z = m.embed(x)
    assert z.shape == (3, 17, 16)
    for b in range(3):
        assert torch.equal(z[b, 0], m.cls_token[0, 0])
    close(z[:, 1:], m.patch_embed(x), "patch tokens follow the class token")


def shuffle_patches(x: torch.Tensor, P: int, perm: torch.Tensor) -> torch.Tensor:
    p = patchify(x, P)  # (B, N, C*P*P)
    return unpatchify(p[:, perm], P, x.shape[-2:], x.shape[1])


@pytest.mark.parametrize("pool,cls", [("avg", False), ("token", True)])
def test_without_positions_the_vit_cannot_see_where_patches_are(pool, cls):
    """No positions: shuffling the patches leaves the logits unchanged (a bag of patches)."""
    m = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=2, pos_embed="none",
                      global_pool=pool, class_token=cls)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(4, 1, 8, 8)
    perm = torch.randperm(16)
    close(m(shuffle_patches(x, 2, perm)), m(x), "logits after shuffling patches", atol=1e-5)
    learned = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=2, global_pool=pool,
                            class_token=cls)).eval()
    with torch.no_grad():  # larger weights than the initialisation's N(0, 0.02^2), so differences show
        for p in learned.parameters():
            p.normal_()
    assert not torch.allclose(learned(shuffle_patches(x, 2, perm)), learned(x), atol=1e-4)


def test_attention_maps_are_distributions_over_tokens():
    m = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=3)).eval()
    maps = m.attention_maps(torch.randn(2, 1, 8, 8))
    assert len(maps) == 3 and all(w.shape == (2, 2, 17, 17) for w in maps)
    close(maps[0].sum(-1), torch.ones(2, 2, 17), "rows sum to 1")


def test_fast_path_gives_the_same_logits():
    torch.manual_seed(0)
    slow = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=2)).eval()
    fast = ViT(ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=2, fast=True)).eval()
    fast.load_state_dict(slow.state_dict())
    x = torch.randn(3, 1, 8, 8)
    close(fast(x), slow(x), "fast vs explicit attention")
