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


def resolve_inside(root: str, name: str, input_name: str, folder: str = "ComfyUI's input folder") -> str:
    """Absolute path of ``name`` under ``root``; InputError if it is absolute, climbs out with
    '..', or is (or passes through) a link that leads outside ``root``. ``folder`` names the
    root in messages."""
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or ":" in name[:3]:
        raise InputError(input_name, f"'{name}' must be a file name relative to {folder}; "
                                     "pick a file from the list or upload one.")
    real_root = os.path.realpath(root)
    candidate = os.path.normpath(os.path.join(real_root, name))
    if not _inside(candidate, real_root):
        raise InputError(input_name, f"'{name}' points outside {folder}; only files inside it can be loaded.")
    if not _inside(os.path.realpath(candidate), real_root):
        raise InputError(input_name, f"'{name}' is a link to a file outside {folder}; copy the file into "
                                     "the folder instead.")
    return candidate


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def list_model_folders(kind: str, marker: str | None = "model_index.json") -> list[str]:
    """Sub-folders of ComfyUI's model folders of ``kind`` (holding ``marker`` when given)."""
    import folder_paths   # only here: this module stays importable without ComfyUI

    try:
        roots = folder_paths.get_folder_paths(kind)
    except KeyError:
        return []
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            full = os.path.join(root, entry)
            if (os.path.isdir(full) and not entry.startswith(".")
                    and (marker is None or os.path.isfile(os.path.join(full, marker)))
                    and _inside(os.path.realpath(full), os.path.realpath(root))):
                found.add(entry)
    return sorted(found)


def model_path(kind: str, name: str, input_name: str) -> str:
    """Absolute path of file or folder ``name`` in ComfyUI's model folders of ``kind``; it must
    stay inside one of them."""
    import folder_paths

    if not name:
        raise InputError(input_name, f"no file chosen; put one in ComfyUI's models/{kind} folder and pick it.")
    roots = folder_paths.get_folder_paths(kind) if kind in folder_paths.folder_names_and_paths else []
    for root in roots:
        path = resolve_inside(root, name, input_name, f"ComfyUI's models/{kind} folder")
        if os.path.exists(path):
            return path
    raise InputError(input_name, f"'{name}' was not found in ComfyUI's models/{kind} folder(s).")


def register_model_folder(kind: str) -> None:
    """Make models/<kind> a ComfyUI model folder (idempotent)."""
    import folder_paths

    if kind not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))
