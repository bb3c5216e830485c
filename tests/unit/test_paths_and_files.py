"""User paths stay inside their folder; PLY output is atomic; importing needs no ComfyUI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from realiz3d.nodes.paths import BUNDLED_FILES, BUNDLED_SAMPLE, choices_valid, list_files, resolve_inside
from realiz3d.renderers import InputError, bundle_points, orbit_rig, render_views, write_ply
from meshes import colored_box


@pytest.fixture
def folders(tmp_path):
    root, outside = tmp_path / "input", tmp_path / "outside"
    (root / "3d").mkdir(parents=True)
    outside.mkdir()
    (root / "3d" / "a.glb").write_bytes(b"x")
    (root / "b.obj").write_bytes(b"x")
    (root / ".hidden.obj").write_bytes(b"x")
    (outside / "secret.obj").write_bytes(b"x")
    os.symlink(outside / "secret.obj", root / "link.obj")
    os.symlink(outside, root / "linkdir")
    return str(root)


def test_list_files_skips_links_out_and_hidden(folders):
    assert list_files(folders, (".glb", ".obj")) == ["3d/a.glb", "b.obj"]


@pytest.mark.parametrize("name,phrase", [
    ("../outside/secret.obj", "outside ComfyUI's input folder"),
    ("3d/../../outside/secret.obj", "outside ComfyUI's input folder"),
    ("/etc/passwd", "relative to ComfyUI's input folder"),
    ("link.obj", "link to a file outside"),
    ("linkdir/secret.obj", "link to a file outside"),
    ("", "relative"),
])
def test_resolve_rejects_escapes(folders, name, phrase):
    with pytest.raises(InputError, match=phrase) as err:
        resolve_inside(folders, name, "mesh_file")
    assert err.value.input_name == "mesh_file"


def test_resolve_accepts_inside_and_bundled(folders):
    assert resolve_inside(folders, "3d/a.glb", "mesh_file") == os.path.join(os.path.realpath(folders), "3d", "a.glb")
    assert os.path.isfile(BUNDLED_FILES[BUNDLED_SAMPLE])
    assert BUNDLED_FILES[BUNDLED_SAMPLE].endswith("assets/sample_mesh.glb")
    # the bundled name is the Load Mesh node's alone: as a path it stays inside the folder
    assert resolve_inside(folders, BUNDLED_SAMPLE, "mesh_file").startswith(os.path.realpath(folders))


def test_ply_round_trip_and_atomic(tmp_path):
    b = render_views(colored_box(), orbit_rig(2), 32, 32)
    xyz, rgb, normals = bundle_points(b, stride=1)
    assert len(xyz) == b.mask.sum()
    path = tmp_path / "pc.ply"
    write_ply(str(path), xyz, rgb, normals)
    cloud = trimesh.load(path)
    np.testing.assert_allclose(cloud.vertices, xyz, atol=1e-6)
    np.testing.assert_array_equal(cloud.colors[:, :3], rgb)
    with pytest.raises(Exception):        # a failure mid-write leaves nothing behind
        write_ply(str(tmp_path / "bad.ply"), xyz, rgb[:3], normals)
    assert sorted(os.listdir(tmp_path)) == ["pc.ply"]


def test_library_import_needs_no_comfyui():
    code = ("import sys; sys.path.insert(0, 'scripts'); from pack_import import import_pack; "
            "p = import_pack(); import realiz3d.renderers, realiz3d.nodes.paths; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')]; "
            "assert not bad, bad; print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_bundled_sample_matches_its_generator(tmp_path):
    from realiz3d.renderers import load_mesh
    from realiz3d.renderers.sample_mesh import write_sample_mesh
    fresh = tmp_path / "fresh.glb"
    write_sample_mesh(str(fresh))
    a, b = load_mesh(BUNDLED_FILES[BUNDLED_SAMPLE]), load_mesh(str(fresh))
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.parts[0].texture, b.parts[0].texture)


def test_dropdown_validation_gives_the_packs_message_for_the_first_bad_choice(folders):
    """What a node's validate_inputs returns to the host: True, or the pack's message naming the
    input (a host that validates dropdowns shows it instead of its generic 'Value not in list')."""
    def exists(value, input_name):
        path = resolve_inside(folders, value, input_name)
        if not os.path.isfile(path):
            raise InputError(input_name, f"'{value}' does not exist")

    assert choices_valid(exists, {"a": "b.obj", "b": "3d/a.glb", "linked": None}) is True
    assert choices_valid(exists, {"a": "(none)"}, allowed=("(none)",)) is True
    msg = choices_valid(exists, {"a": "b.obj", "b": "../outside/secret.obj", "c": "nope.obj"})
    assert msg.startswith("Realiz3D input error: b: ") and "points outside" in msg, msg
    assert choices_valid(exists, {"c": "nope.obj"}) == "Realiz3D input error: c: 'nope.obj' does not exist"
    assert "link to a file outside" in choices_valid(exists, {"d": "link.obj"})
    assert "must be a file name" in choices_valid(exists, {"e": 3})
