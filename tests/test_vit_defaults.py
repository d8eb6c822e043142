"""lib.vit's defaults against timm's directly, and every ViTConfig field observed in the model it builds.

``tests/test_vit.py`` compares ViT with timm through ``lib.interop.vit_from_timm``, which copies timm's sizes
and epsilon into the config: a default of ours that drifted from timm's would go unseen there.
Here timm's own defaults (a ``VisionTransformer`` and a ``PatchEmbed`` built with the sizes only)
are compared with ours, the initialisation scales with timm's, and each field of ``ViTConfig``
set away from its default is found in the modules (epsilon in every LayerNorm, each dropout
rate where timm puts it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
import torch
from torch import nn

from lib.interop import vit_config_from_timm
from lib.vit import PatchEmbed, PatchEmbedLinear, ViT, ViTConfig, vit_block

SIZES = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10)


@pytest.fixture(scope="module")
def timm_vit_class():
    try:
        return importlib.import_module("timm.models.vision_transformer").VisionTransformer
    except ImportError as err:  # pragma: no cover - the dev extras install it
        pytest.fail(f"timm is not importable ({err}); it is in the dev extras (pip install timm)")


def _timm_with_timm_defaults(VisionTransformer, c: ViTConfig):
    """timm's VisionTransformer given only the sizes of ``c``: every other argument at timm's default."""
    return VisionTransformer(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                             num_classes=c.num_classes, embed_dim=c.d_model, depth=c.num_layers,
                             num_heads=c.num_heads, mlp_ratio=c.d_ff / c.d_model)


def test_vit_config_defaults_are_timms_for_everything_but_the_sizes(timm_vit_class):
    ours = ViTConfig()
    ref = _timm_with_timm_defaults(timm_vit_class, ours)
    assert vit_config_from_timm(ref) == ours  # pooling, class token, positions, dropouts, epsilon, ...
    # the same read from timm's signature, so that the comparison does not rest on config_from_timm alone
    sig = inspect.signature(timm_vit_class.__init__).parameters
    assert ours.global_pool == sig["global_pool"].default == "token"
    assert ours.class_token == sig["class_token"].default is True
    assert ours.pos_embed == sig["pos_embed"].default == "learn"
    assert ours.dropout == sig["proj_drop_rate"].default == 0.0
    assert ours.attn_dropout == sig["attn_drop_rate"].default == 0.0
    assert ours.pos_dropout == sig["pos_drop_rate"].default == 0.0
    assert ours.eps == ref.norm.eps == ref.blocks[0].norm1.eps == 1e-6
    model = ViT(ours)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_patch_embed_defaults_are_timms():
    timm_pe = importlib.import_module("timm.layers").PatchEmbed
    theirs = inspect.signature(timm_pe.__init__).parameters
    ours = inspect.signature(PatchEmbed.__init__).parameters
    for name in ("patch_size", "in_chans", "flatten", "bias", "strict_img_size", "dynamic_img_pad"):
        assert ours[name].default == theirs[name].default, name
    assert ours["d_model"].default == theirs["embed_dim"].default == 768
    assert ours["norm"].default is False and theirs["norm_layer"].default is None
    assert ours["img_size"].default is None  # ours: any size (timm: 224); documented
    pe, ref = PatchEmbed(224), timm_pe()
    assert pe.proj.weight.shape == ref.proj.weight.shape and pe.num_patches == ref.num_patches
    assert isinstance(pe.norm, nn.Identity) and isinstance(ref.norm, nn.Identity)
    assert PatchEmbedLinear(224).proj.weight.numel() == ref.proj.weight.numel()
    assert PatchEmbed(8, 2, 1, 16, norm=True).norm.eps == 1e-6


def test_vit_block_defaults_are_those_of_timms_vision_transformer(timm_vit_class):
    block = vit_block(16, 2, 32)
    ref = timm_vit_class(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2,
                         mlp_ratio=2.0).blocks[0]
    assert block.residual1.norm.eps == block.residual2.norm.eps == ref.norm1.eps == 1e-6
    assert block.norm_first
    drops = [m.p for m in block.modules() if isinstance(m, nn.Dropout)]
    assert all(p == 0.0 for p in drops) and ref.attn.attn_drop.p == 0.0
    assert block.attention.qkv.bias is not None and ref.attn.qkv.bias is not None  # qkv_bias True
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in ref.parameters())


def test_initialisation_scales_are_timms(timm_vit_class):
    torch.manual_seed(0)
    c = ViTConfig(d_model=64, num_layers=2, d_ff=256)
    ours, ref = ViT(c), _timm_with_timm_defaults(timm_vit_class, c)
    def linear_stds(model):
        return sorted(round(m.weight.std().item(), 3) for m in model.blocks.modules() if isinstance(m, nn.Linear))

    assert linear_stds(ours) == pytest.approx(linear_stds(ref), abs=0.003)
    for ours_p, ref_p in ((ours.pos_embed, ref.pos_embed), (ours.cls_token, ref.cls_token)):
        assert ours_p.std().item() == pytest.approx(ref_p.std().item(), rel=0.2)
    assert (ours.head.bias == ref.head.bias).all()
    linears = [m for m in ours.blocks.modules() if isinstance(m, nn.Linear)] + [ours.head]
    assert all(m.bias.abs().max() == 0 for m in linears)
    assert all(abs(m.weight.std().item() - 0.02) < 0.004 for m in linears)
    assert ours.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < ours.cls_token.abs().max().item() < 1e-5
    # the patch convolution keeps PyTorch's default (as timm): uniform, bound 1 / sqrt(fan_in)
    fan_in = c.in_chans * c.patch_size**2
    assert ours.patch_embed.proj.weight.abs().max() <= fan_in**-0.5


# ---------------------------------------------------------------------------
# Every ViTConfig field set away from its default shows in the model
# ---------------------------------------------------------------------------


def test_every_vit_config_field_reaches_the_model():
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    checked = {"img_size", "patch_size", "in_chans", "num_classes", "d_model", "num_layers", "num_heads", "d_ff",
               "class_token", "global_pool", "pos_embed", "dropout", "attn_dropout", "pos_dropout", "eps", "fast"}
    assert fields == checked, f"new ViTConfig fields {fields - checked}: observe them here"
    c = ViTConfig(img_size=12, patch_size=3, in_chans=2, num_classes=7, d_model=24, num_layers=3, num_heads=3,
                  d_ff=40, class_token=False, global_pool="avg", pos_embed="sincos", dropout=0.2, attn_dropout=0.3,
                  pos_dropout=0.4, eps=1e-3, fast=True)
    m = ViT(c)
    assert m.patch_embed.proj.weight.shape == (24, 2, 3, 3) and m.patch_embed.img_size == (12, 12)
    assert m.head.out_features == 7 and len(m.blocks) == 3
    assert all(b.attention.num_heads == 3 and b.ffn.fc1.out_features == 40 for b in m.blocks)
    assert m.cls_token is None and m.pos_embed is None and m.positions().shape == (1, 16, 24)
    assert isinstance(m.norm, nn.Identity) and isinstance(m.fc_norm, nn.LayerNorm)
    norms = [n for n in m.modules() if isinstance(n, nn.LayerNorm)]
    assert len(norms) == 2 * 3 + 1 and all(n.eps == 1e-3 for n in norms)
    assert m.pos_drop.p == 0.4
    for b in m.blocks:
        assert b.residual1.dropout.p == b.residual2.dropout.p == b.ffn.drop.p == 0.2  # timm's proj_drop_rate
        assert b.attention.fast
        assert getattr(b.attention.dropout, "p", b.attention.dropout) == 0.3  # timm's attn_drop_rate
    m.eval()
    x = torch.randn(2, 2, 12, 12)
    assert m(x).shape == (2, 7)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_eps_changes_the_output_of_every_norm(eps):
    torch.manual_seed(1)
    c = ViTConfig(eps=eps, num_layers=1)
    m = ViT(c).eval()
    x = torch.randn(2, 1, 8, 8) * 1e-2  # small activations: epsilon matters
    h = m.embed(x)
    block = m.blocks[0]
    ln = lambda t, n: nn.functional.layer_norm(t, (c.d_model,), n.weight, n.bias, eps)  # noqa: E731
    h = h + block.attention(ln(h, block.residual1.norm))
    h = h + block.ffn(ln(h, block.residual2.norm))
    expected = m.head(ln(h, m.norm)[:, 0])
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field,value", [("dropout", 0.5), ("attn_dropout", 0.5), ("pos_dropout", 0.5)])
def test_each_dropout_rate_acts_alone_in_training(field, value):
    torch.manual_seed(2)
    m = ViT(ViTConfig(num_layers=1, **{field: value}))
    x = torch.randn(2, 1, 8, 8)
    m.eval()
    clean = m(x)
    m.train()
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(4)
    b = m(x)
    assert not torch.allclose(a, b), f"{field}={value} has no effect in training mode"
    assert not torch.allclose(a, clean)
    m.eval()
    torch.testing.assert_close(m(x), clean)
