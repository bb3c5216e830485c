"""Geometry Controls: a render's control images in the conventions the control LoRAs expect."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..renderers.controls import CANNY_HIGH, CANNY_LOW, canny_control
from ..sampling.multiview import control_maps, make_grid
from .common import CATEGORY, PREFIX, RenderType

#: combo entry -> ('canny', source) or ('map', sampling.multiview control kind)
CONTROLS = {
    "depth (Depth Anything style)": ("map", "depth (inverse)"),
    "canny (auto)": ("canny", "auto"),
    "canny (normal)": ("canny", "normal"),
    "canny (depth)": ("canny", "depth"),
    "canny (rgb)": ("canny", "rgb"),
    "normal": ("map", "normal"),
    "point map": ("map", "point map"),
    "depth": ("map", "depth"),
}


class GeometryControls(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}GeometryControls",
            display_name="Geometry Controls (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Control images from a render, per view or as one grid: OminiControl's depth (Depth "
                        "Anything's relative inverse depth) and canny conventions, for its depth / canny LoRAs, "
                        "and the pack's normal, point-map and depth maps. Background black.",
            inputs=[
                RenderType.Input("render", tooltip="Render bundle from Render Views."),
                io.Combo.Input("control", options=list(CONTROLS), default="depth (Depth Anything style)",
                               tooltip="depth (Depth Anything style): 1 / depth, min-max normalised over each "
                                       "view's object, near = white, background black, 8-bit (for depth."
                                       "safetensors). canny: OpenCV Canny edges, white on black (for canny."
                                       "safetensors), of the camera-frame normal render (creases, outline), the "
                                       "inverse depth (occlusion edges, outline) or the unlit RGB (texture "
                                       "edges); auto = normal, plus RGB when the mesh has colours or a texture. "
                                       "normal / point map / depth: the maps Multiview Generate uses."),
                io.Int.Input("grid_columns", default=0, min=0, max=64,
                             tooltip="0: one image per view (a batch). N > 0: all views in one grid image, N "
                                     "columns wide, row by row in rig order (empty cells black)."),
                io.Int.Input("canny_low", default=CANNY_LOW, min=0, max=2040, optional=True,
                             tooltip="canny: the lower hysteresis threshold on the 8-bit gradient |gx| + |gy| "
                                     "(OminiControl: 100). Edges continue through pixels above it."),
                io.Int.Input("canny_high", default=CANNY_HIGH, min=0, max=2040, optional=True,
                             tooltip="canny: the upper threshold (OminiControl: 200). An edge starts only at a "
                                     "pixel above it."),
            ],
            outputs=[io.Image.Output(display_name="control")],
        )

    @classmethod
    def execute(cls, render, control, grid_columns, canny_low=CANNY_LOW, canny_high=CANNY_HIGH) -> io.NodeOutput:
        how, arg = CONTROLS[control]
        if how == "canny":
            images = torch.from_numpy(canny_control(render, arg, canny_low, canny_high))
        else:
            images = control_maps(render, arg)
        if grid_columns > 0:
            images = make_grid(images, grid_columns)[None]
        return io.NodeOutput(images)
