"""The course library: attention and Transformers, built in the order the lessons build them.

Modules, in the order of the course (each imports only from modules above it in this list;
``tests/test_layering.py`` checks it, and that lib has no import cycle):

    runtime      device(), seed_everything(), QUICK, pick(), eval_mode(), timing helpers
    attention    masks, masked_softmax, dot_product_scores, the core attend() /
                 scaled_dot_product_attention, Record and KVCache, scoring modules, pooling
    multihead    MultiHeadAttention, DotProductScores, the PositionalScheme contract
    positional   sinusoidal, learned, relative, rotary (RoPE), ALiBi; SCHEMES / build()
    ffn          PositionWiseFFN and its Conv1d twin
    transformer  Residual, EncoderBlock, DecoderBlock, Encoder, Decoder, Transformer
    decode       greedy decoding and beam search with the key/value cache (lesson 07); sampling (lesson 11)
    gpt          the decoder-only language model, converters from Hugging Face's GPT-2 and Llama (lesson 11)
    vit          PatchEmbed and its Linear twin, ViT (lesson 08)
    synthesizer  Dense, Random, factorized and mixture scores for MultiHeadAttention (lesson 09)
    efficient    tiled attention with an online softmax (lesson 10)
    distributed  process group from torchrun's environment, DDP/FSDP wrapping, full state dicts, launch() (lesson 12)

Beside them (tools the lessons use, not concepts they build):

    data         dataset registry, download, checksums, mirrors
    text         tokenizer, vocabulary, padding (shared by lessons 06 and 07)
    imdb         the IMDB reviews as tensors, a validation split by movie (lesson 06)
    translation  English-French pairs, length-grouped batches, BLEU (lesson 07)
    train        fit / evaluate loops; language-model training and exact checkpoints, on 1 or N processes (lessons 11, 12)
    interop      converters from other codebases: mha_from_torch/_d2l/_keras, vit_from_timm
    checks       exercise feedback
    plot         heatmaps and curves
    memory       parameter, optimizer-state, activation and attention bytes

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
    "decode",
    "gpt",
    "vit",
    "synthesizer",
    "efficient",
    "distributed",
    "data",
    "text",
    "imdb",
    "translation",
    "train",
    "interop",
    "checks",
    "plot",
    "memory",
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
