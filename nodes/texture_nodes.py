"""Bake Texture and Save Textured Mesh."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..renderers import BACKENDS
from ..renderers.bake import FILLS, BakeSettings, bake_texture
from ..renderers.errors import InputError
from ..renderers.mesh_export import write_glb
from ..renderers.uv import UV_MODES
from .common import CATEGORY, PREFIX, CamerasType, MeshType, ViewsType, output_file, progress
from .native_mesh import as_mesh, batch_index_input, mesh_input, to_native

log = logging.getLogger(__name__)
TEXTURE_SIZES = ["512", "1024", "2048", "4096"]


class BakeTexture(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}BakeTexture", display_name="Bake Texture (Realiz3D)",
            category=f"{CATEGORY}/texture",
            description="Back-projects views of a mesh into a texture atlas: each texel takes the views that see "
                        "it (visibility and depth test), weighted by cos(incidence)^k; what no view saw is "
                        "filled. Meshes without usable UVs are unwrapped with xatlas.",
            inputs=[
                ViewsType.Input("generated", optional=True,
                                tooltip="Views with their cameras and mesh, from Multiview Generate."),
                mesh_input("Instead of 'generated': the mesh the images show (as rendered, same "
                           "normalisation), from Load Mesh or a native MESH.", optional=True),
                CamerasType.Input("cameras", optional=True,
                                  tooltip="Instead of 'generated': the camera of each image, in order."),
                io.Image.Input("images", optional=True,
                               tooltip="Instead of 'generated': one image per camera."),
                io.Combo.Input("texture_size", options=TEXTURE_SIZES, default="1024",
                               tooltip="Texels per side of the baked texture."),
                io.Combo.Input("fill", options=list(FILLS), default="pull-push",
                               tooltip="Texels no view saw: pull-push (smooth colours from the surroundings) "
                                       "or nearest (the nearest seen texel's colour)."),
                io.Combo.Input("uv_mode", options=list(UV_MODES), default="auto",
                               tooltip="auto: keep the mesh's UVs when they can hold one texture (one part, "
                                       "inside [0, 1], no overlaps or degenerate triangles), else unwrap with "
                                       "xatlas. keep: the mesh's UVs or an error. unwrap: always new UVs."),
                io.Float.Input("cos_power", default=2.0, min=0.0, max=64.0, step=0.5,
                               tooltip="Views are weighted by cos(incidence)^k: larger k favours the views that "
                                       "face a surface head-on."),
                io.Float.Input("min_cos", default=0.2, min=0.0, max=0.99, step=0.05,
                               tooltip="Views seeing a surface more obliquely than this cosine are ignored there."),
                io.Float.Input("depth_tolerance", default=0.01, min=0.0001, max=1.0, step=0.001,
                               tooltip="Visibility test: how far (as a fraction of the mesh's bounding-box "
                                       "diagonal) a texel may be from the surface a view shows."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="Visibility rendering (all give the same result). auto: OpenGL when it "
                                       "works, else raycast. pyrender: OpenGL, in this process or in the pack's "
                                       "GL worker process when the host has GL of its own (ComfyUI 0.33). "
                                       "pyrender (worker) / (in-process): force either. raycast: Embree, no GL."),
                batch_index_input(),
            ],
            outputs=[MeshType.Output(display_name="textured_mesh"), io.Image.Output(display_name="texture"),
                     io.Mask.Output(display_name="seen"),
                     io.String.Output(display_name="notes", tooltip="Repairs made (UV unwrapping, parts merged) "
                                                                      "and the share of texels the views saw."),
                     io.Mesh.Output(display_name="MESH",
                                    tooltip="The textured mesh as ComfyUI's native MESH (render frame, as "
                                            "textured_mesh), with its UVs and baked texture on hosts whose MESH "
                                            "has them (0.33+; geometry only on older hosts), for Save 3D Model, "
                                            "Preview 3D, Render Mesh.")],
        )

    @classmethod
    def execute(cls, texture_size, fill, uv_mode, cos_power, min_cos, depth_tolerance, backend, generated=None,
                mesh=None, cameras=None, images=None, batch_index=0) -> io.NodeOutput:
        if generated is not None:
            mesh, cameras, images = generated.mesh, generated.cameras, generated.views
        else:
            for name, value in (("mesh", mesh), ("cameras", cameras), ("images", images)):
                if value is None:
                    raise InputError(name, "connect 'generated' (Multiview Generate), or all of mesh, cameras "
                                           "and images.")
            mesh = as_mesh(mesh, batch_index)
        if str(texture_size) not in TEXTURE_SIZES:
            raise InputError("texture_size", f"must be one of {TEXTURE_SIZES} (got {texture_size!r}).")
        settings = BakeSettings(texture_size=int(texture_size), cos_power=cos_power, min_cos=min_cos,
                                depth_tolerance=depth_tolerance, fill=fill, uv_mode=uv_mode, backend=backend)
        views = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else images
        result = bake_texture(mesh, views, cameras, settings, progress(len(cameras) + 1),
                              views_name="generated" if generated is not None else "images")
        texture = torch.from_numpy(result.texture[..., :3]).float()[None] / 255.0
        seen = torch.from_numpy(result.seen).float()[None]
        notes = result.notes + [f"{result.coverage:.1%} of the texture's islands seen by a view; the rest filled "
                                f"({fill})."]
        native = to_native(result.mesh, notes)
        for note in notes:
            log.info("Bake Texture: %s", note)
        return io.NodeOutput(result.mesh, texture, seen, "\n".join(notes), native)


class SaveTexturedMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}SaveTexturedMesh", display_name="Save Textured Mesh (Realiz3D)",
            category=f"{CATEGORY}/texture",
            description="Writes a mesh (e.g. from Bake Texture) as a binary glTF (.glb) into ComfyUI's output "
                        "folder, in the asset's own frame, and shows it in the 3D preview where the host "
                        "offers it.",
            inputs=[
                mesh_input("Textured mesh from Bake Texture (or any mesh from Load Mesh, or a native MESH)."),
                io.String.Input("filename_prefix", default="realiz3d/textured",
                                tooltip="Output name under ComfyUI's output folder; subfolders allowed, leaving "
                                        "the output folder is not."),
                batch_index_input(),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, mesh, filename_prefix, batch_index=0) -> io.NodeOutput:
        mesh = as_mesh(mesh, batch_index)
        path, filename, subfolder = output_file(filename_prefix, "glb", "realiz3d/textured")
        write_glb(mesh, path)
        return io.NodeOutput(ui={"3d": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})
