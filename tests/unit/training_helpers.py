"""Tiny data and models for the training tests (written once per test session)."""
import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 32                  # 32 px -> a 4x4 latent -> 4 tokens: a training step takes milliseconds
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def tiny_model_folder() -> str:
    """The tiny Flux model as a diffusers folder."""
    from realiz3d.loading import write_tiny_set

    root = tempfile.mkdtemp(prefix="r3d-train-model-")
    atexit.register(shutil.rmtree, root, True)
    return write_tiny_set(root).diffusers_folder


def tiny_pipe():
    from realiz3d.loading import load_pipeline_folder
    return load_pipeline_folder(tiny_model_folder()).pipeline()


def save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def blob_image(rng, size=SIZE, w=None) -> np.ndarray:
    """A smooth random image (a few coloured blobs), uint8 [H, W, 3]."""
    h, w = size, w or size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3)) + rng.uniform(0.2, 0.8, 3)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)[..., None] * rng.uniform(-0.5, 0.5, 3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_real(folder, n=3, seed=0, size=SIZE, captions=True) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_png(blob_image(rng, size), os.path.join(folder, f"r{i:02d}.png"))
        if captions:
            with open(os.path.join(folder, f"r{i:02d}.txt"), "w") as f:
                f.write("a photo of a red chair")
    return str(folder)


def write_synthetic(folder, n=3, controls=("normal", "depth"), seed=1, size=SIZE) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_png(blob_image(rng, size), os.path.join(folder, f"s{i:02d}.png"))
        for c in controls:
            save_png(blob_image(rng, size), os.path.join(folder, f"s{i:02d}.{c}.png"))
        with open(os.path.join(folder, f"s{i:02d}.txt"), "w") as f:
            f.write("a render of a chair")
    return str(folder)


def write_box(path, extents=(1.2, 0.8, 1.0)) -> str:
    import trimesh

    box = trimesh.creation.box(extents=extents)
    box.visual.vertex_colors = np.tile([200, 40, 30, 255], (len(box.vertices), 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    box.export(path)
    return path


def write_triplets(folder, n=2, seed=2, size=SIZE) -> str:
    os.makedirs(folder, exist_ok=True)
    write_box(os.path.join(folder, "meshes", "box.glb"))
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_png(blob_image(rng, size), os.path.join(folder, f"t{i:02d}.png"))
        with open(os.path.join(folder, f"t{i:02d}.json"), "w") as f:
            json.dump({"mesh": "meshes/box.glb", "pose": {"eye": [3.0, 1.0 + i, 2.0]}, "fov": 40,
                       "caption": "a red box on a table"}, f)
    return str(folder)


def base_config(tmp, recipe="stage2", **sections) -> dict:
    """A config dict for the tiny model and tiny data under ``tmp`` (sections merged in)."""
    cfg = {"recipe": recipe, "model": {"folder": tiny_model_folder(), "device": "cpu"},
           "data": {"size": SIZE, "controls": ["normal", "depth"], "render": {"backend": "raycast"}},
           "train": {"steps": 3, "lr": 1e-2, "max_sequence_length": 8, "log_every": 1, "grad_clip": 1.0},
           "shifters": {"rank": 4, "embed_dim": 8},
           "lora": {"rank": 4, "alpha": 8},
           "stage2": {"tau_b": 3},
           "refany3d": {"n_views": 2, "condition_size": SIZE},
           "checkpoint": {"every": 100},
           "output": {"dir": os.path.join(str(tmp), "out")}}
    for key, value in sections.items():
        cfg.setdefault(key, {})
        if isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@functools.lru_cache(maxsize=None)
def stage1_shifters() -> str:
    """A shifter file for the tiny model (random, non-zero), as stage 1 would write."""
    from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters

    root = tempfile.mkdtemp(prefix="r3d-train-shifters-")
    atexit.register(shutil.rmtree, root, True)
    tr = tiny_pipe().transformer
    s = DomainShifters(ShifterConfig.for_transformer(tr, rank=4, embed_dim=8))
    g = torch.Generator().manual_seed(7)
    for p in s.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    path = os.path.join(root, "shifters.safetensors")
    save_shifters(s, path)
    return path
