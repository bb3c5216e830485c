"""ComfyUI's native MESH <-> the pack's renderers.Mesh.

The host's MESH (comfy_api.latest Types.MESH) carries vertices and faces on every host; 0.33 adds
uvs, vertex colours, a texture, normals and zero-padded batches (vertex_counts / face_counts).
Every attribute is read with getattr, so a 0.3.75 MESH (geometry only) converts too, and the
output carries only what the host's MESH constructor accepts. The conventions (UV origin, colour
space) are converted by the library: renderers.mesh_io.mesh_from_native / native_arrays.
"""
from __future__ import annotations

import inspect
import logging

import torch
from comfy_api.latest import Types, io

from ..renderers.mesh import Mesh
from ..renderers.mesh_io import mesh_from_native, native_arrays
from .common import MeshType

log = logging.getLogger(__name__)

#: the host MESH's optional attributes the pack reads and writes
ATTRIBUTES = ("uvs", "vertex_colors", "texture", "normals")


def _numpy(value):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return value


def is_native(value) -> bool:
    """True for a host MESH (anything with batched vertices and faces that is not the pack's Mesh)."""
    return not isinstance(value, Mesh) and hasattr(value, "vertices") and hasattr(value, "faces")


def to_mesh(native, index: int = 0, input_name: str = "mesh", index_name: str = "batch_index") -> Mesh:
    """Item ``index`` of a host MESH as a renderers.Mesh (padding dropped, uvs / texture /
    vertex colours / normals kept where the host's MESH has them)."""
    material = getattr(native, "material", None)
    base = material.get("base_color_factor") if isinstance(material, dict) else None
    return mesh_from_native(
        _numpy(native.vertices), _numpy(native.faces),
        **{name: _numpy(getattr(native, name, None)) for name in ATTRIBUTES},
        vertex_counts=_numpy(getattr(native, "vertex_counts", None)),
        face_counts=_numpy(getattr(native, "face_counts", None)),
        index=index, base_color=base, input_name=input_name, index_name=index_name)


def as_mesh(value, index: int = 0, input_name: str = "mesh", index_name: str = "batch_index") -> Mesh:
    """The pack's Mesh as it is, or a host MESH converted (:func:`to_mesh`)."""
    return to_mesh(value, index, input_name, index_name) if is_native(value) else value


def _accepted() -> set:
    try:
        return set(inspect.signature(Types.MESH.__init__).parameters)
    except (TypeError, ValueError):
        return set()


def to_native(mesh: Mesh, notes: list | None = None):
    """``mesh`` (its render frame) as a host MESH batch of one: uvs, texture, vertex colours and
    normals where the host's MESH takes them (0.33), geometry only otherwise (0.3.75). What the
    MESH cannot hold is appended to ``notes``."""
    arrays = native_arrays(mesh)
    accepted = _accepted()
    extra = {name: torch.from_numpy(getattr(arrays, name))[None] for name in ATTRIBUTES
             if name in accepted and getattr(arrays, name) is not None}
    if notes is not None:
        notes.extend(arrays.notes)
    return Types.MESH(torch.from_numpy(arrays.vertices)[None], torch.from_numpy(arrays.faces)[None], **extra)


def mesh_input(tooltip: str, optional: bool = False, name: str = "mesh"):
    """A mesh socket taking the pack's REALIZ3D_MESH or the host's MESH."""
    return io.MultiType.Input(name, types=[MeshType, io.Mesh], optional=optional, tooltip=tooltip)


def batch_index_input(what: str = "mesh"):
    return io.Int.Input("batch_index", default=0, min=0, max=4095, optional=True,
                        tooltip=f"Which item of a native MESH batch '{what}' holds (0 = the first); ignored for "
                                "the pack's own mesh.")
