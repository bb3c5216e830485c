"""Trainable LoRA adapters on the Flux transformer and their files in diffusers' key layout.

Adapters are injected as named peft adapters (only the engine applies them, per branch: see
engine/lora.py). Files are written as ``FluxPipeline.save_lora_weights`` lays them out
(``transformer.<module>.lora_A.weight`` / ``lora_B.weight``) with the adapter's scale
alpha / rank folded into lora_B, so every reader gets the trained update whether or not it
knows alpha (diffusers assumes alpha = rank when the file says nothing).
"""
from __future__ import annotations

from torch import nn

from ..engine.lora import LoraLayer, adapter_names
from .outputs import save_safetensors


def add_lora(transformer: nn.Module, name: str, rank: int, alpha: float, targets, init=True) -> dict:
    """Inject a fresh adapter and return its parameters {name: Parameter}, trainable, fp32.

    targets: peft's ``target_modules``: a regex string (full match of module names, as
    refany3d.lora_targets.LORA_TARGET_MODULES) or a list of names (exact name or suffix).
    init: peft's ``init_lora_weights``: True (lora_A kaiming-uniform) or "gaussian" (lora_A ~
    N(0, 1/rank), the reference's); A is drawn from torch's global generator and B starts at
    zero either way, so the adapter starts as the identity."""
    from peft import LoraConfig

    if name in adapter_names(transformer):           # left over from an interrupted run in this process
        transformer.delete_adapters(name)
    # peft's add_adapter makes the new adapter the only trainable one (requires_grad False on every
    # other adapter): keep the flags of adapters added before (stage 2 trains two, RefAny3D two)
    trainable = [p for n, p in transformer.named_parameters() if ".lora_" in n and p.requires_grad]
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha,
                                       target_modules=targets if isinstance(targets, str) else list(targets),
                                       init_lora_weights=init), adapter_name=name)
    for p in trainable:
        p.requires_grad_(True)
    params = lora_parameters(transformer, name)
    if not params:
        raise ValueError(f"no module of the transformer matches the LoRA targets {targets}")
    for p in params.values():
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_parameters(transformer: nn.Module, name: str) -> dict:
    return {n: p for n, p in transformer.named_parameters() if f".{name}." in n and ".lora_" in n}


def lora_state_dict(transformer: nn.Module, name: str) -> dict:
    """{'transformer.<module>.lora_A.weight': [r, in], '...lora_B.weight': [out, r] * scale}, fp32 CPU."""
    out = {}
    for module_name, m in transformer.named_modules():
        if LoraLayer and isinstance(m, LoraLayer) and name in m.lora_A:
            out[f"transformer.{module_name}.lora_A.weight"] = m.lora_A[name].weight.detach().float().cpu().contiguous()
            out[f"transformer.{module_name}.lora_B.weight"] = (m.lora_B[name].weight.detach().float()
                                                              * m.scaling[name]).cpu().contiguous()
    return out


def save_lora(transformer: nn.Module, name: str, path: str) -> str:
    """The adapter as a diffusers-layout LoRA file, written atomically; its metadata says the
    pack wrote it (engine.control_formats: a control LoRA of this pack's convention)."""
    return save_safetensors(lora_state_dict(transformer, name), path, lora_file_metadata(name))


def lora_file_metadata(name: str) -> dict:
    """safetensors metadata of a LoRA file the pack writes: diffusers' ``format`` and the pack's mark."""
    from ..engine.control_formats import PACK_METADATA_KEY

    return {"format": "pt", PACK_METADATA_KEY: name}


def load_into_lora(transformer: nn.Module, name: str, path: str, input_name: str) -> None:
    """Start the trainable adapter ``name`` from a diffusers-layout LoRA file (the published
    RefAny3D files, or a previous run's). Its rank must be lora.rank and its layers among
    lora.targets. The file's own scale (alpha / rank from its metadata or ``.alpha`` keys, 1 when
    it says nothing) is multiplied into lora_B and the adapter's divided out, so the adapter's
    effect is the file's as diffusers would load it."""
    import torch

    from ..engine.lora_files import check_lora_fits, read_lora
    from ..renderers.errors import InputError

    state = read_lora(path, input_name)
    check_lora_fits(transformer, state, path, input_name)
    used = set()
    with torch.no_grad():
        for module_name, m in transformer.named_modules():
            if not (LoraLayer and isinstance(m, LoraLayer) and name in m.lora_A):
                continue
            key = f"transformer.{module_name}.lora_"
            if key + "A.weight" not in state:
                continue                          # not in the file: the adapter starts as identity there
            a, b = state[key + "A.weight"], state[key + "B.weight"]
            if a.shape != m.lora_A[name].weight.shape:
                raise InputError(input_name, f"'{path}' has rank {a.shape[0]} at '{module_name}'; set lora.rank to "
                                             f"{a.shape[0]} to continue training it.")
            m.lora_A[name].weight.copy_(a)
            m.lora_B[name].weight.copy_(b.float() * state.scale(module_name) / m.scaling[name])
            used.update((key + "A.weight", key + "B.weight"))
    extra = sorted({k.split(".lora_")[0].removeprefix("transformer.") for k in state if k not in used})
    if extra:
        raise InputError(input_name, f"'{path}' adapts layers that lora.targets does not train (e.g. {extra[:3]}); "
                                     "add them to lora.targets (a regex of module names, or a list of names).")


def remove_lora(transformer: nn.Module, names: list) -> None:
    """Delete training adapters; peft's own application stays off for any adapter left."""
    present = [n for n in names if n in adapter_names(transformer)]
    if present:
        transformer.delete_adapters(present)
    if adapter_names(transformer):
        transformer.disable_lora()
