"""Attaching RefAny3D's published weights to a loaded Flux transformer.

`default.safetensors` (Reference-LoRA) and `coord.safetensors` (Domain-LoRA) are diffusers LoRA
files as `FluxPipeline.save_lora_weights` writes them; `domain_embedder.pth` is a torch state
dict. The LoRAs are injected as peft adapters under names unique to their file, then peft's
own application is switched off: only the engine applies them, per branch, so the shared base
model keeps giving base outputs to every other user of it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..engine.lora_files import attach_lora
from .domain_embedder import load_domain_embedder
from .layout import DOMAIN_ADAPTER, REFERENCE_ADAPTER


@dataclass
class RefAny3DWeights:
    """Adapter names as injected (logical name -> peft adapter name) and the domain embedder."""

    adapters: dict
    domain_embedder: nn.Module

    def resolve(self, logical: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.adapters[a] for a in logical)


def attach_refany3d(transformer: nn.Module, default_path: str, coord_path: str, embedder_path: str) -> RefAny3DWeights:
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    embedder = load_domain_embedder(embedder_path, hidden).to(transformer.x_embedder.weight.dtype)
    embedder = embedder.to(transformer.x_embedder.weight.device)
    return RefAny3DWeights(adapters={REFERENCE_ADAPTER: attach_lora(transformer, default_path, REFERENCE_ADAPTER,
                                                                    "reference_lora"),
                                     DOMAIN_ADAPTER: attach_lora(transformer, coord_path, DOMAIN_ADAPTER,
                                                                 "domain_lora")},
                           domain_embedder=embedder)
