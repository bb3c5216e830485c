"""Resolving file names that users pick in the UI, without letting them leave their folder.

No ComfyUI import here: the node modules pass in ComfyUI's folders, so this is testable alone.
"""
from __future__ import annotations

import os
from typing import Callable

from ..renderers.errors import DISPLAY_NAME, InputError

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


#: the longest file name and path, in bytes, assumed where the file system does not say
NAME_MAX, PATH_MAX = 255, 4096


def check_name_chars(name: str, input_name: str) -> None:
    """InputError if ``name`` holds a NUL byte or another control character (newline, tab, ...):
    no file name should, and NUL cannot reach the operating system at all."""
    shown = ascii(name) if len(name) <= 80 else ascii(name[:77]) + "..."
    if "\x00" in name:
        raise InputError(input_name, f"{shown} contains a NUL byte (\\x00), which a file name cannot hold; "
                                     "remove it (it often comes from pasted binary text).")
    bad = sorted({c for c in name if ord(c) < 32 or 127 <= ord(c) < 160})
    if bad:
        chars = ", ".join(ascii(c) for c in bad)
        raise InputError(input_name, f"{shown} contains control characters ({chars}: a newline, tab or similar); "
                                     "file names should not hold them. Remove them from the name.")


def name_limits(folder: str) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the file system of ``folder`` (or of its
    nearest existing parent), NAME_MAX / PATH_MAX where it does not say."""
    probe = folder
    while probe and not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    limits = []
    for key, default in (("PC_NAME_MAX", NAME_MAX), ("PC_PATH_MAX", PATH_MAX)):
        try:
            value = os.pathconf(probe, key)
        except (OSError, ValueError, AttributeError):
            value = -1
        limits.append(min(value, default) if value and value > 0 else default)
    return limits[0], limits[1]


def check_name_length(root: str, name: str, input_name: str, reserve: int = 0) -> None:
    """InputError if ``name`` (relative to ``root``, '/'-separated) has a part longer than the
    file system allows, or makes a path too long; ``reserve``: bytes the caller adds to the
    last part (a counter and an extension)."""
    longest_name, longest_path = name_limits(root)
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):
        size = len(os.fsencode(part)) + (reserve if i == len(parts) - 1 else 0)
        if size > longest_name:
            what = "the file name" if i == len(parts) - 1 else f"folder name {i + 1}"
            extra = f" with the {reserve} characters added for the counter and extension" if i == len(parts) - 1 \
                else ""
            raise InputError(input_name, f"{what} in '{part[:40]}...' is too long: {size} bytes{extra}, and "
                                         f"the file system allows {longest_name} per name. Use a shorter name.")
    size = len(os.fsencode(os.path.join(os.path.realpath(root), *parts))) + reserve + 1
    if size > longest_path:
        raise InputError(input_name, f"'{name[:40]}...' makes a path too long: {size} bytes with the output folder, "
                                     f"counter and extension, and the file system allows {longest_path}. Use fewer "
                                     "or shorter folder names.")


def resolve_inside(root: str, name: str, input_name: str, folder: str = "ComfyUI's input folder") -> str:
    """Absolute path of ``name`` under ``root``; InputError if it is absolute, climbs out with
    '..', is (or passes through) a link that leads outside ``root``, or holds a NUL or another
    control character. ``folder`` names the root in messages."""
    if name:
        check_name_chars(name, input_name)
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


def choices_valid(check: Callable[[str, str], object], choices: dict, allowed: tuple[str, ...] = ()) -> bool | str:
    """A node's ``validate_inputs`` for its file dropdowns: True when ``check(value, input_name)``
    passes for every chosen name, else the pack's message (the InputError) for the first that
    does not.

    A node that validates an input itself takes it off the host's own list check (ComfyUI 0.33
    checks every dropdown value against its options and would answer a generic "Value not in
    list" first), so a bad name gets the message that says what is wrong and how to fix it, and a
    file added after the page loaded is accepted. ``choices`` maps input names to values; None
    (the input is linked, its value unknown before the run) and ``allowed`` entries such as
    "(not used)" pass. Checks only look at names and the file system; files load at run time."""
    try:
        for input_name, value in choices.items():
            if value is None or value in allowed:
                continue
            if not isinstance(value, str):
                raise InputError(input_name, f"must be a file name (got {type(value).__name__}).")
            check(value, input_name)
    except InputError as exc:
        return f"{DISPLAY_NAME}: {exc}"     # as the host shows the same error at run time
    return True


def model_files_valid(kind: str, choices: dict, allowed: tuple[str, ...] = ()) -> bool | str:
    """:func:`choices_valid` for files in ComfyUI's models/``kind`` folders."""
    return choices_valid(lambda value, input_name: model_path(kind, value, input_name), choices, allowed)


def register_model_folder(kind: str) -> None:
    """Make models/<kind> a ComfyUI model folder (idempotent)."""
    import folder_paths

    if kind not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))
