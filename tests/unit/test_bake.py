"""Texture baking: round trip on the sample mesh, UV repair, fills, export, bad input."""
import os

import numpy as np
import pytest

from realiz3d.renderers import InputError, load_mesh, mesh_from_arrays, normalize, orbit_rig, render_views
from realiz3d.renderers.bake import BakeSettings, bake_texture, fill_holes
from realiz3d.renderers.mesh import Mesh, MeshPart
from realiz3d.renderers.mesh_export import write_glb
from realiz3d.renderers.sample_mesh import atlas_texture, box_arrays, write_sample_mesh
from realiz3d.renderers.surface import sample_texture
from realiz3d.renderers.uv import make_atlas, rasterize, uv_problem

SIZE = 384


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.glb"
    write_sample_mesh(str(path))
    return normalize(load_mesh(str(path)))


@pytest.fixture(scope="module")
def rig():
    return orbit_rig(8, elevation_deg=20.0, radius=3.0, yfov_deg=40.0)


@pytest.fixture(scope="module")
def renders(sample, rig):
    return render_views(sample, rig, SIZE, SIZE, lit=False)


@pytest.fixture(scope="module")
def baked(sample, rig, renders):
    return bake_texture(sample, renders.albedo, rig, BakeSettings(texture_size=1024))


def test_round_trip_reproduces_the_views(sample, rig, renders, baked):
    again = render_views(baked.mesh, rig, SIZE, SIZE, lit=False)
    assert np.array_equal(again.mask, renders.mask)                 # same geometry, same frame
    err = np.abs(again.albedo - renders.albedo)[renders.mask]
    assert err.mean() * 255 <= 2.0, err.mean() * 255
    assert np.percentile(err, 99) * 255 <= 16.0
    # the parts (textured box + vertex-coloured cone) were merged and unwrapped; the notes say so
    assert any("unwrapped" in n for n in baked.notes) and any("2 parts" in n for n in baked.notes)


def test_no_texel_is_left_unfilled(baked):
    tex = baked.texture[..., :3].astype(int)
    assert baked.seen.any() and (~baked.seen & baked.covered).any()   # the bottom was never seen ...
    assert baked.texture.shape == (1024, 1024, 4) and (baked.texture[..., 3] == 255).all()
    assert not (tex.sum(-1) == 0).any()                                # ... yet no texel stayed black
    # the unseen bottom (-Y, magenta in the source) is filled from its surroundings, not left empty
    assert 0.5 < baked.coverage < 1.0


@pytest.mark.parametrize("fill", ["nearest", "pull-push"])
def test_fills_cover_every_hole(fill):
    tex = np.zeros((64, 64, 3), np.float32)
    known = np.zeros((64, 64), bool)
    tex[:, :24] = (1.0, 0.0, 0.0)
    tex[:, 40:] = (0.0, 0.0, 1.0)
    known[:, :24] = known[:, 40:] = True
    out = fill_holes(tex, known, fill)
    assert np.array_equal(out[known], tex[known])
    hole = out[:, 24:40]
    assert (hole.sum(-1) > 0.9).all()                      # filled with the surrounding colours
    if fill == "nearest":
        assert set(map(tuple, hole.reshape(-1, 3).round(3))) == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    else:                                                  # smooth: a blend that changes monotonically
        mid = hole[32, :, 0]
        assert np.all(np.diff(mid) <= 1e-6) and 0.1 < mid[8] < 0.9


def box_mesh(uv) -> Mesh:
    v, f, _, _ = box_arrays()
    part = MeshPart(vertices=v.astype(np.float64), faces=f.astype(np.int64), uv=uv, texture=atlas_texture(),
                    base_color=np.ones(4, np.float32))
    return normalize(Mesh([part]))


def test_usable_uvs_are_kept_and_baked_into(rig):
    v, f, uv, _ = box_arrays()
    box = box_mesh(uv)
    assert uv_problem(uv, f) == ""
    b = render_views(box, rig, 256, 256, lit=False)
    res = bake_texture(box, b.albedo, rig, BakeSettings(texture_size=512, uv_mode="auto"))
    assert res.notes == [] and np.array_equal(res.mesh.parts[0].uv, uv)
    # texel space: each seen texel holds the source texture's colour at the same UV
    rows, cols = np.nonzero(res.seen)
    texel_uv = np.stack([(cols + 0.5) / 512, 1 - (rows + 0.5) / 512], 1)
    source = sample_texture(atlas_texture(), texel_uv) * 255
    err = np.abs(res.texture[rows, cols, :3] - source)
    assert res.seen.sum() > 0.5 * res.covered.sum() and err.mean() <= 4.0, err.mean()


