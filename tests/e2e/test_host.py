"""The pack inside a real ComfyUI: registration, example workflow pixels, native MESH, cancel."""
import copy
import json
import os
import urllib.request

import numpy as np
import pytest
import trimesh
from PIL import Image

from comfy_host import PACK_NAME, ROOT, error_message, load_workflow, run_and_interrupt
from workflow_format import ui_to_api, with_defaults
from realiz3d.nodes.paths import BUNDLED_FILES, BUNDLED_SAMPLE
from realiz3d.renderers import depth_image, load_mesh, normal_image, normalize, refany3d_rig, render_views

NODES = {"Realiz3DLoadMesh", "Realiz3DCameraRig", "Realiz3DRenderViews", "Realiz3DSavePointCloud",
         "Realiz3DLoadFluxModel", "Realiz3DLoadRefAny3D", "Realiz3DRefAny3DSample", "Realiz3DLoadDomainShifter",
         "Realiz3DDomainSchedule", "Realiz3DLoadControlLoRA", "Realiz3DSample", "Realiz3DMultiviewGenerate",
         "Realiz3DFluxTextEncode", "Realiz3DApplyDomainShifter", "Realiz3DLoadMeshFolder", "Realiz3DBakeTexture",
         "Realiz3DSaveTexturedMesh", "Realiz3DTrainDomainShifter", "Realiz3DTrainControl", "Realiz3DTrainRefAny3D"}


def test_nodes_registered_with_tooltips(server):
    info = server.get("/object_info")
    assert NODES <= set(info)
    # every node of the pack (test-only nodes aside), not only those listed
    for name in sorted(n for n in info if n.startswith("Realiz3D") and not n.startswith("Realiz3DTest")):
        assert info[name]["category"].startswith("Realiz3D/")
        for group in ("required", "optional"):
            for inp, spec in info[name]["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
    assert BUNDLED_SAMPLE in info["Realiz3DLoadMesh"]["input"]["required"]["mesh_file"][1]["options"]


def test_templates_and_web_extension(server):
    assert sorted(server.get("/workflow_templates")[PACK_NAME]) == [
        "multiview_from_mesh", "refany3d_from_mesh", "render_sample_mesh", "texture_mesh", "texture_mesh_ominicontrol",
        "train_shifter_then_sample"]
    extensions = server.get("/extensions")
    # served once: a second copy (from both WEB_DIRECTORY and pyproject's [tool.comfy] web) makes the
    # front end throw "Extension named 'Realiz3D.NodeLook' already registered"
    assert [e for e in extensions if e.endswith("realiz3d.js")] == [f"/extensions/{PACK_NAME}/realiz3d.js"], \
        extensions
    with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_NAME}/render_sample_mesh.json") as r:
        assert json.loads(r.read())["nodes"]


@pytest.mark.parametrize("name", ["render_sample_mesh", "refany3d_from_mesh", "multiview_from_mesh", "texture_mesh",
                                  "texture_mesh_ominicontrol", "train_shifter_then_sample"])
def test_ui_workflow_is_the_api_workflow(server, name):
    with open(os.path.join(ROOT, "example_workflows", f"{name}.json")) as f:
        ui = json.load(f)
    info = server.get("/object_info")
    # the UI file sets every widget: the API file's values, the node's defaults for the rest
    assert ui_to_api(ui, info) == with_defaults(load_workflow(f"api/{name}.json"), info)


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def quantize(x):
    """As ComfyUI's SaveImage writes a float image."""
    return np.clip(255.0 * x, 0, 255).astype(np.uint8)


