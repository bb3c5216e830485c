"""Mesh loading: formats, scene flattening, colours, normalisation, and bad files."""
import numpy as np
import pytest
import trimesh

from realiz3d.renderers import InputError, load_mesh, mesh_from_arrays, normalize
from realiz3d.renderers.sample_mesh import BOX_HALF, CONE_OFFSET, build_sample_scene, write_sample_mesh


@pytest.fixture(scope="module")
def scene():
    return build_sample_scene()


@pytest.mark.parametrize("ext", ["glb", "gltf", "obj", "ply", "stl"])
def test_formats_load_with_the_same_geometry(tmp_path, scene, ext):
    path = tmp_path / f"asset.{ext}"
    if ext in ("ply", "stl"):      # single-mesh formats: export the flattened scene
        scene.to_geometry().export(path)
    else:
        scene.export(path)
    mesh = load_mesh(str(path))
    assert mesh.num_faces == 12 + 32
    lo, hi = mesh.bounds
    np.testing.assert_allclose(lo, -BOX_HALF, atol=1e-5)
    np.testing.assert_allclose(hi[[0, 2]], BOX_HALF[[0, 2]], atol=1e-5)
    assert hi[1] == pytest.approx(CONE_OFFSET[1] + 0.35, abs=1e-5)      # cone apex, moved by its node


def test_glb_keeps_texture_and_vertex_colours(tmp_path):
    path = tmp_path / "s.glb"
    write_sample_mesh(str(path))
    parts = {p.name: p for p in load_mesh(str(path)).parts}
    box, cone = parts["box"], parts["cone"]
    assert box.texture is not None and box.uv is not None and box.texture.shape[2] == 4
    assert cone.vertex_colors is not None and cone.texture is None
    np.testing.assert_allclose(cone.vertex_colors.max(0)[:3], [1, 1, 1], atol=1e-6)   # white apex


def test_stl_gets_flat_default_colour(tmp_path):
    path = tmp_path / "box.stl"
    trimesh.creation.box().export(path)
    part = load_mesh(str(path)).parts[0]
    assert part.texture is None and part.vertex_colors is None and part.face_colors is None
    np.testing.assert_allclose(part.base_color[:3], 0.5)


def test_normalize_fits_cube_and_keeps_asset_frame(tmp_path):
    path = tmp_path / "s.glb"
    write_sample_mesh(str(path))
    raw = load_mesh(str(path))
    mesh = normalize(raw)
    lo, hi = mesh.bounds
    assert np.max(hi - lo) == pytest.approx(2.0)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-12)
    np.testing.assert_allclose(mesh.asset_bounds, raw.bounds, atol=1e-12)
    np.testing.assert_allclose(mesh.to_asset_frame(mesh.vertices), raw.vertices, atol=1e-12)
    twice = normalize(mesh)                       # composes: asset frame still the file's
    np.testing.assert_allclose(twice.asset_bounds, raw.bounds, atol=1e-12)


def test_mirroring_transform_keeps_outward_faces(tmp_path):
    s = trimesh.Scene()
    s.add_geometry(trimesh.creation.box(), transform=np.diag([-1.0, 1.0, 1.0, 1.0]))
    path = tmp_path / "mirrored.glb"
    s.export(path)
    mesh = load_mesh(str(path))
    v, f = mesh.vertices, mesh.faces
    centroid_dir = v[f].mean(1)
    n = np.cross(v[f][:, 1] - v[f][:, 0], v[f][:, 2] - v[f][:, 0])
    assert np.all(np.sum(n * centroid_dir, axis=1) > 0)


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


@pytest.mark.parametrize("name,content,phrase", [
    ("missing.glb", None, "does not exist"),
    ("notes.txt", "hello", "not a supported mesh file"),
    ("garbage.glb", b"this is not a glb file at all", "could not be read"),
    ("empty.obj", "# nothing here\n", "empty mesh"),
    ("nan.obj", "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n", "NaN or infinite"),
    ("inf.obj", "v 0 0 0\nv 1 0 0\nv 0 inf 0\nf 1 2 3\n", "NaN or infinite"),
    ("points.ply", "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                   "end_header\n0 0 0\n1 0 0\n0 1 0\n", "point cloud"),
    ("flat.obj", "v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n", "zero size"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, phrase):
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    with pytest.raises(InputError) as err:
        load_mesh(path, "mesh_file")
    assert err.value.input_name == "mesh_file"
    assert phrase in str(err.value) and name in str(err.value)


def test_mesh_from_arrays_validates():
    mesh = mesh_from_arrays([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    assert mesh.num_faces == 1
    with pytest.raises(InputError, match="index missing vertices"):
        mesh_from_arrays([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 5]])
    with pytest.raises(InputError, match=r"expected vertices \[N, 3\]"):
        mesh_from_arrays([[0, 0], [1, 0]], [[0, 1, 2]])
