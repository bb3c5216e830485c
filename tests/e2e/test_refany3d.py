"""RefAny3D in a real ComfyUI with the tiny model: the example workflow, model reuse and release,
single files, cancel, and bad input. The template loads FLUX.1 with ComfyUI's loaders; it runs on
the tiny model through pack_loader.with_pack_loader (Load Flux Model as node 2, Text Encode
(Realiz3D) as node 10, FluxGuidance as node 11)."""
import os
import time
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from safetensors.torch import load_file, save_file

from comfy_host import error_message, load_workflow, run_and_interrupt
from pack_loader import NOT_USED, with_pack_loader
from realiz3d.loading import load_pipeline_folder, write_tiny_set
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

FAST = {"views": 2, "condition_size": 64, "width": 64, "height": 64, "steps": 2}   # CPU-sized run of the template


@pytest.fixture(scope="module")
def models(server, tmp_path_factory):
    """The tiny model under the names the template uses (models/diffusers/FLUX.1-dev, models/refany3d/*),
    plus its single files and tokenizer folders."""
    tiny = write_tiny_set(str(tmp_path_factory.mktemp("tiny")))
    m = os.path.join(server.base, "models")
    shutil.copytree(tiny.diffusers_folder, os.path.join(m, "diffusers", "FLUX.1-dev"), dirs_exist_ok=True)
    for kind, path in (("diffusion_models", tiny.transformer), ("vae", tiny.vae), ("text_encoders", tiny.clip),
                       ("text_encoders", tiny.t5)):
        os.makedirs(os.path.join(m, kind), exist_ok=True)
        shutil.copy(path, os.path.join(m, kind, os.path.basename(path)))
    for path in (tiny.clip_tokenizer, tiny.t5_tokenizer):
        shutil.copytree(path, os.path.join(m, "tokenizers", os.path.basename(path)), dirs_exist_ok=True)
    write_tiny_refany3d(os.path.join(m, "refany3d"), load_pipeline_folder(tiny.diffusers_folder).transformer)
    return tiny


def workflow(**sample):
    wf = with_pack_loader(load_workflow("api/refany3d_from_mesh.json"))
    wf["4"]["inputs"].update(FAST, **sample)
    return wf


def loads(server):
    return server.log().count("Realiz3D: loading Flux model")


def test_template_runs_with_the_tiny_model(server, models):
    h = server.run(workflow())
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    image = [p for p in files if os.path.basename(p).startswith("image_")]
    pmap = [p for p in files if os.path.basename(p).startswith("pointmap_")]
    ply = [p for p in files if p.endswith(".ply")]
    assert len(image) == 1 and len(pmap) == 1 and len(ply) == 1
    img = np.asarray(Image.open(image[0]))
    assert img.shape == (64, 64, 3) and img.std() > 1.0          # a real (if tiny-model) image, not flat
    assert np.asarray(Image.open(pmap[0])).shape == (64, 64, 3)
    cloud = trimesh.load(ply[0])
    assert len(cloud.vertices) >= 1 and np.isfinite(cloud.vertices).all()


def free(server):
    """POST /free and wait until the worker has applied it. The worker reads the flag after each
    prompt, or when it wakes up idle; a wake-up can be missed while it is busy between prompts
    (garbage collection), and then the next prompt would still run on the old cache. A trivial
    prompt queued after the flag makes the worker apply it right after that prompt, before it takes
    the next one."""
    server.post("/free", {"unload_models": True, "free_memory": True})
    h = server.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                "color": int(time.time() * 1000) % 2 ** 24}},
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    assert h["status"]["status_str"] == "success", error_message(h)


def test_second_prompt_reloads_nothing_and_free_releases(server, models):
    server.run(workflow(seed=1))
    before = loads(server)
    assert before >= 1
    h = server.run(workflow(seed=2))                               # another prompt, same model files
    assert h["status"]["status_str"] == "success", error_message(h)
    assert loads(server) == before
    free(server)
    h = server.run(workflow(seed=3))
    assert h["status"]["status_str"] == "success", error_message(h)
    assert loads(server) == before + 1                             # freed, so loaded again


