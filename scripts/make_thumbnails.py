"""Template thumbnails for ComfyUI's template browser: example_workflows/<name>.jpg, one per
template, cut from the screenshots the browser tests save (the template's graph as the front
end draws it) and scaled to a card.

Usage: run the browser tests first (`bash scripts/test.sh tests/browser`, or on 0.33 as in
scripts/test.sh), then `.cache/host/venv/bin/python scripts/make_thumbnails.py [HOST]`
(HOST: the screenshots' folder under test_artifacts/browser/, default 0.33).
"""
import glob
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the card's size in the template browser (4:3), and how far from the graph the cut may go
CARD, PAD = (400, 300), 24


#: cells of this many pixels, and the share of a cell that must differ from the background for
#: the cell to count as part of a node (text, links and grid dots fill far less)
CELL, FILLED = 8, 0.6


def graph_box(shot: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the nodes the canvas shows: cells mostly unlike the canvas
    background, leaving out the side bar, the top bars, the stats and the minimap corner."""
    h, w, _ = shot.shape
    left, top, right, bottom = int(0.05 * w), int(0.11 * h), int(0.86 * w), int(0.90 * h)
    canvas = shot[top:bottom, left:right].astype(np.int16)
    colours, counts = np.unique(canvas.reshape(-1, 3), axis=0, return_counts=True)
    differs = np.abs(canvas - colours[counts.argmax()]).max(axis=2) > 12
    ch, cw = differs.shape[0] // CELL, differs.shape[1] // CELL
    cells = differs[:ch * CELL, :cw * CELL].reshape(ch, CELL, cw, CELL).mean(axis=(1, 3)) > FILLED
    ys, xs = np.nonzero(cells)
    if not len(xs):
        return left, top, right, bottom
    return (max(left + xs.min() * CELL - PAD, 0), max(top + ys.min() * CELL - PAD, 0),
            min(left + (xs.max() + 1) * CELL + PAD, w), min(top + (ys.max() + 1) * CELL + PAD, h))


def thumbnail(path: str) -> Image.Image:
    shot = Image.open(path).convert("RGB")
    box = graph_box(np.asarray(shot))
    graph = shot.crop(box)
    graph.thumbnail(CARD, Image.LANCZOS)
    card = Image.new("RGB", CARD, tuple(int(c) for c in np.asarray(shot)[box[1] + 2, box[0] + 2]))
    card.paste(graph, ((CARD[0] - graph.width) // 2, (CARD[1] - graph.height) // 2))
    return card


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "0.33"
    shots = os.path.join(ROOT, "test_artifacts", "browser", host)
    names = [os.path.splitext(os.path.basename(p))[0]
             for p in sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))]
    for name in names:
        shot = os.path.join(shots, f"{name}.png")
        if not os.path.isfile(shot):
            sys.exit(f"no screenshot {shot}: run the browser tests on {host} first")
        out = os.path.join(ROOT, "example_workflows", f"{name}.jpg")
        thumbnail(shot).save(out, quality=85)
        print("wrote", os.path.relpath(out, ROOT), os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
