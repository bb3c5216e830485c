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


def textured_glb(path, rgb=(200, 100, 50), factor=(0.5, 0.5, 0.5, 1.0)):
    """A box file with a flat-coloured texture and a glTF baseColorFactor."""
    import trimesh
    from PIL import Image
    from realiz3d.renderers.sample_mesh import box_arrays
    v, f, uv, _ = box_arrays(np.array([0.5, 0.5, 0.5]))
    image = Image.fromarray(np.tile(np.array([*rgb, 255], np.uint8), (8, 8, 1)))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=list(factor))
    trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False).export(path)
    return path


def test_albedo_modes_reference_and_multiplied(tmp_path):
    """reference: a textured part shows its texture alone (the base colour factor is ignored), as
    RefAny3D's renderer and conditions do; multiplied: factor x texture, as glTF defines it."""
    from realiz3d.refany3d.conditions import render_conditions
    from realiz3d.renderers import load_mesh, normalize
    mesh = normalize(load_mesh(textured_glb(str(tmp_path / "tex.glb"))))
    assert mesh.parts[0].base_color[:3] == pytest.approx([0.5] * 3, abs=0.01)
    texture = np.array([200, 100, 50]) / 255.0
    cams = [Camera(look_at((0, 0, 4)))]
    ref = render_views(mesh, cams, 32, 32, lit=False, albedo="reference")
    mult = render_views(mesh, cams, 32, 32, lit=False, albedo="multiplied")
    np.testing.assert_allclose(ref.albedo[0][ref.mask[0]], np.broadcast_to(texture, (ref.mask.sum(), 3)), atol=1e-5)
    np.testing.assert_allclose(mult.albedo[0][mult.mask[0]], np.broadcast_to(texture * mesh.parts[0].base_color[:3],
                                                                             (mult.mask.sum(), 3)), atol=1e-5)
    assert render_views(mesh, cams, 32, 32, lit=False).albedo.tobytes() == mult.albedo.tobytes()   # the default
    rgb, pts, _ = render_conditions(mesh, n_views=1, size=32)             # RefAny3D's conditions: reference
    fg = (pts[0].numpy() < 1).any(-1)
    assert fg.sum() > 100
    np.testing.assert_allclose(rgb[0].numpy()[fg], np.broadcast_to(texture, (fg.sum(), 3)), atol=1e-5)


def test_reference_albedo_uses_vertex_then_base_colour():
    """Without a texture the reference albedo is the vertex colour alone, else the base colour."""
    from dataclasses import replace
    box = colored_box()
    part = box.parts[0]
    grey = np.array([0.5, 0.5, 0.5, 1.0], np.float32)
    vc = np.tile(np.array([[0.2, 0.9, 0.4, 1.0]], np.float32), (len(part.vertices), 1))
    cams = [Camera(look_at((0, 0, 4)))]
    colored = replace(box, parts=[replace(part, face_colors=None, vertex_colors=vc, base_color=grey)])
    ref = render_views(colored, cams, 16, 16, lit=False, albedo="reference").albedo[0, 8, 8]
    mult = render_views(colored, cams, 16, 16, lit=False, albedo="multiplied").albedo[0, 8, 8]
    np.testing.assert_allclose(ref, [0.2, 0.9, 0.4], atol=1e-6)
    np.testing.assert_allclose(mult, [0.1, 0.45, 0.2], atol=1e-6)
    plain = replace(box, parts=[replace(part, face_colors=None, base_color=grey)])
    np.testing.assert_allclose(render_views(plain, cams, 16, 16, lit=False, albedo="reference").albedo[0, 8, 8],
                               [0.5] * 3, atol=1e-6)
