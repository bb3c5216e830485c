"""Writing meshes as binary glTF (GLB), in the asset's own frame."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .mesh import Mesh, MeshPart


def _part_to_trimesh(part: MeshPart, mesh: Mesh):
    import trimesh
    from PIL import Image

    vertices = mesh.to_asset_frame(part.vertices)
    factor = np.round(np.clip(part.base_color, 0.0, 1.0) * 255).astype(np.uint8)
    if part.texture is not None and part.uv is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(np.ascontiguousarray(part.texture[..., :3])),
            baseColorFactor=factor.tolist(), metallicFactor=0.0, roughnessFactor=0.9, name=part.name)
        visual = trimesh.visual.TextureVisuals(uv=part.uv, material=material)
    elif part.vertex_colors is not None:
        colors = np.round(np.clip(part.vertex_colors, 0, 1) * 255).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=colors)
    elif part.face_colors is not None:
        colors = np.round(np.clip(part.face_colors, 0, 1) * 255).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(face_colors=colors)
    else:
        material = trimesh.visual.material.PBRMaterial(baseColorFactor=factor.tolist(), metallicFactor=0.0,
                                                       roughnessFactor=0.9, name=part.name)
        visual = trimesh.visual.TextureVisuals(material=material)
    kw = {}
    if part.vertex_normals is not None:
        kw["vertex_normals"] = part.vertex_normals
    return trimesh.Trimesh(vertices, part.faces, visual=visual, process=False, **kw)


def glb_bytes(mesh: Mesh) -> bytes:
    import trimesh

    scene = trimesh.Scene()
    for k, part in enumerate(mesh.parts):
        scene.add_geometry(_part_to_trimesh(part, mesh), node_name=f"{part.name}_{k}", geom_name=f"{part.name}_{k}")
    return scene.export(file_type="glb")


def write_glb(mesh: Mesh, path: str) -> None:
    """Export ``mesh`` (vertices back in the asset's own frame, textures as PNG with a white
    base-colour factor) to ``path``: written to a temporary file in the same folder, then renamed,
    so a failed export never leaves a partial file."""
    data = glb_bytes(mesh)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".glb")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
