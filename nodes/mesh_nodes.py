"""Load Mesh: a mesh file from ComfyUI's input folder, or ComfyUI's native MESH."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..renderers import MESH_EXTENSIONS, load_mesh
from ..renderers.mesh_io import check_mesh_file
from ..renderers import normalize as normalize_mesh
from .common import CATEGORY, PREFIX, MeshType
from .native_mesh import batch_index_input, to_mesh, to_native
from .paths import BUNDLED_FILES, choices_valid, list_files, resolve_inside


class LoadMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list(BUNDLED_FILES) + list_files(folder_paths.get_input_directory(), MESH_EXTENSIONS)
        return io.Schema(
            node_id=f"{PREFIX}LoadMesh",
            display_name="Load Mesh (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Loads a mesh (GLB, GLTF, OBJ, PLY, STL) with its textures or vertex colours; "
                        "scenes are flattened with their transforms.",
            inputs=[
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Centre the mesh and scale its longest side to span [-1, 1], the "
                                         "frame the camera rigs assume: Render Views, Multiview Generate, Bake "
                                         "Texture and the MESH output see the mesh in it. RefAny3D Sample "
                                         "renders its conditions from the normalised mesh either way. Point "
                                         "maps always use the mesh's own bounding box."),
                io.Combo.Input("mesh_file", options=files, default=files[0],
                               tooltip="A mesh in ComfyUI's input folder (subfolders included, e.g. input/3d "
                                       "where uploads go). '(bundled) ...' is the pack's sample mesh.",
                               upload=io.UploadType.model),
                io.Mesh.Input("mesh", optional=True,
                              tooltip="Optional native MESH (e.g. from a 3D generator). When connected it is "
                                      "used instead of mesh_file: item batch_index of a batch, with its UVs, "
                                      "texture, vertex colours and normals where the host's MESH has them."),
                batch_index_input(),
            ],
            outputs=[MeshType.Output(display_name="mesh"),
                     io.Mesh.Output(display_name="MESH",
                                    tooltip="The mesh as ComfyUI's native MESH (in the frame above), for Save 3D "
                                            "Model, Preview 3D, Render Mesh...: with UVs, one texture (several "
                                            "parts' textures packed into an atlas) and vertex colours on hosts "
                                            "whose MESH has them (0.33+), geometry only on older ones."),
                     io.String.Output(display_name="notes",
                                      tooltip="What the loader could not honour, one note a line (e.g. a "
                                              "missing .mtl or texture: the mesh is then grey); empty when "
                                              "all went well.")],
        )

    @classmethod
    def validate_inputs(cls, mesh_file=None):
        return choices_valid(lambda name, input_name: check_mesh_file(_mesh_path(name), input_name),
                             {"mesh_file": mesh_file})

    @classmethod
    def execute(cls, normalize: bool, mesh_file: str, mesh=None, batch_index: int = 0) -> io.NodeOutput:
        if mesh is not None:
            result = to_mesh(mesh, batch_index)
        elif mesh_file in BUNDLED_FILES:
            path = BUNDLED_FILES[mesh_file]
            result = load_mesh(path, "mesh_file", root=os.path.dirname(path), root_name="the pack's assets folder")
        else:
            # files the mesh refers to (textures, .mtl, .bin) must stay inside the input folder too
            result = load_mesh(_mesh_path(mesh_file), "mesh_file", root=folder_paths.get_input_directory(),
                               root_name="ComfyUI's input folder")
        if normalize:
            result = normalize_mesh(result)
        notes = list(result.notes)
        native = to_native(result, notes)
        return io.NodeOutput(result, native, "\n".join(notes))

    @classmethod
    def fingerprint_inputs(cls, normalize, mesh_file, mesh=None, batch_index=0):
        # re-run when the file changes on disk, not only when its name does
        if mesh is None:
            try:
                path = _mesh_path(mesh_file)
                return os.path.getmtime(path)
            except Exception:
                return float("nan")
        return None



def _mesh_path(mesh_file: str) -> str:
    return BUNDLED_FILES.get(mesh_file) or resolve_inside(folder_paths.get_input_directory(), mesh_file, "mesh_file")
