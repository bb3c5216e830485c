"""Cameras, mesh loading and multi-view rendering: the whole public API of the renderer.

    from renderers import load_mesh, normalize, refany3d_rig, render_views
    mesh = normalize(load_mesh("asset.glb"))
    bundle = render_views(mesh, refany3d_rig(8), 512, 512)      # RenderBundle of float buffers

Conventions (axes, camera frame, azimuth, image rows, point-map normalisation) are in
CONVENTIONS.md at the project root. Nothing here imports ComfyUI.
"""
from .cameras import Camera, cameras_from_json, look_at, orbit_position, orbit_rig, refany3d_rig
from .errors import InputError
from .images import depth_image, normal_image
from .mesh import Mesh, MeshPart, is_normalized, normalize, normalized, validate
from .mesh_io import MESH_EXTENSIONS, load_mesh, mesh_from_arrays
from .pointcloud import bundle_points, write_ply
from .render import BACKENDS, MAX_RESOLUTION, RenderBundle, render_views
from .surface import ALBEDO_MODES

__all__ = [
    "Camera", "cameras_from_json", "look_at", "orbit_position", "orbit_rig", "refany3d_rig", "InputError",
    "depth_image", "normal_image", "Mesh", "MeshPart", "is_normalized", "normalize", "normalized", "validate",
    "MESH_EXTENSIONS", "load_mesh", "mesh_from_arrays", "bundle_points", "write_ply", "BACKENDS", "MAX_RESOLUTION",
    "RenderBundle", "render_views", "ALBEDO_MODES",
]
