"""The items of a batch: rows of a CSV or JSONL file, or the cross product of meshes, prompts and seeds.

An item is one prompt: a mapping of column names to values (strings from CSV, JSON values from
JSONL). Which node input a column feeds is said separately (:mod:`.mapping`). Relative file
paths in a manifest are read relative to the manifest's folder (:attr:`Manifest.base_dir`).
"""
from __future__ import annotations

import csv
import glob
import itertools
import json
import os
from dataclasses import dataclass, field

#: what a mesh folder given to :func:`expand_meshes` contributes: renderers.MESH_EXTENSIONS, kept
#: here so the runner stays free of the renderer's dependencies (a unit test keeps the two equal)
MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl")


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the file, line and column."""


@dataclass(frozen=True)
class Item:
    """One row: ``index`` is its position in the manifest (0-based), ``values`` column -> value."""
    index: int
    values: dict


@dataclass
class Manifest:
    items: list[Item]
    columns: list[str]
    base_dir: str = field(default_factory=os.getcwd)
    source: str = ""


def read_manifest(path: str) -> Manifest:
    """A ``.csv`` (header row) or ``.jsonl`` / ``.ndjson`` (one JSON object a line) manifest."""
    if not os.path.isfile(path):
        raise ManifestError(f"manifest {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        items, columns = _read_csv(path)
    elif ext in (".jsonl", ".ndjson"):
        items, columns = _read_jsonl(path)
    else:
        raise ManifestError(f"manifest {path!r}: use a .csv (with a header row) or .jsonl file")
    if not items:
        raise ManifestError(f"manifest {path!r} holds no items")
    return Manifest(items, columns, os.path.dirname(os.path.abspath(path)), path)


def _read_csv(path: str) -> tuple[list[Item], list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise ManifestError(f"{path}: the first row must name the columns")
        columns = [h.strip() for h in header]
        if "" in columns or len(set(columns)) != len(columns):
            raise ManifestError(f"{path}: column names must be non-empty and distinct, got {columns}")
        items = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue                                    # blank line
            if len(row) != len(columns):
                raise ManifestError(f"{path}, line {reader.line_num}: {len(row)} values for {len(columns)} "
                                    f"columns ({', '.join(columns)})")
            items.append(Item(len(items), dict(zip(columns, row))))
    return items, columns


def _read_jsonl(path: str) -> tuple[list[Item], list[str]]:
    items, columns = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}, line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}, line {n}: each line must be a JSON object, got {type(row).__name__}")
            columns += [c for c in row if c not in columns]
            items.append(Item(len(items), row))
    return items, columns


def expand_meshes(pattern: str) -> list[str]:
    """Mesh files of a folder (every mesh in it, not recursing) or of a glob (``**`` recurses),
    sorted; ManifestError when nothing matches."""
    if os.path.isdir(pattern):
        paths = [os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(MESH_EXTENSIONS)]
    else:
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not paths:
        raise ManifestError(f"--meshes {pattern!r} matches no mesh file")
    return sorted(os.path.abspath(p) for p in paths)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,5-7"`` -> [0, 1, 5, 6, 7]."""
    seeds = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                seeds += list(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ManifestError(f"seeds {text!r}: {part!r} is not a whole number or a range a-b") from None
    return seeds


def cross_product(columns: dict[str, list]) -> Manifest:
    """Every combination of the given columns' values, the first column varying slowest:
    ``cross_product({"mesh": [a, b], "prompt": [p], "seed": [0, 1]})`` -> 4 items. Columns with
    no values are left out."""
    columns = {k: list(v) for k, v in columns.items() if v}
    if not columns:
        raise ManifestError("nothing to combine: give --meshes, --prompt/--prompts or --seeds")
    names = list(columns)
    items = [Item(i, dict(zip(names, combo))) for i, combo in enumerate(itertools.product(*columns.values()))]
    return Manifest(items, names, os.getcwd(), "cross product")


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a text file (a list of prompts)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
