"""Control images in the convention OminiControl's spatial LoRAs were trained on (SPEC.md section 5),
derived from a mesh's renders instead of a photo.

    from renderers.controls import canny_control, inverse_depth_control
    depth = inverse_depth_control(bundle)           # float32 [V, H, W, 3] in [0, 1]: depth.safetensors
    edges = canny_control(bundle, "auto")           # float32 [V, H, W, 3], 0 or 1:  canny.safetensors

How the LoRAs saw their conditions (OminiControl's ``src/train/data.py``):
- depth: ``pipeline("depth-estimation", "depth-anything-small")(image)["depth"]``: relative
  inverse depth, min-max normalised over the image, ``(d * 255).astype(uint8)`` (truncated), as RGB.
  Here: 1 / z-depth over each view's foreground, min-max normalised over that foreground (nearest 1,
  farthest 0), truncated to 8 bits the same way; background exactly 0 (no surface, "infinitely far").
- canny: ``cv2.Canny(cv2.cvtColor(rgb, COLOR_RGB2GRAY), 100, 200)`` as RGB. Here :func:`canny` is
  that algorithm in numpy/scipy (OpenCV is not a runtime dependency: ComfyUI hosts often carry a
  conflicting build), run on the 8-bit grayscale of a render over black; a test compares it with
  OpenCV pixel for pixel.

Everything returns ComfyUI's IMAGE layout [V, H, W, 3] float32 in [0, 1], one image per view in rig
order; ``sampling.multiview.make_grid`` lays them out as a grid. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError
from .images import normal_image
from .render import RenderBundle

#: the sources canny_control accepts; 'auto': the normal render's edges, plus the RGB's when the
#: mesh's albedo varies (a texture or several colours), as a photo shows both creases and paint
CANNY_SOURCES = ("normal", "depth", "rgb", "auto")
#: OminiControl's thresholds (cv2.Canny(img, 100, 200))
CANNY_LOW, CANNY_HIGH = 100, 200

# cv2.cvtColor(RGB2GRAY) for 8 bits: 0.299 / 0.587 / 0.114 in 15-bit fixed point (summing to 2^15),
# rounded; equal to OpenCV's output for all 2^24 colours (checked against opencv-python 5.0)
_GRAY_WEIGHTS, _GRAY_SHIFT = (9798, 19235, 3735), 15
# cv2.Canny's direction bins: tan(22.5 deg) in 15-bit fixed point (canny.cpp, CANNY_SHIFT)
_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _SHIFT) + 0.5)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [..., C] in [0, 1] -> uint8, rounded (how an 8-bit image file stores it)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H, W], exactly as cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)."""
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    wr, wg, wb = _GRAY_WEIGHTS
    return ((r * wr + g * wg + b * wb + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT).astype(np.uint8)


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3 x 3 Sobel derivatives (int32 [H, W] each) with replicated borders, as cv2.Canny takes them."""
    p = np.pad(channel.astype(np.int32), 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


def canny(image: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """OpenCV's Canny, as ``cv2.Canny(image, low, high)`` computes it (aperture 3, L1 gradient).

    image: uint8 [H, W] (grayscale) or [H, W, C] (each pixel takes the channel of largest gradient,
    as OpenCV does for a colour image; OminiControl's training converted to gray first:
    :func:`rgb_to_gray`). Returns uint8 [H, W], 255 on edges, 0 elsewhere.

    The steps of OpenCV's canny.cpp: Sobel 3 x 3 with replicated borders; magnitude |gx| + |gy|;
    non-maximum suppression against the two neighbours along the gradient, binned into 4 directions
    with OpenCV's fixed-point tan(22.5 deg) test and its tie rule (horizontal and vertical: strictly
    above the neighbour before, at least the one after; diagonal: strictly above both; outside the
    image counts as 0); thresholds floored, kept when
    strictly above; hysteresis: a suppressed-maximum pixel above ``low`` is an edge when it is
    8-connected through such pixels to one above ``high``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InputError("image", f"canny needs a uint8 [H, W] or [H, W, C] image (got {image.dtype} "
                                  f"{list(image.shape)}).")
    if low > high:
        low, high = high, low
    low_i, high_i = int(np.floor(low)), int(np.floor(high))
    channels = image[..., None] if image.ndim == 2 else image
    dx, dy = _sobel(channels[..., 0])
    mag = np.abs(dx) + np.abs(dy)
    for c in range(1, channels.shape[-1]):     # OpenCV keeps the first channel of strictly larger magnitude
        cdx, cdy = _sobel(channels[..., c])
        cmag = np.abs(cdx) + np.abs(cdy)
        larger = cmag > mag
        dx, dy, mag = np.where(larger, cdx, dx), np.where(larger, cdy, dy), np.where(larger, cmag, mag)

    h, w = mag.shape
    m = np.pad(mag, 1)                           # zero magnitude outside the image
    centre = m[1:-1, 1:-1]

    def nb(di: int, dj) -> np.ndarray:           # the neighbour at row offset di, column offset dj
        if np.isscalar(dj):
            return m[1 + di:1 + di + h, 1 + dj:1 + dj + w]
        cols = np.arange(w)[None, :] + 1 + dj    # dj per pixel (diagonals)
        return m[np.arange(h)[:, None] + 1 + di, cols]

    ax = np.abs(dx).astype(np.int64)
    ay = np.abs(dy).astype(np.int64) << _SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_SHIFT + 1))
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    s = np.where((dx ^ dy) < 0, -1, 1)           # the diagonal's direction: gx, gy of one sign or not
    keep_h = (centre > nb(0, -1)) & (centre >= nb(0, 1))
    keep_v = (centre > nb(-1, 0)) & (centre >= nb(1, 0))
    keep_d = (centre > nb(-1, -s)) & (centre > nb(1, s))
    maxima = (mag > low_i) & ((horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d))
    strong = maxima & (mag > high_i)
    if not strong.any():
        return np.zeros((h, w), np.uint8)
    labels, _ = ndimage.label(maxima, structure=np.ones((3, 3), bool))
    hit = np.zeros(labels.max() + 1, bool)
    hit[labels[strong]] = True
    hit[0] = False
    return np.where(hit[labels], np.uint8(255), np.uint8(0))


