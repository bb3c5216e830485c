"""OminiControl's control conventions from a mesh's renders (SPEC.md section 5): the inverse depth
of its depth LoRA, the canny edges of its canny LoRA (and canny itself, against OpenCV)."""
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from realiz3d.renderers import depth_image, load_mesh, normal_image, normalize, orbit_rig, render_views
from realiz3d.renderers.controls import (CANNY_SOURCES, albedo_varies, canny, canny_control,
                                         inverse_depth_control, rgb_to_gray, to_uint8)
from realiz3d.renderers.errors import InputError
from realiz3d.sampling.multiview import CONTROL_KINDS, control_maps, make_grid
from meshes import colored_box, icosphere

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 96


@pytest.fixture(scope="module")
def sample():
    return normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))


@pytest.fixture(scope="module")
def bundle(sample):
    return render_views(sample, orbit_rig(3, elevation_deg=25.0, start_azimuth_deg=30.0), SIZE, SIZE,
                        backend="raycast", lit=False)


def test_inverse_depth_is_depth_anythings_convention(bundle):
    c = inverse_depth_control(bundle)
    assert c.shape == (3, SIZE, SIZE, 3) and c.dtype == np.float32
    assert (c[..., 0] == c[..., 1]).all() and (c[..., 0] == c[..., 2]).all()
    np.testing.assert_array_equal(np.round(c * 255) / 255, c)            # 8-bit levels
    for k in range(len(bundle)):
        m, d, v = bundle.mask[k], bundle.depth[k], c[k, ..., 0]
        assert (v[~m] == 0).all()                                        # background exactly black
        assert v[m].max() == 1.0 and v[m].min() == 0.0                   # min-max over the foreground
        nearest = np.unravel_index(np.where(m, d, np.inf).argmin(), m.shape)
        farthest = np.unravel_index(np.where(m, d, -np.inf).argmax(), m.shape)
        assert v[nearest] == 1.0 and v[farthest] == 0.0                  # near = bright
        order = np.argsort(d[m])                                         # nearer never darker
        assert (np.diff(v[m][order]) <= 0).all()
        inv = 1.0 / d[m].astype(np.float64)                              # truncated like (x * 255).astype(uint8)
        expected = np.floor((inv - inv.min()) / (inv.max() - inv.min()) * 255) / 255
        np.testing.assert_allclose(v[m], expected, atol=1e-6)


def test_rgb_to_gray_is_opencvs():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (500, 400, 3)).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_gray(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    greys = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, -1)
    np.testing.assert_array_equal(rgb_to_gray(greys)[0], np.arange(256))


def opencv_cases(bundle):
    """name -> (uint8 image, low, high): renders, procedural and thin-line images."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:120, 0:150]
    procedural = 127 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 50 * np.sin((xx + yy) / 23.0)
    procedural = np.clip(procedural + rng.normal(0, 12, xx.shape), 0, 255).astype(np.uint8)
    lines = np.zeros((80, 90), np.uint8)
    t = np.linspace(0, 1, 400)
    for (r0, c0, r1, c1, value) in ((3, 2, 70, 85, 255), (0, 40, 79, 40, 180), (75, 5, 10, 60, 90)):
        lines[np.round(r0 + t * (r1 - r0)).astype(int), np.round(c0 + t * (c1 - c0)).astype(int)] = value
    blocks = (rng.random((9, 11)) * 255).astype(np.uint8).repeat(7, 0).repeat(6, 1)
    cases = {"procedural": (procedural, 100, 200), "thin lines": (lines, 100, 200), "blocks": (blocks, 100, 200),
             "noise, other thresholds": ((rng.random((37, 53)) * 255).astype(np.uint8), 333.7, 57.2),
             "one pixel": (np.full((1, 1), 200, np.uint8), 100, 200)}
    normals = to_uint8(normal_image(bundle, "camera"))
    albedo = to_uint8(np.where(bundle.mask[..., None], bundle.albedo, 0.0))
    for k in range(len(bundle)):
        cases[f"normal render {k}"] = (rgb_to_gray(normals[k]), 100, 200)
        cases[f"rgb render {k}"] = (rgb_to_gray(albedo[k]), 100, 200)
        cases[f"rgb render {k}, 3 channels"] = (albedo[k], 100, 200)     # OpenCV's colour mode
    return cases


def test_canny_is_opencvs(bundle):
    cv2 = pytest.importorskip("cv2")
    for name, (image, low, high) in opencv_cases(bundle).items():
        ours, theirs = canny(image, low, high), cv2.Canny(image, low, high)
        agreement = (ours == theirs).mean()
        assert agreement == 1.0, f"{name}: {agreement:.5f} of the pixels agree with cv2.Canny"
        assert name == "one pixel" or theirs.any(), name                # the cases do have edges


def test_canny_input_checks():
    assert not canny(np.zeros((8, 9), np.uint8)).any()
    with pytest.raises(InputError, match="uint8"):
        canny(np.zeros((8, 9), np.float32))


def creases(bundle, degrees: float = 30.0) -> np.ndarray:
    """bool [V, H, W]: foreground pixels whose normal and a 4-neighbour's differ by > degrees."""
    n, m = bundle.normal_world, bundle.mask
    out = np.zeros_like(m)
    for axis in (1, 2):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        hit = m[a] & m[b] & ((n[a] * n[b]).sum(-1) < np.cos(np.radians(degrees)))
        out[a] |= hit
        out[b] |= hit
    return out


