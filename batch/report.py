"""What a batch leaves beside the items: ``index.jsonl`` and ``contact_sheet.png``.

``index.jsonl``: one line per manifest item, in manifest order: ``item`` (0-based row), ``folder``,
``inputs`` (the row as written), ``state`` (done, failed, pending), ``outputs`` (paths relative to
the output folder), ``seconds`` (the server's execution time), ``finished`` (ISO time, UTC),
``error``, ``attempts``, ``prompt_id``, ``key``. Written atomically, like the ledger.

``contact_sheet.png``: the first image output of each item, in manifest order, labelled with its
folder; failed items as a red tile, items not run yet as a grey one.
"""
from __future__ import annotations

import json
import math
import os
import time

from .ledger import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
TILE = 128
LABEL = 14


def index_rows(preps, ledger) -> list[dict]:
    rows = []
    for prep in preps:
        entry = ledger.get(prep.key) or {}
        finished = entry.get("finished")
        rows.append({"item": prep.item.index, "folder": entry.get("folder", f"items/{prep.folder}"),
                     "inputs": prep.item.values, "state": entry.get("state", "pending"),
                     "outputs": entry.get("outputs", []), "seconds": entry.get("seconds"),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)) if finished else None,
                     "error": entry.get("error"), "attempts": entry.get("attempts", 0),
                     "prompt_id": entry.get("prompt_id"), "key": prep.key})
    return rows


def write_index(out_dir: str, preps, ledger) -> str:
    path = os.path.join(out_dir, "index.jsonl")
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in index_rows(preps, ledger)]
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def contact_sheet(out_dir: str, preps, ledger, path: str | None = None) -> str | None:
    """Write the contact sheet (None when there are no items)."""
    from PIL import Image, ImageDraw

    rows = index_rows(preps, ledger)
    if not rows:
        return None
    cols = max(1, math.ceil(math.sqrt(len(rows))))
    sheet = Image.new("RGB", (cols * TILE, math.ceil(len(rows) / cols) * (TILE + LABEL)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, row in enumerate(rows):
        x, y = (n % cols) * TILE, (n // cols) * (TILE + LABEL)
        image = next((p for p in row["outputs"] if p.lower().endswith(IMAGE_EXTENSIONS)), None)
        tile = None
        if image:
            try:
                with Image.open(os.path.join(out_dir, image)) as im:
                    scale = TILE / max(im.size)
                    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                    # small images are enlarged with visible pixels, large ones filtered down
                    tile = im.convert("RGB").resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
            except OSError:
                tile = None
        if tile is None:
            colour = {"failed": (200, 60, 60), "done": (235, 235, 235)}.get(row["state"], (160, 160, 160))
            tile = Image.new("RGB", (TILE, TILE), colour)
        sheet.paste(tile, (x + (TILE - tile.width) // 2, y + (TILE - tile.height) // 2))
        label = os.path.basename(row["folder"]) + ("" if row["state"] == "done" else f" [{row['state']}]")
        draw.text((x + 2, y + TILE + 1), label[:TILE // 7], fill=(0, 0, 0))     # ~6 px a character
    path = path or os.path.join(out_dir, "contact_sheet.png")
    tmp = path + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, path)
    return path
