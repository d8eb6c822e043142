"""Small helpers shared by the unit tests (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

from lib.attention import Record


def with_weights(module, *args, **kwargs):
    """Call ``module`` with a Record asking for weights: (output, the weights of its last attention call)."""
    rec = Record(need_weights=True)
    out = module(*args, record=rec, **kwargs)
    return out, rec.weights[-1]


def with_all_weights(module, *args, **kwargs):
    """Call ``module`` with a Record asking for weights: (output, every attention call's weights, in order)."""
    rec = Record(need_weights=True)
    out = module(*args, record=rec, **kwargs)
    return out, rec.weights


def copy_(dst, src) -> None:
    """Copy weight and bias of one Linear/LayerNorm into another of the same shape."""
    import torch

    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if getattr(src, "bias", None) is not None:
            dst.bias.copy_(src.bias)


def randomise_norms_(module) -> None:
    """LayerNorms start at weight 1, bias 0; make them random so that copying them is tested."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
