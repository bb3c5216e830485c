"""Resolving file names that users pick in the UI, without letting them leave their folder.

No ComfyUI import here: the node modules pass in ComfyUI's folders, so this is testable alone.
"""
from __future__ import annotations

import os

from ..renderers.errors import InputError

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Dropdown entry for the mesh bundled with the pack, so example workflows run on a fresh install.
BUNDLED_SAMPLE = "(bundled) sample_mesh.glb"
BUNDLED_FILES = {BUNDLED_SAMPLE: os.path.join(PACK_ROOT, "assets", "sample_mesh.glb")}


def list_files(root: str, extensions: tuple[str, ...]) -> list[str]:
    """Relative paths (with '/') of files under ``root`` whose extension is in ``extensions``,
    skipping hidden entries and links that point outside ``root``."""
    found = []
    real_root = os.path.realpath(root)
    if not os.path.isdir(root):
        return found
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if f.startswith(".") or not f.lower().endswith(extensions):
                continue
            full = os.path.join(folder, f)
            if _inside(os.path.realpath(full), real_root):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def resolve_inside(root: str, name: str, input_name: str) -> str:
    """Absolute path of ``name`` under ``root``; InputError if it is absolute, climbs out with
    '..', or is (or passes through) a link that leads outside ``root``."""
    if name in BUNDLED_FILES:
        return BUNDLED_FILES[name]
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or ":" in name[:3]:
        raise InputError(input_name, f"'{name}' must be a file name relative to ComfyUI's input folder; "
                                     "pick a file from the list or upload one.")
    real_root = os.path.realpath(root)
    candidate = os.path.normpath(os.path.join(real_root, name))
    if not _inside(candidate, real_root):
        raise InputError(input_name, f"'{name}' points outside ComfyUI's input folder; only files inside "
                                     "it can be loaded.")
    if not _inside(os.path.realpath(candidate), real_root):
        raise InputError(input_name, f"'{name}' is a link to a file outside ComfyUI's input folder; copy "
                                     "the file into the input folder instead.")
    return candidate


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root
