"""Training data: real photos, synthetic renders (on disk or rendered on the fly from meshes) and
RefAny3D triplets, as :class:`Sample` objects. Folder formats are documented in README.md.

Every folder is scanned when its dataset is built: a missing, unreadable or empty folder is an
InputError naming the config key; a malformed sample (unreadable image, missing control map,
bad JSON) is reported with its path and either stops the run or is skipped and logged
(``data.on_bad_sample``), never dropped silently. Samples whose decoding fails later (a file
truncated after its header) follow the same policy when they are drawn.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..renderers.errors import InputError
from ..renderers.images import CONTROL_BACKGROUND

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
#: control kind in the config -> file suffix NAME.<kind>.png and sampling.multiview's control name
CONTROL_RENDER_NAMES = {"normal": "normal", "points": "point map", "depth": "depth"}
SYNTHETIC, REAL, TRIPLET = "synthetic", "real", "refany3d"


@dataclass
class Sample:
    """One training sample. Images are float32 tensors in [0, 1], row 0 at the top.

    image: [H, W, 3] the target. controls: [C, H, W, 3] aligned control maps in the config's
    order, or None. point_map: [H, W, 3] RefAny3D target point map (white background).
    views: RefAny3D condition views (rgb [V, S, S, 3], point maps [V, S, S, 3]) and views_key,
    the mesh they were rendered from (their latents are cached under it).
    """

    key: str
    domain: str
    image: torch.Tensor
    caption: str = ""
    controls: Optional[torch.Tensor] = None
    point_map: Optional[torch.Tensor] = None
    views: Optional[tuple] = None
    views_key: str = ""


class BadSample(Exception):
    """A sample that cannot be used: ``path`` is the file at fault."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class Dataset(ABC):
    """Base of the datasets: ``len``, ``load(i) -> Sample`` (raises BadSample), ``key`` (config key)."""

    key = ""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Sample: ...


class MemoryDataset(Dataset):
    """Samples already in memory (tests, notebooks, the toy experiment)."""

    def __init__(self, samples: list, key: str = "memory"):
        if not samples:
            raise InputError(key, "no samples given.")
        self.samples, self.key = list(samples), key

    def __len__(self):
        return len(self.samples)

    def load(self, index: int) -> Sample:
        return self.samples[index]


# ---------------------------------------------------------------- image files

