"""Generated point maps back to XYZ (SPEC.md section 2, [ours]): per-axis [0, 1] colours times the
reference asset's bounding box, foreground only, as float maps and as point clouds.

Which pixels are background. RefAny3D's point maps are white (1, 1, 1) on background, and a
surface point near the bounding box's max corner is nearly white too: per-axis normalised, it
approaches (1, 1, 1). A plain "every channel above t" test therefore drops the real surface
within 1 - t of that corner on all three axes (a box's corner, a chair's top-back-right). A
threshold closer to 1 alone would keep it but would turn every near-white blotch of a noisy
generated background into points at that corner. So the decision is hysteresis thresholding:

- every channel above ``WHITE`` (0.99: within 2.5 8-bit levels of white, where flat white lands
  after the decoder's clamp to [0, 1] and an 8-bit round trip): background, always;
- some channel at or below ``background_threshold`` (the user's knob, 0.95): foreground;
- in between (near white, not white): foreground only when 8-connected, through pixels that are
  not white, to a foreground pixel of the rule above. A real surface is continuous: its max-corner
  region continues into less extreme points of the same surface in any view, while background
  noise floats apart from the object. Near-white noise touching the object's silhouette is kept
  (it cannot be told from surface); a point closer to white than ``WHITE`` cannot be told from
  background and is dropped.

A ``background_threshold`` at or above ``WHITE`` gives the plain threshold test.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: every channel above this is white: background whatever its neighbours
WHITE = 0.99
_EIGHT = np.ones((3, 3), bool)


def foreground(point_map: np.ndarray, background_threshold: float = 0.95) -> np.ndarray:
    """Foreground of point-map images [..., H, W, 3] in [0, 1] (white background): bool [..., H, W],
    decided per image by the hysteresis rule in this module's docstring."""
    pm = np.asarray(point_map)
    lowest = pm.min(axis=-1)                       # a pixel is white only if every channel is
    sure = lowest <= background_threshold
    maybe = lowest <= max(WHITE, background_threshold)
    flat_sure, flat_maybe = sure.reshape(-1, *sure.shape[-2:]), maybe.reshape(-1, *maybe.shape[-2:])
    out = np.empty_like(flat_sure)
    for k, (s, m) in enumerate(zip(flat_sure, flat_maybe)):
        labels, _ = ndimage.label(m, structure=_EIGHT)
        keep = np.unique(labels[s])                # regions holding a sure foreground pixel
        out[k] = np.isin(labels, keep[keep > 0])
    return out.reshape(sure.shape)


def xyz_maps(point_maps: np.ndarray, asset_bounds: np.ndarray, background_threshold: float = 0.95):
    """Point maps [B, H, W, 3] in [0, 1] -> (xyz float32 [B, H, W, 3], foreground bool [B, H, W]).

    xyz: raw positions in the asset frame (the units of the mesh file), ``bbox_min + value *
    (bbox_max - bbox_min)`` per axis, 0 on background; asset_bounds: [2, 3] (min, max)."""
    pm = np.asarray(point_maps, np.float64)
    lo, hi = np.asarray(asset_bounds[0], np.float64), np.asarray(asset_bounds[1], np.float64)
    fg = foreground(pm, background_threshold)
    xyz = np.where(fg[..., None], lo + pm * (hi - lo), 0.0)
    return xyz.astype(np.float32), fg


def decode_point_map(point_map: np.ndarray, asset_bounds: np.ndarray, background_threshold: float = 0.95):
    """One generated point-map image [H, W, 3] in [0, 1] -> (xyz float32 [P, 3] in the asset frame,
    foreground bool [H, W]); P = foreground pixels in row-major order."""
    xyz, fg = xyz_maps(np.asarray(point_map)[None], asset_bounds, background_threshold)
    return xyz[0][fg[0]], fg[0]


def point_clouds(images: np.ndarray, xyz: np.ndarray, fg: np.ndarray) -> list[dict]:
    """One point cloud per batch item: images [B, H, W, 3] in [0, 1] give the colours, xyz
    [B, H, W, 3] and fg [B, H, W] come from :func:`xyz_maps`. Returns
    [dict(xyz float32 [P_b, 3], rgb uint8 [P_b, 3])] of length B."""
    rgb = np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)
    return [{"xyz": xyz[b][fg[b]], "rgb": rgb[b][fg[b]]} for b in range(len(fg))]
