"""Turning float render buffers into displayable images (the last step, nothing earlier)."""
from __future__ import annotations

import numpy as np

from .render import RenderBundle


def normal_image(bundle: RenderBundle, frame: str = "world") -> np.ndarray:
    """float32 [V, H, W, 3]: (n + 1) / 2 per axis; background black."""
    n = bundle.normal_world if frame == "world" else bundle.normal_camera
    return np.where(bundle.mask[..., None], (n + 1.0) * 0.5, 0.0).astype(np.float32)


def depth_image(bundle: RenderBundle) -> np.ndarray:
    """float32 [V, H, W, 3]: per view, near = white, far = dark (0.1), background black."""
    out = np.zeros((len(bundle), bundle.height, bundle.width), np.float32)
    for k in range(len(bundle)):
        m = bundle.mask[k]
        if m.any():
            d = bundle.depth[k][m]
            lo, hi = float(d.min()), float(d.max())
            out[k][m] = 1.0 - 0.9 * (d - lo) / max(hi - lo, 1e-8)
    return np.repeat(out[..., None], 3, axis=-1)


#: Background of geometry control maps (normal, depth, point-map controls): black (CONVENTIONS.md)
CONTROL_BACKGROUND = 0.0


def composite_over(image, background: float = CONTROL_BACKGROUND):
    """[..., 4] RGBA (numpy or torch, float in [0, 1]) over a flat grey ``background`` -> [..., 3];
    [..., 3] is returned unchanged. Control maps go over black (their documented background),
    never over white."""
    if image.shape[-1] != 4:
        return image
    rgb, a = image[..., :3], image[..., 3:4]
    return rgb * a + background * (1 - a)