def test_example_workflow_renders_the_sample(server):
    h = server.run(load_workflow("api/render_sample_mesh.json"))
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    # backend 'auto' renders with OpenGL on both hosts: in the server process, or in the pack's GL
    # worker where the host loaded GL of its own (0.33's ANGLE), never by falling back to raycast
    # (the template shows Render Views' backend output in a Preview as Text node; 0.33 runs GL
    # in the worker, 0.3.75 in the server process)
    said = h["outputs"]["11"]["text"][0]
    print("render_sample_mesh rendered by:", said)
    assert said.startswith("pyrender ("), said
    expected_route = "worker" if os.environ.get("REALIZ3D_HOST") == "0.33" else "in-process"
    assert said.startswith(f"pyrender ({expected_route}, "), said
    assert f"Render Views: 8 views of 512 x 512 rendered by {said}" in server.log()

    def outputs(prefix):
        return sorted(p for p in files if os.path.basename(p).startswith(prefix + "_"))

    # the same render through the library, written as SaveImage writes it
    mesh = normalize(load_mesh(BUNDLED_FILES[BUNDLED_SAMPLE]))
    ref = render_views(mesh, refany3d_rig(8), 512, 512, lit=False, backend="pyrender (in-process)")
    expected = {"rgb": ref.albedo, "pointmap": ref.points_normalized, "normal": normal_image(ref),
                "depth": depth_image(ref), "mask": np.repeat(ref.mask[..., None], 3, -1).astype(np.float32)}
    for prefix, want in expected.items():
        got = outputs(prefix)
        assert len(got) == 8, (prefix, got)
        for k, path in enumerate(got):
            diff = np.abs(png(path).astype(int) - quantize(want[k]).astype(int))
            assert diff.max() <= 1, (path, diff.max())
    # and what those pixels mean: view 0 looks from +X at the red side; its point map there has x = max
    rgb0, pm0 = png(outputs("rgb")[0]), png(outputs("pointmap")[0])
    r, g, b = rgb0[300, 256].astype(int)
    assert r > 150 and g < 100 and b < 100
    assert pm0[300, 256, 0] == 255 and tuple(pm0[5, 5]) == (255, 255, 255)
    plys = [p for p in files if p.endswith(".ply")]
    assert len(plys) == 1
    cloud = trimesh.load(plys[0])
    assert len(cloud.vertices) == ref.mask[:, ::2, ::2].sum()
    lo, hi = mesh.asset_bounds
    assert np.all(cloud.vertices >= lo - 1e-5) and np.all(cloud.vertices <= hi + 1e-5)


def test_native_mesh_in_and_out(server):
    prompt = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": False, "mesh_file": BUNDLED_SAMPLE}},
        "2": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": BUNDLED_SAMPLE,
                                                           "mesh": ["1", 1]}},
        "3": {"class_type": "SaveGLB", "inputs": {"mesh": ["2", 1], "filename_prefix": "mesh/native"}},
        "4": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 2, "elevation": 10.0,
              "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0, "projection": "orthographic", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "5": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["2", 0], "cameras": ["4", 0], "width": 64,
              "height": 48, "rgb": "lit", "ambient": 0.3, "normal_frame": "camera", "smooth_normals": False,
              "background": 0.0, "backend": "raycast"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "native/rgb"}},
    }
    h = server.run(prompt)
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    glb = [p for p in files if p.endswith(".glb")]
    assert glb and open(glb[0], "rb").read(4) == b"glTF"
    imgs = [png(p) for p in files if p.endswith(".png")]
    assert len(imgs) == 2 and imgs[0].shape == (48, 64, 3)
    # native MESH carries no colour: the default grey, lit, on a black background
    assert imgs[0][0, 0].max() == 0 and 40 < imgs[0][24, 32].mean() < 200


def test_cancel_stops_within_a_view(server):
    slow = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": BUNDLED_SAMPLE}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 64, "elevation": 5.0,
              "radius": 3.0, "fov": 45.0, "start_azimuth": 1.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 1024,
              "height": 1024, "rgb": "lit", "ambient": 0.25, "normal_frame": "world", "smooth_normals": True,
              "background": 1.0, "backend": "raycast"}},
        "4": {"class_type": "Realiz3DSavePointCloud", "inputs": {"render": ["3", 5], "filename_prefix": "cancel/pc",
              "stride": 1, "color": "lit"}},
    }
    seen = run_and_interrupt(server, slow, "3", after=3)
    assert seen["end"] == "execution_interrupted", seen
    sent_at = seen["before"][-1]                  # interrupted at the first report >= 3 of 64 views ...
    assert 3 <= sent_at < 10, seen
    assert max(seen["after"], default=sent_at) <= sent_at + 1, seen   # ... and at most the view in flight finished
    assert not os.path.exists(os.path.join(server.base, "output", "cancel"))
    # and the server runs the next prompt
    quick = copy.deepcopy(slow)
    quick["2"]["inputs"]["num_views"] = 1
    quick["3"]["inputs"].update(width=32, height=32)
    h = server.run(quick)
    assert h["status"]["status_str"] == "success", error_message(h)
