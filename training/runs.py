"""Runs that never mix or vanish: which run folder a training writes to, whether it may resume
there, and where its results are installed.

- A run folder keeps one run's checkpoints, its config and loss curve. Resuming compares the
  config stored in the newest checkpoint with the new one (:func:`config_differences`); a change
  of what is trained or how (data, controls, shifters, recipe, tau_B, rank, learning rate, ...)
  is refused with the differences listed, unless the caller chooses to continue anyway or to
  start a new run. Only the keys in :data:`MAY_CHANGE` (the number of steps, logging,
  checkpointing, caches, the device) may differ silently.
- Not resuming never deletes anything: a run name whose folder holds checkpoints gets the next
  free folder ``<name>.2``, ``<name>.3``, ...; resuming takes the newest of them.
- An installed result never overwrites a model file written by anything else (another run, a
  download, the user): the next free versioned name ``<name>_2.safetensors`` is used instead,
  unless ``overwrite`` is asked for. The same run may update the file it installed itself while
  that file is unchanged (its digest is recorded in the run folder's ``installed.json``).

Everything here is plain file logic, tested without a host; the nodes only pass choices through.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Optional

from ..renderers.errors import InputError
from .outputs import atomic_write, save_text

#: what happens when a resumed run's config differs from the stored one
REFUSE, CONTINUE, NEW_RUN = "refuse", "continue anyway", "start a new run"
ON_CHANGE = (REFUSE, CONTINUE, NEW_RUN)

#: dotted keys that may change when resuming: they decide how long and how visibly a run goes,
#: not what it learns (steps may be raised; the device and caches only change speed)
MAY_CHANGE = ("train.steps", "train.log_every", "train.text_cache_size", "train.latent_cache_mb",
              "train.cache_latents", "train.cache_dir", "train.cache_disk_mb", "train.precache",
              "train.memory_check", "train.gradient_checkpointing", "train.compile", "data.on_bad_sample",
              "model.device", "model.dtype", "checkpoint.dir", "checkpoint.every", "checkpoint.keep", "output.dir")
_RUN_SUFFIX = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]+)$")
RECORD = "installed.json"


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def config_differences(stored: dict, new: dict) -> list[str]:
    """Lines ``key: old -> new`` for every key (dotted) whose value differs between two config
    dicts (``TrainConfig.to_dict()`` or the YAML a checkpoint stores), except :data:`MAY_CHANGE`."""
    a, b = _flatten(stored), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if _may_change(key):
            continue
        old, cur = a.get(key, "(unset)"), b.get(key, "(unset)")
        if old != cur:
            lines.append(f"{key}: {old!r} -> {cur!r}")
    return lines


def stored_config(checkpoint: str) -> Optional[dict]:
    """The config a checkpoint was trained with (None for checkpoints that hold none). Memory-mapped:
    the tensors of a large checkpoint are not read."""
    import torch
    import yaml

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise InputError("resume", f"'{checkpoint}' could not be read as a training checkpoint "
                                   f"({type(exc).__name__}: {exc}).") from exc
    text = data.get("config") if isinstance(data, dict) else None
    return yaml.safe_load(text) if isinstance(text, str) else None


def refusal(path: str, differences: list[str], how: str = "choose 'continue anyway' or a new run name") -> str:
    shown = differences[:12] + ([f"... and {len(differences) - 12} more"] if len(differences) > 12 else [])
    return (f"the run in '{path}' was trained with another config; resuming would mix two runs. Changed: "
            + "; ".join(shown) + f". To go on, {how}.")


def check_resume(checkpoint, new: dict, on_change: str = REFUSE, log=None) -> list[str]:
    """The differences between the config of ``checkpoint`` (a path, or the dict read_checkpoint
    gives) and ``new`` (a config dict); InputError naming ``resume`` when there are some and
    ``on_change`` is :data:`REFUSE`."""
    import yaml

    if on_change not in ON_CHANGE:
        raise InputError("on_change", f"must be one of {list(ON_CHANGE)} (got {on_change!r}).")
    if isinstance(checkpoint, dict):
        text = checkpoint.get("config")
        stored, where = (yaml.safe_load(text) if isinstance(text, str) else None), checkpoint.get("path", "checkpoint")
    else:
        stored, where = stored_config(checkpoint), checkpoint
    if stored is None:
        return []
    diff = config_differences(stored, new)
    if diff and on_change == REFUSE:
        raise InputError("resume", refusal(where, diff))
    if diff and log is not None:
        log("continuing anyway with a changed config: " + "; ".join(diff))
    return diff


# ------------------------------------------------------------------------------------ run folders
def _has_checkpoints(folder: str) -> bool:
    from .checkpoint import list_checkpoints
    return bool(list_checkpoints(os.path.join(folder, "checkpoints")))


def run_folders(root: str, name: str) -> list[str]:
    """Existing folders of run ``name`` under ``root``, oldest first: ``name``, ``name.2``, ..."""
    if not os.path.isdir(root):
        return []
    found = []
    for entry in os.listdir(root):
        m = _RUN_SUFFIX.match(entry)
        if entry == name:
            found.append((1, entry))
        elif m and m.group("base") == name and int(m.group("n")) >= 2:
            found.append((int(m.group("n")), entry))
    return [os.path.join(root, e) for _, e in sorted(found)]


def _next_folder(root: str, name: str) -> str:
    existing = run_folders(root, name)
    if not existing:
        return os.path.join(root, name)
    last = os.path.basename(existing[-1])
    m = _RUN_SUFFIX.match(last)
    n = int(m.group("n")) if m and m.group("base") == name else 1
    return os.path.join(root, f"{name}.{n + 1}")


@dataclass
class RunPlan:
    """folder: the run folder (output.dir); resume: the checkpoint folder to resume from, or
    None; continue_anyway: resume despite a changed config; notes: what was decided, for the log."""
    folder: str
    resume: Optional[str] = None
    continue_anyway: bool = False
    notes: list = field(default_factory=list)


def plan_run(root: str, name: str, config: dict, resume: bool = True, on_change: str = REFUSE) -> RunPlan:
    """Where run ``name`` (a config dict as load_config takes it; its ``output.dir`` is this
    function's choice) trains, under ``root``.

    resume: continue the newest folder of ``name`` when it holds checkpoints, after comparing
    configs (``on_change``: refuse with the differences listed, continue anyway, or start a new
    run). resume False: a new folder when the newest holds checkpoints; nothing is deleted."""
    if on_change not in ON_CHANGE:
        raise InputError("on_change", f"must be one of {list(ON_CHANGE)} (got {on_change!r}).")
    from .checkpoint import list_checkpoints

    folders = run_folders(root, name)
    newest = folders[-1] if folders else None
    if newest is None or not _has_checkpoints(newest):
        return RunPlan(newest or os.path.join(root, name))
    if not resume:
        folder = _next_folder(root, name)
        return RunPlan(folder, notes=[f"resume is off: a new run in {folder}; {newest} is kept"])
    from .config import load_config

    ckpt_dir = os.path.join(newest, "checkpoints")
    new = load_config({**config, "output": {**config.get("output", {}), "dir": newest}}).to_dict()
    stored = stored_config(list_checkpoints(ckpt_dir)[-1])
    diff = config_differences(stored, new) if stored is not None else []
    if diff and on_change == REFUSE:
        raise InputError("resume", refusal(newest, diff, "set on_change to 'continue anyway' or 'start a new run', "
                                                         "or give a new output_name"))
    if diff and on_change == NEW_RUN:
        folder = _next_folder(root, name)
        return RunPlan(folder, notes=[f"the config changed ({'; '.join(diff)}): a new run in {folder}; "
                                      f"{newest} is kept"])
    return RunPlan(newest, resume=ckpt_dir, continue_anyway=bool(diff),
                   notes=[f"resuming {newest}"] + ([f"continuing anyway: {'; '.join(diff)}"] if diff else []))


# ------------------------------------------------------------------------------------ installing
def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record(run_folder: str) -> dict:
    path = os.path.join(run_folder, RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _versioned(path: str, n: int, folder: bool = False) -> str:
    if folder:                        # models/refany3d/<name>/default.safetensors -> <name>_2/...
        parent, base = os.path.split(path)
        return os.path.join(f"{parent}_{n}", base)
    stem, ext = os.path.splitext(path)
    return f"{stem}_{n}{ext}"


def install_paths(run_folder: str, wanted: list[str], overwrite: bool = False, folder: bool = False) -> list[str]:
    """Where the files ``wanted`` (absolute model-file paths, installed together) go: as wanted
    when free, overwritten, or installed earlier by this same run and unchanged since; else all
    with the first version suffix ``_N`` that is free for every one of them (a set stays matched:
    ``x_control_2`` goes with ``x_target_2``). folder: the suffix goes on the files' folder
    (a RefAny3D set: ``<name>_2/default.safetensors``)."""
    mine = _record(run_folder)

    def free(path: str) -> bool:
        if overwrite or not os.path.exists(path):
            return True
        return mine.get(os.path.abspath(path)) == _digest(path)

    if all(free(p) for p in wanted):
        return list(wanted)
    n = 2
    while not all(free(_versioned(p, n, folder)) for p in wanted):
        n += 1
    return [_versioned(p, n, folder) for p in wanted]


def install(run_folder: str, files: dict, overwrite: bool = False, log=None, folder: bool = False) -> dict:
    """Copy ``{src: wanted dst}`` into the model folders atomically, on the names
    :func:`install_paths` gives; returns {src: installed path} and records the digests in the
    run folder so the same run may update its own files later."""
    srcs = list(files)
    dsts = install_paths(run_folder, [files[s] for s in srcs], overwrite, folder)
    record = _record(run_folder)
    out = {}
    for src, dst, want in zip(srcs, dsts, (files[s] for s in srcs)):
        atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
        record[os.path.abspath(dst)] = _digest(dst)
        out[src] = dst
        if dst != want and log is not None:
            log(f"'{want}' exists and was not written by this run: installed as '{dst}' (overwrite replaces it)")
    save_text(json.dumps(record, indent=1), os.path.join(run_folder, RECORD))
    return out
