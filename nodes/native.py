"""ComfyUI's own MODEL, VAE and CONDITIONING as the library's FluxRuntime and TextConditioning.

A MODEL is ComfyUI's ModelPatcher: its ``model.diffusion_model`` is the Flux module the engine
runs layer by layer (engine.bfl_layers); its weights reach the device through ComfyUI's memory
manager (``load_models_gpu`` with the bytes a step needs), so ComfyUI can evict other models for
the pack and the pack's for others, and partially loaded models stream per layer as in
ComfyUI's own sampler. Nothing here copies or modifies a weight.
"""
from __future__ import annotations

import contextlib
import logging

import comfy.model_management

from ..loading import configs
from ..renderers.errors import InputError
from ..sampling.runtime import (DiffusersCodec, FluxRuntime, HostCodec, TextConditioning, host_runtime,
                                runtime_from_pipeline)
from .flux_nodes import FluxModel

log = logging.getLogger(__name__)


def is_host_model(model) -> bool:
    return hasattr(model, "load_device") and hasattr(getattr(model, "model", None), "diffusion_model")


def flux_module(model, input_name: str = "model"):
    """The BFL-layout Flux module of a MODEL, or InputError naming ``input_name``."""
    module = getattr(getattr(model, "model", None), "diffusion_model", None)
    if module is None or not all(hasattr(module, a) for a in ("double_blocks", "single_blocks", "img_in")):
        kind = type(module if module is not None else model).__name__
        raise InputError(input_name, f"is not a Flux model ({kind}); connect FLUX.1-dev or schnell from Load "
                                     "Diffusion Model or Load Checkpoint.")
    return module


def compute_dtype(model):
    """The dtype ComfyUI computes this MODEL in: its manual-cast dtype for fp8 (or otherwise
    cast) weights, else the weights' own."""
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


@contextlib.contextmanager
def _loaded(model, device, memory: int, modules):
    comfy.model_management.load_models_gpu([model], memory_required=memory)
    for m in modules:
        if m is not None:
            m.to(device)
    yield


def _flux_vae_factors(model) -> tuple[float, float]:
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    if fmt is not None and hasattr(fmt, "shift_factor"):
        return float(fmt.shift_factor), float(fmt.scale_factor)
    cfg = configs.load("flux_vae")
    return float(cfg["shift_factor"]), float(cfg["scaling_factor"])


def host_codec(vae, model=None, input_name: str = "vae") -> HostCodec:
    channels = getattr(vae, "latent_channels", None)
    if not (hasattr(vae, "encode") and hasattr(vae, "decode")) or channels is None:
        raise InputError(input_name, "expects a VAE from Load VAE (ae.safetensors, Flux's 16-channel VAE).")
    if channels != 16:
        raise InputError(input_name, f"is a {channels}-channel VAE; Flux needs its own 16-channel VAE "
                                     "(ae.safetensors in models/vae).")
    shift, scale = _flux_vae_factors(model)
    return HostCodec(encode=vae.encode, decode=vae.decode, shift=shift, scale=scale, channels=channels)


def runtime(model, vae, input_name: str = "model") -> FluxRuntime:
    """A runtime for ``model`` (a MODEL or the pack's Load Flux Model output) decoding with
    ``vae`` (a VAE from Load VAE, or Load Flux Model's vae output)."""
    if isinstance(model, FluxModel):
        rt = runtime_from_pipeline(model.pipeline, model.offload)
        if isinstance(vae, FluxModel):
            if vae is not model:
                rt.codec = DiffusersCodec(vae.pipeline.vae)
        elif vae is not None:
            rt.codec = host_codec(vae, None)
        return rt
    if not is_host_model(model):
        raise InputError(input_name, "expects a MODEL (Load Diffusion Model, Load Checkpoint) or the output of "
                                     "Load Flux Model (Realiz3D).")
    module = flux_module(model, input_name)
    _check_patches(model, input_name)
    if isinstance(vae, FluxModel):
        codec = DiffusersCodec(vae.pipeline.vae)
    elif vae is None:
        raise InputError("vae", "connect Flux's VAE (Load VAE with ae.safetensors).")
    else:
        codec = host_codec(vae, model)
    device = model.load_device
    try:
        return host_runtime(module, compute_dtype(model), device, codec,
                            load=lambda memory, *modules: _loaded(model, device, memory, modules))
    except ValueError as exc:
        raise InputError(input_name, f"{exc}.") from None


def _check_patches(model, input_name: str) -> None:
    """The pack's engine calls the MODEL's layers, not its forward: block patches never run."""
    options = getattr(model, "model_options", {}).get("transformer_options", {})
    blocks = options.get("patches_replace", {}).get("dit", {})
    if any(type(getattr(p, "__self__", None)).__name__ == "ShiftPatches" or "ShiftPatches" in
           getattr(p, "__qualname__", "") for p in blocks.values()):
        raise InputError(input_name, "comes from Apply Domain Shifter, whose shifts act inside ComfyUI's samplers "
                                     "only; connect the MODEL before it and the shifter to this node's shifter "
                                     "input.")
    if blocks or options.get("patches"):
        log.warning("Realiz3D: the MODEL carries block or attention patches from other nodes; the pack's "
                    "sampler runs the model's layers per branch and does not apply them (weight patches such as "
                    "LoRAs do apply).")


def text_conditioning(conditioning, input_name: str = "positive") -> TextConditioning:
    """ComfyUI CONDITIONING ([[T5 states, {"pooled_output", "guidance"?}], ...]) -> the first entry."""
    try:
        embeds, extra = conditioning[0][0], conditioning[0][1]
    except (TypeError, IndexError, KeyError):
        raise InputError(input_name, "expects CONDITIONING from CLIP Text Encode.") from None
    pooled = extra.get("pooled_output") if isinstance(extra, dict) else None
    if pooled is None or getattr(embeds, "ndim", 0) != 3:
        raise InputError(input_name, "carries no pooled CLIP output: encode the prompt with Flux's text encoders "
                                     "(DualCLIPLoader, type flux) and CLIP Text Encode.")
    guidance = extra.get("guidance")
    return TextConditioning(embeds, pooled, None if guidance is None else float(guidance))

