"""Camera Rig: orbit rigs, RefAny3D's condition cameras, or an explicit list of poses."""
from __future__ import annotations

from comfy_api.latest import io

from ..renderers import cameras_from_json, orbit_rig, refany3d_rig
from .common import CATEGORY, PREFIX, CamerasType

PRESETS = ("orbit", "refany3d", "explicit poses")


class CameraRig(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}CameraRig",
            display_name="Camera Rig (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Cameras around the origin. World +Y is up; azimuth 0 looks from +X, 90 from +Z "
                        "(see CONVENTIONS.md).",
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="orbit",
                               tooltip="orbit: evenly spaced views. refany3d: RefAny3D's condition cameras "
                                       "(frames k*(60//N) of a 60-frame orbit, radius 4, pitch 0, FOV 45; the "
                                       "other settings except num_views are ignored). explicit poses: the "
                                       "JSON list in poses_json."),
                io.Int.Input("num_views", default=8, min=1, max=64,
                             tooltip="Number of cameras (orbit, refany3d)."),
                io.Float.Input("elevation", default=0.0, min=-89.9, max=89.9, step=0.5,
                               tooltip="Degrees above the XZ plane (orbit)."),
                io.Float.Input("radius", default=4.0, min=0.01, max=1000.0, step=0.05,
                               tooltip="Distance from the origin in render-frame units; a normalised mesh "
                                       "fits in [-1, 1] (orbit)."),
                io.Float.Input("fov", default=45.0, min=1.0, max=170.0, step=0.5,
                               tooltip="Vertical field of view in degrees (perspective orbit)."),
                io.Float.Input("start_azimuth", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Azimuth of the first camera in degrees: 0 on +X, 90 on +Z (orbit)."),
                io.Combo.Input("projection", options=["perspective", "orthographic"], default="perspective",
                               tooltip="Perspective or orthographic projection (orbit)."),
                io.Float.Input("ortho_height", default=2.4, min=0.01, max=1000.0, step=0.05,
                               tooltip="Visible height in render-frame units (orthographic orbit)."),
                io.String.Input("poses_json", default="[]", multiline=True,
                                tooltip='explicit poses: a JSON list like [{"eye": [0, 0, 4]}, {"eye": [4, 1, 0], '
                                        '"target": [0, 0, 0], "yfov_deg": 40}] or [{"cam_to_world": 4x4 rows}].'),
            ],
            outputs=[CamerasType.Output(display_name="cameras")],
        )

    @classmethod
    def execute(cls, preset, num_views, elevation, radius, fov, start_azimuth, projection, ortho_height,
                poses_json) -> io.NodeOutput:
        if preset == "refany3d":
            cams = refany3d_rig(num_views)
        elif preset == "explicit poses":
            cams = cameras_from_json(poses_json, "poses_json")
        else:
            cams = orbit_rig(num_views, elevation, radius, fov, start_azimuth, projection, ortho_height)
        return io.NodeOutput(cams)
