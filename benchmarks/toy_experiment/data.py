"""Toy domains for the Realiz3D experiment, procedurally generated and seeded.

Both domains draw objects from the same shape distribution (a disc or a rotated box, random
position, size and colour); they differ only in how the object is rendered:

- "real": photo-like. A natural-ish background (sky / ground split at a random horizon, muted
  natural palettes, low-frequency mottling, fine grain), the object lit by a random light (Lambert
  shading on a sphere-like disc or a tilted box face, a specular highlight), texture noise, and a
  soft shadow cast on the background. No control maps.
- "synthetic": a flat render. One flat colour per object, a plain uniform background, no noise,
  and aligned control maps: ``normal`` (the object's normals as (n + 1) / 2, background black)
  and ``depth`` (height above the background plane in (0, 1], background black). The object mask
  (the silhouette) is the set of pixels where the normal map is not black.

Images are rendered at 2x and box-filtered down (anti-aliased edges). Coordinates: row 0 at the
top; normals with x right, y up, z towards the viewer. Folders are written in the training
library's formats: real = NAME.png (+ NAME.txt); synthetic = NAME.png + NAME.normal.png +
NAME.depth.png (+ NAME.txt).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPES = ("disc", "box")
SUPERSAMPLE = 2
CAPTION = "a photo of the object"      # one caption for every image: the domain is not in the text


@dataclass
class ToyObject:
    """Shape parameters in pixel units of the final image: centre (cx, cy), half size r (disc
    radius, box half width), box half height and rotation (radians), colour RGB in [0, 1]."""
    shape: str
    cx: float
    cy: float
    r: float
    h: float
    angle: float
    color: np.ndarray


def sample_object(rng: np.random.Generator, size: int) -> ToyObject:
    shape = SHAPES[rng.integers(len(SHAPES))]
    r = rng.uniform(0.16, 0.30) * size
    h = r * rng.uniform(0.6, 1.0)
    margin = r + 0.08 * size
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(-0.6, 0.6) if shape == "box" else 0.0
    hue = rng.uniform(0, 1)
    color = _hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    return ToyObject(shape, float(cx), float(cy), float(r), float(h), float(angle), color)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _grid(size: int):
    """Pixel-centre coordinates of the supersampled grid, in final-image pixel units."""
    n = size * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)      # xs, ys: [n, n]


def geometry(obj: ToyObject, size: int):
    """Supersampled (mask [n, n] bool, normals [n, n, 3], depth [n, n]) of the object."""
    xs, ys = _grid(size)
    if obj.shape == "disc":
        u, v = (xs - obj.cx) / obj.r, (obj.cy - ys) / obj.r       # v up
        d2 = u * u + v * v
        mask = d2 <= 1.0
        nz = np.sqrt(np.clip(1 - d2, 0, 1))
        normals = np.stack([u, v, nz], -1)
        depth = 0.35 + 0.65 * nz
    else:
        ca, sa = np.cos(obj.angle), np.sin(obj.angle)
        dx, dy = xs - obj.cx, ys - obj.cy
        u, v = (ca * dx + sa * dy) / obj.r, (-sa * dx + ca * dy) / obj.h
        mask = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        # a box seen slightly from above: a front face tilted towards the viewer, bevelled edges
        edge = np.maximum(np.abs(u), np.abs(v))
        bevel = np.clip((edge - 0.8) / 0.2, 0, 1)
        tilt = np.array([0.25 * sa, 0.25 * ca, 1.0])     # towards the box's own 'up' (-v)
        normals = np.broadcast_to(tilt / np.linalg.norm(tilt), mask.shape + (3,)).copy()
        side = np.where((np.abs(u) > np.abs(v))[..., None], np.sign(u)[..., None] * np.array([ca, -sa, 0]),
                        -np.sign(v)[..., None] * np.array([sa, ca, 0]))
        normals = normals * (1 - bevel[..., None]) + side * bevel[..., None]
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        depth = 0.8 - 0.3 * bevel
    normals = normals * mask[..., None]
    depth = np.where(mask, depth, 0.0)
    return mask, normals, depth


def _down(a: np.ndarray, size: int) -> np.ndarray:
    """Box filter from the supersampled grid to size x size."""
    s = SUPERSAMPLE
    return a.reshape(size, s, size, s, *a.shape[2:]).mean(axis=(1, 3))


def _smooth_noise(rng, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, n)
    i0 = np.clip(t.astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None] + rows[:, i0 + 1] * f[None]


SKIES = np.array([[0.55, 0.70, 0.90], [0.75, 0.80, 0.85], [0.90, 0.75, 0.60], [0.45, 0.55, 0.70]])
GROUNDS = np.array([[0.30, 0.45, 0.20], [0.45, 0.38, 0.25], [0.55, 0.50, 0.40], [0.25, 0.30, 0.22],
                    [0.60, 0.55, 0.45]])


def render_real(obj: ToyObject, size: int, rng: np.random.Generator):
    """(image [size, size, 3] in [0, 1], mask [size, size] in [0, 1])."""
    n = size * SUPERSAMPLE
    xs, ys = _grid(size)
    mask, normals, _ = geometry(obj, size)
    horizon = rng.uniform(0.3, 0.7) * size
    sky = SKIES[rng.integers(len(SKIES))] * rng.uniform(0.85, 1.1)
    ground = GROUNDS[rng.integers(len(GROUNDS))] * rng.uniform(0.8, 1.15)
    blend = np.clip((ys - horizon) / (0.08 * size) + 0.5, 0, 1)[..., None]
    sky_grad = 1.0 + 0.25 * (horizon - ys)[..., None] / size
    bg = sky * sky_grad * (1 - blend) + ground * blend
    bg = bg * (1 + 0.18 * _smooth_noise(rng, n, 4)[..., None] + 0.08 * _smooth_noise(rng, n, 10)[..., None])
    # soft shadow: a blurred copy of the silhouette, offset away from the light
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.2, 0.8), 1.0])
    light /= np.linalg.norm(light)
    off = -light[:2] / max(light[2], 0.3) * 0.18 * obj.r
    shadow_obj = ToyObject(obj.shape, obj.cx + off[0], obj.cy - off[1] + 0.1 * obj.r, obj.r * 1.05, obj.h * 1.05,
                           obj.angle, obj.color)
    shadow = _blur(geometry(shadow_obj, size)[0].astype(float), 0.12 * obj.r * SUPERSAMPLE)
    bg = bg * (1 - 0.45 * shadow[..., None])
    # the lit object: ambient + Lambert + specular, with texture noise
    lambert = np.clip((normals * light).sum(-1), 0, 1)
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    spec = np.clip((normals * half).sum(-1), 0, 1) ** 30
    texture = 1 + 0.10 * _smooth_noise(rng, n, 12) + 0.06 * rng.standard_normal((n, n))
    color = obj.color * rng.uniform(0.85, 1.1, 3)
    lit = color * (0.3 + 0.75 * lambert)[..., None] * texture[..., None] + 0.5 * spec[..., None]
    img = np.where(mask[..., None], lit, bg)
    img = img + 0.025 * rng.standard_normal(img.shape)       # sensor grain over everything
    return np.clip(_down(img, size), 0, 1), _down(mask.astype(float), size)


def render_synthetic(obj: ToyObject, size: int, rng: np.random.Generator):
    """(image, normal map, depth map [size, size, 3] in [0, 1], mask [size, size] in [0, 1])."""
    mask, normals, depth = geometry(obj, size)
    bg = np.full(3, rng.uniform(0.82, 0.95))
    img = np.where(mask[..., None], obj.color, bg)
    normal_map = np.where(mask[..., None], (normals + 1) / 2, 0.0)
    depth_map = np.repeat(depth[..., None], 3, -1)
    m = _down(mask.astype(float), size)
    return (np.clip(_down(img, size), 0, 1), _down(normal_map, size), _down(depth_map, size), m)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(a, sigma)


def make_split(kind: str, count: int, size: int, seed: int) -> dict:
    """Arrays of one split: images [N, S, S, 3], masks [N, S, S] (and normal, depth for synthetic)."""
    rng = np.random.default_rng(seed)
    out = {"image": [], "mask": [], "normal": [], "depth": []}
    for _ in range(count):
        obj = sample_object(rng, size)
        if kind == "real":
            img, m = render_real(obj, size, rng)
        else:
            img, nrm, dep, m = render_synthetic(obj, size, rng)
            out["normal"].append(nrm), out["depth"].append(dep)
        out["image"].append(img), out["mask"].append(m)
    return {k: np.stack(v).astype(np.float32) for k, v in out.items() if v}


def _png(a: np.ndarray, path: str) -> None:
    Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def write_folder(split: dict, folder: str, controls: tuple = ("normal", "depth"), caption: str = CAPTION) -> None:
    """The training library's dataset formats: NAME.png (+ NAME.<control>.png) + NAME.txt."""
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(split["image"]):
        name = f"{i:05d}"
        _png(img, os.path.join(folder, name + ".png"))
        for c in controls:
            if c in split:
                _png(split[c][i], os.path.join(folder, f"{name}.{c}.png"))
        if caption is not None:
            with open(os.path.join(folder, name + ".txt"), "w") as f:
                f.write(caption)


def contact_sheet(images: np.ndarray, path: str, cols: int = 8, scale: int = 2) -> None:
    """A grid of images [N, S, S, 3] saved as one PNG (for looking at, nothing reads it)."""
    n, s = len(images), images.shape[1]
    rows = (n + cols - 1) // cols
    sheet = np.ones((rows * (s + 2), cols * (s + 2), 3), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = img
    im = Image.fromarray((np.clip(sheet, 0, 1) * 255 + 0.5).astype(np.uint8))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)
