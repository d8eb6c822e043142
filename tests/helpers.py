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
