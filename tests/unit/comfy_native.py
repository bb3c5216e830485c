"""ComfyUI's own Flux MODEL in the test process (tests may import ComfyUI; the library may not).

ComfyUI's checkpoint detection fixes FLUX.1's 24 heads, so a tiny Flux cannot go through its
loaders; these helpers build the same objects its loader builds (supported_models.Flux ->
model_base.Flux -> ModelPatcher) at any size, from a diffusers transformer's weights converted
to the BFL layout by the pack's converter. :func:`single_file_model` goes through the real
loader (comfy.sd.load_diffusion_model) at hidden size 3072 with one block of each kind.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY = os.environ.get("COMFY_DIR", os.path.join(ROOT, ".cache", "host", "ComfyUI"))


def import_comfy():
    """ComfyUI's modules on the CPU, or skip when no host is installed."""
    if not os.path.isfile(os.path.join(COMFY, "comfy", "model_management.py")):
        pytest.skip(f"no ComfyUI host at {COMFY} (scripts/setup_host.sh installs it)")
    if COMFY not in sys.path:
        sys.path.insert(0, COMFY)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.supported_models  # noqa: F401
    return sys.modules["comfy"]


def unet_config(transformer) -> dict:
    c = transformer.config
    return dict(image_model="flux", in_channels=c.in_channels // 4, patch_size=2, out_channels=c.in_channels // 4,
                vec_in_dim=c.pooled_projection_dim, context_in_dim=c.joint_attention_dim,
                hidden_size=c.num_attention_heads * c.attention_head_dim, mlp_ratio=4.0,
                num_heads=c.num_attention_heads, depth=c.num_layers, depth_single_blocks=c.num_single_layers,
                axes_dim=list(c.axes_dims_rope), theta=10000, qkv_bias=True, guidance_embed=bool(c.guidance_embeds))


def native_model(transformer, weight_dtype=torch.float32, compute_dtype=None):
    """A ModelPatcher holding ComfyUI's Flux with ``transformer``'s weights stored in
    ``weight_dtype`` (fp8 with ``compute_dtype`` set: ComfyUI's manual cast, as for fp8 files)."""
    comfy = import_comfy()
    from realiz3d.loading.bfl_keys import diffusers_to_bfl

    config = unet_config(transformer)
    import comfy.ldm.flux.model
    if "txt_ids_dims" in getattr(comfy.ldm.flux.model.FluxParams, "__dataclass_fields__", {}):
        config["txt_ids_dims"] = []              # what ComfyUI 0.33's detection sets for FLUX.1
    mc = comfy.supported_models.Flux(config)
    mc.set_inference_dtype(weight_dtype, compute_dtype)
    model = mc.get_model({}, device=torch.device("cpu"))
    sd = {k: v.to(weight_dtype) for k, v in diffusers_to_bfl(transformer.state_dict()).items()}
    sd = mc.process_unet_state_dict(sd)          # the host's own key fixes (0.33 renames norm scales)
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def single_file_model(path: str, weight_dtype: str = "default"):
    """comfy.sd.load_diffusion_model on a file, as Load Diffusion Model does."""
    comfy = import_comfy()
    options = {} if weight_dtype == "default" else {"dtype": getattr(torch, weight_dtype)}
    return comfy.sd.load_diffusion_model(path, model_options=options)


def write_full_width_flux(path: str) -> str:
    """A random FLUX.1-width (3072, 24 heads) Flux with one double and one single block, saved in
    BFL keys with ComfyUI's prefix, bf16 (~1 GB): the smallest file ComfyUI's detection accepts."""
    if os.path.isfile(path):
        return path
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from realiz3d.loading import configs
    from realiz3d.loading.bfl_keys import BFL_PREFIX, diffusers_to_bfl

    torch.manual_seed(0)
    cfg = {**configs.load("flux1-dev_transformer"), "num_layers": 1, "num_single_layers": 1}
    tr = FluxTransformer2DModel.from_config(cfg).to(torch.bfloat16)
    for p in tr.parameters():
        torch.nn.init.normal_(p, std=0.02)
    sd = {k: v.contiguous() for k, v in diffusers_to_bfl(tr.state_dict(), prefix=BFL_PREFIX).items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def write_scaled_fp8(src: str, path: str) -> str:
    """ComfyUI's scaled-fp8 checkpoint format from a file of :func:`write_full_width_flux`: every
    linear weight stored as fp8 divided by its own ``scale_weight``, plus the ``scaled_fp8``
    marker key ComfyUI's detection looks for."""
    if os.path.isfile(path):
        return path
    from safetensors.torch import load_file, save_file

    from realiz3d.loading.bfl_keys import BFL_PREFIX

    out = {}
    for k, v in load_file(src).items():
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.float().abs().max() / 448.0
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[k[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[k] = v
    out[BFL_PREFIX + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path