def single_files(**overrides):
    inputs = {"source": "single files", "diffusers_model": NOT_USED, "transformer": "tiny-flux.safetensors",
              "vae": "tiny-flux-vae.safetensors", "clip": "tiny-clip-l.safetensors", "t5": "tiny-t5.safetensors",
              "clip_tokenizer": "tiny-clip-l", "t5_tokenizer": "tiny-t5", "dtype": "fp32", "device": "cpu",
              "offload": False}
    inputs.update(overrides)
    return inputs


def test_single_files_and_two_loaders_share_one_model(server, models):
    wf = workflow(seed=5)
    wf["2"]["inputs"] = single_files()
    wf["20"] = {"class_type": "Realiz3DLoadFluxModel", "inputs": single_files()}       # a second loader
    wf["21"] = {"class_type": "Realiz3DLoadRefAny3D", "inputs": dict(wf["3"]["inputs"], model=["20", 0])}
    wf["22"] = {"class_type": "Realiz3DFluxTextEncode", "inputs": dict(wf["10"]["inputs"], clip=["20", 1])}
    wf["23"] = {"class_type": "FluxGuidance", "inputs": dict(wf["11"]["inputs"], conditioning=["22", 0])}
    wf["24"] = {"class_type": "Realiz3DRefAny3DSample", "inputs": dict(wf["4"]["inputs"], refany3d=["21", 0],
                                                                       positive=["23", 0], vae=["20", 2])}
    wf["25"] = {"class_type": "SaveImage", "inputs": {"images": ["24", 0], "filename_prefix": "refany3d/second"}}
    before = loads(server)
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    assert loads(server) == before + 1
    a, b = (np.asarray(Image.open(p)) for p in sorted(server.output_files(h))
            if os.path.basename(p).startswith(("image_", "second_")))
    assert np.array_equal(a, b)                                    # same model, same seed, same image


def test_offload_gives_the_same_image(server, models):
    results = []
    for offload in (False, True):
        wf = workflow(seed=21)
        wf["2"]["inputs"].update(device="cpu", dtype="fp32", offload=offload)
        wf["5"]["inputs"]["filename_prefix"] = f"refany3d/offload_{offload}"
        h = server.run(wf)
        assert h["status"]["status_str"] == "success", error_message(h)
        results += [np.asarray(Image.open(p)) for p in server.output_files(h) if "offload_" in p]
    assert len(results) == 2 and np.array_equal(results[0], results[1])


def test_cancel_stops_within_a_step(server, models):
    seen = run_and_interrupt(server, workflow(steps=40, seed=7), "4", after=2)
    assert seen["end"] == "execution_interrupted", seen
    # the interrupt goes out at the first progress report >= 2 (reports may skip a value on a busy
    # machine); sampling stops within one more step, long before its 40
    sent_at = seen["before"][-1]
    assert 2 <= sent_at < 10 and max(seen["after"], default=sent_at) <= sent_at + 1, seen
    h = server.run(workflow(seed=8))
    assert h["status"]["status_str"] == "success", error_message(h)


