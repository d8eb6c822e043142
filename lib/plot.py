"""Plots the lessons share: attention heatmaps and training curves.

Functions return the matplotlib ``Figure`` and never call ``plt.show()``; in a
notebook write ``_ = show_heatmaps(...)`` so the cell's only output is the
picture (stable under nbval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["show_heatmaps", "plot_curves"]


def _as_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def show_heatmaps(
    matrices: object,
    xlabel: str = "Keys",
    ylabel: str = "Queries",
    titles: Sequence[str] | None = None,
    figsize: tuple[float, float] = (2.5, 2.5),
    cmap: str = "Reds",
    colorbar: bool = True,
    share_scale: bool = True,
) -> Figure:
    """Draw a grid of heatmaps, as d2l's ``show_heatmaps``.

    Args:
        matrices: (Tq, Tk), (C, Tq, Tk) for one row of C panels, or
            (R, C, Tq, Tk) for an R x C grid (e.g. layers x heads).
        xlabel, ylabel: axis labels (on the bottom row / first column).
        titles: one title per column.
        figsize: size of one panel in inches.
        cmap: colour map.
        colorbar: draw one shared colour bar (one per panel without ``share_scale``).
        share_scale: one colour scale for all panels, from the smallest to the largest value
            of all; ``False`` scales each panel to its own range (for panels whose ranges
            differ a lot, e.g. a peaked and a flat attention map), each with its colour bar.
    """
    m = _as_numpy(matrices)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[None]
    elif m.ndim != 4:
        raise ValueError(f"matrices must be 2-, 3- or 4-D (rows, cols, Tq, Tk), got shape {m.shape}")
    rows, cols = m.shape[:2]
    if titles is not None and len(titles) != cols:
        raise ValueError(f"got {len(titles)} titles for {cols} columns")
    fig, axes = plt.subplots(
        rows, cols, figsize=(figsize[0] * cols, figsize[1] * rows), sharex=True, sharey=True, squeeze=False
    )
    vmin, vmax = float(np.nanmin(m)), float(np.nanmax(m))
    image = None
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            lo, hi = (vmin, vmax) if share_scale else (float(np.nanmin(m[i, j])), float(np.nanmax(m[i, j])))
            image = ax.imshow(m[i, j], cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
            if colorbar and not share_scale:
                fig.colorbar(image, ax=ax, shrink=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # positions are integers: no 0.5 ticks
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if i == rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if titles is not None and i == 0:
                ax.set_title(titles[j])
    if colorbar and share_scale and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6)
    return fig


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    xlabel: str = "epoch",
    ylabel: str = "",
    *,
    x: Sequence[float] | None = None,
    logy: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.2),
    ax: plt.Axes | None = None,
) -> Figure:
    """Plot named curves (e.g. training history) on one set of axes.

    Args:
        curves: name -> values; each curve may have its own length.
        x: shared x values; defaults to 1, 2, ... per curve.
        logy: logarithmic y axis.
        ax: draw into these axes instead of a new figure.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    for name, ys in curves.items():
        ys = _as_numpy(ys)
        xs = np.arange(1, len(ys) + 1) if x is None else _as_numpy(x)[: len(ys)]
        ax.plot(xs, ys, label=name, marker="o" if len(ys) <= 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
