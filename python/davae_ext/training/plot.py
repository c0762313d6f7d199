"""Loss curves as PNG without a plotting dependency (PIL only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw


def save_curves(path, curves: dict[str, Sequence[float]], title: str = "", size=(640, 360), log_y: bool = True) -> Path:
    """Draw each named curve (values per step) on shared axes; log-scaled y by default."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    W, H = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    values = [v for c in curves.values() for v in c if v > 0 or not log_y]
    if not values:
        img.save(path)
        return Path(path)
    f = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    lo, hi = min(map(f, values)), max(map(f, values))
    hi = hi if hi > lo else lo + 1
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        y = H - bottom - frac * (H - top - bottom)
        label = lo + frac * (hi - lo)
        draw.text((4, y - 6), f"{10 ** label:.3g}" if log_y else f"{label:.3g}", fill="black")
    for i, (name, curve) in enumerate(curves.items()):
        n = max(len(curve) - 1, 1)
        pts = [(left + j / n * (W - left - right), H - bottom - (f(v) - lo) / (hi - lo) * (H - top - bottom))
               for j, v in enumerate(curve)]
        color = colors[i % len(colors)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        draw.text((left + 10, top + 5 + 14 * i), f"{name} ({len(curve)} steps)", fill=color)
    draw.text((left, 8), title, fill="black")
    draw.text((W // 2 - 15, H - bottom + 10), "step", fill="black")
    img.save(path)
    return Path(path)
