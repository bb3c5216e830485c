"""A view that sees no surface is a normal case: it renders as background, on both backends."""
import numpy as np
import pytest
import torch

from realiz3d.renderers import Camera, Mesh, MeshPart, bundle_points, depth_image, look_at, normal_image, render_views
from realiz3d.sampling.multiview import CONTROL_KINDS, control_maps
from meshes import colored_box


def flat_card() -> Mesh:
    """A unit square in the z = 0 plane: seen edge-on from +X it covers no pixel centre."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    return Mesh(parts=[MeshPart(vertices=v, faces=np.array([[0, 1, 2], [0, 2, 3]]), name="card")], source="card")


VIEWS = {
    "looking away": (colored_box(), Camera(look_at((0, 0, 4), (0, 0, 8)))),
    "out of frame": (colored_box(), Camera(look_at((0, 0, 4), (6, 0, 4)))),
    "card edge-on": (flat_card(), Camera(look_at((4, 0, 0), (0, 0, 0)))),
}


@pytest.mark.parametrize("backend", ["raycast", "pyrender"])
@pytest.mark.parametrize("case", list(VIEWS))
def test_view_without_surface_renders_as_background(backend, case):
    mesh, empty = VIEWS[case]
    seen = Camera(look_at((0.3, 0.2, 4), (0, 0, 0)))
    b = render_views(mesh, [empty, seen], 24, 16, backend=backend, background=(0.25,) * 3)
    assert b.backend.split(" ")[0] == backend      # e.g. "pyrender (in-process, egl)"
    assert not b.mask[0].any() and b.mask[1].any()
    assert (b.face_id[0] == -1).all()
    np.testing.assert_array_equal(b.points[0], 0)
    np.testing.assert_array_equal(b.depth[0], 0)
    np.testing.assert_array_equal(b.normal_world[0], 0)
    np.testing.assert_array_equal(b.albedo[0], 0.25)
    np.testing.assert_array_equal(b.lit[0], 0.25)
    np.testing.assert_array_equal(b.points_normalized[0], 1.0)        # point map: white on background
    np.testing.assert_array_equal(normal_image(b)[0], 0)               # black
    np.testing.assert_array_equal(depth_image(b)[0], 0)
    for kind in CONTROL_KINDS:
        assert torch.count_nonzero(control_maps(b, kind)[0]) == 0
    only_empty = render_views(mesh, [empty], 24, 16, backend=backend)
    xyz, rgb, normals = bundle_points(only_empty)
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3) and normals.shape == (0, 3)


def test_refany3d_conditions_of_a_card_seen_edge_on():
    """RefAny3D's rig orbits at elevation 0: a card lying in the y = 0 plane is edge-on in every view."""
    from realiz3d.refany3d.conditions import render_conditions
    v = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], float)
    card = Mesh(parts=[MeshPart(vertices=v, faces=np.array([[0, 2, 1], [0, 3, 2]]), name="card")], source="card")
    rgb, points, bounds = render_conditions(card, n_views=2, size=16, backend="raycast")
    assert torch.all(points == 1.0) and torch.all(rgb == 1.0)          # all white background