@pytest.mark.parametrize("case, reason", [
    ("none", "no UV"), ("zeros", "zero area"), ("overlap", "overlapping"), ("tiling", "outside [0, 1]"),
    ("nan", "NaN")])
def test_unusable_uvs_are_repaired_by_unwrapping(case, reason, rig):
    v, f, uv, _ = box_arrays()
    bad = {"none": None, "zeros": np.zeros_like(uv), "tiling": uv * 3.0,
           "overlap": np.tile(np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]], np.float32), (6, 1)),
           "nan": np.where(np.arange(len(uv))[:, None] == 3, np.nan, uv).astype(np.float32)}[case]
    assert reason in uv_problem(bad, f)
    box = box_mesh(bad)
    b = render_views(box_mesh(uv), rig, 128, 128, lit=False)
    res = bake_texture(box, b.albedo, rig, BakeSettings(texture_size=256))
    assert any(reason in n for n in res.notes)
    assert uv_problem(res.mesh.parts[0].uv, res.mesh.parts[0].faces) == ""
    with pytest.raises(InputError) as e:
        bake_texture(box, b.albedo, rig, BakeSettings(texture_size=256, uv_mode="keep"))
    assert e.value.input_name == "uv_mode" and reason in str(e.value)


def test_unwrap_keeps_face_order_and_geometry():
    v, f, _, _ = box_arrays()
    atlas = make_atlas(v.astype(np.float64), f.astype(np.int64), None, "unwrap", 256, 2)
    assert atlas.unwrapped and atlas.faces.shape == f.shape
    assert np.allclose(atlas.vertices[atlas.faces], v[f])
    assert uv_problem(atlas.uv, atlas.faces) == ""


def test_rasterize_covers_a_full_square_once():
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    t = rasterize(uv, f, 32)
    assert t.covered.all() and t.overlap < 0.05
    # barycentric interpolation of the UVs gives back each texel centre (row 0 = top = v 1)
    uv_at = np.einsum("hwk,hwkc->hwc", t.bary, uv[f][t.face])
    cols, rows = np.meshgrid(np.arange(32), np.arange(32))
    assert np.allclose(uv_at[..., 0], (cols + 0.5) / 32, atol=1e-5)
    assert np.allclose(uv_at[..., 1], 1 - (rows + 0.5) / 32, atol=1e-5)


def test_views_must_match_cameras(sample, rig, renders):
    with pytest.raises(InputError) as e:
        bake_texture(sample, renders.albedo[:5], rig)
    assert e.value.input_name == "views" and "fewer views than cameras" in str(e.value)
    with pytest.raises(InputError, match="texture_size"):
        bake_texture(sample, renders.albedo, rig, BakeSettings(texture_size=0))
    with pytest.raises(InputError, match="fill"):
        bake_texture(sample, renders.albedo, rig, BakeSettings(fill="blur"))
    with pytest.raises(InputError, match="not visible|no texel"):
        bake_texture(sample, renders.albedo, rig, BakeSettings(min_cos=0.999, texture_size=64))