def read_image(path: str, background: int = 255) -> np.ndarray:
    """uint8 [H, W, 3]; transparency is composited over ``background`` (white for images and
    renders, which are on white; black, 0, for control maps, whose documented background is
    black: renderers.images.CONTROL_BACKGROUND)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (background, background, background, 255))
                im = Image.alpha_composite(bg, rgba)
            return np.asarray(im.convert("RGB"))
    except Exception as exc:       # PIL raises many types for broken files
        raise BadSample(path, f"could not be read as an image ({type(exc).__name__}: {exc})") from None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header (cheap; the pixels are not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:
        raise BadSample(path, f"is not a readable image ({type(exc).__name__}: {exc})") from None


def fit(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Scale the short side to ``size`` and centre-crop the long side (``data.resize: crop``).
    Images use Lanczos; control and point maps use nearest so no new values appear at edges."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    im = Image.fromarray(image).resize((nw, nh), Image.NEAREST if nearest else Image.LANCZOS)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im)[top:top + size, left:left + size]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)


def list_files(folder: str, key: str, extensions: tuple, what: str) -> list[str]:
    """Sorted names in ``folder`` with one of ``extensions``; InputError naming ``key`` when the
    folder is missing, unreadable or holds none."""
    if not folder:
        raise InputError(key, f"no folder given; set {key} to a folder of {what}.")
    if not os.path.isdir(folder):
        raise InputError(key, f"'{folder}' is not a folder (it does not exist or is a file).")
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise InputError(key, f"'{folder}' could not be read ({exc}).") from exc
    found = [n for n in names if n.lower().endswith(extensions) and os.path.isfile(os.path.join(folder, n))]
    if not found:
        raise InputError(key, f"'{folder}' holds no {what} ({', '.join(extensions)}).")
    return found


def read_caption(path: str, default: str) -> str:
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadSample(path, f"caption could not be read ({exc})") from None
    return default


class Scanner:
    """Applies ``data.on_bad_sample`` to the samples found bad while scanning or loading."""

    def __init__(self, key: str, policy: str, log: Callable[[str], None]):
        self.key, self.policy, self.log = key, policy, log
        self.skipped: list[str] = []

    def bad(self, err: BadSample) -> None:
        if self.policy == "stop":
            raise InputError(self.key, f"bad sample {err.path}: {err.reason} (set data.on_bad_sample: skip to "
                                       "leave such samples out).")
        self.skipped.append(err.path)
        self.log(f"skipping bad sample {err.path}: {err.reason}")


def _is_control_file(name: str) -> bool:
    stem = os.path.splitext(name)[0]
    return any(stem.endswith("." + kind) for kind in CONTROL_RENDER_NAMES)


class ImageFolder(Dataset):
    """Real photos (``controls=()``) or synthetic renders with NAME.<control>.png beside each
    NAME.png; files with a control suffix are never samples themselves."""

    def __init__(self, folder: str, key: str, domain: str, size: int, resize: str = "crop", controls=(),
                 caption: str = "", on_bad: str = "stop", log: Callable[[str], None] = print):
        self.folder, self.key, self.domain, self.size, self.resize = folder, key, domain, size, resize
        self.controls, self.caption = tuple(controls), caption
        self.scan = Scanner(key, on_bad, log)
        names = [n for n in list_files(folder, key, IMAGE_EXTENSIONS, "images")
                 if not _is_control_file(n)]
        if not names:
            raise InputError(key, f"'{folder}' holds only control maps (NAME.<control>.png), no images.")
        self.items = _scan_items(folder, names, self._check, self.scan, size, "image(s)")
        if not self.items:
            raise InputError(key, f"no usable sample in '{folder}' (all {len(names)} were bad; see the log).")

    def _check(self, path: str, wrong_size: list) -> tuple:
        w, h = image_size(path)
        stem = os.path.splitext(path)[0]
        controls = []
        for kind in self.controls:
            cpath = next((stem + f".{kind}{ext}" for ext in IMAGE_EXTENSIONS
                          if os.path.isfile(stem + f".{kind}{ext}")), None)
            if cpath is None:
                raise BadSample(path, f"its control map {os.path.basename(stem)}.{kind}.png is missing "
                                      f"(data.controls lists {list(self.controls)})")
            if image_size(cpath) != (w, h):
                raise BadSample(cpath, f"control map is {image_size(cpath)} but its image is {(w, h)}; "
                                       "controls must be aligned with the image")
            controls.append(cpath)
        if self.resize == "error" and (w, h) != (self.size, self.size):
            wrong_size.append((path, w, h))
        return path, controls, stem + ".txt"

    def __len__(self):
        return len(self.items)

    def load(self, index: int) -> Sample:
        path, controls, caption_path = self.items[index]
        image = fit(read_image(path), self.size)
        black = round(CONTROL_BACKGROUND * 255)
        maps = [to_tensor(fit(read_image(c, background=black), self.size, nearest=True)) for c in controls]
        return Sample(key=path, domain=self.domain, image=to_tensor(image),
                      caption=read_caption(caption_path, self.caption),
                      controls=torch.stack(maps) if maps else None)


class _MeshCache:
    """The few meshes rendered most recently, loaded once each."""

    def __init__(self, size: int = 8):
        self.size, self.store = size, OrderedDict()

    def get(self, path: str, normalized: bool = True):
        from ..renderers import load_mesh, normalize

        key = (path, normalized)
        if key not in self.store:
            try:
                mesh = load_mesh(path, "mesh")
            except InputError as exc:
                raise BadSample(path, str(exc)) from None
            self.store[key] = normalize(mesh) if normalized else mesh
            while len(self.store) > self.size:
                self.store.popitem(last=False)
        self.store.move_to_end(key)
        return self.store[key]


class MeshFolder(Dataset):
    """Synthetic samples rendered on the fly: ``views_per_mesh`` samples per mesh, sample k of a
    mesh seen from an orbit camera drawn from (seed, sample index) alone, so the data are the
    same in every run and after a resume. Image: unlit albedo or lit RGB on white; controls from
    the same render, as sampling.multiview.control_maps makes them for inference."""

    def __init__(self, folder: str, key: str, size: int, render, controls=(), caption: str = "", seed: int = 0,
                 on_bad: str = "stop", log: Callable[[str], None] = print):
        from ..renderers import MESH_EXTENSIONS

        self.folder, self.key, self.size, self.render, self.controls = folder, key, size, render, tuple(controls)
        self.caption, self.seed = caption, seed
        self.scan = Scanner(key, on_bad, log)
        exts = tuple(e if e.startswith(".") else "." + e for e in MESH_EXTENSIONS)
        self.meshes = [os.path.join(folder, n) for n in list_files(folder, key, exts, "meshes")]
        self.cache = _MeshCache()

    def __len__(self):
        return len(self.meshes) * self.render.views_per_mesh

    def camera(self, index: int):
        from ..renderers import Camera, look_at, orbit_position

        rng = np.random.default_rng([self.seed, 0x5EED, index])
        az = rng.uniform(0.0, 360.0)
        el = rng.uniform(*self.render.elevation)
        return Camera(look_at(orbit_position(az, el, self.render.radius)), "perspective",
                      math.radians(self.render.fov))

    def load(self, index: int) -> Sample:
        from ..renderers import render_views
        from ..sampling.multiview import control_maps

        path = self.meshes[index // self.render.views_per_mesh]
        mesh = self.cache.get(path)
        lit = self.render.image == "lit"
        try:
            bundle = render_views(mesh, [self.camera(index)], self.size, self.size, backend=self.render.backend,
                                  lit=lit)
        except InputError as exc:
            raise BadSample(path, f"could not be rendered ({exc})") from None
        image = torch.from_numpy(np.ascontiguousarray((bundle.lit if lit else bundle.albedo)[0]))
        maps = [control_maps(bundle, CONTROL_RENDER_NAMES[k])[0] for k in self.controls]
        return Sample(key=f"{path}#{index % self.render.views_per_mesh}", domain=SYNTHETIC, image=image,
                      caption=read_caption(os.path.splitext(path)[0] + ".txt", self.caption),
                      controls=torch.stack(maps) if maps else None)


def camera_from_pose(pose, fov_deg: float, convention: str = "opengl"):
    """A Camera from a triplet's pose: a 4x4 object-to-camera matrix (rows), or
    {"eye", "target", "up"} in the object's frame. ``convention`` opencv: the matrix maps into an
    OpenCV camera (x right, y down, looking down +z)."""
    from ..renderers import Camera, look_at

    if isinstance(pose, dict):
        m = look_at(pose["eye"], pose.get("target", (0, 0, 0)), pose.get("up", (0, 1, 0)))
    else:
        obj_to_cam = np.asarray(pose, np.float64)
        if obj_to_cam.shape != (4, 4) or not np.isfinite(obj_to_cam).all():
            raise ValueError("pose must be a finite 4x4 matrix or {eye, target, up}")
        m = np.linalg.inv(obj_to_cam)
        if convention == "opencv":
            m = m @ np.diag([1.0, -1.0, -1.0, 1.0])
        elif convention != "opengl":
            raise ValueError(f"convention must be opengl or opencv (got {convention!r})")
    return Camera(m, "perspective", math.radians(fov_deg))


def inside_folder(folder: str, reference: str, key: str, meta_path: str, what: str) -> str:
    """The real path of ``reference`` (a path written in a dataset's file ``meta_path``), which
    must lie inside ``folder``: absolute paths, ``..`` and symlinks leading out of the dataset
    folder are refused with an InputError naming ``key`` and the file (a dataset must not make
    the trainer read files elsewhere on the machine)."""
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, reference))   # an absolute reference replaces root
    try:
        contained = os.path.commonpath([root, target]) == root
    except ValueError:                                          # different drives (Windows)
        contained = False
    if os.path.isabs(reference) or not contained:
        raise InputError(key, f"{meta_path}: its {what} '{reference}' resolves to '{target}', outside the dataset "
                              f"folder '{root}'. The {what} must lie inside the dataset folder: give a path "
                              "relative to it (no absolute path, no '..' or symlink leading out of it).")
    return target


class TripletFolder(Dataset):
    """RefAny3D triplets: NAME.png (target image) + NAME.json ({"mesh": path relative to the
    folder and inside it (others are refused, see :func:`inside_folder`), "pose",
    "fov", "caption", optional "frame": asset | normalized, "convention": opengl | opencv}).
    The target point map is rendered from the mesh at the pose (at the image's own size, then
    cropped like the image); the condition views with refany3d.conditions.render_conditions."""

    def __init__(self, folder: str, key: str, size: int, n_views: int, condition_size: int, backend: str = "auto",
                 caption: str = "", resize: str = "crop", on_bad: str = "stop", log: Callable[[str], None] = print):
        self.folder, self.key, self.size, self.resize = folder, key, size, resize
        self.n_views, self.condition_size, self.backend, self.caption = n_views, condition_size, backend, caption
        self.scan = Scanner(key, on_bad, log)
        names = [n for n in list_files(folder, key, IMAGE_EXTENSIONS, "target images") if not _is_control_file(n)]
        self.items = _scan_items(folder, names, self._check, self.scan, size, "target image(s)")
        if not self.items:
            raise InputError(key, f"no usable triplet in '{folder}' (each needs NAME.png and NAME.json; see the log).")
        self.meshes = _MeshCache()
        self.views: OrderedDict = OrderedDict()

    def _check(self, path: str, wrong_size: list) -> tuple:
        w, h = image_size(path)
        meta_path = os.path.splitext(path)[0] + ".json"
        if not os.path.isfile(meta_path):
            raise BadSample(path, f"its description {os.path.basename(meta_path)} is missing")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSample(meta_path, f"is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("mesh"), str) or "pose" not in meta:
            raise BadSample(meta_path, 'needs {"mesh": "relative/path.glb", "pose": 4x4 or {eye, target, up}, '
                                       '"fov": degrees, "caption": text}')
        mesh_path = inside_folder(self.folder, meta["mesh"], self.key, meta_path, "mesh")
        if not os.path.isfile(mesh_path):
            raise BadSample(meta_path, f"its mesh '{meta['mesh']}' does not exist")
        if meta.get("frame", "asset") not in ("asset", "normalized"):
            raise BadSample(meta_path, f"frame must be asset or normalized (got {meta.get('frame')!r})")
        try:
            fov = float(meta.get("fov", 45.0))
            camera_from_pose(meta["pose"], fov, meta.get("convention", "opengl"))
        except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
            raise BadSample(meta_path, f"bad pose or fov ({exc})") from None
        if self.resize == "error" and (w, h) != (self.size, self.size):
            wrong_size.append((path, w, h))
        return path, meta_path, meta, mesh_path

    def __len__(self):
        return len(self.items)

    def _conditions(self, mesh_path: str):
        from ..refany3d.conditions import render_conditions

        if mesh_path not in self.views:
            try:
                rgb, pts, _ = render_conditions(self.meshes.get(mesh_path), self.n_views, self.condition_size,
                                                self.backend)
            except InputError as exc:
                raise BadSample(mesh_path, f"condition views could not be rendered ({exc})") from None
            self.views[mesh_path] = (rgb, pts)
            while len(self.views) > 8:
                self.views.popitem(last=False)
        return self.views[mesh_path]

    def load(self, index: int) -> Sample:
        from ..renderers import render_views

        path, meta_path, meta, mesh_path = self.items[index]
        image = read_image(path)
        h, w = image.shape[:2]
        mesh = self.meshes.get(mesh_path, normalized=meta.get("frame", "asset") == "normalized")
        camera = camera_from_pose(meta["pose"], float(meta.get("fov", 45.0)), meta.get("convention", "opengl"))
        try:
            bundle = render_views(mesh, [camera], w, h, backend=self.backend, lit=False)
        except InputError as exc:
            raise BadSample(meta_path, f"the target point map could not be rendered at this pose ({exc})") from None
        if not bundle.mask.any():
            raise BadSample(meta_path, "the mesh is not visible from this pose (empty target point map)")
        points = (np.clip(bundle.points_normalized[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        rgb, pts = self._conditions(mesh_path)
        caption = meta.get("caption") or read_caption(os.path.splitext(path)[0] + ".txt", self.caption)
        return Sample(key=path, domain=TRIPLET, image=to_tensor(fit(image, self.size)), caption=str(caption),
                      point_map=to_tensor(fit(points, self.size, nearest=True)), views=(rgb, pts),
                      views_key=mesh_path)


def build_datasets(cfg, log: Callable[[str], None] = print) -> dict:
    """{source: Dataset} for the recipe: 'real' and 'synthetic' (Realiz3D), or 'refany3d'.
    A source is required when it can be drawn (data.real_ratio > 0 for real, < 1 for synthetic)."""
    d = cfg.data
    if cfg.recipe == "refany3d":
        return {TRIPLET: TripletFolder(d.refany3d, "data.refany3d", d.size, cfg.refany3d.n_views,
                                       cfg.refany3d.condition_size, d.render.backend, d.caption, d.resize,
                                       d.on_bad_sample, log)}
    controls = tuple(d.controls) if cfg.recipe == "stage2" else ()
    out = {}
    if d.real_ratio > 0:
        if not d.real:
            raise InputError("data.real", f"data.real_ratio is {d.real_ratio}; give a folder of real images "
                                          "(or set data.real_ratio: 0).")
        out[REAL] = ImageFolder(d.real, "data.real", REAL, d.size, d.resize, (), d.caption, d.on_bad_sample, log)
    if d.real_ratio < 1:
        parts = []
        if d.synthetic:
            parts.append(ImageFolder(d.synthetic, "data.synthetic", SYNTHETIC, d.size, d.resize, controls, d.caption,
                                     d.on_bad_sample, log))
        if d.meshes:
            parts.append(MeshFolder(d.meshes, "data.meshes", d.size, d.render, controls, d.caption, cfg.train.seed,
                                    d.on_bad_sample, log))
        if not parts:
            raise InputError("data.synthetic", f"data.real_ratio is {d.real_ratio}; give a folder of synthetic "
                                               "renders (data.synthetic) or of meshes (data.meshes).")
        out[SYNTHETIC] = parts[0] if len(parts) == 1 else Concat(parts, "data.synthetic")
    return out


class Concat(Dataset):
    def __init__(self, parts: list, key: str):
        self.parts, self.key = parts, key

    def __len__(self):
        return sum(len(p) for p in self.parts)

    def load(self, index: int) -> Sample:
        for p in self.parts:
            if index < len(p):
                return p.load(index)
            index -= len(p)
        raise IndexError(index)


def _scan_items(folder: str, names: list, check, scan, size: int, what: str) -> list:
    """check(path, wrong_size) of every file: malformed samples go to the scanner's policy; images
    of another size than data.size (with data.resize: error) stop the run, listed by name."""
    items, wrong_size = [], []
    for n in names:
        try:
            items.append(check(os.path.join(folder, n), wrong_size))
        except BadSample as err:
            scan.bad(err)
    if wrong_size:
        listed = ", ".join(f"{os.path.basename(p)} ({w}x{h})" for p, w, h in wrong_size[:5])
        raise InputError("data.size", f"{len(wrong_size)} {what} in '{folder}' are not {size}x{size}: {listed}"
                                      f"{' ...' if len(wrong_size) > 5 else ''}. Resize them, or set data.resize: "
                                      "crop to scale and centre-crop every image to data.size.")
    return items
