"""The training stack's figures, in one style: loss curves and labelled image grids, drawn with
matplotlib's object API on its Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DPI = 100
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}


def _figure(width_in: float, height_in: float):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    return fig


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); NaNs are skipped (the
    average carries over them) and stay NaN in the output."""
    y = np.asarray(values, dtype=float)
    out = np.full_like(y, np.nan)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(y):
        if math.isfinite(v):
            avg = weight * avg + (1 - weight) * v
            norm = weight * norm + (1 - weight)
            out[i] = avg / norm
    return out


CURVES_SIZE_PX = (750, 420)


def curves_figure(curves: dict[str, Sequence[float]], title: str = "", ylabel: str = "loss", log_y: bool = True,
                  smoothing: float = 0.9):
    """Each named curve (one value per step) raw and faint, with its smoothed curve on top; step
    ticks on x, the legend below the axes. Log y when every finite value is positive."""
    import matplotlib

    fig = _figure(CURVES_SIZE_PX[0] / DPI, CURVES_SIZE_PX[1] / DPI)
    with matplotlib.rc_context(STYLE):
        ax = fig.add_subplot()
        finite = [v for c in curves.values() for v in c if math.isfinite(v)]
        for i, (name, values) in enumerate(curves.items()):
            y = np.asarray(values, dtype=float)
            x = np.arange(len(y))
            color = f"C{i}"
            if len(y) > 1:
                ax.plot(x, y, color=color, alpha=0.25, linewidth=1)
            ax.plot(x, smooth(y, smoothing) if len(y) > 1 else y, color=color, linewidth=2,
                    marker="o" if len(y) == 1 else None, label=f"{name} ({len(y)} steps)")
        if log_y and finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if curves:  # below the axes, outside the data
            smoothed = any(len(c) > 1 for c in curves.values())
            labels = ax.get_legend_handles_labels()[1]
            ncol = min(len(curves), 3 if max(len(t) for t in labels) <= 24 else 2)  # 3 columns of 25+ characters overflow
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False,
                      title="smoothed (raw curve faint)" if smoothed else None, title_fontsize=8)
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.32, top=0.9)
    return fig


def save_curves(path, curves: dict[str, Sequence[float]], title: str = "", ylabel: str = "loss",
                log_y: bool = True) -> Path:
    """:func:`curves_figure` written as a PNG."""
    curves_figure(curves, title, ylabel, log_y).savefig(path)  # 750 x 380 px
    return Path(path)


def grid_figure(rows: Sequence[np.ndarray], row_labels: Sequence[str] = (), captions: Optional[Sequence[Sequence[str]]] = None,
                title: str = "", cell_in: float = 1.6):
    """Images ``rows[r][c]`` ([H, W, 3] uint8) in a grid, each row labelled on its left and each
    image captioned under it."""
    import matplotlib

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    label_in = 2.2 if row_labels else 0.0
    if captions:  # wrapped to the image width (about 17 characters of 7 pt text per inch)
        captions = [[textwrap.fill(c, width=max(int(cell_in * 17), 8)) for c in row] for row in captions]
    lines = max((c.count("\n") + 1 for row in captions for c in row), default=1) if captions else 0
    caption_in = 0.12 * lines + 0.15 if captions else 0.05
    fig = _figure(label_in + n_cols * cell_in, n_rows * (cell_in + caption_in) + (0.4 if title else 0.1))
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for r in range(n_rows):
            for c in range(n_cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(rows[r]):
                    ax.imshow(rows[r][c], interpolation="nearest")
                if captions and c < len(captions[r]):
                    ax.set_xlabel(captions[r][c], fontsize=7)
            if r < len(row_labels):
                axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8, labelpad=8)
        if title:
            fig.suptitle(title)
        fig.subplots_adjust(left=label_in / fig.get_figwidth() if row_labels else 0.01, right=0.99, wspace=0.05,
                            hspace=caption_in / cell_in + 0.05)
    return fig


def save_grid(path, rows, row_labels: Sequence[str] = (), captions: Optional[Sequence[Sequence[str]]] = None,
              title: str = "") -> Path:
    """A labelled grid as a PNG. ``rows``: per row a [N, 3, H, W] tensor in [-1, 1], or a list of
    PIL images."""
    from .common import to_uint8

    arrays = [list(to_uint8(r)) if hasattr(r, "dim") else [np.asarray(im.convert("RGB")) for im in r] for r in rows]
    grid_figure(arrays, row_labels, captions, title).savefig(path, bbox_inches="tight")
    return Path(path)