def _inverse_depth(bundle: RenderBundle) -> np.ndarray:
    """float64 [V, H, W] in [0, 1] before quantisation; see :func:`inverse_depth_control`."""
    out = np.zeros((len(bundle), bundle.height, bundle.width))
    for k in range(len(bundle)):
        m = bundle.mask[k]
        if not m.any():
            continue
        inv = 1.0 / np.maximum(bundle.depth[k][m].astype(np.float64), 1e-12)
        lo, hi = inv.min(), inv.max()
        # a view whose foreground lies at one depth (a card facing an orthographic camera) is all near
        out[k][m] = (inv - lo) / (hi - lo) if hi > lo else 1.0
    return out


def inverse_depth_control(bundle: RenderBundle) -> np.ndarray:
    """float32 [V, H, W, 3]: Depth Anything's convention from the render's depth. Per view, 1 / depth
    over the foreground, min-max normalised over that view's foreground (nearest = 1, farthest = 0),
    truncated to 8 bits as the pipeline does (``(d * 255).astype(uint8)``, so values are k / 255);
    background exactly 0; three equal channels."""
    q = np.floor(_inverse_depth(bundle) * 255.0) / 255.0
    return np.repeat(q.astype(np.float32)[..., None], 3, axis=-1)


def albedo_varies(bundle: RenderBundle) -> bool:
    """Whether the foreground's 8-bit albedo takes more than one colour in any view (a texture,
    vertex or face colours): then the RGB has edges of its own."""
    for k in range(len(bundle)):
        m = bundle.mask[k]
        if m.any() and np.ptp(to_uint8(bundle.albedo[k][m]), axis=0).max() > 0:
            return True
    return False


def _source_gray(bundle: RenderBundle, source: str) -> np.ndarray:
    """uint8 [V, H, W]: the 8-bit grayscale image canny runs on, the render over black."""
    if source == "normal":
        rgb = to_uint8(normal_image(bundle, "camera"))
    elif source == "depth":
        return np.floor(_inverse_depth(bundle) * 255.0).astype(np.uint8)
    else:
        rgb = to_uint8(np.where(bundle.mask[..., None], bundle.albedo, 0.0))
    return rgb_to_gray(rgb)


def canny_control(bundle: RenderBundle, source: str = "auto", low: float = CANNY_LOW,
                  high: float = CANNY_HIGH) -> np.ndarray:
    """float32 [V, H, W, 3]: OminiControl's canny condition (white edges on black, three equal
    channels) of each view's render, over black.

    source: 'normal' (camera-frame normals: creases and silhouette), 'depth' (the inverse depth
    control: occlusion edges and silhouette), 'rgb' (the unlit albedo: texture and colour edges),
    'auto' ('normal', plus 'rgb' when :func:`albedo_varies`). Every source also keeps the Canny
    edges of the silhouette mask, so the outline is whole even where the render is dark next to the
    black background (the far side of the depth control, a black albedo); those lie on the
    outermost foreground pixel or the background pixel beside it, where Canny of the render itself
    puts them. low, high: Canny's hysteresis thresholds on the 8-bit gradient.
    """
    if source not in CANNY_SOURCES:
        raise InputError("source", f"must be one of {CANNY_SOURCES} (got {source!r}).")
    sources = [source]
    if source == "auto":
        sources = ["normal", "rgb"] if albedo_varies(bundle) else ["normal"]
    grays = [_source_gray(bundle, s) for s in sources]
    silhouette = bundle.mask.astype(np.uint8) * np.uint8(255)
    out = np.zeros((len(bundle), bundle.height, bundle.width), np.float32)
    for k in range(len(bundle)):
        edges = canny(silhouette[k], low, high) > 0
        for g in grays:
            edges |= canny(g[k], low, high) > 0
        out[k] = edges
    return np.repeat(out[..., None], 3, axis=-1)
