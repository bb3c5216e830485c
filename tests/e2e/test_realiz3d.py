"""Realiz3D inference nodes in a real ComfyUI with the tiny model: the text-to-multiview template,
Realiz3D Sample under rendered controls, and bad shifters and schedules. The templates load
FLUX.1 with ComfyUI's loaders; they run on the tiny model through pack_loader.with_pack_loader."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfy_host import error_message, load_workflow
from pack_loader import TINY_SEQUENCE_LENGTH, pack_loader_inputs, with_pack_loader
from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters
from realiz3d.loading import load_pipeline_folder, write_tiny_set
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d, write_tiny_spatial_lora

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
    lora = load_file(os.path.join(m, "loras", "realiz3d_normal_control.safetensors"))
    first = sorted(k for k in lora if ".lora_A." in k)[0]           # one layer's lora_A loses half its rank
    save_file({k: v[: v.shape[0] // 2] if k == first else v for k, v in lora.items()},
              os.path.join(m, "loras", "bad_rank.safetensors"))
    for seed, task in ((5, "depth"), (6, "canny")):          # OminiControl's published layout, tiny
        write_tiny_spatial_lora(os.path.join(m, "loras", f"{task}.safetensors"), transformer, seed=seed)
    os.makedirs(os.path.join(m, "realiz3d_shifters"), exist_ok=True)
    shifters = DomainShifters(ShifterConfig.for_transformer(transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.2)
    save_shifters(shifters, os.path.join(m, "realiz3d_shifters", "realiz3d_shifters.safetensors"))
    other = DomainShifters(ShifterConfig(5, 1, 64, rank=4, embed_dim=8))
    save_shifters(other, os.path.join(m, "realiz3d_shifters", "other_layout.safetensors"))
    good = os.path.join(m, "realiz3d_shifters", "realiz3d_shifters.safetensors")
    with safe_open(good, framework="pt") as f:
        meta = dict(f.metadata())
    for name, config in (("unknown_key", json.dumps({**json.loads(meta["config"]), "dropout": 0.1})),
                         ("not_json", meta["config"][:-3])):
        save_file(load_file(good), os.path.join(m, "realiz3d_shifters", f"{name}.safetensors"),
                  metadata={**meta, "config": config})
    return m


def workflow(**sample):
    wf = with_pack_loader(load_workflow("api/multiview_from_mesh.json"))
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


def controls_graph():
    return {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb"}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 1, "elevation": 15.0,
              "radius": 3.5, "fov": 45.0, "start_azimuth": 30.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 48,
              "height": 32, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "camera", "smooth_normals": True,
              "background": 1.0, "backend": "auto"}},
        "4": {"class_type": "Realiz3DLoadFluxModel", "inputs": pack_loader_inputs("FLUX.1-dev")},
        "5": {"class_type": "Realiz3DLoadControlLoRA", "inputs": {"model": ["4", 0],
              "lora": "realiz3d_normal_control.safetensors"}},
        "6": {"class_type": "Realiz3DSample", "inputs": {"model": ["4", 0], "positive": ["8", 0], "vae": ["4", 2],
              "control_images": ["3", 2], "width": 48, "height": 32, "batch": 1, "steps": 2, "guidance": 3.5,
              "seed": 3, "control": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "realiz3d/sample"}},
        "8": {"class_type": "Realiz3DFluxTextEncode", "inputs": {"clip": ["4", 1], "text": "a toy house",
              "max_sequence_length": TINY_SEQUENCE_LENGTH}},
    }


def test_realiz3d_sample_under_rendered_controls(server, models):
    wf = controls_graph()
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    out = [p for p in server.output_files(h) if "sample_" in p]
    assert len(out) == 1 and np.asarray(Image.open(out[0])).shape == (32, 48, 3)
    wf["6"]["inputs"]["width"] = 64                      # controls no longer aligned with the image
    bad = server.run(wf)
    assert bad["status"]["status_str"] == "error" and "controls" in error_message(bad), error_message(bad)


@pytest.mark.parametrize("inputs,name", [({"lora": "bad_rank.safetensors"}, "lora"),
                                         ({"target_lora": "bad_rank.safetensors"}, "target_lora")],
                         ids=["lora", "target_lora"])
def test_control_lora_whose_ranks_disagree(server, models, inputs, name):
    """Load Control LoRA on the pack's model (peft): a file whose lora_A and lora_B ranks differ is
    refused by name, not as peft's 'size mismatch'; nothing is written and the next prompt runs."""
    out = os.path.join(server.base, "output")
    before = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs)
    wf = controls_graph()
    wf["5"]["inputs"].update(inputs)
    h = server.run(wf)
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert msg.startswith("Realiz3D input error: ") and f"{name}: 'bad_rank.safetensors'" in msg, msg
    assert "ranks disagree" in msg and "size mismatch" not in msg, msg
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs) == before
    ok = server.run(controls_graph())
    assert ok["status"]["status_str"] == "success", error_message(ok)


