"""Attaching RefAny3D's published weights to a loaded Flux transformer.

`default.safetensors` (Reference-LoRA) and `coord.safetensors` (Domain-LoRA) are diffusers LoRA
files as `FluxPipeline.save_lora_weights` writes them; `domain_embedder.pth` is a torch state
dict. On the pack's own diffusers transformer the LoRAs are injected as peft adapters under names
unique to their file, then peft's own application is switched off; on a host's BFL-layout module
(ComfyUI's MODEL) they are kept beside it as engine.side_lora.SideLoRAs, mapped onto its fused
layers. Either way only the engine applies them, per branch, so the shared base model keeps
giving base outputs to every other user of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..engine.layers import flux_layers
from ..engine.lora_files import attach_lora, read_lora
from ..engine.side_lora import SideLoRAs
from ..renderers.errors import InputError
from .domain_embedder import load_domain_embedder
from .layout import DOMAIN_ADAPTER, REFERENCE_ADAPTER


@dataclass
class RefAny3DWeights:
    """Adapter names as attached (logical name -> adapter name) and the domain embedder. For a
    host's model (ComfyUI's MODEL, BFL layout) the LoRAs live in ``side``, beside the model, and
    ``hidden`` is the width they were checked against."""

    adapters: dict
    domain_embedder: nn.Module
    side: Optional[SideLoRAs] = None
    hidden: int = 0

    def resolve(self, logical: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.adapters[a] for a in logical)

    def check_fits(self, layers) -> None:
        if self.hidden and layers.hidden != self.hidden:
            raise InputError("refany3d", f"these RefAny3D weights were loaded for a model of width {self.hidden}; "
                                         f"the sampler's model has width {layers.hidden}. Load them for this model.")


def attach_refany3d(transformer, default_path: str, coord_path: str, embedder_path: str) -> RefAny3DWeights:
    """transformer: a diffusers FluxTransformer2DModel (peft adapters injected, switched off for
    its own forward) or a BFL-layout Flux module such as ComfyUI's (side LoRAs, module untouched)."""
    layers = flux_layers(transformer)
    embedder = load_domain_embedder(embedder_path, layers.hidden)
    if layers.layout != "diffusers":
        side = SideLoRAs()
        for logical, path, input_name in ((REFERENCE_ADAPTER, default_path, "reference_lora"),
                                          (DOMAIN_ADAPTER, coord_path, "domain_lora")):
            state = read_lora(path, input_name)
            side.add(logical, state, layers.module_of, layers.hidden, input_name, os.path.basename(path),
                     scale=state.scales)
        return RefAny3DWeights(adapters={REFERENCE_ADAPTER: REFERENCE_ADAPTER, DOMAIN_ADAPTER: DOMAIN_ADAPTER},
                               domain_embedder=embedder.eval(), side=side, hidden=layers.hidden)
    embedder = embedder.to(transformer.x_embedder.weight.dtype).to(transformer.x_embedder.weight.device)
    return RefAny3DWeights(adapters={REFERENCE_ADAPTER: attach_lora(transformer, default_path, REFERENCE_ADAPTER,
                                                                    "reference_lora"),
                                     DOMAIN_ADAPTER: attach_lora(transformer, coord_path, DOMAIN_ADAPTER,
                                                                 "domain_lora")},
                           domain_embedder=embedder)
