"""The training stack's figures: loss curves and labelled grids (matplotlib, Agg)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")
from davae_ext.training.plot import CURVES_SIZE_PX, curves_figure, save_curves, save_grid, smooth  # noqa: E402


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(match=lambda o: hasattr(o, "get_text"))]


def test_curves_png_has_its_size_labels_and_legend(tmp_path):
    curves = {"base channels (MSE)": [1.0, 0.8, 0.7, 0.65], "detail channels (MSE)": [2.0, 1.5, 1.2, 1.1]}
    fig = curves_figure(curves, title="fine-tuning")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_yscale() == "log" and ax.get_title() == "fine-tuning"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["base channels (MSE) (4 steps)", "detail channels (MSE) (4 steps)"]
    assert len(ax.lines) == 4  # raw and smoothed per curve
    path = save_curves(tmp_path / "curves.png", curves)
    assert Image.open(path).size == CURVES_SIZE_PX


def test_one_step_and_nan_curves_draw(tmp_path):
    path = save_curves(tmp_path / "c.png", {"one step": [0.5], "with nans": [1.0, float("nan"), 0.5, float("nan")]})
    assert Image.open(path).size == CURVES_SIZE_PX
    s = smooth([1.0, float("nan"), 0.0])
    assert s[0] == 1.0 and math.isnan(s[1]) and 0.0 < s[2] < 1.0
    fig = curves_figure({"negative": [1.0, -1.0]})  # a non-positive value: linear y
    assert fig.axes[0].get_yscale() == "linear"


def test_grid_labels_rows_and_captions_images(tmp_path):
    rows = [torch.rand(3, 3, 8, 8) * 2 - 1, [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 2]
    path = save_grid(tmp_path / "g.png", rows, ["original", "DA-VAE (256 tokens)"], [["a", "b", "c"], ["18.4 dB", "x"]],
                     title="held-out")
    assert Image.open(path).size[0] > 3 * 100
    from davae_ext.training.plot import grid_figure

    fig = grid_figure([[np.zeros((8, 8, 3), np.uint8)] * 2], ["row label"], [["caption one", "caption two"]], "t")
    found = texts(fig)
    for expected in ("row label", "caption one", "caption two", "t"):
        assert expected in found


def test_colour_metrics():
    from davae_ext.training.evaluation import colourfulness, mean_colour_error

    grey = torch.zeros(2, 3, 8, 8).uniform_(-1, 1)[:, :1].expand(2, 3, 8, 8)
    assert torch.allclose(colourfulness(grey), torch.zeros(2))
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0
    # pure red: rg = 255, yb = 127.5, no spread -> 0.3 * sqrt(255^2 + 127.5^2)
    assert colourfulness(red).item() == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-5)
    assert mean_colour_error(red, red) == 0.0
    assert mean_colour_error(grey * 0 - 1, grey * 0 + 1) == pytest.approx(1.0)
