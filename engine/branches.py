"""Token branches: one kind of token stream with its own conditioning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class Branch:
    """One token branch of the engine.

    tokens: [B, N, C] model inputs (packed 2x2 latent patches, C = in_channels, for image
    branches; T5 hidden states, C = joint_attention_dim, for the text branch).
    ids: [N, 3] RoPE position ids (0, row, col); a condition's column offset is already in it.
    timestep: [B] sigma in [0, 1] (scaled by 1000 inside, as in diffusers' Flux).
    guidance: [B] guidance-embedding value, or None for models without guidance embeds.
    adapters: LoRA adapter names active on this branch ("default", "coord", ...).
    domain: domain tag fed to the domain embedder, or None for no domain embedding.
    is_text: the text branch runs the context weights of the double blocks.
    block_domains: per engine block (double blocks, then single blocks), the domain index whose
    shift the engine's domain shifters add to this branch's tokens before that block; None for
    no shift (text and condition branches).
    """

    tokens: torch.Tensor
    ids: torch.Tensor
    timestep: torch.Tensor
    guidance: Optional[torch.Tensor] = None
    adapters: tuple[str, ...] = ()
    domain: Optional[int] = None
    is_text: bool = False
    name: str = ""
    block_domains: Optional[Sequence[int]] = None

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def parse_adapters(spec: str) -> tuple[str, ...]:
    """'default+coord' -> ('default', 'coord'); '' or 'none' -> ()."""
    if not spec or spec == "none":
        return ()
    return tuple(a for a in spec.split("+") if a)
