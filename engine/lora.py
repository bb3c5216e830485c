"""Per-branch LoRA on peft adapters.

peft applies its active adapters to every token that passes a layer; branches need their own
set. So the engine never calls a LoRA-wrapped layer's forward: it calls :func:`apply_linear`
with the branch's adapter names, which adds exactly those adapters' updates to the base layer.
A branch without adapters therefore runs the base weights bit for bit, whatever adapters
the model holds or peft considers active.
"""
from __future__ import annotations

import torch
from torch import nn

try:
    from peft.tuners.lora import LoraLayer
except ImportError:  # peft is optional for base-only use
    LoraLayer = ()


def apply_linear(module: nn.Module, x: torch.Tensor, adapters: tuple[str, ...] = ()) -> torch.Tensor:
    """module(x) with only the named LoRA adapters applied (scale 1 x the adapter's own alpha/r)."""
    if LoraLayer and isinstance(module, LoraLayer):
        out = module.base_layer(x)
        for name in adapters:
            if name not in module.lora_A:
                continue
            if module.use_dora.get(name, False):
                raise ValueError(f"adapter {name!r} is a DoRA adapter; per-branch application supports plain LoRA only")
            a, b = module.lora_A[name], module.lora_B[name]
            out = out + b(a(module.lora_dropout[name](x.to(a.weight.dtype)))).to(out.dtype) * module.scaling[name]
        return out
    return module(x)


def adapter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA adapters injected anywhere in ``model``."""
    names = set()
    for m in model.modules():
        if LoraLayer and isinstance(m, LoraLayer):
            names.update(m.lora_A.keys())
    return names
