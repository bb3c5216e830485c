"""Realiz3D's branch layout (SPEC.md section 3), the one builder its sampler and its training
recipes share: the text, the target (with its domain shifts per block), and one branch per
aligned geometry control at t = 0 on the target's own position ids (offset 0).

Controls come in *sets*: one control LoRA with its images, one branch per image. The group mask
(:func:`control_mask`) lets text and target see every branch, and a control branch see the text,
the target, itself and, unless its set is ``independent``, the other branches of its own set;
branches of different sets never see each other. That is OminiControl's mask for its spatial
LoRAs (SPEC.md section 5: each condition sees text, target and itself), and for one set of the
pack's own control LoRA it is the full mask its stage 2 trains with."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..engine.branches import Branch

TEXT, TARGET = 0, 1


def build_branches(text_embeds: torch.Tensor, text_ids: torch.Tensor, t: torch.Tensor, guidance,
                   target_tokens: torch.Tensor, ids: torch.Tensor, target_adapters: tuple = (),
                   block_domains: Optional[Sequence[int]] = None, controls: Optional[torch.Tensor] = None,
                   control_adapters: tuple = (), control_guidance=None,
                   control_sets: Optional[Sequence[tuple[torch.Tensor, tuple]]] = None) -> list[Branch]:
    """text_embeds [B, L, 4096]; target_tokens [B, T, 64] at timestep ``t`` [B] with the
    target LoRA's adapters and ``block_domains`` (one domain index per engine block, or None);
    controls [B, C, T, 64] or None: one branch each, t = 0, ``control_guidance`` (1.0), the
    control LoRA's adapters, the target's ids (spatially aligned). control_sets: instead of
    ``controls``, several (tokens [B, C_k, T, 64], adapters) pairs, branches in set order."""
    out = [Branch(text_embeds, text_ids, t, guidance, is_text=True, name="text"),
           Branch(target_tokens, ids, t, guidance, tuple(target_adapters), block_domains=block_domains,
                  name="target")]
    if controls is not None:
        if control_sets is not None:
            raise ValueError("give controls or control_sets, not both")
        control_sets = [(controls, control_adapters)]
    zero = torch.zeros_like(t)
    for s, (tokens, adapters) in enumerate(control_sets or ()):
        if tokens.shape[2] != target_tokens.shape[1]:
            raise ValueError(f"controls have {tokens.shape[2]} tokens, the target {target_tokens.shape[1]}: "
                             "aligned controls must have the target's size")
        tag = "control" if len(control_sets) == 1 else f"control{s}_"
        out += [Branch(tokens[:, k], ids, zero, control_guidance, tuple(adapters), name=f"{tag}{k}")
                for k in range(tokens.shape[1])]
    return out


def control_mask(set_sizes: Sequence[int], independent: Sequence[bool]) -> Optional[torch.Tensor]:
    """The group mask (bool [n, n], rows = queries) of text, target and the control sets'
    branches in order, or None when it is the full mask (no control, or one set whose branches
    see each other, or a single control branch)."""
    if not set_sizes or (len(set_sizes) == 1 and (not independent[0] or set_sizes[0] == 1)):
        return None
    n = 2 + sum(set_sizes)
    m = torch.zeros(n, n, dtype=torch.bool)
    m[[TEXT, TARGET], :] = True
    start = 2
    for size, alone in zip(set_sizes, independent):
        for q in range(start, start + size):
            m[q, [TEXT, TARGET]] = True
            if alone:
                m[q, q] = True
            else:
                m[q, start:start + size] = True
        start += size
    return m