def write_bad_models(server, models):
    m = os.path.join(server.base, "models")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "model.diffusion_model.out.2.weight": torch.zeros(4, 4)},
              os.path.join(m, "diffusion_models", "sd15.safetensors"))
    data = open(models.transformer, "rb").read()
    with open(os.path.join(m, "diffusion_models", "cut.safetensors"), "wb") as f:
        f.write(data[: len(data) // 2])
    broken = os.path.join(m, "diffusers", "no-t5")
    if not os.path.exists(broken):
        shutil.copytree(models.diffusers_folder, broken)
        shutil.rmtree(os.path.join(broken, "text_encoder_2"))
    lora = load_file(os.path.join(m, "refany3d", "default.safetensors"))
    wide = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v for k, v in lora.items()}
    save_file(wide, os.path.join(m, "refany3d", "other_size.safetensors"))
    first = sorted(k for k in lora if ".lora_A." in k)[0]        # one layer's lora_A loses half its rank
    save_file({k: v[: v.shape[0] // 2] if k == first else v for k, v in lora.items()},
              os.path.join(m, "refany3d", "bad_rank.safetensors"))
    for folder, index in (("bad-json", '{"_class_name": "FluxPipeline",'),
                          ("sd-folder", '{"_class_name": "StableDiffusionPipeline", '
                                        '"unet": ["diffusers", "UNet2DConditionModel"]}')):
        os.makedirs(os.path.join(m, "diffusers", folder), exist_ok=True)
        with open(os.path.join(m, "diffusers", folder, "model_index.json"), "w") as f:
            f.write(index)


BAD = [
    ("SD checkpoint", {"2": single_files(transformer="sd15.safetensors")}, "transformer", "Stable Diffusion"),
    ("truncated file", {"2": single_files(transformer="cut.safetensors")}, "transformer", "truncated"),
    ("missing text encoder", {"2": {"diffusers_model": "no-t5"}}, "diffusers_model", "text_encoder_2"),
    ("LoRA for another size", {"3": {"reference_lora": "other_size.safetensors"}}, "reference_lora", "another size"),
    ("size not divisible by 16", {"4": {"width": 72}}, "width", "multiple of 16"),
    ("path outside models", {"3": {"domain_lora": "../../secret.safetensors"}}, "domain_lora", "outside"),
    ("reference LoRA ranks disagree", {"3": {"reference_lora": "bad_rank.safetensors"}}, "reference_lora",
     "ranks disagree"),
    ("domain LoRA ranks disagree", {"3": {"domain_lora": "bad_rank.safetensors"}}, "domain_lora", "ranks disagree"),
    ("LoRA as domain embedder", {"3": {"domain_embedder": "default.safetensors"}}, "domain_embedder",
     "domain_embedder.pth"),
    ("model_index.json not JSON", {"2": {"diffusers_model": "bad-json"}}, "diffusers_model", "not valid JSON"),
    ("model_index.json not Flux", {"2": {"diffusers_model": "sd-folder"}}, "diffusers_model",
     "StableDiffusionPipeline folder, not a Flux one"),
    ("condition_size 17", {"4": {"condition_size": 17}}, "condition_size", "multiple of 16 (got 17)"),
]


def assert_refused_harmlessly(server, wf, input_name, phrase, next_seed):
    """``wf`` fails with a message naming ``input_name`` (and ``phrase``), writes nothing, and the
    next prompt runs."""
    out = os.path.join(server.base, "output")
    before = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs)
    h = server.run(wf)
    if "status" in h:                      # failed while running, else refused at validation
        assert h["status"]["status_str"] == "error"
    message = error_message(h)
    assert input_name in message and phrase in message, message
    assert message.startswith("Realiz3D input error: "), message
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs) == before
    ok = server.run(workflow(seed=next_seed))
    assert ok["status"]["status_str"] == "success", error_message(ok)


@pytest.mark.parametrize("changes,input_name,phrase", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_named_and_harmless(server, models, changes, input_name, phrase):
    write_bad_models(server, models)
    wf = workflow(seed=11)
    for node, inputs in changes.items():
        wf[node]["inputs"].update(inputs)
    assert_refused_harmlessly(server, wf, input_name, phrase, next_seed=12)


@pytest.mark.parametrize("node,link,input_name,phrase", [
    # ComfyUI's pixel-space VAE (3 channels, no file needed) where Flux's 16-channel VAE goes
    ({"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}, "vae", "vae", "16-channel"),
    # text states of CLIP-L's width (another model's conditioning; test-only node)
    ({"class_type": "Realiz3DTestConditioning", "inputs": {"tokens": 8, "text_dim": 768, "pooled_dim": 32,
                                                           "pooled": True, "seed": 0}}, "positive", "positive",
     "width 768"),
], ids=["pixel-space vae", "conditioning of another width"])
def test_bad_native_input_with_the_pack_model(server, models, node, link, input_name, phrase):
    wf = workflow(seed=14)
    wf["30"] = node
    wf["4"]["inputs"][link] = ["30", 0]
    assert_refused_harmlessly(server, wf, input_name, phrase, next_seed=15)


def test_condition_latents_sample_with_the_pack_vae(server, models):
    """'sample' (the reference code's posterior draw) runs with Load Flux Model's vae and differs
    from the posterior mean."""
    images = []
    for mode in ("mean", "sample"):
        wf = workflow(seed=16, condition_latents=mode)
        wf["5"]["inputs"]["filename_prefix"] = f"refany3d/latents_{mode}"
        h = server.run(wf)
        assert h["status"]["status_str"] == "success", error_message(h)
        images += [np.asarray(Image.open(p)) for p in server.output_files(h) if f"latents_{mode}_" in p]
    assert len(images) == 2 and not np.array_equal(images[0], images[1])


def test_views_that_do_not_match(server, models):
    wf = workflow(seed=13)
    del wf["4"]["inputs"]["mesh"]
    wf["20"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}}
    wf["21"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0}}
    wf["4"]["inputs"].update(rgb_views=["20", 0], point_views=["21", 0])
    h = server.run(wf)
    assert h["status"]["status_str"] == "error" and "views" in error_message(h), error_message(h)


def test_batch_gives_a_point_cloud_and_a_ply_per_image(server, models):
    wf = workflow(seed=17, batch=2)
    wf["7"]["inputs"]["filename_prefix"] = "refany3d/batch_cloud"
    wf["21"] = {"class_type": "MaskToImage", "inputs": {"mask": ["4", 4]}}
    wf["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "refany3d/batch_fg"}}
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    plys = sorted(p for p in files if os.path.basename(p).startswith("batch_cloud_") and p.endswith(".ply"))
    masks = sorted(p for p in files if os.path.basename(p).startswith("batch_fg_"))
    assert len(plys) == 2 and len(masks) == 2
    for ply, mask in zip(plys, masks):
        cloud = trimesh.load(ply)
        fg = np.asarray(Image.open(mask).convert("L")) > 127
        assert len(cloud.vertices) == fg.sum() > 0                 # stride 1: one point per foreground pixel


def test_prerendered_views_decode_with_their_renders_bounds(server, models):
    """Views from Render Views, given with their render bundle: the point cloud lies within the
    sample mesh's own bounding box (not the [-1, 1] cube)."""
    from realiz3d.nodes.paths import BUNDLED_FILES, BUNDLED_SAMPLE
    from realiz3d.renderers import load_mesh
    wf = workflow(seed=18)
    del wf["4"]["inputs"]["mesh"]
    wf["20"] = {"class_type": "Realiz3DCameraRig", "inputs": {
        "preset": "refany3d", "num_views": 2, "elevation": 0.0, "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0,
        "projection": "perspective", "ortho_height": 2.4, "poses_json": "[]"}}
    wf["21"] = {"class_type": "Realiz3DRenderViews", "inputs": {
        "mesh": ["1", 0], "cameras": ["20", 0], "width": 64, "height": 64, "rgb": "unlit albedo", "ambient": 0.3,
        "normal_frame": "world", "smooth_normals": True, "background": 1.0, "backend": "auto",
        "albedo": "reference"}}
    wf["4"]["inputs"]["render"] = ["21", 5]
    wf["7"]["inputs"]["filename_prefix"] = "refany3d/prerendered"
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    ply = [p for p in server.output_files(h) if os.path.basename(p).startswith("prerendered_")]
    assert len(ply) == 1
    lo, hi = load_mesh(BUNDLED_FILES[BUNDLED_SAMPLE]).asset_bounds
    xyz = np.asarray(trimesh.load(ply[0]).vertices)
    assert len(xyz) and np.all(xyz >= lo - 1e-4) and np.all(xyz <= hi + 1e-4)
