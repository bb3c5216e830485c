"""Render Views and Save Point Cloud."""
from __future__ import annotations


import torch
from comfy_api.latest import io

from ..renderers import BACKENDS, MAX_RESOLUTION, bundle_points, depth_image, normal_image, render_views, write_ply
from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, CamerasType, MeshType, PointCloudType, RenderType, output_file, progress


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
                MeshType.Input("mesh", tooltip="Mesh from Load Mesh."),
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
                               tooltip="pyrender: OpenGL offscreen (EGL or OSMesa), fastest. raycast: exact "
                                       "ray casting with Embree, no GL needed. auto: pyrender when GL works."),
            ],
            outputs=[
                io.Image.Output(display_name="rgb"),
                io.Image.Output(display_name="point_map"),
                io.Image.Output(display_name="normal"),
                io.Image.Output(display_name="depth"),
                io.Mask.Output(display_name="mask"),
                RenderType.Output(display_name="render"),
            ],
        )

    @classmethod
    def execute(cls, mesh, cameras, width, height, rgb, ambient, normal_frame, smooth_normals, background,
                backend) -> io.NodeOutput:
        lit = rgb == "lit"
        bundle = render_views(mesh, cameras, width, height, backend=backend, smooth_normals=smooth_normals,
                              background=(background,) * 3, lit=lit, ambient=ambient,
                              progress=progress(len(cameras)))
        return io.NodeOutput(_t(bundle.lit if lit else bundle.albedo), _t(bundle.points_normalized),
                             _t(normal_image(bundle, normal_frame)), _t(depth_image(bundle)), _t(bundle.mask),
                             bundle)


class SavePointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}SavePointCloud",
            display_name="Save Point Cloud (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Writes the foreground points of a render bundle (in the mesh's own frame, with "
                        "normals) or a generated point cloud as a binary PLY with colours into ComfyUI's output "
                        "folder.",
            inputs=[
                RenderType.Input("render", optional=True, tooltip="Render bundle from Render Views."),
                PointCloudType.Input("point_cloud", optional=True,
                                     tooltip="A point cloud from RefAny3D Sample (instead of a render)."),
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
            xyz, rgb, normals = bundle_points(render, color, stride)
        elif point_cloud is not None:
            xyz, rgb, normals = point_cloud["xyz"][::stride], point_cloud["rgb"][::stride], None
        else:
            raise InputError("render", "connect a render (Render Views) or a point_cloud (RefAny3D Sample).")
        if not len(xyz):
            raise InputError("render" if render is not None else "point_cloud",
                             "has no foreground point (the object is out of frame, or the generated point map "
                             "is all background); nothing to save.")
        path, filename, subfolder = output_file(filename_prefix, "ply", "realiz3d/pointcloud")
        write_ply(path, xyz, rgb, normals)
        return io.NodeOutput(ui={"3d": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})
