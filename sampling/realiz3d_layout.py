"""Realiz3D's branch layout (SPEC.md section 3), the one builder its sampler and its training
recipes share: the text, the target (with its domain shifts per block), and one branch per
aligned geometry control at t = 0 on the target's own position ids (offset 0)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..engine.branches import Branch

TEXT, TARGET = 0, 1


def build_branches(text_embeds: torch.Tensor, text_ids: torch.Tensor, t: torch.Tensor, guidance,
                   target_tokens: torch.Tensor, ids: torch.Tensor, target_adapters: tuple = (),
                   block_domains: Optional[Sequence[int]] = None, controls: Optional[torch.Tensor] = None,
                   control_adapters: tuple = (), control_guidance=None) -> list[Branch]:
    """text_embeds [B, L, 4096]; target_tokens [B, T, 64] at timestep ``t`` [B] with the
    target LoRA's adapters and ``block_domains`` (one domain index per engine block, or None);
    controls [B, C, T, 64] or None: one branch each, t = 0, ``control_guidance`` (1.0), the
    control LoRA's adapters, the target's ids (spatially aligned)."""
    out = [Branch(text_embeds, text_ids, t, guidance, is_text=True, name="text"),
           Branch(target_tokens, ids, t, guidance, tuple(target_adapters), block_domains=block_domains,
                  name="target")]
    if controls is not None:
        if controls.shape[2] != target_tokens.shape[1]:
            raise ValueError(f"controls have {controls.shape[2]} tokens, the target {target_tokens.shape[1]}: "
                             "aligned controls must have the target's size")
        zero = torch.zeros_like(t)
        out += [Branch(controls[:, k], ids, zero, control_guidance, tuple(control_adapters), name=f"control{k}")
                for k in range(controls.shape[1])]
    return out
