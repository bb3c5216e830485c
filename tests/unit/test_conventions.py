"""CONVENTIONS.md, enforced: an asymmetric object must land where the conventions say."""
import numpy as np
import pytest

from realiz3d.renderers import look_at, orbit_rig, render_views, Camera
from meshes import colored_box

BACKENDS = ["pyrender", "raycast"]


def center_color(bundle, k):
    h, w = bundle.height, bundle.width
    return bundle.albedo[k, h // 2, w // 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_axis_colours_land_where_conventions_say(backend):
    box = colored_box()
    # a camera on each positive axis looking at the origin sees that axis' side
    cams = [Camera(look_at((4, 0, 0))), Camera(look_at((0, 4, 0))), Camera(look_at((0, 0, 4)))]
    b = render_views(box, cams, 64, 64, backend=backend)
    np.testing.assert_allclose(center_color(b, 0), [1, 0, 0], atol=1e-6)   # +X red
    np.testing.assert_allclose(center_color(b, 1), [0, 1, 0], atol=1e-6)   # +Y green
    np.testing.assert_allclose(center_color(b, 2), [0, 0, 1], atol=1e-6)   # +Z blue


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_axes_and_rows(backend):
    """From +Z (azimuth 90): +X is on the image's right, +Y at the top (row 0 is the top row)."""
    b = render_views(colored_box(), orbit_rig(4, start_azimuth_deg=90.0), 64, 64, backend=backend)
    pts, m = b.points[0], b.mask[0]
    rows, cols = np.nonzero(m)
    right, left = pts[m][cols > cols.mean()].mean(0), pts[m][cols < cols.mean()].mean(0)
    top, bottom = pts[m][rows < rows.mean()].mean(0), pts[m][rows > rows.mean()].mean(0)
    assert right[0] > 0.2 and left[0] < -0.2
    assert top[1] > 0.1 and bottom[1] < -0.1
    # and the camera-frame normal of the +Z side points at the viewer (+Z), world normal is +Z
    np.testing.assert_allclose(b.normal_camera[0, 32, 32], [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(b.normal_world[0, 32, 32], [0, 0, 1], atol=1e-5)


def test_azimuth_direction():
    """Azimuth 0 puts the camera on +X, azimuth 90 on +Z; elevation lifts it towards +Y."""
    c0, c90 = orbit_rig(4, radius=2.0)[:2]
    np.testing.assert_allclose(c0.position, [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c90.position, [0, 0, 2], atol=1e-12)
    up = orbit_rig(1, elevation_deg=30.0, radius=2.0)[0]
    assert up.position[1] == pytest.approx(1.0)
    # OpenGL camera: looks down its -Z axis, at the origin
    fwd = -c0.cam_to_world[:3, 2]
    np.testing.assert_allclose(fwd, [-1, 0, 0], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_point_map_normalisation(backend):
    """points_normalized = (p - bbox_min) / (bbox_max - bbox_min) per axis; background white."""
    box = colored_box()
    b = render_views(box, [Camera(look_at((0, 0, 4)))], 64, 64, backend=backend)
    lo, hi = box.asset_bounds
    m = b.mask[0]
    np.testing.assert_allclose(b.points_normalized[0][m], (b.points[0][m] - lo) / (hi - lo), atol=1e-6)
    assert np.all(b.points_normalized[0][~m] == 1.0)
    # the +Z side is at z = max: blue channel 1 everywhere on it
    np.testing.assert_allclose(b.points_normalized[0][m][:, 2], 1.0, atol=1e-6)
