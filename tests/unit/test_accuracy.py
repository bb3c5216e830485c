"""Render accuracy: point maps on the surface, normals, unlit colour, RefAny3D cameras, backends."""
import math

import numpy as np
import pytest
import trimesh

from realiz3d.renderers import Camera, load_mesh, look_at, normalize, orbit_rig, refany3d_rig, render_views
from realiz3d.renderers.sample_mesh import write_sample_mesh
from meshes import colored_box, icosphere

BACKENDS = ["pyrender", "raycast"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.glb"
    write_sample_mesh(str(path))
    return normalize(load_mesh(str(path)))


def footprint(cam: Camera, depth: np.ndarray, height: int) -> np.ndarray:
    """Size of one pixel on a surface at ``depth`` (perspective)."""
    return 2.0 * depth * math.tan(cam.yfov / 2.0) / height


@pytest.mark.parametrize("backend", BACKENDS)
def test_point_map_lies_on_surface(sample, backend):
    cams = orbit_rig(4, elevation_deg=20.0)
    b = render_views(sample, cams, 128, 128, backend=backend)
    tm = trimesh.Trimesh(sample.vertices, sample.faces, process=False)
    for k, cam in enumerate(cams):
        m = b.mask[k]
        render_frame = (b.points[k][m] - sample.center) * sample.scale
        _, dist, _ = trimesh.proximity.closest_point(tm, render_frame)
        limit = 0.5 * footprint(cam, b.depth[k][m], 128)
        assert m.sum() > 1000
        assert np.all(dist <= limit), (dist / limit).max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_normals_match_faces(sample, backend):
    cams = orbit_rig(3, elevation_deg=25.0)
    b = render_views(sample, cams, 96, 96, backend=backend, smooth_normals=False)
    tm = trimesh.Trimesh(sample.vertices, sample.faces, process=False)
    errors = []
    for k in range(len(cams)):
        m = b.mask[k]
        pts = (b.points[k][m] - sample.center) * sample.scale
        _, _, tri = trimesh.proximity.closest_point(tm, pts)
        cos = np.sum(b.normal_world[k][m] * tm.face_normals[tri], axis=1)
        errors.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    assert np.median(np.concatenate(errors)) <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_smooth_normals_of_a_sphere(backend):
    sphere = icosphere(4)
    b = render_views(sphere, orbit_rig(2, elevation_deg=10.0), 128, 128, backend=backend)
    m = b.mask
    truth = b.points[m] / np.linalg.norm(b.points[m], axis=1, keepdims=True)
    err = np.degrees(np.arccos(np.clip(np.sum(b.normal_world[m] * truth, axis=1), -1, 1)))
    assert np.median(err) <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlit_flat_colour_is_exact(backend):
    b = render_views(colored_box(), [Camera(look_at((4, 0.5, 1.0)))], 64, 64, backend=backend)
    m = b.mask[0]
    colours = np.unique(np.round(b.albedo[0][m], 6), axis=0)
    # every foreground pixel carries exactly one of the faces' colours, nothing blended
    allowed = {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}
    assert {tuple(c) for c in colours} <= allowed and len(colours) == 3
    assert np.all(b.albedo[0][~m] == 1.0)   # white background


def test_refany3d_preset_matches_spec():
    cams = refany3d_rig(8)
    step = 60 // 8                                   # frames 0, 7, 14, ... of the 60-frame orbit
    for k, cam in enumerate(cams):
        angle = 2 * math.pi * k * step / 60
        np.testing.assert_allclose(cam.position, [4 * math.cos(angle), 0.0, 4 * math.sin(angle)], atol=1e-12)
        assert cam.yfov == pytest.approx(math.radians(45.0))
        assert (cam.znear, cam.zfar, cam.projection) == (0.1, 100.0, "perspective")
        # view matrix of an OpenGL look-at towards the origin with +Y up
        z = cam.position / np.linalg.norm(cam.position)
        x = np.cross([0, 1, 0], z); x /= np.linalg.norm(x)
        np.testing.assert_allclose(cam.cam_to_world[:3, :3], np.stack([x, np.cross(z, x), z], 1), atol=1e-12)
        # the reference's projection matrix at 512 x 512
        t = math.tan(math.radians(45.0) / 2)
        ref = np.array([[1 / t, 0, 0, 0], [0, 1 / t, 0, 0], [0, 0, -100.1 / 99.9, -20 / 99.9], [0, 0, -1, 0]])
        np.testing.assert_allclose(cam.projection_matrix(512, 512), ref, atol=1e-12)
    assert len(refany3d_rig(6)) == 6 and refany3d_rig(6)[1].position[2] > 0   # 60 deg, towards +Z


def test_backends_agree(sample):
    cams = orbit_rig(4, elevation_deg=15.0, start_azimuth_deg=10.0)
    a = render_views(sample, cams, 128, 128, backend="pyrender")
    b = render_views(sample, cams, 128, 128, backend="raycast")
    assert a.backend.startswith("pyrender (") and b.backend == "raycast"
    iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
    assert iou > 0.995
    same = a.mask & b.mask & (a.face_id == b.face_id)
    assert same.sum() > 0.98 * (a.mask & b.mask).sum()
    np.testing.assert_allclose(a.points[same], b.points[same], atol=1e-5)
    np.testing.assert_allclose(a.normal_world[same], b.normal_world[same], atol=1e-4)
    np.testing.assert_allclose(a.albedo[same], b.albedo[same], atol=1e-4)
    np.testing.assert_allclose(a.depth[same], b.depth[same], atol=1e-5)
