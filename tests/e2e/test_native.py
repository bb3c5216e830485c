"""The pack on ComfyUI's own types, through the real server: a native Flux MODEL (built by the
test-only Tiny Flux node the way Load Diffusion Model builds FLUX.1-dev, in fp32 or fp8), Load VAE
with a full-size Flux VAE, CONDITIONING; RefAny3D on it, Apply Domain Shifter under ComfyUI's own
KSampler, the shared MODEL untouched by both, and bad native input named clearly."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfy_host import error_message
from realiz3d.loading import configs, load_pipeline_folder, write_tiny_set
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

SUB = "native_test"


@pytest.fixture(scope="module")
def native(server, tmp_path_factory):
    from diffusers import AutoencoderKL

    from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters

    tiny = write_tiny_set(str(tmp_path_factory.mktemp("tiny_native")))
    m = os.path.join(server.base, "models")
    for kind in ("diffusion_models", "vae", "refany3d", "realiz3d_shifters"):
        os.makedirs(os.path.join(m, kind, SUB), exist_ok=True)
    shutil.copy(tiny.transformer, os.path.join(m, "diffusion_models", SUB, "tiny-flux.safetensors"))
    cfg = {k: v for k, v in configs.load("flux_vae").items() if not k.startswith("_")}
    torch.manual_seed(0)
    for name, extra in (("ae.safetensors", {}),            # Flux's VAE architecture, random weights
                        ("sd_vae.safetensors", {"latent_channels": 4, "use_quant_conv": True,
                                                "use_post_quant_conv": True})):
        vae = AutoencoderKL.from_config({**cfg, **extra})
        save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, os.path.join(m, "vae", SUB, name))
    transformer = load_pipeline_folder(tiny.diffusers_folder).transformer
    folder = os.path.join(m, "refany3d", SUB)
    default, _, _ = write_tiny_refany3d(folder, transformer, seed=10)
    wide = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v) for k, v in load_file(default).items()}
    save_file(wide, os.path.join(folder, "wide.safetensors"))
    torch.manual_seed(1)
    shifters = DomainShifters(ShifterConfig.for_transformer(transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.2)
    save_shifters(shifters, os.path.join(m, "realiz3d_shifters", SUB, "shifters.safetensors"))
    return m


def refany3d_graph(weight_dtype="default", text_dim=64, vae="ae.safetensors", lora="default.safetensors",
                   model_node="Realiz3DTestTinyFlux", prefix="native/refany3d"):
    model = ({"class_type": model_node, "inputs": {}} if model_node != "Realiz3DTestTinyFlux" else
             {"class_type": model_node, "inputs": {"unet_name": f"{SUB}/tiny-flux.safetensors",
                                                   "weight_dtype": weight_dtype}})
    return {
        "1": model,
        "2": {"class_type": "Realiz3DTestConditioning",
              "inputs": {"tokens": 8, "text_dim": text_dim, "pooled_dim": 32, "pooled": True, "seed": 0}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": f"{SUB}/{vae}"}},
        "4": {"class_type": "Realiz3DLoadRefAny3D",
              "inputs": {"model": ["1", 0], "reference_lora": f"{SUB}/{lora}",
                         "domain_lora": f"{SUB}/coord.safetensors", "domain_embedder": f"{SUB}/domain_embedder.pth"}},
        "5": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb"}},
        "6": {"class_type": "Realiz3DRefAny3DSample",
              "inputs": {"refany3d": ["4", 0], "positive": ["2", 0], "vae": ["3", 0], "mesh": ["5", 0], "views": 2,
                         "condition_size": 32, "width": 32, "height": 32, "steps": 2, "guidance": 3.5,
                         "image_cfg": 2.0, "seed": 0, "batch": 1, "condition_latents": "mean", "kv_cache": False,
                         "background_threshold": 0.95}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def ksampler_graph(shift=None, end_at_step=10000, prefix="native/ksampler"):
    """Tiny Flux -> (Apply Domain Shifter) -> KSamplerAdvanced -> VAE Decode -> Save Image."""
    g = {
        "1": {"class_type": "Realiz3DTestTinyFlux",
              "inputs": {"unet_name": f"{SUB}/tiny-flux.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "Realiz3DTestConditioning",
              "inputs": {"tokens": 8, "text_dim": 64, "pooled_dim": 32, "pooled": True, "seed": 0}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": f"{SUB}/ae.safetensors"}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSamplerAdvanced",
              "inputs": {"model": ["1", 0], "add_noise": "enable", "noise_seed": 7, "steps": 2, "cfg": 1.0,
                         "sampler_name": "euler", "scheduler": "simple", "positive": ["2", 0], "negative": ["2", 0],
                         "latent_image": ["4", 0], "start_at_step": 0, "end_at_step": end_at_step,
                         "return_with_leftover_noise": "disable"}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["3", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
    if shift is not None:
        g["8"] = {"class_type": "Realiz3DLoadDomainShifter",
                  "inputs": {"model": ["1", 0], "shifter": f"{SUB}/shifters.safetensors"}}
        g["9"] = {"class_type": "Realiz3DDomainSchedule",
                  "inputs": {"preset": shift, "k_layers": 2, "switch_fraction": 0.5, "grid_json": ""}}
        g["10"] = {"class_type": "Realiz3DApplyDomainShifter",
                   "inputs": {"model": ["1", 0], "shifter": ["8", 0], "schedule": ["9", 0]}}
        g["5"]["inputs"]["model"] = ["10", 0]
    return g


def image(server, history) -> np.ndarray:
    files = [p for p in server.output_files(history) if p.endswith(".png")]
    assert len(files) == 1, files
    return np.asarray(Image.open(files[0])).astype(np.int16)


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_refany3d_on_a_native_model(server, native, weight_dtype):
    h = server.run(refany3d_graph(weight_dtype, prefix=f"native/refany3d_{weight_dtype}"), timeout=600)
    assert h["status"]["status_str"] == "success", error_message(h)
    img = image(server, h)
    assert img.shape == (32, 32, 3)


def test_domain_shifter_in_ksampler_and_the_shared_model_untouched(server, native):
    before = server.run(ksampler_graph(end_at_step=10000, prefix="native/plain_before"), timeout=600)
    assert before["status"]["status_str"] == "success", error_message(before)
    synthetic = server.run(ksampler_graph("synthetic", prefix="native/synthetic"), timeout=600)
    assert synthetic["status"]["status_str"] == "success", error_message(synthetic)
    layered = server.run(ksampler_graph("layer-aware", prefix="native/layered"), timeout=600)
    assert layered["status"]["status_str"] == "success", error_message(layered)
    ref = server.run(refany3d_graph(prefix="native/refany3d_between"), timeout=600)      # same MODEL node
    assert ref["status"]["status_str"] == "success", error_message(ref)
    # end_at_step 2 == 10000 for 2 steps: a different input, so ComfyUI re-runs the sampler on the
    # cached MODEL that the shifter and RefAny3D runs used
    after = server.run(ksampler_graph(end_at_step=2, prefix="native/plain_after"), timeout=600)
    assert after["status"]["status_str"] == "success", error_message(after)
    plain, plain_after = image(server, before), image(server, after)
    assert np.array_equal(plain, plain_after)                     # bit-identical: nothing leaked into MODEL
    assert np.abs(image(server, synthetic) - plain).max() > 0     # the shift acts inside KSampler
    assert np.abs(image(server, layered) - image(server, synthetic)).max() > 0


@pytest.mark.parametrize("case, graph, input_name", [
    ("not flux", dict(model_node="Realiz3DTestNotFlux"), "model"),
    ("other clip", dict(text_dim=768), "positive"),
    ("4-channel vae", dict(vae="sd_vae.safetensors"), "vae"),
    ("lora for another width", dict(lora="wide.safetensors"), "reference_lora"),
])
def test_bad_native_input_is_named_and_the_next_prompt_runs(server, native, case, graph, input_name):
    out = os.path.join(server.base, "output", "native", "bad")
    h = server.run(refany3d_graph(prefix="native/bad/img", **graph), timeout=600)
    assert h["status"]["status_str"] == "error"
    message = error_message(h)
    assert "Realiz3D input error" in message and input_name in message, message
    assert "Traceback" not in message
    assert not os.path.isdir(out) or not os.listdir(out)          # nothing written
    ok = server.run(refany3d_graph(prefix=f"native/after_{input_name}"), timeout=600)
    assert ok["status"]["status_str"] == "success", error_message(ok)


def custom_advanced_graph(shift=None, prefix="native/custom"):
    """The same model through SamplerCustomAdvanced (guider, sampler and sigmas as separate nodes)."""
    g = ksampler_graph(shift, prefix=prefix)
    model = g["5"]["inputs"]["model"]
    g["5"] = {"class_type": "SamplerCustomAdvanced",
              "inputs": {"noise": ["11", 0], "guider": ["12", 0], "sampler": ["13", 0], "sigmas": ["14", 0],
                         "latent_image": ["4", 0]}}
    g["11"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    g["12"] = {"class_type": "BasicGuider", "inputs": {"model": model, "conditioning": ["2", 0]}}
    g["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["14"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "simple", "steps": 2,
                                                          "denoise": 1.0}}
    return g


def test_domain_shifter_in_sampler_custom_advanced(server, native):
    plain = server.run(custom_advanced_graph(prefix="native/custom_plain"), timeout=600)
    assert plain["status"]["status_str"] == "success", error_message(plain)
    shifted = server.run(custom_advanced_graph("synthetic", prefix="native/custom_synthetic"), timeout=600)
    assert shifted["status"]["status_str"] == "success", error_message(shifted)
    assert np.abs(image(server, shifted) - image(server, plain)).max() > 0