@pytest.mark.parametrize("node,inputs,name,phrase", [
    ("5", {"shifter": "other_layout.safetensors"}, "shifter", "5 double + 1 single blocks"),
    ("5", {"shifter": "unknown_key.safetensors"}, "shifter", "keys this pack does not know (['dropout']"),
    ("5", {"shifter": "not_json.safetensors"}, "shifter", "not valid JSON"),
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


def texturing(**bake):
    wf = with_pack_loader(load_workflow("api/texture_mesh.json"))
    wf["6"]["inputs"]["k_layers"] = 2
    wf["7"]["inputs"].update(FAST)
    wf["9"]["inputs"].update({"texture_size": "512", **bake})
    wf["12"]["inputs"].update(width=32, height=32)
    return wf


def test_texturing_template_with_the_tiny_model(server, models):
    from realiz3d.renderers import load_mesh, normalize
    from realiz3d.renderers.sample_mesh import write_sample_mesh

    h = server.run(texturing())
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    glb = [p for p in files if p.endswith(".glb")]
    views = sorted(p for p in files if "texturing_views_" in p)
    renders = sorted(p for p in files if "textured_render_" in p)
    texture_png = [p for p in files if "/texture_" in p]
    assert len(glb) == 1 and len(views) == 8 and len(renders) == 8 and len(texture_png) == 1
    mesh = load_mesh(glb[0])
    texture = mesh.parts[0].texture
    assert len(mesh.parts) == 1 and texture.shape[:2] == (512, 512)
    assert np.array_equal(texture[..., :3], np.asarray(Image.open(texture_png[0]))[..., :3])
    assert texture[..., :3].std() > 1.0                               # the generated colours, not a flat fill
    ref = os.path.join(server.base, "ref.glb")
    write_sample_mesh(ref)
    np.testing.assert_allclose(mesh.bounds, load_mesh(ref).bounds, atol=1e-4)   # back in the asset's frame
    # the textured mesh, rendered from each generated view's camera, looks like that view more than
    # like the opposite view (the texture carries the views to their places on the surface)
    v = [np.asarray(Image.open(p)).astype(float) for p in views]
    r = [np.asarray(Image.open(p)).astype(float) for p in renders]
    fg = [np.any(x < 250, axis=-1) for x in r]
    own = [np.abs(r[k] - v[k])[fg[k]].mean() for k in range(8)]
    opposite = [np.abs(r[k] - v[(k + 4) % 8])[fg[k]].mean() for k in range(8)]
    assert sum(o < p for o, p in zip(own, opposite)) >= 6, (own, opposite)
    assert normalize(mesh).num_faces == normalize(load_mesh(ref)).num_faces


@pytest.mark.parametrize("change,name,phrase", [
    ({"10": {"filename_prefix": "../../escape"}}, "filename_prefix", "leaves ComfyUI's output folder"),
    ({"10": {"filename_prefix": "/tmp/abs"}}, "filename_prefix", "leaves ComfyUI's output folder"),
    ({"9": {"uv_mode": "keep"}}, "uv_mode", "'keep' needs a single-part mesh"),
])
def test_texturing_bad_input(server, models, change, name, phrase):
    def files():
        return {os.path.join(d, f) for d, _, fs in os.walk(server.base) for f in fs}

    wf = texturing()
    for node, inputs in change.items():
        wf[node]["inputs"].update(inputs)
    before = files()
    h = server.run(wf)
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert name in msg and phrase in msg, msg
    new = files() - before
    assert not [p for p in new if p.endswith(".glb") or ".tmp" in p], new
    assert not os.path.exists("/tmp/abs_00001_.glb")
    ok = server.run(texturing())
    assert ok["status"]["status_str"] == "success", error_message(ok)


def test_fewer_views_than_cameras(server, models):
    rig = {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 6, "elevation": 20.0,
           "radius": 3.2, "fov": 45.0, "start_azimuth": 0.0, "projection": "perspective", "ortho_height": 2.4,
           "poses_json": "[]"}}
    wf = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb"}},
        "2": dict(rig, inputs=dict(rig["inputs"], num_views=4)),
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 32,
              "height": 32, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "world", "smooth_normals": True,
              "background": 1.0, "backend": "auto"}},
        "4": rig,
        "5": {"class_type": "Realiz3DBakeTexture", "inputs": {"mesh": ["1", 0], "cameras": ["4", 0],
              "images": ["3", 0], "texture_size": "512", "fill": "nearest", "uv_mode": "auto", "cos_power": 2.0,
              "min_cos": 0.2, "depth_tolerance": 0.01, "backend": "auto"}},
        "6": {"class_type": "Realiz3DSaveTexturedMesh", "inputs": {"mesh": ["5", 0], "filename_prefix": "few/views"}},
    }
    h = server.run(wf)
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert "images" in msg and "fewer views than cameras" in msg, msg
    assert not os.path.exists(os.path.join(server.base, "output", "few"))
    wf["5"]["inputs"]["cameras"] = ["2", 0]                 # the matching cameras: bakes and saves
    ok = server.run(wf)
    assert ok["status"]["status_str"] == "success", error_message(ok)
    assert [p for p in server.output_files(ok) if p.endswith(".glb")]


