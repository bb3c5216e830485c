"""Realiz3D inference nodes in a real ComfyUI with the tiny model: the text-to-multiview template,
Realiz3D Sample under rendered controls, and bad shifters and schedules."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import error_message, load_workflow
from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters
from realiz3d.loading import load_pipeline_folder, write_tiny_set
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

FAST = {"view_size": 32, "steps": 2}


@pytest.fixture(scope="module")
def models(server, tmp_path_factory):
    m = os.path.join(server.base, "models")
    target = os.path.join(m, "diffusers", "FLUX.1-dev")
    tiny = write_tiny_set(str(tmp_path_factory.mktemp("tiny3")))
    if not os.path.exists(target):
        shutil.copytree(tiny.diffusers_folder, target)
    transformer = load_pipeline_folder(target).transformer
    lora_dir = str(tmp_path_factory.mktemp("lora"))
    os.makedirs(os.path.join(m, "loras"), exist_ok=True)
    shutil.copy(write_tiny_refany3d(lora_dir, transformer, seed=4)[0],
                os.path.join(m, "loras", "realiz3d_normal_control.safetensors"))
    os.makedirs(os.path.join(m, "realiz3d_shifters"), exist_ok=True)
    shifters = DomainShifters(ShifterConfig.for_transformer(transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.2)
    save_shifters(shifters, os.path.join(m, "realiz3d_shifters", "realiz3d_shifters.safetensors"))
    other = DomainShifters(ShifterConfig(5, 1, 64, rank=4, embed_dim=8))
    save_shifters(other, os.path.join(m, "realiz3d_shifters", "other_layout.safetensors"))
    return m


def workflow(**sample):
    wf = load_workflow("api/multiview_from_mesh.json")
    wf["6"]["inputs"]["k_layers"] = 2          # the tiny model has 4 blocks
    wf["7"]["inputs"].update(FAST, **sample)
    return wf


def test_multiview_template_with_the_tiny_model(server, models):
    h = server.run(workflow())
    assert h["status"]["status_str"] == "success", error_message(h)
    files = [p for p in server.output_files(h) if "multiview_" in p]
    assert len(files) == 4
    imgs = [np.asarray(Image.open(p)) for p in sorted(files)]
    assert all(i.shape == (32, 32, 3) for i in imgs)
    assert any(not np.array_equal(imgs[0], i) for i in imgs[1:])          # four different views
    # the schedule matters: all-synthetic shifters give another result
    wf = workflow()
    wf["6"]["inputs"]["preset"] = "synthetic"
    wf["8"]["inputs"]["filename_prefix"] = "realiz3d/synthetic"
    h2 = server.run(wf)
    assert h2["status"]["status_str"] == "success", error_message(h2)
    other = [np.asarray(Image.open(p)) for p in sorted(server.output_files(h2)) if "synthetic_" in p]
    assert any(not np.array_equal(a, b) for a, b in zip(imgs, other))


def test_realiz3d_sample_under_rendered_controls(server, models):
    wf = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb"}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 1, "elevation": 15.0,
              "radius": 3.5, "fov": 45.0, "start_azimuth": 30.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 48,
              "height": 32, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "camera", "smooth_normals": True,
              "background": 1.0, "backend": "auto"}},
        "4": load_workflow("api/multiview_from_mesh.json")["3"],
        "5": {"class_type": "Realiz3DLoadControlLoRA", "inputs": {"model": ["4", 0],
              "lora": "realiz3d_normal_control.safetensors"}},
        "6": {"class_type": "Realiz3DSample", "inputs": {"model": ["4", 0], "prompt": "a toy house",
              "control_images": ["3", 2], "width": 48, "height": 32, "batch": 1, "steps": 2, "guidance": 3.5,
              "seed": 3, "control": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "realiz3d/sample"}},
    }
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    out = [p for p in server.output_files(h) if "sample_" in p]
    assert len(out) == 1 and np.asarray(Image.open(out[0])).shape == (32, 48, 3)
    wf["6"]["inputs"]["width"] = 64                      # controls no longer aligned with the image
    bad = server.run(wf)
    assert bad["status"]["status_str"] == "error" and "controls" in error_message(bad), error_message(bad)


@pytest.mark.parametrize("node,inputs,name,phrase", [
    ("5", {"shifter": "other_layout.safetensors"}, "shifter", "5 double + 1 single blocks"),
    ("6", {"preset": "custom", "grid_json": '["real", "synthetic"]'}, "grid", "the model has 4 blocks"),
    ("6", {"preset": "custom", "grid_json": '[["real","real","real","real"]]'}, "grid", "sampling runs 2 steps"),
    ("6", {"preset": "layer-aware", "k_layers": 9}, "k_layers", "4 blocks"),
])
def test_bad_shifters_and_schedules(server, models, node, inputs, name, phrase):
    wf = workflow(seed=9)
    wf[node]["inputs"].update(inputs)
    h = server.run(wf)
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert name in msg and phrase in msg, msg
    ok = server.run(workflow(seed=10))
    assert ok["status"]["status_str"] == "success", error_message(ok)
