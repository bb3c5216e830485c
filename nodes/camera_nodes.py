"""Camera Rig: orbit rigs, RefAny3D's condition cameras, an explicit list of poses, or the camera
of ComfyUI's 3D viewer (Load 3D / Preview 3D)."""
from __future__ import annotations

from comfy_api.latest import io

from ..renderers import cameras_from_json, orbit_rig, refany3d_rig
from ..renderers.cameras import FRAMES, camera_from_viewer
from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, CamerasType

#: the viewer's socket types where the host has them (0.3.75 has LOAD3D_CAMERA without the model
#: transform; without them the inputs are simply absent)
VIEWER_CAMERA = getattr(io, "Load3DCamera", None)
VIEWER_MODEL = getattr(io, "Load3DModelInfo", None)
PRESETS = ("orbit", "refany3d", "explicit poses") + (("viewer camera",) if VIEWER_CAMERA is not None else ())


def _viewer_inputs() -> list:
    if VIEWER_CAMERA is None:
        return []
    inputs = [VIEWER_CAMERA.Input("camera_info", optional=True,
                                  tooltip="viewer camera: the camera_info output of Load 3D / Preview 3D (or Create "
                                          "Camera Info): renders exactly the view framed in the viewer.")]
    if VIEWER_MODEL is not None:
        inputs.append(VIEWER_MODEL.Input("model_3d_info", optional=True,
                                         tooltip="viewer camera: the model_3d_info output of the same viewer, when "
                                                 "the model was moved, turned or scaled there (gizmo, Fit to "
                                                 "Viewer, up direction); a uniform scale only."))
    inputs.append(io.Combo.Input(
        "viewer_frame", options=list(FRAMES), default="asset", optional=True,
        tooltip="viewer camera: the frame the viewer showed the mesh in. asset: the mesh file itself (Load 3D "
                "of the file Load Mesh loads, or a generator's MESH; ComfyUI 0.33+). render: a mesh already "
                "normalised (Load Mesh's or Bake Texture's MESH output, previewed). viewer fit: the viewer's "
                "'fit' (longest side 5, standing on y = 0), which older ComfyUI (0.3.x) applies to every "
                "model it loads. Mapped into each mesh's render frame when rendering."))
    return inputs


class CameraRig(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}CameraRig",
            display_name="Camera Rig (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Cameras around the origin, or the camera of the 3D viewer. World +Y is up; azimuth 0 "
                        "looks from +X, 90 from +Z (see CONVENTIONS.md).",
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="orbit",
                               tooltip="orbit: evenly spaced views. refany3d: RefAny3D's condition cameras "
                                       "(frames k*(60//N) of a 60-frame orbit, radius 4, pitch 0, FOV 45; the "
                                       "other settings except num_views are ignored). explicit poses: the "
                                       "JSON list in poses_json. viewer camera: the one camera of camera_info "
                                       "(Load 3D / Preview 3D), with its projection, FOV and zoom; the other "
                                       "settings are ignored."),
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
                *_viewer_inputs(),
            ],
            outputs=[CamerasType.Output(display_name="cameras")],
        )

    @classmethod
    def execute(cls, preset, num_views, elevation, radius, fov, start_azimuth, projection, ortho_height,
                poses_json, camera_info=None, model_3d_info=None, viewer_frame="asset") -> io.NodeOutput:
        if preset == "refany3d":
            cams = refany3d_rig(num_views)
        elif preset == "explicit poses":
            cams = cameras_from_json(poses_json, "poses_json")
        elif preset == "viewer camera":
            if camera_info is None:
                raise InputError("camera_info", "the 'viewer camera' preset needs the camera_info output of Load 3D "
                                                "or Preview 3D connected.")
            transform = model_3d_info[0] if isinstance(model_3d_info, (list, tuple)) and model_3d_info else (
                model_3d_info if isinstance(model_3d_info, dict) else None)
            cams = [camera_from_viewer(camera_info, transform, viewer_frame)]
        else:
            cams = orbit_rig(num_views, elevation, radius, fov, start_azimuth, projection, ortho_height)
        return io.NodeOutput(cams)
