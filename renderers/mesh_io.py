"""Loading meshes from files (GLB, GLTF, OBJ, PLY, STL) and from in-memory arrays."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .errors import InputError
from .mesh import Mesh, MeshPart, validate

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl")


def load_mesh(path: str, input_name: str = "mesh_file") -> Mesh:
    """Load a mesh file, flattening a scene graph with its transforms.

    Keeps per part: UVs and the base-colour texture, vertex or face colours, the base
    colour factor, and vertex normals. Raises :class:`InputError` for a missing file, an
    unknown extension, an unreadable file, or a file without triangles.
    """
    import trimesh

    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in MESH_EXTENSIONS:
        raise InputError(input_name, f"'{name}' is not a supported mesh file; use one of "
                                     f"{', '.join(MESH_EXTENSIONS)}.")
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{name}' does not exist. Put the file in ComfyUI's input folder "
                                     "(or upload it) and pick it from the list.")
    try:
        scene = trimesh.load(path, force="scene", process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise InputError(input_name, f"'{name}' could not be read as {ext[1:].upper()} ({type(exc).__name__}: "
                                     f"{exc}). Check that the file is a valid mesh.") from exc
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # point clouds and line paths carry no surface to render
        with np.errstate(invalid="ignore", over="ignore"):   # NaN vertices are reported by validate()
            parts.append(_part_from_trimesh(geom, np.asarray(transform, np.float64), str(node)))
    mesh = Mesh(parts=parts, source=name)
    if not parts:
        has_points = any(len(getattr(g, "vertices", ())) for g in scene.geometry.values())
        what = "only points or lines (a point cloud?)" if has_points else "nothing (empty mesh)"
        raise InputError(input_name, f"'{name}' contains {what}; the renderer needs triangle faces. "
                                     "Load a mesh with faces.")
    return validate(mesh, input_name)


def mesh_from_arrays(vertices, faces, vertex_colors=None, source: str = "MESH input",
                     input_name: str = "mesh") -> Mesh:
    """A Mesh from plain arrays (e.g. ComfyUI's native MESH type): vertices [N, 3], faces [M, 3],
    optional vertex colours [N, 3|4] in [0, 1]."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[-1] != 3 or f.ndim != 2 or f.shape[-1] != 3:
        raise InputError(input_name, f"expected vertices [N, 3] and faces [M, 3], got {v.shape} and {f.shape}.")
    part = MeshPart(vertices=v, faces=f, name="mesh")
    if vertex_colors is not None:
        c = np.asarray(vertex_colors, np.float32)
        part.vertex_colors = np.concatenate([c[:, :3], np.ones((len(c), 1), np.float32)], axis=1)
    return validate(Mesh(parts=[part], source=source), input_name)


def _part_from_trimesh(geom, transform: np.ndarray, name: str) -> MeshPart:
    import trimesh

    rot, shift = transform[:3, :3], transform[:3, 3]
    vertices = np.asarray(geom.vertices, np.float64) @ rot.T + shift
    faces = np.asarray(geom.faces, np.int64)
    mirrored = np.linalg.det(rot) < 0
    if mirrored:  # a mirroring transform turns the winding inside out; keep fronts outward
        faces = faces[:, ::-1].copy()
    normals = np.asarray(geom.vertex_normals, np.float64) @ np.linalg.inv(rot)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    part = MeshPart(vertices=vertices, faces=faces, vertex_normals=normals, name=name)

    visual = geom.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        image, factor = _material_color(material)
        part.base_color = factor
        if image is not None and visual.uv is not None and len(visual.uv) == len(vertices):
            part.texture = image
            part.uv = np.asarray(visual.uv, np.float32)
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
        part.base_color = np.ones(4, np.float32)
        if visual.kind == "vertex":
            part.vertex_colors = np.asarray(visual.vertex_colors, np.float32) / 255.0
        elif visual.kind == "face":
            part.face_colors = np.asarray(visual.face_colors, np.float32) / 255.0
    return part


def _material_color(material) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(texture uint8 [H, W, 4] or None, base colour factor float32 [4]) of a trimesh material."""
    import trimesh

    image, factor = None, np.ones(4, np.float32)
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = np.asarray(material.baseColorFactor, np.float32).reshape(-1)[:4]
            if factor.max() > 1.0:  # trimesh sometimes stores factors as 0..255
                factor = factor / 255.0
    elif isinstance(material, trimesh.visual.material.SimpleMaterial):
        image = material.image
        if image is None and material.diffuse is not None:
            factor = np.asarray(material.diffuse, np.float32)[:4] / 255.0
    if image is not None:
        image = np.asarray(image.convert("RGBA"), np.uint8)
    return image, factor