def ominicontrol_texturing(**multiview):
    wf = with_pack_loader(load_workflow("api/texture_mesh_ominicontrol.json"))
    wf["7"]["inputs"].update(FAST, **multiview)
    wf["9"]["inputs"]["texture_size"] = "512"
    wf["12"]["inputs"].update(width=32, height=32)
    return wf


def views_of(server, h, prefix):
    return [np.asarray(Image.open(p)) for p in sorted(server.output_files(h)) if f"{prefix}_" in p]


def test_ominicontrol_texturing_template_with_the_tiny_model(server, models):
    """texture_mesh_ominicontrol: the published depth LoRA's layout is recognised and named, views are
    generated one at a time under the inverse-depth control and baked into a textured GLB; a canny
    LoRA chained after it adds its own branch (another result), as does the grid layout."""
    h = server.run(ominicontrol_texturing())
    assert h["status"]["status_str"] == "success", error_message(h)
    info = h["outputs"]["18"]["text"][0]
    assert "OminiControl spatial LoRA, task 'depth'" in info and "depth (inverse)" in info, info
    files = server.output_files(h)
    assert len([p for p in files if p.endswith(".glb")]) == 1
    depth_only = views_of(server, h, "ominicontrol_views")
    assert len(depth_only) == 8 and all(v.shape == (32, 32, 3) for v in depth_only)
    wf = ominicontrol_texturing()
    wf["19"] = {"class_type": "Realiz3DLoadControlLoRA", "inputs": {"model": ["3", 0], "lora": "canny.safetensors",
                                                                     "control": ["4", 0]}}
    wf["7"]["inputs"]["control"] = ["19", 0]
    wf["18"]["inputs"]["source"] = ["19", 1]
    wf["8"]["inputs"]["filename_prefix"] = "realiz3d/omini_both"
    h2 = server.run(wf)
    assert h2["status"]["status_str"] == "success", error_message(h2)
    info2 = h2["outputs"]["18"]["text"][0]
    assert "task 'depth'" in info2 and "task 'canny'" in info2, info2
    both = views_of(server, h2, "omini_both")
    assert len(both) == 8 and any(not np.array_equal(a, b) for a, b in zip(depth_only, both))
    wf = ominicontrol_texturing(layout="grid")
    wf["8"]["inputs"]["filename_prefix"] = "realiz3d/omini_grid"
    h3 = server.run(wf)
    assert h3["status"]["status_str"] == "success", error_message(h3)
    grid = views_of(server, h3, "omini_grid")
    assert len(grid) == 8 and any(not np.array_equal(a, b) for a, b in zip(depth_only, grid))


def test_realiz3d_sample_takes_a_control_lora_with_its_own_images(server, models):
    """Load Control LoRA's images input: the canny LoRA on its own images; without any images the
    sampler asks for them by name."""
    wf = controls_graph()
    wf["9"] = {"class_type": "Realiz3DGeometryControls", "inputs": {"render": ["3", 5], "control": "canny (normal)",
                                                                    "grid_columns": 0}}
    wf["5"]["inputs"].update(lora="canny.safetensors", images=["9", 0])
    del wf["6"]["inputs"]["control_images"]
    wf["7"]["inputs"]["filename_prefix"] = "realiz3d/canny_sample"
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    assert len(views_of(server, h, "canny_sample")) == 1
    del wf["5"]["inputs"]["images"]
    bad = server.run(wf)
    assert bad["status"]["status_str"] == "error"
    msg = error_message(bad)
    assert "control_images" in msg and "task 'canny'" in msg, msg
