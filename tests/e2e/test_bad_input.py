"""Bad input through the real server: a clear error naming the input, no file written, and the
server runs the next prompt normally."""
import os

import pytest

from comfy_host import error_message
from realiz3d.nodes.paths import BUNDLED_SAMPLE

OBJ_NAN = "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n"
PLY_POINTS = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
              "end_header\n0 0 0\n1 0 0\n0 1 0\n")


LOOK_AWAY = '[{"eye": [0, 0, 4], "target": [0, 0, 8]}]'
PLY_FACE = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 {}\n")
OBJ_UV = "mtllib {}\nusemtl m\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"
SECRET_RGB = (201, 7, 99)


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
    _reference_files(server.base, root)
    return root


def _reference_files(base, root):
    """Meshes whose faces index missing vertices, a truncated STL, and meshes that refer to a
    secret next to the input folder (glTF buffers and images, OBJ mtllib and map_Kd)."""
    import json

    import numpy as np
    import trimesh
    from PIL import Image

    Image.new("RGB", (4, 4), SECRET_RGB).save(os.path.join(base, "secret.png"))
    with open(os.path.join(base, "secret.bin"), "wb") as f:
        f.write(b"SECRET-BYTES" * 100)
    with open(os.path.join(base, "secret.mtl"), "w") as f:
        f.write("newmtl m\nKd 1 1 1\nmap_Kd secret.png\n")
    d = os.path.join(root, "3d")
    texts = {"past_end.ply": PLY_FACE.format(7), "negative.ply": PLY_FACE.format(-5),
             "escape_mtllib.obj": OBJ_UV.format("../../secret.mtl"), "escape_texture.obj": OBJ_UV.format("esc.mtl"),
             "esc.mtl": "newmtl m\nKd 1 1 1\nmap_Kd ../../secret.png\n", "no_mtl.obj": OBJ_UV.format("gone.mtl")}
    for name, text in texts.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    with open(os.path.join(d, "truncated.stl"), "wb") as f:
        f.write(trimesh.creation.box().export(file_type="stl")[:300])
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(uv=np.zeros((len(box.vertices), 2)), image=Image.new("RGB", (4, 4)))
    files = box.export(file_type="gltf")
    tree = json.loads(files.pop("model.gltf"))
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    variants = {"escape_image.gltf": ("image", "../../secret.png"),
                "absolute_image.gltf": ("image", os.path.join(base, "secret.png")),
                "escape_buffer.gltf": ("buffer", "../../secret.bin")}
    for name, (what, uri) in variants.items():
        t = json.loads(json.dumps(tree))
        if what == "image":
            t["images"][0] = {"uri": uri}
        else:
            t["buffers"][0]["uri"] = uri
        with open(os.path.join(d, name), "w") as f:
            json.dump(t, f)


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
    ("face index past the end", dict(mesh_file="3d/past_end.ply"), "mesh_file", "vertices that do not exist"),
    ("negative face index", dict(mesh_file="3d/negative.ply"), "mesh_file", "index -5"),
    ("truncated STL", dict(mesh_file="3d/truncated.stl"), "mesh_file", "truncated"),
    ("glTF image ../ out of input", dict(mesh_file="3d/escape_image.gltf"), "mesh_file",
     "'escape_image.gltf' refers to '../../secret.png', outside ComfyUI's input folder"),
    ("glTF buffer ../ out of input", dict(mesh_file="3d/escape_buffer.gltf"), "mesh_file",
     "'escape_buffer.gltf' refers to '../../secret.bin', outside ComfyUI's input folder"),
    ("glTF image absolute path", dict(mesh_file="3d/absolute_image.gltf"), "mesh_file",
     "outside ComfyUI's input folder"),
    ("OBJ mtllib ../ out of input", dict(mesh_file="3d/escape_mtllib.obj"), "mesh_file",
     "'escape_mtllib.obj' refers to '../../secret.mtl', outside ComfyUI's input folder"),
    ("OBJ map_Kd ../ out of input", dict(mesh_file="3d/escape_texture.obj"), "mesh_file",
     "'escape_texture.obj' refers to '../../secret.png', outside ComfyUI's input folder"),
    ("view sees no surface", dict(rig={"preset": "explicit poses", "poses_json": LOOK_AWAY}), "render",
     "out of frame"),
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
    for path in before:                                               # and no secret in what there is
        with open(path, "rb") as f:
            assert b"SECRET-BYTES" not in f.read()
    assert "SECRET-BYTES" not in str(reply)
    assert not os.path.exists(os.path.join(os.path.dirname(server.base), "escape"))
    ok = server.run(graph(save={"stride": len(before) % 7 + 1}))     # the next prompt runs
    assert ok["status"]["status_str"] == "success", error_message(ok)


def test_view_without_surface_renders_as_background(server, inputs):
    """A camera looking away is a normal view: Render Views succeeds with an empty mask."""
    import numpy as np
    from PIL import Image

    g = graph(rig={"preset": "explicit poses", "poses_json": LOOK_AWAY})
    del g["4"]
    g["5"] = {"class_type": "MaskToImage", "inputs": {"mask": ["3", 4]}}
    g["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "empty_view/mask"}}
    g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "empty_view/points"}}
    reply = server.run(g)
    assert reply["status"]["status_str"] == "success", error_message(reply)
    paths = server.output_files(reply)
    mask, points = (np.asarray(Image.open(next(p for p in paths if kind in os.path.basename(p))))
                    for kind in ("mask", "points"))
    assert mask.max() == 0                                            # empty mask
    assert points.min() == 255                                        # point map all white (background)


def test_missing_material_gives_a_note(server, inputs):
    g = graph(mesh_file="3d/no_mtl.obj")
    del g["4"]
    g["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}
    reply = server.run(g)
    assert reply["status"]["status_str"] == "success", error_message(reply)
    text = str(reply["outputs"]["5"])
    assert "gone.mtl" in text and "missing" in text, text
