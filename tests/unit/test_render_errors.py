"""Render-time bad input: each a clear InputError naming the input."""
import pytest

from realiz3d.renderers import Camera, InputError, cameras_from_json, look_at, orbit_rig, render_views
from meshes import colored_box


@pytest.mark.parametrize("kwargs,name", [
    (dict(cameras=[]), "cameras"),
    (dict(width=0), "width"),
    (dict(height=5000), "height"),
    (dict(backend="vulkan"), "backend"),
    (dict(ambient=2.0), "ambient"),
    (dict(albedo="texture"), "albedo"),
    (dict(cameras=[Camera(look_at((0.1, 0.1, 0.1), (1, 0, 0)))]), "cameras"),   # inside the box
])
def test_render_rejects(kwargs, name):
    args = dict(mesh=colored_box(), cameras=orbit_rig(2), width=32, height=32)
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        render_views(**args)
    assert err.value.input_name == name


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_views=0), "num_views"), (dict(radius=0.0), "radius"), (dict(yfov_deg=180.0), "fov"),
    (dict(projection="fisheye"), "projection"),
])
def test_rig_rejects(kwargs, name):
    with pytest.raises(InputError) as err:
        orbit_rig(**kwargs)
    assert err.value.input_name == name


@pytest.mark.parametrize("text,phrase", [
    ("not json", "not valid JSON"), ("[]", "non-empty"), ("[1]", "entry 0"),
    ('[{"target": [0, 0, 0]}]', "entry 0 is not a valid pose"),
    ('[{"cam_to_world": [[1, 0], [0, 1]]}]', "4x4"), ('[{"eye": [0, 0, 0]}]', "on its look-at target"),
])
def test_explicit_poses_reject(text, phrase):
    with pytest.raises(InputError, match=phrase):
        cameras_from_json(text)


def test_explicit_poses_accept():
    cams = cameras_from_json('[{"eye": [0, 0, 4]}, {"eye": [0, 5, 0]}, {"eye": [3, 0, 0], "yfov_deg": 30, '
                             '"projection": "orthographic", "ortho_height": 3}]')
    assert [c.projection for c in cams] == ["perspective", "perspective", "orthographic"]
    b = render_views(colored_box(), cams, 32, 32)
    assert b.mask.reshape(3, -1).any(axis=1).all()      # straight down from +Y works too


def test_progress_and_cancel():
    seen = []

    class Cancelled(BaseException):
        pass

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        render_views(colored_box(), orbit_rig(6), 32, 32, progress=progress)
    assert seen == [(1, 6), (2, 6)]     # stopped right after the second view
