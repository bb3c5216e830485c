"""The shipped demo model (assets/realiz3d_demo, written by benchmarks/toy_experiment/export_demo.py):
small enough to ship, and loaded by the pack's own loader nodes (Load Flux Model on its diffusers
folder, Load Control LoRA with its target LoRA, Load Domain Shifter) into a model that samples a
64 px image under a normal-map control (Realiz3D Sample), as scripts/demo.py does in ComfyUI."""
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSETS = os.path.join(ROOT, "assets", "realiz3d_demo")
MAX_BYTES = 6 * 2 ** 20


def _info() -> dict:
    with open(os.path.join(ASSETS, "demo_model.json")) as f:
        return json.load(f)


def _files():
    return [os.path.join(r, n) for r, _, ns in os.walk(ASSETS) for n in ns]


def test_demo_model_is_complete_and_under_6_mb():
    info = _info()
    total = sum(os.path.getsize(p) for p in _files())
    assert total < MAX_BYTES, f"{total / 2 ** 20:.2f} MB"
    for rel in info["files"].values():
        assert os.path.isfile(os.path.join(ASSETS, rel)), rel
    assert os.path.isfile(os.path.join(ASSETS, "diffusers", info["model"], "model_index.json"))
    weights = [p for p in _files() if p.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert not weights, f"weights must be safetensors: {weights}"


def _out(node_output):
    return node_output.result if hasattr(node_output, "result") else node_output


def test_demo_model_loads_through_the_pack_loaders_and_samples(monkeypatch):
    from comfy_native import import_comfy
    import_comfy()
    from realiz3d.nodes import flux_nodes, realiz3d_nodes
    from realiz3d.renderers.errors import InputError

    info = _info()
    folders = {"diffusers": os.path.join(ASSETS, "diffusers"), "loras": os.path.join(ASSETS, "loras"),
               "realiz3d_shifters": os.path.join(ASSETS, "realiz3d_shifters")}

    def model_path(folder, name, input_name):
        path = os.path.join(folders[folder], name)
        if not os.path.exists(path):
            raise InputError(input_name, f"{name} not found")
        return path

    monkeypatch.setattr(flux_nodes, "model_path", model_path)
    monkeypatch.setattr(realiz3d_nodes, "model_path", model_path)
    files = {k: v.split("/")[-1] for k, v in info["files"].items()}
    model, clip, vae = _out(flux_nodes.LoadFluxModel.execute(
        "diffusers folder", info["model"], "(not used)", "(not used)", "(not used)", "(not used)",
        "(ComfyUI built-in)", "(ComfyUI built-in)", "auto", "cpu", False))[:3]
    positive = _out(flux_nodes.FluxTextEncode.execute(clip, info["caption"], info["max_sequence_length"]))[0]
    a_control = _out(realiz3d_nodes.LoadControlLoRA.execute(model, files["A_control"], files["A_target"]))[0]
    b_control = _out(realiz3d_nodes.LoadControlLoRA.execute(model, files["B_control"], files["B_target"]))[0]
    shifter = _out(realiz3d_nodes.LoadDomainShifter.execute(model, files["shifters"]))[0]
    for control in (a_control, b_control):              # each with its stage-2 target LoRA
        entries = control if isinstance(control, (list, tuple)) else [control]
        get = lambda e, k: e.get(k) if isinstance(e, dict) else getattr(e, k, None)
        assert all(get(e, "target_adapter") for e in entries)
    assert shifter.cfg.num_blocks == 6

    size = info["size"]
    normal = torch.zeros(1, size, size, 3)                   # a disc's normal map on black
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = xx ** 2 + yy ** 2 < 0.4
    nz = torch.sqrt(torch.clamp(1 - (xx ** 2 + yy ** 2) / 0.4, 0, 1))
    n = torch.stack([xx / 0.63, -yy / 0.63, nz], -1)
    normal[0][inside] = ((n[inside] + 1) / 2).clamp(0, 1)
    real = _out(realiz3d_nodes.DomainScheduleNode.execute("real", 0, 0.0, ""))[0]
    common = dict(width=size, height=size, batch=1, steps=4, guidance=info["guidance"], seed=0, control_images=normal)
    img_b = _out(realiz3d_nodes.Realiz3DSample.execute(model, positive, vae, control=b_control, **common))[0]
    img_a = _out(realiz3d_nodes.Realiz3DSample.execute(model, positive, vae, control=a_control, shifter=shifter,
                                                       schedule=real, **common))[0]
    for img in (img_a, img_b):
        assert img.shape == (1, size, size, 3) and torch.isfinite(img).all()
        assert img.std() > 0.02                              # an image, not a flat field
    assert not torch.allclose(img_a, img_b)
