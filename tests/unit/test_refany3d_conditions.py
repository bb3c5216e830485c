"""RefAny3D's conditions and point-map decoding: conditions always from the normalised mesh,
pre-rendered views decoded with their render's true bounds, a float map and a point cloud per
batch item, and surface points near the bounding box's max corner kept as foreground."""
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from meshes import colored_box
from realiz3d.renderers import Camera, InputError, Mesh, load_mesh, look_at, normalize, refany3d_rig, render_views
from realiz3d.refany3d import decode_point_map, point_clouds, xyz_maps
from realiz3d.refany3d.conditions import CUBE, condition_views, render_conditions
from realiz3d.refany3d.point_maps import WHITE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def moved(mesh: Mesh, scale: float, shift) -> Mesh:
    """The same asset in another frame: every vertex scaled and shifted (a new asset frame)."""
    return Mesh(parts=[replace(p, vertices=p.vertices * scale + np.asarray(shift, float)) for p in mesh.parts],
                source=mesh.source)


# 1. conditions always from the normalised mesh

def test_unnormalised_mesh_gives_the_normalised_copys_conditions():
    raw = moved(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")), 0.4, (0.3, -0.2, 0.1))
    before = raw.vertices.copy()
    rgb, pts, bounds = render_conditions(raw, n_views=3, size=48)
    n_rgb, n_pts, n_bounds = render_conditions(normalize(raw), n_views=3, size=48)
    assert torch.equal(rgb, n_rgb) and torch.equal(pts, n_pts)
    np.testing.assert_allclose(bounds, n_bounds, atol=1e-12)
    np.testing.assert_allclose(bounds, raw.asset_bounds, atol=1e-12)       # decoded XYZ stays in the asset frame
    assert np.array_equal(raw.vertices, before)                            # the input is not changed
    # what a render of the raw, smaller mesh would have given instead: fewer object pixels
    small = render_views(raw, refany3d_rig(3), 48, 48, lit=False)
    assert small.mask.sum() < 0.5 * (n_pts < 1).any(-1).sum()


# 2. pre-rendered views with true bounds

def box_render(views=8, size=96):
    """A 2 x 1 x 0.5 box away from the origin, loaded with normalisation and rendered."""
    box = moved(colored_box(half=(1.0, 0.5, 0.25)), 1.0, (3.0, 1.0, -2.0))
    return box, render_views(normalize(box), refany3d_rig(views), size, size, lit=False)


def test_prerendered_views_decode_with_their_renders_bounds():
    box, bundle = box_render()
    rgb, pts, bounds = condition_views(rgb_views=torch.from_numpy(bundle.albedo),
                                       point_views=torch.from_numpy(bundle.points_normalized), render=bundle)
    np.testing.assert_allclose(bounds, box.asset_bounds, atol=1e-9)
    xyz, fg = xyz_maps(pts.numpy(), bounds)              # the exact point maps stand in for generated ones
    assert np.array_equal(fg, bundle.mask)
    cloud = xyz[fg]
    lo, hi = box.asset_bounds
    assert np.all(cloud >= lo - 1e-5) and np.all(cloud <= hi + 1e-5)
    extent = np.ptp(cloud, axis=0)
    assert extent[0] == pytest.approx(2 * extent[1], rel=0.05) and extent[1] == pytest.approx(2 * extent[2], rel=0.1)
    np.testing.assert_allclose(cloud, bundle.points[bundle.mask], atol=1e-5)
    # the render alone supplies both views
    r_rgb, r_pts, r_bounds = condition_views(render=bundle)
    assert torch.equal(r_rgb, rgb) and torch.equal(r_pts, pts) and np.array_equal(r_bounds, bounds)


def test_views_without_a_render_decode_into_the_cube():
    _, bundle = box_render()
    _, pts, bounds = condition_views(rgb_views=torch.from_numpy(bundle.albedo),
                                     point_views=torch.from_numpy(bundle.points_normalized))
    assert np.array_equal(bounds, CUBE)
    xyz, fg = xyz_maps(pts.numpy(), bounds)
    extent = np.ptp(xyz[fg], axis=0)
    assert extent[0] == pytest.approx(extent[1], rel=0.05)                  # stretched: the documented cube


def test_condition_inputs_are_checked():
    with pytest.raises(InputError) as err:
        condition_views(rgb_views=torch.zeros(1, 16, 16, 3))
    assert err.value.input_name == "mesh"
    with pytest.raises(InputError) as err:
        condition_views(rgb_views=torch.zeros(1, 16, 16, 3), point_views=torch.zeros(1, 16, 16, 3), render="x")
    assert err.value.input_name == "render"


# 3. every batch item: point clouds and the XYZ float map

def test_float_map_and_point_clouds_for_every_batch_item():
    _, bundle = box_render(views=2)
    maps = bundle.points_normalized                      # two different point maps as a batch of 2
    images = bundle.albedo
    bounds = bundle.asset_bounds
    xyz, fg = xyz_maps(maps, bounds)
    assert xyz.shape == (2, 96, 96, 3) and xyz.dtype == np.float32 and fg.shape == (2, 96, 96)
    assert np.all(xyz[~fg] == 0) and np.abs(xyz).max() > 1.0              # raw XYZ, not clipped to [0, 1]
    clouds = point_clouds(images, xyz, fg)
    assert len(clouds) == 2 and not np.array_equal(clouds[0]["xyz"], clouds[1]["xyz"])
    for b in range(2):
        one, one_fg = decode_point_map(maps[b], bounds)
        assert np.array_equal(one_fg, fg[b]) and np.array_equal(xyz[b][fg[b]], one)
        assert np.array_equal(clouds[b]["xyz"], one)
        assert clouds[b]["rgb"].dtype == np.uint8 and len(clouds[b]["rgb"]) == len(one)
        np.testing.assert_array_equal(clouds[b]["rgb"], np.round(images[b][fg[b]] * 255).astype(np.uint8))


# 4. foreground near the max corner

def test_surface_near_the_max_corner_stays_foreground():
    pm = np.ones((40, 40, 3), np.float32)
    ramp = np.linspace(0.6, 0.97, 20, dtype=np.float32)       # an object's surface rising to the max corner
    pm[10:30, 10:30] = ramp[None, :, None]
    pm[2:5, 34:37] = 0.97                                      # a near-white blotch apart from the object
    xyz, fg = decode_point_map(pm, CUBE)
    assert fg[10:30, 10:30].all()                              # the (0.97, 0.97, 0.97) column too
    np.testing.assert_allclose(xyz.max(0), [0.94] * 3, atol=1e-5)   # -1 + 0.97 * 2
    assert not fg[pm.min(-1) == 1.0].any()                     # pure white stays background
    assert not fg[2:5, 34:37].any()                            # noise not touching the object: background
    _, plain = decode_point_map(pm, CUBE, background_threshold=0.99)
    assert plain[2:5, 34:37].all() and not plain[pm.min(-1) == 1.0].any()   # >= 0.99: a plain threshold


def test_rendered_box_keeps_its_max_corner():
    box = colored_box()
    bundle = render_views(box, [Camera(look_at((2.0, 1.8, 1.9)))], 256, 256, lit=False)
    pm = bundle.points_normalized[0]
    m = bundle.mask[0]
    near = m & (pm.min(-1) > 0.95)                            # what "every channel > 0.95" used to drop
    assert near.sum() > 50                                    # the view shows the corner region
    xyz, fg = decode_point_map(pm, box.asset_bounds)
    white = pm.min(-1) > WHITE                                # within 1% of the corner: as white as background
    assert white[m].sum() <= 3
    assert np.array_equal(fg, m & ~white) and fg[near].sum() == near.sum() - white[m].sum()
    np.testing.assert_allclose(xyz, bundle.points[0][fg], atol=1e-5)