def near(mask: np.ndarray, px: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, np.ones((1, 2 * px + 1, 2 * px + 1), bool))


def test_canny_control_edges_are_creases_and_outline(bundle):
    m = bundle.mask
    outline = m ^ ndimage.binary_erosion(m, np.ones((1, 3, 3), bool))
    geometry = creases(bundle) | outline
    # a flat face's inside: well within the object, far from any crease
    flat = ndimage.binary_erosion(m, np.ones((1, 7, 7), bool)) & ~near(creases(bundle), 3)
    assert flat.sum() > 0.3 * m.sum()
    edges = {s: canny_control(bundle, s) for s in CANNY_SOURCES}
    for source, c in edges.items():
        assert c.shape == (3, SIZE, SIZE, 3) and set(np.unique(c)) == {0.0, 1.0}
        assert (c[..., 0] == c[..., 1]).all() and (c[..., 0] == c[..., 2]).all()
        e = c[..., 0] > 0
        assert not (e & ~near(m, 1)).any(), f"{source}: an edge in the background"
        assert (near(e, 1) & outline).sum() >= 0.97 * outline.sum(), f"{source}: the outline is not whole"
    e = edges["normal"][..., 0] > 0
    assert (e & near(geometry, 2)).sum() >= 0.98 * e.sum()               # edges lie on creases or the outline
    assert (near(e, 2) & geometry).sum() >= 0.9 * geometry.sum()          # and find them
    assert not (e & flat).any()
    assert not (edges["depth"][..., 0] > 0)[flat].any()
    # the sample mesh is textured (a checker per side): its RGB has edges inside flat faces, auto adds them
    assert albedo_varies(bundle)
    rgb, auto = edges["rgb"][..., 0] > 0, edges["auto"][..., 0] > 0
    assert (rgb & flat).sum() > 100
    np.testing.assert_array_equal(auto, e | rgb)


def test_canny_auto_adds_rgb_edges_only_when_the_albedo_varies():
    cams = orbit_rig(2, elevation_deg=20.0)
    plain = render_views(icosphere(2), cams, 48, 48, backend="raycast", lit=False)       # one base colour
    assert not albedo_varies(plain)
    np.testing.assert_array_equal(canny_control(plain, "auto"), canny_control(plain, "normal"))
    painted = render_views(colored_box(), cams, 48, 48, backend="raycast", lit=False)    # a colour per side
    assert albedo_varies(painted)
    np.testing.assert_array_equal(canny_control(painted, "auto"),
                                  np.maximum(canny_control(painted, "normal"), canny_control(painted, "rgb")))


def test_control_kinds_and_grids(bundle):
    assert CONTROL_KINDS[:3] == ("normal", "point map", "depth")        # the existing kinds, unchanged
    np.testing.assert_array_equal(control_maps(bundle, "depth").numpy(), depth_image(bundle))
    np.testing.assert_array_equal(control_maps(bundle, "depth (inverse)").numpy(), inverse_depth_control(bundle))
    np.testing.assert_array_equal(control_maps(bundle, "canny").numpy(), canny_control(bundle, "auto"))
    for kind in CONTROL_KINDS:
        grid = make_grid(control_maps(bundle, kind), 2)                   # 3 views: 2 x 2, one cell empty
        assert grid.shape == (2 * SIZE, 2 * SIZE, 3) and grid.dtype == torch.float32
        assert not grid[SIZE:, SIZE:].any()
    with pytest.raises(InputError, match="source"):
        canny_control(bundle, "lit")


def test_geometry_controls_node(bundle):
    from comfy_native import import_comfy
    import_comfy()
    from realiz3d.nodes.control_nodes import CONTROLS, GeometryControls

    schema = GeometryControls.INPUT_TYPES()
    assert list(schema["required"]["control"][1]["options"]) == list(CONTROLS)
    assert all(spec[1].get("tooltip") for group in schema.values() for spec in group.values())
    views = GeometryControls.execute(bundle, "canny (normal)", 0).args[0]
    torch.testing.assert_close(views, torch.from_numpy(canny_control(bundle, "normal")))
    grid = GeometryControls.execute(bundle, "depth (Depth Anything style)", 3).args[0]
    assert grid.shape == (1, SIZE, 3 * SIZE, 3)
    torch.testing.assert_close(grid[0], make_grid(torch.from_numpy(inverse_depth_control(bundle)), 3))
