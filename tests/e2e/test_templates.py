"""The example workflows against a host holding the files they name, as a user who followed the
README's model table has them: every node exists and every dropdown value is one of its options
(the check ComfyUI 0.33 makes before it runs a prompt), FLUX.1 comes from ComfyUI's own loaders,
and the tiny-model substitution the demo and the other tests use keeps the graphs valid.

A host of its own (started after the placeholder files are in place), so that the empty
placeholders never reach the tests that load real tiny weights from the shared host's folders.
"""
import glob
import os

import pytest

from comfy_host import ROOT, ComfyServer, comfy_dir, load_workflow
from pack_loader import FLUX_LOADER, NOT_USED, TEXT_ENCODE, with_pack_loader
from workflow_format import check_api_workflow

#: what a user has under ComfyUI/models for the templates (empty files: listing is all validation reads)
EXPECTED_FILES = [
    "diffusion_models/flux1-dev.safetensors",
    "text_encoders/clip_l.safetensors",
    "text_encoders/t5xxl_fp8_e4m3fn.safetensors",
    "vae/ae.safetensors",
    "diffusers/FLUX.1-dev/model_index.json",
    "refany3d/default.safetensors",
    "refany3d/coord.safetensors",
    "refany3d/domain_embedder.pth",
    "loras/realiz3d_normal_control.safetensors",
    "loras/depth.safetensors",
    "realiz3d_shifters/realiz3d_shifters.safetensors",
]
TEMPLATES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "example_workflows", "api", "*.json")))
NATIVE_LOADERS = {"UNETLoader", "DualCLIPLoader", "VAELoader", "CLIPTextEncode"}
SAMPLERS = {"Realiz3DRefAny3DSample", "Realiz3DMultiviewGenerate", "Realiz3DSample"}
FILE_INPUTS = {"diffusers folder": ("transformer", "vae", "clip", "t5"), "single files": ("diffusers_model",)}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if not os.path.isfile(os.path.join(comfy_dir(), "main.py")):
        pytest.fail(f"no ComfyUI host at {comfy_dir()}: run scripts/setup_host.sh (scripts/test.sh does)")
    base = tmp_path_factory.mktemp("comfy_templates")
    for rel in EXPECTED_FILES:
        path = os.path.join(base, "models", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    srv = ComfyServer(str(base)).start()
    yield srv
    srv.stop()


def test_templates_validate_with_expected_files(host):
    assert len(TEMPLATES) == 6, TEMPLATES
    info = host.get("/object_info")
    for name in TEMPLATES:
        assert check_api_workflow(load_workflow(f"api/{name}.json"), info) == [], name
    # the checker catches what the host would refuse
    wf = load_workflow("api/refany3d_from_mesh.json")
    wf["2"]["inputs"]["unet_name"] = "flux1-schnell.safetensors"            # a file the user does not have
    wf["4"]["inputs"]["prompt"] = "a prompt string (the old schema)"        # an input the node lacks
    del wf["4"]["inputs"]["vae"]                                            # a required input missing
    wf["3"]["inputs"]["model"] = ["9", 0]                                   # VAE where a model goes
    wf["5"]["inputs"]["filename_prefix"] = ["4", 7]                         # no such output
    wf["6"]["class_type"] = "NoSuchNode"
    wf["4"]["inputs"]["steps"] = 0                                          # below min
    problems = check_api_workflow(wf, info)
    expected = ["unet_name: value 'flux1-schnell.safetensors' not in", "(Realiz3DRefAny3DSample).prompt: the node has",
                "required input 'vae' missing", "(Realiz3DLoadRefAny3D).model: takes MODEL,REALIZ3D_FLUX, linked to VAE",
                "has no output 7", "'NoSuchNode' is not installed", "steps: 0 smaller than min 1"]
    for phrase in expected:
        assert any(phrase in p for p in problems), (phrase, problems)
    assert len(problems) == len(expected), problems


def test_a_missing_file_fails_validation(host):
    """The option lists are the host's real file lists: without ae.safetensors the templates that
    load it are refused, the others still validate. (ComfyUI caches a folder's listing until the
    folder's mtime changes; removing the file changes it.)"""
    path = os.path.join(host.base, "models", "vae", "ae.safetensors")
    os.remove(path)
    try:
        info = host.get("/object_info")
        for name in TEMPLATES:
            wf = load_workflow(f"api/{name}.json")
            problems = check_api_workflow(wf, info)
            if any(n["class_type"] == "VAELoader" for n in wf.values()):
                assert len(problems) == 1 and "vae_name: value 'ae.safetensors' not in" in problems[0], problems
            else:
                assert problems == [], (name, problems)
    finally:
        open(path, "wb").close()
    assert check_api_workflow(load_workflow("api/texture_mesh.json"), host.get("/object_info")) == []


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_load_flux_as_comfyui_users_keep_it(name):
    wf = load_workflow(f"api/{name}.json")
    classes = {n["class_type"] for n in wf.values()}
    training = any(c.startswith("Realiz3DTrain") for c in classes)
    if classes & SAMPLERS and not training:
        assert NATIVE_LOADERS | {"FluxGuidance"} <= classes and FLUX_LOADER not in classes, classes
        unet = next(n for n in wf.values() if n["class_type"] == "UNETLoader")["inputs"]
        assert unet == {"unet_name": "flux1-dev.safetensors", "weight_dtype": "fp8_e4m3fn"}
        clip = next(n for n in wf.values() if n["class_type"] == "DualCLIPLoader")["inputs"]
        assert (clip["clip_name1"], clip["clip_name2"], clip["type"]) == (
            "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "flux")
        for node in wf.values():
            if node["class_type"] in SAMPLERS:
                pos = node["inputs"]["positive"]
                assert wf[pos[0]]["class_type"] == "FluxGuidance"
                assert wf[wf[pos[0]]["inputs"]["conditioning"][0]]["class_type"] == "CLIPTextEncode"
                assert wf[node["inputs"]["vae"][0]]["class_type"] == "VAELoader"
    for node in wf.values():                       # no file named that the chosen source does not read
        if node["class_type"] == FLUX_LOADER:
            inputs = node["inputs"]
            for unused in FILE_INPUTS[inputs["source"]]:
                assert inputs[unused] == NOT_USED, (name, unused, inputs[unused])
    if training:
        loader = next(n for n in wf.values() if n["class_type"] == FLUX_LOADER)["inputs"]
        assert loader["source"] == "diffusers folder" and loader["diffusers_model"] == "FLUX.1-dev"


def test_tiny_model_substitution_keeps_graphs_valid(host):
    info = host.get("/object_info")
    for name in TEMPLATES:
        wf = load_workflow(f"api/{name}.json")
        tiny = with_pack_loader(wf)
        assert check_api_workflow(tiny, info) == [], name
        assert not {n["class_type"] for n in tiny.values()} & NATIVE_LOADERS
        removed = {nid for nid, n in wf.items() if n["class_type"] in ("DualCLIPLoader", "VAELoader")}
        assert set(tiny) == set(wf) - removed                          # node ids stay
        for nid, node in wf.items():
            if node["class_type"] == "UNETLoader":
                assert tiny[nid]["class_type"] == FLUX_LOADER and tiny[nid]["inputs"]["diffusers_model"] == "FLUX.1-dev"
            elif node["class_type"] == "CLIPTextEncode":
                assert tiny[nid]["class_type"] == TEXT_ENCODE
                assert tiny[nid]["inputs"]["text"] == node["inputs"]["text"]
            elif nid not in removed:
                assert tiny[nid]["class_type"] == node["class_type"]
        if not any(n["class_type"] == "UNETLoader" for n in wf.values()):
            assert tiny == wf                                         # nothing to replace: unchanged


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_host_accepts_every_template(host, name):
    """The host's own validation, not our reading of it: each template is queued (0.33 checks every
    dropdown value here and answers 400 with node_errors otherwise) and runs until it reaches a
    file. The placeholders are empty, so a template that loads a model then fails inside a loader;
    one that loads none (render_sample_mesh) succeeds."""
    wf = load_workflow(f"api/{name}.json")
    reply = host.submit(wf)
    assert "prompt_id" in reply and not reply.get("node_errors"), reply
    h = host.wait(reply["prompt_id"], timeout=600)
    loads_models = any(n["class_type"] in NATIVE_LOADERS | {FLUX_LOADER} for n in wf.values())
    assert h["status"]["status_str"] == ("error" if loads_models else "success"), h["status"]
    if loads_models:
        failed = next(d for kind, d in h["status"]["messages"] if kind == "execution_error")
        assert wf[failed["node_id"]]["class_type"] in NATIVE_LOADERS | {FLUX_LOADER}, failed
