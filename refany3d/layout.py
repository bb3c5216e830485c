"""RefAny3D's branch layout and group mask (SPEC.md section 2, as the reference code builds them).

Branch order everywhere: text, target RGB, target point map, N RGB views, N point-map views.
"""
from __future__ import annotations

import torch

from ..engine.branches import Branch

TEXT, TARGET_RGB, TARGET_POINTS = 0, 1, 2
#: LoRA adapter names of the published weights
REFERENCE_ADAPTER, DOMAIN_ADAPTER = "default", "coord"
#: per-branch adapters after the text branch: target RGB, target point map, RGB views, point-map views
TARGET_ADAPTERS = ((), (DOMAIN_ADAPTER,))
RGB_VIEW_ADAPTERS = (REFERENCE_ADAPTER,)
POINT_VIEW_ADAPTERS = (REFERENCE_ADAPTER, DOMAIN_ADAPTER)


def num_branches(n_views: int) -> int:
    return 3 + 2 * n_views


def rgb_view(v: int) -> int:
    return 3 + v


def point_view(v: int, n_views: int) -> int:
    return 3 + n_views + v


def group_mask(n_views: int, text_agnostic: bool = True, independent_conditions: bool = False) -> torch.Tensor:
    """bool [3 + 2N, 3 + 2N], rows = queries.

    Text and target RGB attend to everything; the target point map to everything but the text
    (the text-agnostic mask; ``text_agnostic=False`` lets it see the text too); view v's RGB and
    point-map branches attend to the text, both targets and each other. With
    ``independent_conditions`` the views see only themselves and their pair: the forward that
    a condition KV cache reproduces exactly.
    """
    n = num_branches(n_views)
    m = torch.zeros(n, n, dtype=torch.bool)
    m[TEXT, :] = True
    m[TARGET_RGB, :] = True
    m[TARGET_POINTS, :] = True
    m[TARGET_POINTS, TEXT] = not text_agnostic
    for v in range(n_views):
        pair = [rgb_view(v), point_view(v, n_views)]
        for q in pair:
            m[q, pair] = True
            if not independent_conditions:
                m[q, :3] = True
    return m


def domain_tags(n_views: int) -> list:
    """Domain tag per branch: None for text, 0 for RGB branches, 1 for point-map branches."""
    return [None, 0, 1] + [0] * n_views + [1] * n_views


def adapters(n_views: int) -> list[tuple[str, ...]]:
    """Adapter set per branch: none for text and target RGB, coord for the target point map,
    default for RGB views, default+coord for point-map views."""
    return [(), *TARGET_ADAPTERS] + [RGB_VIEW_ADAPTERS] * n_views + [POINT_VIEW_ADAPTERS] * n_views


def condition_ids(ids: torch.Tensor, condition_width: int) -> torch.Tensor:
    """Position ids [N, 3] of a condition view: the view's own latent-patch ids shifted one
    condition width to the left (column -W/16; -32 at 512 px), shared by all 2N views."""
    out = ids.clone()
    out[:, 2] += -condition_width / 16.0
    return out


def build_branches(text_embeds: torch.Tensor, text_ids: torch.Tensor, t: torch.Tensor, guidance,
                   rgb_tokens: torch.Tensor, point_tokens: torch.Tensor, ids: torch.Tensor,
                   conditions: torch.Tensor, cond_ids: torch.Tensor, cond_guidance,
                   adapters: list) -> list[Branch]:
    """RefAny3D's branches in their fixed order, the one builder the sampler and the training
    recipe share: text; target RGB and target point map at timestep ``t`` [B]; the 2N condition
    views (N RGB, then N point maps) at t = 0 with ``cond_guidance`` (1.0) and ``cond_ids``.

    text_embeds [B, L, 4096]; rgb_tokens, point_tokens [B, T, 64]; conditions [B, 2N, Tc, 64];
    adapters: one tuple of (resolved) adapter names per branch, as :func:`adapters` lists them;
    domain tags from :func:`domain_tags`."""
    n_views = conditions.shape[1] // 2
    if len(adapters) != num_branches(n_views):
        raise ValueError(f"{len(adapters)} adapter sets for {num_branches(n_views)} branches")
    tags, zero = domain_tags(n_views), torch.zeros_like(t)
    out = [Branch(text_embeds, text_ids, t, guidance, is_text=True, name="text"),
           Branch(rgb_tokens, ids, t, guidance, adapters[TARGET_RGB], tags[TARGET_RGB], name="target_rgb"),
           Branch(point_tokens, ids, t, guidance, adapters[TARGET_POINTS], tags[TARGET_POINTS], name="target_points")]
    out += [Branch(conditions[:, k], cond_ids, zero, cond_guidance, adapters[3 + k], tags[3 + k], name=f"view{k}")
            for k in range(2 * n_views)]
    return out
