"""Visibility by exact ray casting (Embree through embreex, via trimesh): no GL needed."""
from __future__ import annotations

import numpy as np

from .cameras import Camera
from .errors import InputError


class RaycastVisibility:
    name = "raycast"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        import trimesh
        try:
            from trimesh.ray.ray_pyembree import RayMeshIntersector
        except ImportError as exc:
            raise InputError("backend", "the raycast backend needs the 'embreex' package "
                                        "(pip install embreex).") from exc
        self._intersector = RayMeshIntersector(trimesh.Trimesh(vertices, faces, process=False))

    def face_ids(self, camera: Camera, width: int, height: int) -> np.ndarray:
        o, d = camera.rays(width, height)
        ids = self._intersector.intersects_first(np.ascontiguousarray(o), np.ascontiguousarray(d))
        return np.asarray(ids, np.int32).reshape(height, width)
