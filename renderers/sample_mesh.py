"""The pack's bundled sample asset, made procedurally: a textured box with a distinct colour on
each side (+X red, -X cyan, +Y green, -Y magenta, +Z blue, -Z yellow, each with a checker so
texture sampling shows) and a vertex-coloured cone on top, offset towards +X +Z by a node
transform. Nothing about it is symmetric, so flips and axis swaps show at a glance."""
from __future__ import annotations

import numpy as np

#: side normal -> colour (sRGB, 0..1); the order is the texture atlas order
SIDE_COLORS = {
    (1, 0, 0): (0.85, 0.15, 0.15), (-1, 0, 0): (0.15, 0.8, 0.85),
    (0, 1, 0): (0.2, 0.75, 0.2), (0, -1, 0): (0.8, 0.2, 0.8),
    (0, 0, 1): (0.2, 0.3, 0.9), (0, 0, -1): (0.9, 0.85, 0.2),
}
BOX_HALF = np.array([0.6, 0.4, 0.5])
CONE_OFFSET = np.array([0.3, 0.4, 0.15])
TEXTURE_SIZE = 192


def box_arrays(half=BOX_HALF, cells: int = 3):
    """Box with outward counter-clockwise faces: vertices [24, 3], faces [12, 3], uv [24, 2]
    (one atlas cell per side, 3 x 2 cells) and the side index of each face [12]."""
    vertices, faces, uv, side = [], [], [], []
    for i, n in enumerate(SIDE_COLORS):
        n = np.array(n, float)
        u = np.roll(np.abs(n), 1)                  # any axis perpendicular to n
        v = np.cross(n, u)                         # so that u x v = n: counter-clockwise seen from outside
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        base = len(vertices)
        for a, b in corners:
            vertices.append((n + a * u + b * v) * half)
            col, row = i % cells, i // cells
            inset = 0.08
            uu = (col + 0.5 + a * (0.5 - inset)) / cells
            vv = 1.0 - (row + 0.5 - b * (0.5 - inset)) / 2.0
            uv.append((uu, vv))
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
        side += [i, i]
    return np.array(vertices), np.array(faces), np.array(uv, np.float32), np.array(side)


def atlas_texture(size: int = TEXTURE_SIZE, cells: int = 3, checks: int = 4) -> np.ndarray:
    """uint8 [size * 2 / cells, size, 4]: each side's colour with a lighter checker."""
    h = size * 2 // cells
    img = np.zeros((h, size, 4), np.uint8)
    img[..., 3] = 255
    cw, ch = size // cells, h // 2
    yy, xx = np.mgrid[0:ch, 0:cw]
    checker = ((yy * checks // ch + xx * checks // cw) % 2)[..., None]
    for i, color in enumerate(SIDE_COLORS.values()):
        col, row = i % cells, i // cells
        c = np.array(color)
        cell = c * (1 - 0.25 * checker) + 0.25 * checker
        img[row * ch:(row + 1) * ch, col * cw:(col + 1) * cw, :3] = np.round(cell * 255)
    return img


def cone_arrays(radius: float = 0.15, height: float = 0.35, segments: int = 16):
    """Cone standing on y = 0, apex up: vertices, faces, vertex colours [N, 4] (orange to white)."""
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(ang), np.zeros_like(ang), radius * np.sin(ang)], 1)
    vertices = np.concatenate([ring, [[0, height, 0], [0, 0, 0]]])
    apex, center = segments, segments + 1
    faces = []
    for k in range(segments):
        j = (k + 1) % segments
        faces.append((k, apex, j))       # sides: counter-clockwise from outside
        faces.append((k, j, center))     # bottom, facing -Y
    colors = np.tile([1.0, 0.55, 0.1, 1.0], (len(vertices), 1))
    colors[apex] = (1.0, 1.0, 1.0, 1.0)
    return vertices, np.array(faces), colors


def build_sample_scene():
    """A trimesh.Scene of the sample asset (box + transformed cone)."""
    import trimesh
    from PIL import Image

    v, f, uv, _ = box_arrays()
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(atlas_texture()), baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0, roughnessFactor=0.8)
    box = trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False)
    cv, cf, cc = cone_arrays()
    cone = trimesh.Trimesh(cv, cf, vertex_colors=np.round(cc * 255).astype(np.uint8), process=False)
    scene = trimesh.Scene()
    scene.add_geometry(box, node_name="box", geom_name="box")
    scene.add_geometry(cone, node_name="cone", geom_name="cone",
                       transform=trimesh.transformations.translation_matrix(CONE_OFFSET))
    return scene


def write_sample_mesh(path: str) -> None:
    build_sample_scene().export(path)
