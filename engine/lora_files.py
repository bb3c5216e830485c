"""LoRA files in diffusers' key layout (as ``FluxPipeline.save_lora_weights`` writes them),
attached to a Flux transformer as peft adapters that only the engine applies, per branch."""
from __future__ import annotations

import hashlib
import os

from torch import nn

from ..renderers.errors import InputError
from .lora import adapter_names


def read_lora(path: str, input_name: str) -> dict:
    """A diffusers-layout LoRA state dict, with clear errors for unreadable files."""
    from diffusers import FluxPipeline

    name = os.path.basename(path)
    if not path.endswith(".safetensors"):
        raise InputError(input_name, f"'{name}': LoRA weights load from .safetensors files only.")
    try:
        state = FluxPipeline.lora_state_dict(path)
    except Exception as exc:
        raise InputError(input_name, f"'{name}' could not be read as a LoRA ({type(exc).__name__}: {exc}); the "
                                     "file may be truncated or not a safetensors LoRA.") from exc
    state = state[0] if isinstance(state, tuple) else state
    if not any(".lora_A." in k for k in state):
        raise InputError(input_name, f"'{name}' holds no LoRA weights (no '.lora_A.' keys).")
    return state


def check_lora_fits(transformer: nn.Module, state: dict, path: str, input_name: str) -> None:
    """Every LoRA matrix must match the layer it targets: a LoRA for another model size fails here
    with the sizes named, instead of deep inside peft."""
    name = os.path.basename(path)
    for key, tensor in state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_")[0].removeprefix("transformer.")
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            raise InputError(input_name, f"'{name}' targets layer '{module_name}', which this Flux model does not "
                                         "have (a LoRA for another architecture or depth?).") from None
        base = getattr(module, "base_layer", module)
        want = base.in_features if ".lora_A." in key else base.out_features
        got = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
        if want != got:
            raise InputError(input_name, f"'{name}' is for a model of another size: layer '{module_name}' takes "
                                         f"{want} features in this model, the LoRA has {got}. Use the LoRA trained "
                                         "for this base model.")


def attach_lora(transformer: nn.Module, path: str, logical_name: str, input_name: str) -> str:
    """Inject the LoRA in ``path`` once per file content; returns its peft adapter name."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    adapter = f"{logical_name}_{digest}"
    if adapter not in adapter_names(transformer):
        state = read_lora(path, input_name)
        check_lora_fits(transformer, state, path, input_name)
        transformer.load_lora_adapter(state, adapter_name=adapter, prefix="transformer")
        transformer.disable_lora()       # stock forwards stay base; the engine applies adapters per branch
    return adapter
