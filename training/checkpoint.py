"""Training checkpoints: everything a resumed run needs to continue exactly where it stopped.

One file per checkpoint, ``step-0000100.ckpt`` (torch's zip format holding only tensors and
plain Python values; read back with ``torch.load(weights_only=True)``, which cannot run code):
trained parameters, optimizer state, step, loss history, RNG states (torch CPU and CUDA,
numpy, Python ``random``), the data-order cursors, and the recipe and model layout it
belongs to. Written to a temporary file and renamed, so a failed save (full disk) leaves the
previous checkpoint intact; older checkpoints are pruned only after a new one is complete.
"""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch

from ..renderers.errors import InputError
from .outputs import atomic_write

FORMAT = "realiz3d-training-checkpoint"
VERSION = 1
PATTERN = re.compile(r"step-(\d+)\.ckpt$")


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step-{step:07d}.ckpt")


def list_checkpoints(folder: str) -> list[str]:
    """Complete checkpoints in ``folder``, oldest first."""
    found = [p for p in glob.glob(os.path.join(folder, "step-*.ckpt")) if PATTERN.search(p)]
    return sorted(found, key=lambda p: int(PATTERN.search(p).group(1)))


def _write(payload: dict, path: str) -> None:
    torch.save(payload, path)


def save_checkpoint(folder: str, step: int, payload: dict, keep: int = 2) -> str:
    """Write ``payload`` as the checkpoint of ``step``; keep the newest ``keep``."""
    path = checkpoint_path(folder, step)
    payload = {"format": FORMAT, "version": VERSION, "step": step, **payload}
    try:
        atomic_write(path, lambda tmp: _write(payload, tmp))
    except OSError as exc:
        previous = [p for p in list_checkpoints(folder) if p != path]
        raise OSError(exc.errno, f"could not write checkpoint {path} ({exc.strerror or exc}); "
                                 + (f"the previous checkpoint {previous[-1]} is intact" if previous else
                                    "no earlier checkpoint exists")) from exc
    for old in list_checkpoints(folder)[:-keep]:
        try:
            os.remove(old)
        except OSError:
            pass
    return path


def read_checkpoint(path: str, input_name: str = "resume", mmap: bool = False) -> dict:
    """A checkpoint file, or the newest one in a folder; InputError naming ``input_name`` otherwise.
    mmap: map the file instead of reading it (copy-on-write): the processes of an FSDP run share
    the pages instead of each holding the full state in memory."""
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise InputError(input_name, f"'{path}' holds no checkpoint (step-*.ckpt).")
        path = found[-1]
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{path}' does not exist.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise InputError(input_name, f"'{path}' could not be read as a training checkpoint ({type(exc).__name__}: "
                                     f"{exc}); it may be truncated.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(input_name, f"'{path}' is not a Realiz3D training checkpoint.")
    if int(data.get("version", 0)) > VERSION:
        raise InputError(input_name, f"'{path}' has checkpoint version {data['version']}; this pack reads up to "
                                     f"{VERSION}.")
    data["path"] = path
    return data


def check_compatible(data: dict, layout: dict, input_name: str = "resume") -> None:
    """The checkpoint must come from the same recipe, mode and model layout, with the same
    trainable tensors; otherwise an InputError says what differs."""
    path, got = data.get("path", "checkpoint"), data["layout"]
    if (got["recipe"], got["mode"]) != (layout["recipe"], layout["mode"]):
        raise InputError(input_name, f"'{path}' was written by recipe '{got['recipe']}' ({got['mode']}); this config "
                                     f"trains '{layout['recipe']}' ({layout['mode']}). Resume with the config it "
                                     "was trained with.")
    for key in ("num_double", "num_single", "hidden"):
        if got[key] != layout[key]:
            raise InputError(input_name, f"'{path}' is for a model of {got['num_double']} double + {got['num_single']} "
                                         f"single blocks, hidden {got['hidden']}; the loaded model has "
                                         f"{layout['num_double']} + {layout['num_single']}, hidden {layout['hidden']}.")
    if got["trainables"] != layout["trainables"]:
        a, b = got["trainables"], layout["trainables"]
        diff = sorted(set(a) ^ set(b)) or sorted(k for k in a if a[k] != b.get(k))
        raise InputError(input_name, f"'{path}' trains other tensors than this config (e.g. {diff[:3]}); a different "
                                     "rank, target list or shifter size?")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
