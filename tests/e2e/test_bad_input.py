"""Bad input through the real server: a clear error naming the input, no file written, and the
server runs the next prompt normally."""
import os

import pytest

from comfy_host import error_message
from realiz3d.nodes.paths import BUNDLED_SAMPLE

OBJ_NAN = "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n"
PLY_POINTS = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
              "end_header\n0 0 0\n1 0 0\n0 1 0\n")


def graph(mesh_file=BUNDLED_SAMPLE, rig=None, render=None, save=None):
    g = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": mesh_file}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 2, "elevation": 10.0,
              "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 32,
              "height": 32, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "world", "smooth_normals": True,
              "background": 1.0, "backend": "auto"}},
        "4": {"class_type": "Realiz3DSavePointCloud", "inputs": {"render": ["3", 5], "filename_prefix": "bad/pc",
              "stride": 1, "color": "albedo"}},
    }
    for node, extra in (("2", rig), ("3", render), ("4", save)):
        g[node]["inputs"].update(extra or {})
    return g


@pytest.fixture(scope="module")
def inputs(server):
    """Bad files in ComfyUI's input folder, and a file outside it reached by a link."""
    root = os.path.join(server.base, "input")
    os.makedirs(os.path.join(root, "3d"), exist_ok=True)
    files = {"3d/garbage.glb": b"not a mesh at all", "3d/empty.obj": b"# no faces\n",
             "3d/nan.obj": OBJ_NAN.encode(), "3d/points.ply": PLY_POINTS.encode()}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    outside = os.path.join(server.base, "secret.obj")
    with open(outside, "w") as f:
        f.write("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    os.symlink(outside, os.path.join(root, "3d", "link_out.obj"))
    return root


def output_files(server):
    out = os.path.join(server.base, "output")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs)


CASES = [
    # (id, graph kwargs, input named in the error, phrase)
    # (V3 combos are not checked against their list by the host: the node's own checks answer)
    ("missing file", dict(mesh_file="3d/nope.glb"), "mesh_file", "does not exist"),
    ("dot-dot escape", dict(mesh_file="../secret.obj"), "mesh_file", "outside ComfyUI's input folder"),
    ("absolute path", dict(mesh_file="/etc/hostname"), "mesh_file", "relative to ComfyUI's input folder"),
    ("link out of input", dict(mesh_file="3d/link_out.obj"), "mesh_file", "link to a file outside"),
    ("not a mesh", dict(mesh_file="3d/garbage.glb"), "mesh_file", "could not be read"),
    ("empty mesh", dict(mesh_file="3d/empty.obj"), "mesh_file", "empty mesh"),
    ("NaN vertices", dict(mesh_file="3d/nan.obj"), "mesh_file", "NaN or infinite"),
    ("points-only PLY", dict(mesh_file="3d/points.ply"), "mesh_file", "point cloud"),
    ("zero views", dict(rig={"num_views": 0}), "num_views", "smaller than min"),
    ("resolution 0", dict(render={"width": 0}), "width", "smaller than min"),
    ("resolution over 4096", dict(render={"height": 4104}), "height", "bigger than max"),
    ("camera inside the mesh", dict(rig={"preset": "explicit poses",
                                         "poses_json": '[{"eye": [0.05, 0.05, 0.05], "target": [1, 0, 0]}]'}),
     "cameras", "inside the mesh"),
    ("bad poses JSON", dict(rig={"preset": "explicit poses", "poses_json": "[{oops"}), "poses_json", "valid JSON"),
    ("output escapes", dict(save={"filename_prefix": "../../escape/pc"}), "filename_prefix", "output folder"),
]


@pytest.mark.parametrize("kwargs,input_name,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_reported_and_harmless(server, inputs, kwargs, input_name, phrase):
    before = output_files(server)
    reply = server.run(graph(**kwargs))
    if "prompt_id" not in reply and "status" not in reply:           # rejected at validation
        errors = [e for node in reply["node_errors"].values() for e in node["errors"]]
        assert any(e["extra_info"].get("input_name") == input_name for e in errors), errors
        assert any(phrase in (e["message"] + e["details"]) for e in errors), errors
    else:                                                             # failed while running
        assert reply["status"]["status_str"] == "error"
        message = error_message(reply)
        assert input_name in message and phrase in message, message
    assert output_files(server) == before                            # nothing written, nothing partial
    assert not os.path.exists(os.path.join(os.path.dirname(server.base), "escape"))
    ok = server.run(graph(save={"stride": len(before) % 7 + 1}))     # the next prompt runs
    assert ok["status"]["status_str"] == "success", error_message(ok)
