"""Cameras and camera rigs. Conventions (CONVENTIONS.md): world +Y up, right-handed; a camera
looks down its own -Z with +Y up and +X right (OpenGL); azimuth 0 puts the camera on +X and
azimuth 90 on +Z; image row 0 is the top row."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

PROJECTIONS = ("perspective", "orthographic")
#: Frames a camera may be given in (CONVENTIONS.md, "The 3D viewer's camera"): render (the default;
#: where rendering happens), asset (the mesh file's own frame) and viewer fit (the asset frame fitted
#: as the 3D viewer's "fit" does: longest side 5, bounding box centred in X and Z, its bottom on y = 0).
#: :func:`to_render_frame` maps the last two with the mesh's own bounds and normalisation.
FRAMES = ("render", "asset", "viewer fit")
#: the 3D viewer's defaults (ComfyUI front end, three.js): vertical FOV, near, far, orthographic
#: frustum height, and the longest side "fit to viewer" gives a model
VIEWER_FOV_DEG, VIEWER_NEAR, VIEWER_FAR, VIEWER_FRUSTUM, VIEWER_FIT_SIZE = 35.0, 0.01, 10000.0, 10.0, 5.0


@dataclass(frozen=True)
class Camera:
    """A pinhole (or orthographic) camera.

    cam_to_world: float64 [4, 4], OpenGL camera axes. yfov: vertical field of view in radians
    (perspective). ortho_height: full visible height in world units (orthographic). The
    horizontal extent follows from the image's aspect ratio, as in OpenGL. frame: one of
    :data:`FRAMES`; only 'render' cameras reach a backend (:func:`to_render_frame` maps the others).
    """

    cam_to_world: np.ndarray
    projection: str = "perspective"
    yfov: float = math.radians(45.0)
    ortho_height: float = 2.0
    znear: float = 0.1
    zfar: float = 100.0
    frame: str = "render"

    @property
    def position(self) -> np.ndarray:
        return self.cam_to_world[:3, 3].copy()

    def rays(self, width: int, height: int, pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """World-space rays through pixel centres: origins and unit directions, float64 [P, 3],
        for the flat row-major pixel indices ``pixels`` (all H * W pixels when None)."""
        if pixels is None:
            pixels = np.arange(width * height)
        x = ((pixels % width) + 0.5) / width * 2.0 - 1.0          # NDC, left to right
        y = 1.0 - ((pixels // width) + 0.5) / height * 2.0         # NDC, row 0 at the top
        aspect = width / height
        rot, eye = self.cam_to_world[:3, :3], self.cam_to_world[:3, 3]
        if self.projection == "perspective":
            t = math.tan(self.yfov / 2.0)
            d = np.stack([x * t * aspect, y * t, -np.ones_like(x)], axis=-1) @ rot.T
            d /= np.linalg.norm(d, axis=-1, keepdims=True)
            o = np.broadcast_to(eye, d.shape)
        else:
            half_h = self.ortho_height / 2.0
            o = np.stack([x * half_h * aspect, y * half_h, np.zeros_like(x)], axis=-1) @ rot.T + eye
            d = np.broadcast_to(-rot[:, 2], o.shape)
        return o, d

    def projection_matrix(self, width: int, height: int) -> np.ndarray:
        """OpenGL projection matrix (clip = P @ view), float64 [4, 4]."""
        aspect = width / height
        n, f = self.znear, self.zfar
        p = np.zeros((4, 4))
        if self.projection == "perspective":
            t = math.tan(self.yfov / 2.0)
            p[0, 0], p[1, 1] = 1.0 / (aspect * t), 1.0 / t
            p[2, 2], p[2, 3], p[3, 2] = -(f + n) / (f - n), -2.0 * f * n / (f - n), -1.0
        else:
            half_h = self.ortho_height / 2.0
            p[0, 0], p[1, 1] = 1.0 / (half_h * aspect), 1.0 / half_h
            p[2, 2], p[2, 3], p[3, 3] = -2.0 / (f - n), -(f + n) / (f - n), 1.0
        return p

    def to_dict(self) -> dict:
        return {"cam_to_world": self.cam_to_world.tolist(), "projection": self.projection,
                "yfov_deg": math.degrees(self.yfov), "ortho_height": self.ortho_height,
                "znear": self.znear, "zfar": self.zfar, "frame": self.frame}


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """cam_to_world [4, 4] of an OpenGL camera at ``eye`` looking at ``target``.
    Looking straight along ``up`` the roll is fixed by using -Z (from above) or +Z as up."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = eye - target
    if np.linalg.norm(z) == 0:
        raise InputError("cameras", "a camera sits exactly on its look-at target; move it away.")
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([0.0, 0.0, -1.0 if z[1] > 0 else 1.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def orbit_position(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    """Point on an orbit around the origin: azimuth 0 on +X, 90 on +Z; elevation up towards +Y."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([radius * math.cos(el) * math.cos(az), radius * math.sin(el),
                     radius * math.cos(el) * math.sin(az)])


def orbit_rig(num_views: int = 8, elevation_deg: float = 0.0, radius: float = 4.0, yfov_deg: float = 45.0,
              start_azimuth_deg: float = 0.0, projection: str = "perspective", ortho_height: float = 2.4,
              znear: float = 0.1, zfar: float = 100.0) -> list[Camera]:
    """``num_views`` cameras evenly spaced in azimuth, all looking at the origin."""
    _check_common(num_views, radius, yfov_deg, projection, ortho_height, znear, zfar)
    return [Camera(look_at(orbit_position(start_azimuth_deg + 360.0 * k / num_views, elevation_deg, radius)),
                   projection, math.radians(yfov_deg), ortho_height, znear, zfar)
            for k in range(num_views)]


#: RefAny3D's reference renders a 60-frame orbit and keeps frames k * (60 // N).
REFANY3D_FRAMES = 60


def refany3d_rig(num_views: int = 8, radius: float = 4.0, pitch_deg: float = 0.0) -> list[Camera]:
    """RefAny3D's condition cameras (SPEC.md section 2): frame k * (60 // N) of a 60-frame orbit
    starting on +X towards +Z, radius 4, pitch 0, vertical FOV 45 deg, near 0.1, far 100.
    With N = 8 the step is 7 frames (42 deg), not 45: this reproduces the reference exactly."""
    _check_common(num_views, radius, 45.0, "perspective", 1.0, 0.1, 100.0)
    if num_views > REFANY3D_FRAMES:
        raise InputError("num_views", f"the refany3d preset takes at most {REFANY3D_FRAMES} views.")
    step = max(REFANY3D_FRAMES // num_views, 1)
    return [Camera(look_at(orbit_position(360.0 * k * step / REFANY3D_FRAMES, pitch_deg, radius)),
                   "perspective", math.radians(45.0), 2.0, 0.1, 100.0) for k in range(num_views)]


def cameras_from_json(text: str, input_name: str = "poses_json") -> list[Camera]:
    """Explicit poses: a JSON list of objects, each either {"eye": [x,y,z], "target": [x,y,z]
    (default origin), "up": [x,y,z] (default +Y)} or {"cam_to_world": 4x4 rows}; optional keys
    "yfov_deg" (45), "projection" ("perspective"), "ortho_height" (2.4), "znear" (0.1), "zfar" (100)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(input_name, f"is not valid JSON ({exc}).") from exc
    if not isinstance(items, list) or not items:
        raise InputError(input_name, "must be a non-empty JSON list of camera poses.")
    cams = []
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise InputError(input_name, f"entry {i} must be an object with 'eye' or 'cam_to_world'.")
        try:
            if "cam_to_world" in it:
                m = np.asarray(it["cam_to_world"], np.float64)
                if m.shape != (4, 4) or not np.isfinite(m).all():
                    raise ValueError("cam_to_world must be a finite 4x4 matrix")
            else:
                m = look_at(it["eye"], it.get("target", (0, 0, 0)), it.get("up", (0, 1, 0)))
            cam = Camera(m, it.get("projection", "perspective"), math.radians(float(it.get("yfov_deg", 45.0))),
                         float(it.get("ortho_height", 2.4)), float(it.get("znear", 0.1)), float(it.get("zfar", 100.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(input_name, f"entry {i} is not a valid pose ({exc}).") from exc
        _check_common(1, 1.0, math.degrees(cam.yfov), cam.projection, cam.ortho_height, cam.znear, cam.zfar,
                      input_name)
        cams.append(cam)
    return cams


def _check_common(num_views, radius, yfov_deg, projection, ortho_height, znear, zfar, input_name=None):
    if num_views < 1:
        raise InputError(input_name or "num_views", f"must be at least 1 (got {num_views}).")
    if not radius > 0:
        raise InputError(input_name or "radius", f"must be positive (got {radius}).")
    if projection not in PROJECTIONS:
        raise InputError(input_name or "projection", f"must be one of {PROJECTIONS} (got {projection!r}).")
    if not 0.0 < yfov_deg < 180.0:
        raise InputError(input_name or "fov", f"vertical field of view must be in (0, 180) degrees (got {yfov_deg}).")
    if not ortho_height > 0:
        raise InputError(input_name or "ortho_height", f"must be positive (got {ortho_height}).")
    if not 0 < znear < zfar:
        raise InputError(input_name or "znear", f"need 0 < znear < zfar (got {znear}, {zfar}).")


def quaternion_matrix(q) -> np.ndarray:
    """Rotation matrix [3, 3] of a quaternion (x, y, z, w) (three.js order), normalised first."""
    x, y, z, w = (float(c) for c in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not n > 0 or not math.isfinite(n):
        raise ValueError(f"quaternion {[x, y, z, w]} has no direction")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _vec3(d, what: str) -> np.ndarray:
    if isinstance(d, dict):
        v = np.array([float(d.get(k, 0.0)) for k in "xyz"])
    else:
        v = np.asarray(d, np.float64).reshape(-1)
        if v.shape != (3,):
            raise ValueError(f"{what} must have x, y and z")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} is not finite")
    return v


def camera_from_viewer(info: dict, model_transform: dict | None = None, frame: str = "asset",
                       input_name: str = "camera_info") -> Camera:
    """The camera of ComfyUI's 3D viewer (Load 3D / Preview 3D: a LOAD3D_CAMERA dict, three.js
    conventions) as a Camera in ``frame`` (one of :data:`FRAMES`: the frame the viewer showed the
    mesh in, see CONVENTIONS.md "The 3D viewer's camera").

    info: position {x, y, z}; quaternion {x, y, z, w} (the camera's world rotation; without it the
    camera looks at ``target`` with +Y up); cameraType 'perspective' (fov: vertical degrees, default
    35; zoom divides tan(fov / 2), i.e. scales the focal length) or 'orthographic' (frustum {left,
    right, top, bottom}, default 10 high; zoom divides it; an off-centre frustum shifts the camera
    in its own plane); near, far. The vertical extent is kept and the horizontal one follows the
    output image's width / height, as three.js does when the viewer captures at another size.
    model_transform: the viewer's model transform (a LOAD3D_MODEL_INFO item: position, quaternion,
    scale; x_viewer = R (s * x_model) + p); the camera is expressed in the model's own frame, which
    needs a uniform scale. InputError naming ``input_name`` (or 'model_3d_info') for malformed input.
    """
    if frame not in FRAMES:
        raise InputError("viewer_frame", f"must be one of {FRAMES} (got {frame!r}).")
    if not isinstance(info, dict):
        raise InputError(input_name, f"must be the camera of a 3D viewer (a dict), got {type(info).__name__}.")
    try:
        eye = _vec3(info["position"], "position")
        kind = str(info.get("cameraType") or "perspective").lower()
        if kind not in PROJECTIONS:
            raise ValueError(f"cameraType must be one of {PROJECTIONS}, got {kind!r}")
        zoom = float(info.get("zoom") or 1.0)
        if not zoom > 0 or not math.isfinite(zoom):
            raise ValueError(f"zoom must be positive, got {zoom}")
        if info.get("quaternion"):
            q = info["quaternion"]
            rot = quaternion_matrix([q.get(k, 0.0) for k in "xyzw"] if isinstance(q, dict) else q)
            cam_to_world = np.eye(4)
            cam_to_world[:3, :3], cam_to_world[:3, 3] = rot, eye
        else:
            cam_to_world = look_at(eye, _vec3(info.get("target", {}), "target"))
        near = float(info.get("near") or VIEWER_NEAR)
        far = float(info.get("far") or VIEWER_FAR)
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got {near}, {far}")
        yfov, height = math.radians(VIEWER_FOV_DEG), 2.0
        if kind == "perspective":
            fov = float(info.get("fov") or VIEWER_FOV_DEG)
            if not 0 < fov < 180:
                raise ValueError(f"fov must be within (0, 180) degrees, got {fov}")
            yfov = 2.0 * math.atan(math.tan(math.radians(fov) / 2.0) / zoom)
        else:
            f = info.get("frustum") or {}
            top, bottom = float(f.get("top", VIEWER_FRUSTUM / 2)), float(f.get("bottom", -VIEWER_FRUSTUM / 2))
            left, right = float(f.get("left", -1.0)), float(f.get("right", 1.0))
            height = (top - bottom) / zoom
            if not height > 0 or not math.isfinite(height):
                raise ValueError(f"the frustum has no height (top {top}, bottom {bottom})")
            # three.js keeps the frustum's centre under zoom: an off-centre one moves the view
            shift = np.array([(left + right) / 2.0, (top + bottom) / 2.0, 0.0])
            cam_to_world[:3, 3] += cam_to_world[:3, :3] @ shift
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(input_name, f"is not a viewer camera ({exc}). Connect the camera_info output of Load 3D "
                                     "or Preview 3D (or Create Camera Info).") from exc
    camera = Camera(cam_to_world, kind, yfov, height, near, far, frame)
    if model_transform:
        camera = _into_model_frame(camera, model_transform)
    return camera


def _into_model_frame(camera: Camera, transform: dict) -> Camera:
    """``camera`` (viewer world) expressed in the frame of a model placed by ``transform``."""
    try:
        p = _vec3(transform.get("position", {}), "position")
        s = _vec3(transform.get("scale", {"x": 1, "y": 1, "z": 1}), "scale")
        q = transform.get("quaternion") or {"w": 1.0}
        rot = quaternion_matrix([q.get(k, 1.0 if k == "w" else 0.0) for k in "xyzw"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError("model_3d_info", f"is not a viewer model transform ({exc}).") from exc
    if not np.all(s > 0) or np.ptp(s) > 1e-6 * float(np.max(s)):
        raise InputError("model_3d_info", f"has the scale {s.tolist()}; only a uniform positive scale can be "
                                          "matched by a camera. Reset the gizmo's scale, or scale all axes alike.")
    return similar(camera, 1.0 / float(s[0]), -(rot.T @ p) / float(s[0]), rot.T, camera.frame)


def similar(camera: Camera, scale: float, offset, rotation=None, frame: str = "render") -> Camera:
    """``camera`` moved with the world by x' = scale * rotation @ x + offset (scale > 0): the same
    picture of the moved scene. Lengths (orthographic height, near, far) scale along."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    m = np.eye(4)
    m[:3, :3] = rot @ camera.cam_to_world[:3, :3]
    m[:3, 3] = scale * (rot @ camera.cam_to_world[:3, 3]) + np.asarray(offset, np.float64)
    return Camera(m, camera.projection, camera.yfov, camera.ortho_height * scale, camera.znear * scale,
                  camera.zfar * scale, frame)


def to_render_frame(camera: Camera, center, scale: float, asset_bounds) -> Camera:
    """``camera`` in the render frame of a mesh whose normalisation is (center, scale)
    (x_render = (x_asset - center) * scale) and whose asset-frame bounding box is ``asset_bounds``
    [2, 3]; a render-frame camera is returned unchanged."""
    if camera.frame == "render":
        return camera
    center = np.asarray(center, np.float64)
    if camera.frame == "asset":
        return similar(camera, scale, -center * scale)
    if camera.frame == "viewer fit":      # x_fit = k * (x_asset - base): base = (centre x, min y, centre z)
        lo, hi = np.asarray(asset_bounds, np.float64)
        k = VIEWER_FIT_SIZE / float(np.max(hi - lo))
        base = np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
        return similar(camera, scale / k, (base - center) * scale)
    raise InputError("cameras", f"unknown camera frame {camera.frame!r}; expected one of {FRAMES}.")
