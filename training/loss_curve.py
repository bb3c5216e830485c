"""The loss curve as a PNG: matplotlib when it is installed, otherwise drawn with Pillow.

Both show the per-step loss (light) and its exponential moving average (dark) against the
step, on a linear axis; written atomically.
"""
from __future__ import annotations

import math

from .outputs import atomic_write


def smooth(values: list, alpha: float = 0.1) -> list:
    out, ema = [], None
    for v in values:
        ema = v if ema is None else (1 - alpha) * ema + alpha * v
        out.append(ema)
    return out


def save_loss_curve(losses: list, path: str, title: str = "training loss") -> str:
    values = [float(v) for v in losses if math.isfinite(v)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return atomic_write(path, lambda tmp: _draw_pillow(values, tmp, title))
    return atomic_write(path, lambda tmp: _draw_matplotlib(values, tmp, title))


def _draw_matplotlib(values, path, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)       # no pyplot: no global state in a host process
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = list(range(1, len(values) + 1))
    ax.plot(steps, values, color="#9ecae1", linewidth=1, label="loss")
    ax.plot(steps, smooth(values), color="#08519c", linewidth=2, label="moving average")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
    fig.savefig(path, format="png")


def _draw_pillow(values, path, title, width: int = 800, height: int = 450):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 70, width - 20, 40, height - 50
    d.rectangle([left, top, right, bottom], outline="black")
    d.text((left, 12), title, fill="black")
    d.text(((left + right) // 2 - 12, height - 30), "step", fill="black")
    d.text((4, top - 20), "loss", fill="black")
    if values:
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        n = len(values)

        def xy(i, v):
            x = left + (right - left) * (i / max(n - 1, 1))
            return x, bottom - (bottom - top) * (v - lo) / (hi - lo)

        for k in range(5):                                    # y ticks
            v = lo + (hi - lo) * k / 4
            y = xy(0, v)[1]
            d.line([left - 4, y, left, y], fill="black")
            d.text((4, y - 6), f"{v:.4g}", fill="black")
        for k in range(5):                                    # x ticks
            i = round((n - 1) * k / 4)
            x = xy(i, lo)[0]
            d.line([x, bottom, x, bottom + 4], fill="black")
            d.text((x - 8, bottom + 8), str(i + 1), fill="black")
        for series, color, w in ((values, (158, 202, 225), 1), (smooth(values), (8, 81, 156), 2)):
            pts = [xy(i, v) for i, v in enumerate(series)]
            if len(pts) == 1:
                pts = pts * 2
            d.line(pts, fill=color, width=w)
    im.save(path, format="PNG")
