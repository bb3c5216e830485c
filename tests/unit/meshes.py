"""Small meshes built in code for the tests."""
import numpy as np

from realiz3d.renderers import Mesh, MeshPart
from realiz3d.renderers.sample_mesh import box_arrays

#: one colour per side of the box: +X red, +Y green, +Z blue, -X, -Y, -Z darker greys
SIDE_RGB = {(1, 0, 0): (1.0, 0.0, 0.0), (-1, 0, 0): (0.2, 0.2, 0.2), (0, 1, 0): (0.0, 1.0, 0.0),
            (0, -1, 0): (0.4, 0.4, 0.4), (0, 0, 1): (0.0, 0.0, 1.0), (0, 0, -1): (0.6, 0.6, 0.6)}


def colored_box(half=(0.6, 0.4, 0.5)) -> Mesh:
    """Box whose six sides carry flat face colours (SIDE_RGB), no texture."""
    v, f, _, side = box_arrays(np.asarray(half, float))
    colors = np.array(list(SIDE_RGB.values()), np.float32)[side]
    part = MeshPart(vertices=v, faces=f, face_colors=np.concatenate([colors, np.ones((len(f), 1), np.float32)], 1),
                    base_color=np.ones(4, np.float32), name="box")
    return Mesh(parts=[part], source="colored_box")


def icosphere(subdivisions: int = 4) -> Mesh:
    import trimesh
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.9)
    part = MeshPart(vertices=np.asarray(s.vertices, float), faces=np.asarray(s.faces, np.int64),
                    vertex_normals=np.asarray(s.vertex_normals, float), name="sphere")
    return Mesh(parts=[part], source="icosphere")