def test_export_round_trip_in_the_asset_frame(tmp_path, sample, baked):
    path = str(tmp_path / "textured.glb")
    write_glb(baked.mesh, path)
    back = load_mesh(path)
    assert len(back.parts) == 1
    part = back.parts[0]
    assert part.texture is not None and part.texture.shape[:2] == (1024, 1024)
    assert np.array_equal(part.texture[..., :3], baked.texture[..., :3])
    np.testing.assert_allclose(back.bounds, sample.asset_bounds, atol=1e-5)   # original frame, not normalised
    np.testing.assert_allclose(part.base_color, 1.0)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_failed_export_leaves_no_file(tmp_path, baked, monkeypatch):
    path = str(tmp_path / "broken.glb")

    def fail(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_glb(baked.mesh, path)
    assert os.listdir(tmp_path) == []


def test_points_only_and_vertex_colour_meshes_export(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    m = mesh_from_arrays(v, np.array([[0, 1, 2]]), vertex_colors=np.array([[1, 0, 0, 1]] * 3, np.float32))
    write_glb(m, str(tmp_path / "tri.glb"))
    back = load_mesh(str(tmp_path / "tri.glb"))
    assert np.allclose(back.parts[0].vertex_colors[:, :3], [1, 0, 0], atol=1 / 255)


def test_xatlas_crash_falls_back_to_the_grid_layout(monkeypatch, rig):
    """xatlas segfaults on some meshes; it runs in a child process, so a crash there becomes a
    documented repair (one grid cell per triangle pair), never a crash of the host."""
    from collections import OrderedDict

    import realiz3d.renderers.bake as bakemod
    import realiz3d.renderers.uv as uvmod
    monkeypatch.setattr(uvmod, "_XATLAS_CHILD", "import os; os.abort()")
    monkeypatch.setattr(bakemod, "_ATLAS_CACHE", OrderedDict())
    v, f, uv, _ = box_arrays()
    box = box_mesh(None)
    b = render_views(box_mesh(uv), rig, 128, 128, lit=False)
    res = bake_texture(box, b.albedo, rig, BakeSettings(texture_size=256))
    assert any("grid layout" in n and "signal" in n for n in res.notes), res.notes
    part = res.mesh.parts[0]
    assert uv_problem(part.uv, part.faces) == "" and len(part.vertices) == 3 * len(f)
    again = render_views(res.mesh, rig, 128, 128, lit=False)
    assert np.abs(again.albedo - b.albedo)[b.mask].mean() * 255 < 12.0


@pytest.mark.parametrize("faces", [1, 2, 7, 500])
def test_grid_layout_never_overlaps(faces):
    from realiz3d.renderers.uv import grid_unwrap
    rng = np.random.default_rng(faces)
    v = rng.normal(size=(faces * 3, 3))
    f = np.arange(faces * 3).reshape(faces, 3)
    atlas = grid_unwrap(v, f, 512, 2)
    t = rasterize(atlas.uv, atlas.faces, 512)
    assert t.overlap == 0.0 and set(np.unique(t.face)) - {-1} == set(range(faces))
    assert atlas.uv.min() >= 0 and atlas.uv.max() <= 1 and np.allclose(atlas.vertices[atlas.faces], v[f])


def test_progress_per_view_and_cancel(sample, rig, renders):
    calls = []

    class Cancelled(Exception):
        pass

    def progress(done, total):
        calls.append((done, total))
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        bake_texture(sample, renders.albedo, rig, BakeSettings(texture_size=128), progress)
    assert [c for c in calls if c[0] > 0] == [(1, 9), (2, 9), (3, 9)]


def test_a_second_bake_of_the_same_mesh_reuses_its_atlas(sample, rig, renders, monkeypatch):
    import realiz3d.renderers.bake as bakemod
    settings = BakeSettings(texture_size=128)
    first = bake_texture(sample, renders.albedo, rig, settings)
    calls = []
    monkeypatch.setattr(bakemod, "make_atlas", lambda *a, **k: calls.append(a))
    second = bake_texture(sample, renders.albedo[::-1].copy(), rig[::-1], settings)
    assert calls == [] and np.array_equal(first.mesh.parts[0].uv, second.mesh.parts[0].uv)
    assert np.abs(first.texture.astype(int) - second.texture.astype(int)).max() <= 1


def test_a_chatty_xatlas_child_never_blocks(monkeypatch):
    """The child's stderr goes to a file, not a pipe read after exit: 200 KB of output (over a
    pipe's 64 KB) neither blocks it until the timeout nor loses the message of a failure."""
    import time

    import realiz3d.renderers.uv as uvmod
    v, f, _, _ = box_arrays()
    chatty = "import sys\nfor _ in range(200):\n    sys.stderr.write('x' * 1000 + '\\n')\nsys.stderr.flush()\n"
    monkeypatch.setattr(uvmod, "_XATLAS_CHILD", chatty + uvmod._XATLAS_CHILD)
    t0 = time.monotonic()
    atlas = uvmod.unwrap(v, f, 256, 4, "test", timeout=30.0)
    assert time.monotonic() - t0 < 15.0
    assert atlas.unwrapped and atlas.note.startswith("UVs unwrapped with xatlas"), atlas.note

    monkeypatch.setattr(uvmod, "_XATLAS_CHILD", chatty + "sys.stderr.write('the last words\\n')\nsys.exit(3)\n")
    t0 = time.monotonic()
    atlas = uvmod.unwrap(v, f, 256, 4, "test", timeout=30.0)
    assert time.monotonic() - t0 < 15.0
    assert "exit code 3: the last words" in atlas.note, atlas.note


def test_the_atlas_cache_is_bounded_by_bytes(sample, rig, renders, monkeypatch):
    """A 4096 px texel map (268 MB) is not kept under a smaller bound; beyond the bound the least
    recently baked mesh is evicted; 0 disables the cache; a larger bound keeps the warm path."""
    from collections import OrderedDict

    import realiz3d.renderers.bake as bakemod
    monkeypatch.setattr(bakemod, "_ATLAS_CACHE", OrderedDict())
    monkeypatch.setattr(bakemod, "ATLAS_CACHE_BYTES", bakemod.ATLAS_CACHE_BYTES)
    made = []
    real_make_atlas = bakemod.make_atlas
    monkeypatch.setattr(bakemod, "make_atlas", lambda *a, **k: made.append(a[4]) or real_make_atlas(*a, **k))
    _, _, uv, _ = box_arrays()
    box = box_mesh(uv)

    bakemod.set_bake_cache_limit(200)                              # MB: less than one 4096 px map
    for _ in range(2):
        entry = bakemod.atlas_and_texels(box, uv, BakeSettings(texture_size=4096))
        assert bakemod.cache_entry_bytes(entry) > 200 * 2 ** 20
        assert len(bakemod._ATLAS_CACHE) == 0 and bakemod.bake_cache_bytes() == 0
    del entry
    assert made == [4096, 4096]                                    # nothing retained: made twice

    one = 128 * 128 * 16                                           # a 128 px texel map: 16 bytes a texel
    bakemod.set_bake_cache_limit(1.5 * one / 2 ** 20 + 0.01)       # room for one 128 px entry, not two
    settings = BakeSettings(texture_size=128)
    made.clear()
    bakemod.atlas_and_texels(box, uv, settings)
    bakemod.atlas_and_texels(sample, sample.parts[0].uv, settings)
    assert len(bakemod._ATLAS_CACHE) == 1 and bakemod.bake_cache_bytes() <= bakemod.ATLAS_CACHE_BYTES
    bakemod.atlas_and_texels(sample, sample.parts[0].uv, settings)  # the newest is kept ...
    bakemod.atlas_and_texels(box, uv, settings)                     # ... the older one was evicted
    assert made == [128, 128, 128]

    bakemod.set_bake_cache_limit(64)                               # a larger bound: the warm path works
    made.clear()
    first = bake_texture(sample, renders.albedo, rig, settings)
    made.clear()
    second = bake_texture(sample, renders.albedo[::-1].copy(), rig[::-1], settings)
    assert made == [] and np.array_equal(first.mesh.parts[0].uv, second.mesh.parts[0].uv)
    assert bakemod.bake_cache_bytes() <= 64 * 2 ** 20

    bakemod.set_bake_cache_limit(0)                                # 0 disables (and evicts at once)
    assert len(bakemod._ATLAS_CACHE) == 0
    bakemod.atlas_and_texels(box, uv, settings)
    bakemod.atlas_and_texels(box, uv, settings)
    assert made == [128, 128] and len(bakemod._ATLAS_CACHE) == 0
    with pytest.raises(InputError) as e:
        bakemod.set_bake_cache_limit(-1)
    assert e.value.input_name == "bake_cache_mb"


def test_the_bake_cache_bound_is_read_from_the_environment(monkeypatch):
    import realiz3d.renderers.bake as bakemod
    monkeypatch.delenv("REALIZ3D_BAKE_CACHE_MB", raising=False)
    assert bakemod._limit_from_env() == int(bakemod.DEFAULT_BAKE_CACHE_MB * 2 ** 20)
    monkeypatch.setenv("REALIZ3D_BAKE_CACHE_MB", "32")
    assert bakemod._limit_from_env() == 32 * 2 ** 20
    monkeypatch.setenv("REALIZ3D_BAKE_CACHE_MB", "0")
    assert bakemod._limit_from_env() == 0
    monkeypatch.setenv("REALIZ3D_BAKE_CACHE_MB", "lots")
    with pytest.warns(UserWarning, match="REALIZ3D_BAKE_CACHE_MB"):
        assert bakemod._limit_from_env() == int(bakemod.DEFAULT_BAKE_CACHE_MB * 2 ** 20)
