"""Point clouds from render bundles, written as binary PLY."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .render import RenderBundle


def bundle_points(bundle: RenderBundle, color: str = "albedo", stride: int = 1):
    """Foreground points of all views in the asset frame with their colours and normals.

    Returns (xyz float32 [P, 3], rgb uint8 [P, 3], normals float32 [P, 3]); ``stride`` keeps
    every stride-th pixel per row and column."""
    sl = (slice(None), slice(None, None, stride), slice(None, None, stride))
    m = bundle.mask[sl]
    rgb_src = bundle.lit if color == "lit" and bundle.lit is not None else bundle.albedo
    xyz = bundle.points[sl][m]
    rgb = np.clip(np.round(rgb_src[sl][m] * 255.0), 0, 255).astype(np.uint8)
    return xyz.astype(np.float32), rgb, bundle.normal_world[sl][m].astype(np.float32)


def write_ply(path: str, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Binary little-endian PLY, written to a temporary file in the same folder then renamed,
    so a failure never leaves a partial file."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(xyz), dtype=fields)
    data["x"], data["y"], data["z"] = xyz.T
    if normals is not None:
        data["nx"], data["ny"], data["nz"] = normals.T
    data["red"], data["green"], data["blue"] = rgb.T
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {len(xyz)}\n" + "".join(
        f"property {ply_types[t]} {n}\n" for n, t in fields) + "end_header\n"
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".ply")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
