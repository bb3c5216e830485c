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


PLY_FACE = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 {}\n")


@pytest.mark.parametrize("name,content,index", [
    ("past_end.ply", PLY_FACE.format(7), "index 7"),
    ("negative.ply", PLY_FACE.format(-5), "index -5"),
    ("minus_one.ply", PLY_FACE.format(-1), "index -1"),      # would wrap silently to the last vertex
    ("past_end.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "index 8"),
    ("negative.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -9\n", "index -9"),
])
def test_faces_indexing_missing_vertices_are_refused(tmp_path, name, content, index):
    with pytest.raises(InputError) as err:
        load_mesh(write(tmp_path, name, content), "mesh_file")
    assert err.value.input_name == "mesh_file"
    message = str(err.value)
    assert name in message and "vertices that do not exist" in message and index in message


def test_glb_with_face_index_past_the_end_is_refused(tmp_path):
    """Every format goes through the same check: a GLB whose index buffer points past its vertices."""
    import json
    import struct
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    data = bytearray(tri.export(file_type="glb"))
    length = struct.unpack_from("<I", data, 12)[0]
    tree = json.loads(data[20:20 + length])
    view = tree["bufferViews"][tree["accessors"][tree["meshes"][0]["primitives"][0]["indices"]]["bufferView"]]
    start = 20 + length + 8 + view.get("byteOffset", 0)
    struct.pack_into("<I", data, start + 8, 7)                    # third index: 2 -> 7 (of 3 vertices)
    with pytest.raises(InputError, match="vertices that do not exist") as err:
        load_mesh(write(tmp_path, "bad_index.glb", bytes(data)), "mesh_file")
    assert err.value.input_name == "mesh_file"


@pytest.mark.parametrize("ext", ["glb", "ply", "stl"])
def test_smooth_normals_are_scale_invariant(tmp_path, scene, ext):
    normals = []
    for scale in (1.0, 1e-6):
        s = build_sample_scene()
        s.apply_transform(np.diag([scale, scale, scale, 1.0]))
        path = tmp_path / f"s{scale}.{ext}"
        (s.to_geometry() if ext in ("ply", "stl") else s).export(path)
        mesh = load_mesh(str(path))
        normals.append(np.concatenate([p.vertex_normals for p in mesh.parts]))
    np.testing.assert_allclose(np.linalg.norm(normals[1], axis=1), 1.0, atol=1e-6)   # none zeroed
    np.testing.assert_allclose(normals[1], normals[0], atol=1e-5)


def test_smooth_normals_of_a_tiny_mesh_render_like_a_big_one():
    from realiz3d.renderers import orbit_rig, render_views
    from realiz3d.renderers import normalize as norm
    meshes = []
    for scale in (1.0, 1e-6):
        s = build_sample_scene()
        s.apply_transform(np.diag([scale, scale, scale, 1.0]))
        meshes.append(norm(mesh_from_trimesh_scene(s)))
    a, b = (render_views(m, orbit_rig(2), 32, 32, backend="raycast").normal_world for m in meshes)
    np.testing.assert_allclose(a, b, atol=1e-4)


def mesh_from_trimesh_scene(s):
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.ply")
        s.to_geometry().export(p)
        return load_mesh(p)


def test_truncated_stl_is_called_truncated(tmp_path):
    data = trimesh.creation.box().export(file_type="stl")
    for cut in (300, 60):
        with pytest.raises(InputError) as err:
            load_mesh(write(tmp_path, f"cut{cut}.stl", data[:cut]), "mesh_file")
        assert "truncated" in str(err.value) and "empty" not in str(err.value)
        assert err.value.input_name == "mesh_file"


OBJ_UV = "mtllib {}\nusemtl m\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


def test_missing_mtl_or_texture_gives_a_note(tmp_path):
    mesh = load_mesh(write(tmp_path, "nomtl.obj", OBJ_UV.format("gone.mtl")))
    assert len(mesh.notes) == 1 and "gone.mtl" in mesh.notes[0] and "missing" in mesh.notes[0]
    write(tmp_path, "notex.mtl", "newmtl m\nKd 1 1 1\nmap_Kd gone.png\n")
    mesh = load_mesh(write(tmp_path, "notex.obj", OBJ_UV.format("notex.mtl")))
    assert len(mesh.notes) == 1 and "gone.png" in mesh.notes[0]
    assert normalize(mesh).notes == mesh.notes                     # carried through normalisation
    assert load_mesh(write(tmp_path, "plain.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")).notes == []


def _gltf_with_image_uri(uri: str) -> dict:
    """A textured box as .gltf files whose image is an external file named ``uri``."""
    import json
    from PIL import Image
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(uv=np.zeros((len(box.vertices), 2)), image=Image.new("RGB", (4, 4)))
    files = box.export(file_type="gltf")
    tree = json.loads(files["model.gltf"])
    tree["images"][0] = {"uri": uri}
    files["model.gltf"] = json.dumps(tree).encode()
    return files


@pytest.mark.parametrize("kind", ["gltf image ../", "gltf image absolute", "gltf buffer ../", "obj mtllib ../",
                                  "obj map_Kd ../", "obj map_Kd absolute", "link out"])
def test_referenced_files_must_stay_inside_the_root(tmp_path, kind):
    import json
    from PIL import Image
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (201, 7, 99)).save(secret)
    (tmp_path / "secret.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd secret.png\n")
    root = tmp_path / "input"
    (root / "3d").mkdir(parents=True)
    folder = root / "3d"
    if kind.startswith("gltf"):
        files = _gltf_with_image_uri("../../secret.png" if "../" in kind else str(secret))
        if "buffer" in kind:
            tree = json.loads(files["model.gltf"])
            tree["images"][0] = {"uri": "gltf_buffer_0.bin"}
            tree["buffers"][0]["uri"] = "../../secret.png"
            files["model.gltf"] = json.dumps(tree).encode()
        for name, data in files.items():
            (folder / ("x.gltf" if name == "model.gltf" else name)).write_bytes(data)
        path, ref = folder / "x.gltf", "secret.png"
    elif kind == "obj mtllib ../":
        path = folder / "x.obj"
        path.write_text(OBJ_UV.format("../../secret.mtl"))
        ref = "secret.mtl"
    elif kind == "link out":
        (folder / "m.mtl").symlink_to(tmp_path / "secret.mtl")
        path = folder / "x.obj"
        path.write_text(OBJ_UV.format("m.mtl"))
        ref = "m.mtl"
    else:
        (folder / "m.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd %s\n"
                                      % ("../../secret.png" if "../" in kind else secret))
        path = folder / "x.obj"
        path.write_text(OBJ_UV.format("m.mtl"))
        ref = "secret.png"
    with pytest.raises(InputError) as err:
        load_mesh(str(path), "mesh_file", root=str(root), root_name="ComfyUI's input folder")
    assert err.value.input_name == "mesh_file"
    message = str(err.value)
    assert f"'{path.name}' refers to" in message and ref in message and "outside ComfyUI's input folder" in message


def test_referenced_files_inside_the_root_load(tmp_path):
    from PIL import Image
    root = tmp_path / "input"
    (root / "textures").mkdir(parents=True)
    (root / "3d").mkdir()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(root / "textures" / "t.png")
    (root / "3d" / "m.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd ../textures/t.png\n")
    (root / "3d" / "x.obj").write_text(OBJ_UV.format("m.mtl"))
    mesh = load_mesh(str(root / "3d" / "x.obj"), root=str(root))
    assert mesh.notes == [] and mesh.parts[0].texture[0, 0, :3].tolist() == [10, 200, 30]
