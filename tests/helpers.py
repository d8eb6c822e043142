"""Small helpers shared by the unit tests (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

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


def serve_imdb(tmp_path: Path, monkeypatch, reviews: dict[str, list[str]],  # noqa: ANN001 - pytest's fixture
               movies: dict[str, list[str]] | None = None) -> tuple[Path, list[str]]:
    """A toy aclImdb tree (``write_imdb``) that ``lib.data.fetch`` returns, with an empty download cache.

    Returns the tree's root and the list of dataset names ``fetch`` was asked for (it grows as it is called).
    """
    root = tmp_path / "aclImdb"
    write_imdb(root, reviews, movies)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "cache"))
    asked: list[str] = []
    monkeypatch.setattr("lib.data.fetch", lambda name, **kw: asked.append(name) or root)
    return root, asked


def write_imdb(root: Path, reviews: dict[str, list[str]], movies: dict[str, list[str]] | None = None) -> None:
    """A toy aclImdb tree: ``reviews["train/pos"]`` etc. as ``i_5.txt`` files; with ``movies``, the
    ``urls_pos.txt`` / ``urls_neg.txt`` lists whose line ``i`` names review ``i``'s movie."""
    for sub, texts in reviews.items():
        (root / sub).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / sub / f"{i}_5.txt").write_text(t)
    for sub, ids in (movies or {}).items():
        split, label = sub.split("/")
        (root / split / f"urls_{label}.txt").write_text(
            "".join(f"http://www.imdb.com/title/{m}/usercomments\n" for m in ids))
