"""Render Views and Save Point Cloud."""
from __future__ import annotations


import logging

import torch
from comfy_api.latest import io

from ..renderers import (ALBEDO_MODES, BACKENDS, MAX_RESOLUTION, bundle_points, depth_image, normal_image,
                         render_views, write_ply)
from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, CamerasType, PointCloudType, RenderType, output_file, progress
from .native_mesh import as_mesh, batch_index_input, mesh_input


log = logging.getLogger(__name__)


def _t(array) -> torch.Tensor:
    return torch.from_numpy(array).float()


class RenderViews(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}RenderViews",
            display_name="Render Views (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Renders every camera's view: RGB, point map, normals, depth and mask, plus a render "
                        "bundle with the float data and cameras for later nodes.",
            inputs=[
                mesh_input("Mesh from Load Mesh, or a native MESH (rendered in its own frame, not normalised: "
                           "pass it through Load Mesh to normalise)."),
                CamerasType.Input("cameras", tooltip="Cameras from Camera Rig."),
                io.Int.Input("width", default=512, min=1, max=MAX_RESOLUTION, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=1, max=MAX_RESOLUTION, step=8, tooltip="Image height in pixels."),
                io.Combo.Input("rgb", options=["unlit albedo", "lit"], default="unlit albedo",
                               tooltip="unlit albedo: texture / vertex colour with no shading (what RefAny3D "
                                       "conditions on). lit: Lambert shading from a light at the camera."),
                io.Float.Input("ambient", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of ambient light in the lit RGB (0 = only the camera light)."),
                io.Combo.Input("normal_frame", options=["world", "camera"], default="world",
                               tooltip="Frame of the normal image: world axes, or the camera's (OpenGL: +X "
                                       "right, +Y up, +Z towards the viewer). Encoded as (n + 1) / 2."),
                io.Boolean.Input("smooth_normals", default=True,
                                 tooltip="Interpolate vertex normals across faces; off gives each face's own "
                                         "flat normal."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Grey level behind the object in the RGB image (1 = white, as RefAny3D)."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="Which renderer finds the surface under each pixel (all give the same "
                                       "images). auto: OpenGL when it works, else raycast. pyrender: OpenGL "
                                       "(EGL, else OSMesa), in this process when it has no GL of its own, else "
                                       "in the pack's GL worker process (always so in ComfyUI 0.33, which loads "
                                       "ANGLE). pyrender (worker) / (in-process): force either. raycast: Embree "
                                       "on the CPU, no GL. The backend output (and the log) names the one used."),
                # optional so that API workflows saved before it existed still validate
                io.Combo.Input("albedo", options=list(ALBEDO_MODES), default="multiplied", optional=True,
                               tooltip="multiplied: glTF's material, base colour factor x texture x vertex colour "
                                       "x face colour. reference: the texture alone when textured, else vertex "
                                       "(or face) colours, else the base colour: RefAny3D's reference renderer, "
                                       "and what its conditions use."),
                batch_index_input(),
            ],
            outputs=[
                io.Image.Output(display_name="rgb"),
                io.Image.Output(display_name="point_map"),
                io.Image.Output(display_name="normal"),
                io.Image.Output(display_name="depth"),
                io.Mask.Output(display_name="mask"),
                RenderType.Output(display_name="render"),
                io.String.Output(display_name="backend",
                                 tooltip="The backend that rendered, e.g. 'pyrender (worker, egl)' or 'raycast'."),
            ],
        )

    @classmethod
    def execute(cls, mesh, cameras, width, height, rgb, ambient, normal_frame, smooth_normals, background,
                backend, albedo="multiplied", batch_index=0) -> io.NodeOutput:
        lit = rgb == "lit"
        mesh = as_mesh(mesh, batch_index)
        bundle = render_views(mesh, cameras, width, height, backend=backend, smooth_normals=smooth_normals,
                              background=(background,) * 3, lit=lit, ambient=ambient, albedo=albedo,
                              progress=progress(len(cameras)))
        log.info("Render Views: %d views of %d x %d rendered by %s", len(bundle), width, height, bundle.backend)
        return io.NodeOutput(_t(bundle.lit if lit else bundle.albedo), _t(bundle.points_normalized),
                             _t(normal_image(bundle, normal_frame)), _t(depth_image(bundle)), _t(bundle.mask),
                             bundle, bundle.backend)


class SavePointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}SavePointCloud",
            display_name="Save Point Cloud (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Writes the foreground points of a render bundle (all views in one PLY, in the mesh's "
                        "own frame, with normals) or RefAny3D Sample's point clouds (one PLY per image) as binary "
                        "PLY with colours into ComfyUI's output folder.",
            inputs=[
                RenderType.Input("render", optional=True, tooltip="Render bundle from Render Views."),
                PointCloudType.Input("point_cloud", optional=True,
                                     tooltip="Point clouds from RefAny3D Sample (instead of a render): one PLY per "
                                             "image; an image whose point map is all background is skipped "
                                             "(logged)."),
                io.String.Input("filename_prefix", default="realiz3d/pointcloud",
                                tooltip="Output name under ComfyUI's output folder; subfolders allowed, "
                                        "leaving the output folder is not."),
                io.Int.Input("stride", default=2, min=1, max=64,
                             tooltip="Keep every stride-th pixel in each direction of a render, or every "
                                     "stride-th point of a point cloud (1 = all)."),
                io.Combo.Input("color", options=["albedo", "lit"], default="albedo",
                               tooltip="Point colours: unlit albedo, or lit RGB when the render has it."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, filename_prefix, stride, color, render=None, point_cloud=None) -> io.NodeOutput:
        if render is not None:
            clouds = [bundle_points(render, color, stride)]
        elif point_cloud is not None:
            items = point_cloud if isinstance(point_cloud, (list, tuple)) else [point_cloud]
            clouds = [(c["xyz"][::stride], c["rgb"][::stride], None) for c in items]
        else:
            raise InputError("render", "connect a render (Render Views) or a point_cloud (RefAny3D Sample).")
        empty = [k for k, (xyz, _, _) in enumerate(clouds) if not len(xyz)]
        if len(empty) == len(clouds):
            raise InputError("render" if render is not None else "point_cloud",
                             "has no foreground point (the object is out of frame, or the generated point map "
                             "is all background); nothing to save.")
        if empty:   # one failed image of a batch should not cost the others' files
            log.warning("Save Point Cloud: image(s) %s of the batch have no foreground point; not saved", empty)
        files = []
        for xyz, rgb, normals in (c for k, c in enumerate(clouds) if k not in empty):
            path, filename, subfolder = output_file(filename_prefix, "ply", "realiz3d/pointcloud")
            write_ply(path, xyz, rgb, normals)
            files.append({"filename": filename, "subfolder": subfolder, "type": "output"})
        return io.NodeOutput(ui={"3d": files})
