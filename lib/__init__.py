"""The course library: attention and Transformers, built in the order the lessons build them.

Modules (each imports only from those above it):

    runtime      device(), seed_everything(), QUICK
    attention    masks, masked_softmax, the core attend() / scaled_dot_product_attention, Record,
                 scoring modules, pooling
    multihead    MultiHeadAttention, DotProductScores, the PositionalScheme contract, KVCache
    positional   sinusoidal, learned, relative, rotary (RoPE), ALiBi; SCHEMES / build()
    ffn          PositionWiseFFN and its Conv1d twin
    transformer  Residual, EncoderBlock, DecoderBlock, Encoder, Decoder, Transformer

Beside them: interop (converters from torch, d2l, Keras sizes), checks (exercise feedback),
plot, data, text, train, memory.  Modules that later lessons add (decode, vit, synthesizer)
join the list when they exist.

Submodules load on first use, so ``import lib`` is cheap and ``lib.attention``
works without importing every module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = (
    "runtime",
    "attention",
    "multihead",
    "positional",
    "ffn",
    "transformer",
    "interop",
    "checks",
    "plot",
    "data",
    "text",
    "train",
    "memory",
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
